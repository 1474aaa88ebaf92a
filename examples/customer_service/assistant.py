"""A retrieval-grounded customer-service assistant on gptkit: a knowledge base indexed by BM25 (bm25s), by gptkit
embeddings and by both (reciprocal-rank fusion), replies generated from the retrieved passages with the ids they
cite, and "I don't know" when nothing relevant is found. Runs on a local checkpoint or a `gptkit serve` URL.

    python examples/customer_service/assistant.py --checkpoint out/embed            # ask on the terminal
    python examples/customer_service/assistant.py --checkpoint out/embed --question "what is bikeshedding?"
    python examples/customer_service/assistant.py --server http://127.0.0.1:8000    # a running gptkit serve
    python examples/customer_service/assistant.py --checkpoint out/embed --serve --port 8080   # the chat page

From Python (what the test and the benchmark call):

    from assistant import Assistant, KnowledgeBase, LocalBackend
    bot = Assistant(KnowledgeBase.load(None), LocalBackend.load("out/embed"))   # None: the bundled Jargon File
    bot.retrieve("why do we argue about trivia?", k=5)     # [(id, score), ...]
    bot.answer("why do we argue about trivia?")            # (text, cited_ids)

Built only on gptkit's public API (`gptkit.load`, `LLM.embed`, `LLM.generate`, the HTTP API of `gptkit serve`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import bm25s
import Stemmer  # PyStemmer: the Snowball stemmers bm25s uses
import httpx
import numpy as np

import gptkit

RETRIEVERS = ("bm25", "dense", "hybrid")
RRF_K = 60
"""Reciprocal-rank fusion's constant (Cormack et al., 2009): a passage scores sum(1 / (60 + rank)) over the lists."""
FOLLOW_UP_WORDS = frozenset("it its this that these those they them their such he she him her one there".split())
"""Words that point back at an earlier turn: a question holding one may lean on the previous question."""
IDK = "I don't know: the knowledge base has nothing on that. Could you rephrase, or ask about something else?"


class AssistantError(Exception):
    """Bad input or an unreachable backend, said in one line (the command line prints it and exits 2)."""


# ------------------------------------------------------------------------------------------------
# the knowledge base


@dataclass
class Passage:
    id: str
    title: str
    text: str

    def indexed_text(self) -> str:
        return f"{self.title}: {self.text}" if self.title else self.text


@dataclass
class KnowledgeBase:
    passages: list[Passage]
    source: str

    @classmethod
    def load(cls, path: str | Path | None) -> KnowledgeBase:
        """A JSONL file of {"id", "title", "text"} rows, a folder of .txt/.md files (id: the file name, title: its
        first line), or None: the Jargon File's definitions bundled with gptkit (id: the term, slugged)."""
        if path is None:
            return cls(bundled_jargon(), "the Jargon File (bundled with gptkit)")
        path = Path(path)
        if path.is_dir():
            passages = [_file_passage(p) for p in sorted(path.iterdir()) if p.suffix in (".txt", ".md")]
        elif path.is_file():
            passages = _jsonl_passages(path)
        else:
            raise AssistantError(f"knowledge base {path} does not exist")
        if not passages:
            raise AssistantError(f"knowledge base {path} is empty: give a JSONL file of id/title/text rows or a "
                                 "folder of .txt/.md files")
        duplicates = sorted({p.id for p in passages if [q.id for q in passages].count(p.id) > 1})
        if duplicates:
            raise AssistantError(f"knowledge base {path}: ids must be unique; repeated: {', '.join(duplicates[:5])}")
        return cls(passages, str(path))

    def __len__(self) -> int:
        return len(self.passages)

    def by_id(self, passage_id: str) -> Passage:
        return self.passages[self.index()[passage_id]]

    def index(self) -> dict[str, int]:
        return {p.id: i for i, p in enumerate(self.passages)}

    def digest(self) -> str:
        content = json.dumps([[p.id, p.title, p.text] for p in self.passages]).encode()
        return hashlib.sha256(content).hexdigest()[:16]


def slug(term: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", term.lower()).strip("-") or "entry"


def bundled_jargon() -> list[Passage]:
    """The Jargon File entries shipped in gptkit's package data (gptkit/data/labelled/jargon_short.jsonl)."""
    resource = importlib.resources.files("gptkit") / "data" / "labelled" / "jargon_short.jsonl"
    passages, seen = [], set()
    for line in resource.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        entry_id = slug(row["term"])
        while entry_id in seen:  # "M" and "M$" slug alike
            entry_id += "-2"
        seen.add(entry_id)
        passages.append(Passage(entry_id, row["term"], row["definition"]))
    return passages


def _jsonl_passages(path: Path) -> list[Passage]:
    passages = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AssistantError(f"{path} line {number}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise AssistantError(f"{path} line {number}: expected an object with a non-empty string 'text' "
                                 "(and 'id', 'title')")
        entry_id = row.get("id", number)
        if not isinstance(entry_id, (str, int)):
            raise AssistantError(f"{path} line {number}: 'id' must be a string or a number")
        title = row.get("title") or ""
        if not isinstance(title, str):
            raise AssistantError(f"{path} line {number}: 'title' must be a string")
        passages.append(Passage(str(entry_id), title, row["text"]))
    return passages


def _file_passage(path: Path) -> Passage:
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    title = text.splitlines()[0].lstrip("# ").strip() if text else path.stem
    return Passage(path.stem, title, text)


# ------------------------------------------------------------------------------------------------
# backends: a local checkpoint or a gptkit server


class Backend(Protocol):
    name: str
    context: int

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Unit-length embeddings (N, d) and, per text, whether it was cut to the context."""

    def count_tokens(self, text: str) -> int: ...

    def stream(self, prompt: str, max_tokens: int, stop: list[str]) -> Iterator[str]:
        """Greedy text pieces of the completion as they are generated."""


class LocalBackend:
    """A checkpoint on this machine, through `gptkit.load`."""

    def __init__(self, llm: gptkit.LLM, name: str = "local") -> None:
        self.llm, self.name = llm, name
        self.context = llm.model.config.block_size

    @classmethod
    def load(cls, path: str | Path) -> LocalBackend:
        try:
            return cls(gptkit.load(path), str(path))
        except gptkit.GptkitError as e:
            raise AssistantError(str(e)) from None

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        cut = [truncated for _, truncated in self.llm.embedding_rows(list(texts))]
        return self.llm.embed(list(texts)).numpy(), cut

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenizer.encode(text))

    def stream(self, prompt: str, max_tokens: int, stop: list[str]) -> Iterator[str]:
        return self.llm.stream(prompt, max_tokens=max_tokens, temperature=0.0, stop=stop)


class HTTPBackend:
    """A running `gptkit serve` (or any OpenAI-compatible server with /tokenize), over HTTP."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.name = self.url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        models = self._call("GET", "/v1/models")
        self.model = models["data"][0]["id"]
        self.context = int(self._call("GET", "/tokenizer_info")["max_model_len"])

    def _call(self, method: str, route: str, body: dict | None = None) -> dict:
        try:
            response = self.client.request(method, route, json=body)
        except httpx.HTTPError as e:
            raise AssistantError(f"the server at {self.url} does not answer ({type(e).__name__}: {e}); start it with "
                                 "`gptkit serve --checkpoint CKPT` or check --server") from None
        if response.status_code != 200:
            self._raise_for(response, route)
        return response.json()

    def _raise_for(self, response: httpx.Response, route: str) -> None:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise AssistantError(f"{self.url}{route} answered {response.status_code}: {message}")

    def tokens(self, text: str) -> list[int]:
        return self._call("POST", "/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        # Texts, not token ids: the server writes them in its model's embedding style (an embedding fine-tune's)
        # before tokenising, and cuts them to its context (vLLM's truncate_prompt_tokens) rather than refusing.
        cut = [len(self.tokens(t)) > self.context for t in texts]
        vectors = []
        for start in range(0, len(texts), 64):
            body = {"model": self.model, "input": list(texts[start:start + 64]),
                    "truncate_prompt_tokens": self.context}
            data = self._call("POST", "/v1/embeddings", body)["data"]
            vectors += [d["embedding"] for d in sorted(data, key=lambda d: d["index"])]
        return np.asarray(vectors, dtype=np.float32), cut

    def count_tokens(self, text: str) -> int:
        return len(self.tokens(text))

    def stream(self, prompt: str, max_tokens: int, stop: list[str]) -> Iterator[str]:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stop": stop,
                "stream": True}
        try:
            with self.client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    self._raise_for(response, "/v1/completions")
                for line in response.iter_lines():
                    if not line.startswith("data:") or line.strip() == "data: [DONE]":
                        continue
                    event = json.loads(line[5:])
                    if "error" in event:
                        raise AssistantError(f"{self.url}/v1/completions: {event['error'].get('message')}")
                    yield event["choices"][0].get("text", "")
        except httpx.HTTPError as e:
            raise AssistantError(f"the server at {self.url} stopped answering ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------------
# retrieval


class BM25Index:
    """bm25s over each passage's title and text: English stop words removed, words stemmed (Snowball), so that
    "returned" finds "return"."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.stemmer = Stemmer.Stemmer("english")
        self.retriever = bm25s.BM25()
        self.retriever.index(self.tokenize([p.indexed_text() for p in kb.passages]), show_progress=False)
        self.size = len(kb)

    def tokenize(self, texts: list[str]):
        return bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        tokens = self.tokenize([query])
        if not tokens.vocab:  # only stop words (or nothing) left: nothing can match
            return []
        docs, scores = self.retriever.retrieve(tokens, k=min(k, self.size), show_progress=False)
        return [(int(d), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]


class DenseIndex:
    """Cosine similarity between gptkit embeddings of the question and of each passage (cached on disk)."""

    def __init__(self, kb: KnowledgeBase, backend: Backend, cache_dir: Path | None) -> None:
        self.backend = backend
        key = hashlib.sha256(f"{kb.digest()}|{backend.name}|{_weights_stamp(backend)}".encode()).hexdigest()[:16]
        cache = cache_dir / f"dense-{key}.npy" if cache_dir is not None else None
        if cache is not None and cache.is_file():
            self.vectors = np.load(cache)
        else:
            self.vectors, _ = backend.embed([p.indexed_text() for p in kb.passages])
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                temporary = cache.with_suffix(".tmp.npy")
                np.save(temporary, self.vectors)
                temporary.replace(cache)  # atomic: a killed run leaves no half-written index

    def search(self, query: str, k: int) -> tuple[list[tuple[int, float]], bool]:
        vectors, cut = self.backend.embed([query])
        scores = self.vectors @ vectors[0]
        top = np.argsort(-scores)[:k]
        return [(int(i), float(scores[i])) for i in top], cut[0]


def _weights_stamp(backend: Backend) -> str:
    """A local checkpoint's weight files' sizes and times, so a retrained model does not reuse a stale index."""
    path = getattr(getattr(backend, "llm", None), "path", None)
    if path is None:
        return getattr(backend, "model", "")
    files = sorted(Path(path).rglob("*.safetensors"))
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = RRF_K,
                           weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Fused ranking: each item scores sum(weight / (k + rank)) over the lists it is in, best first."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings)):
        for rank, index in enumerate(ranking, 1):
            scores[index] = scores.get(index, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


# ------------------------------------------------------------------------------------------------
# the assistant


@dataclass
class AssistantConfig:
    retriever: str = "hybrid"
    """bm25, dense or hybrid (reciprocal-rank fusion of the two)."""
    passages: int = 3
    """Retrieved passages put in the prompt (and cited)."""
    min_bm25: float = 4.5
    """'I don't know' when the best BM25 score is below this and (with embeddings) the best cosine similarity
    is below min_similarity: nothing in the knowledge base shares enough rare words with the question. Calibrated
    on half of examples/customer_service/questions.jsonl by evaluate.py (which reports the other half)."""
    min_similarity: float = 1.01
    """See min_bm25 (the default, above any cosine, leaves the decision to BM25)."""
    reply: str = "generate"
    """generate: the model writes the reply from the passages; extract: the reply quotes the best passage."""
    max_tokens: int = 64
    pool: int = 50
    """Candidates each retriever hands to the fusion."""
    dense_weight: float = 0.1
    """Weight of the dense ranking in the fusion (BM25's is 1): below 1 when the embeddings are the weaker
    retriever. evaluate.py tunes it and rrf_k on half the questions; 0.1 and 10 are what it chose for the bundled
    knowledge base with a small embedding fine-tune (README), where equal weights (1 and 60) lost to BM25 alone."""
    rrf_k: int = 10

    def validate(self) -> None:
        if self.retriever not in RETRIEVERS:
            raise AssistantError(f"--retriever must be one of {', '.join(RETRIEVERS)}, got {self.retriever!r}")
        if self.reply not in ("generate", "extract"):
            raise AssistantError(f"--reply must be generate or extract, got {self.reply!r}")
        if self.passages < 1 or self.max_tokens < 1 or self.pool < 1 or self.rrf_k < 1:
            raise AssistantError("--passages, --max-tokens, --rrf-k and the pool must be at least 1")
        if not self.dense_weight >= 0:
            raise AssistantError(f"--dense-weight must be >= 0, got {self.dense_weight}")


@dataclass
class Reply:
    text: str
    cited: list[str]
    notes: list[str] = field(default_factory=list)
    """What the user should know: a question cut to the context, passages shortened to fit."""


@dataclass
class StreamedReply:
    """A reply whose text arrives in pieces (the last one the citation); what it cites is known up front."""

    pieces: Iterator[str]
    cited: list[str]
    notes: list[str]


Turn = tuple[str, str]
"""(question, reply) of an earlier turn."""


class Assistant:
    def __init__(self, kb: KnowledgeBase, backend: Backend | None, config: AssistantConfig | None = None, *,
                 cache_dir: Path | None = Path("out/customer_service")) -> None:
        self.kb, self.backend = kb, backend
        self.config = config or AssistantConfig()
        self.config.validate()
        if self.config.retriever != "bm25" and backend is None:
            raise AssistantError(f"--retriever {self.config.retriever} needs a model: pass --checkpoint or --server")
        if self.config.reply == "generate" and backend is None:
            raise AssistantError("--reply generate needs a model: pass --checkpoint or --server (or --reply extract)")
        self.bm25 = BM25Index(kb)
        self.titles = {words(p.title) for p in kb.passages if len(p.title) >= 6 or " " in p.title.strip()}
        """Entry titles a question can name outright (short one-word ones, "open", "fix", are too common to)."""
        self.dense = DenseIndex(kb, backend, cache_dir) if backend is not None else None

    # --- retrieval ---
    def ranked(self, question: str, k: int, retriever: str | None = None) -> tuple[list[tuple[int, float]], Reply]:
        """Passage indices with scores, best first, and notes (e.g. the question was cut to the context)."""
        retriever = retriever or self.config.retriever
        notes = Reply("", [])
        if not question.strip():
            raise AssistantError("the question is empty")
        if retriever == "bm25":
            return self.bm25.search(question, k), notes
        if self.dense is None:
            raise AssistantError(f"the {retriever} retriever needs a model: pass --checkpoint or --server")
        dense, cut = self.dense.search(question, max(k, self.config.pool))
        if cut:
            notes.notes.append(f"the question is longer than the model's context of {self.dense.backend.context} "
                               "tokens: its embedding reads only the start")
        if retriever == "dense":
            return dense[:k], notes
        lexical = self.bm25.search(question, self.config.pool)
        fused = reciprocal_rank_fusion([[i for i, _ in lexical], [i for i, _ in dense]], self.config.rrf_k,
                                       [1.0, self.config.dense_weight])
        return fused[:k], notes

    def retrieve(self, question: str, k: int = 5, retriever: str | None = None) -> list[tuple[str, float]]:
        """The k best passages' ids with their scores, best first."""
        return [(self.kb.passages[i].id, score) for i, score in self.ranked(question, k, retriever)[0]]

    def knows(self, question: str) -> bool:
        """Whether anything in the knowledge base is relevant enough to answer from: the question names an entry's
        title, or its best BM25 score (or cosine similarity) clears the threshold. BM25 scores grow with the
        question's length, so a short direct question ("what is bikeshedding?") scores low though it names the
        entry; the title check answers it."""
        if self.names_a_title(question):
            return True
        lexical = self.bm25.search(question, 1)
        if lexical and lexical[0][1] >= self.config.min_bm25:
            return True
        if self.dense is not None:
            dense, _ = self.dense.search(question, 1)
            return dense[0][1] >= self.config.min_similarity
        return False

    def names_a_title(self, question: str) -> bool:
        tokens = words(question).split()
        return any(" ".join(tokens[i:i + n]) in self.titles for n in range(1, 5) for i in range(len(tokens) - n + 1))

    # --- answering ---
    def answer(self, question: str, history: Sequence[Turn] = ()) -> tuple[str, list[str]]:
        """The reply and the ids it cites ([] with "I don't know")."""
        reply = self.reply(question, history)
        return reply.text, reply.cited

    def reply(self, question: str, history: Sequence[Turn] = ()) -> Reply:
        """The whole reply (what `reply_stream` gives, joined)."""
        streamed = self.reply_stream(question, history)
        return Reply("".join(streamed.pieces), streamed.cited, streamed.notes)

    def reply_stream(self, question: str, history: Sequence[Turn] = ()) -> StreamedReply:
        """The reply as it is generated: `pieces` yields its text, ending with the citation; `cited` and `notes` are
        known before the first piece."""
        query = question
        if history and not self.knows(question) and is_follow_up(question):
            query = f"{history[-1][0]} {question}"  # "and who would do such a thing?" is about the last question
        if not self.knows(query):
            return StreamedReply(iter([IDK]), [], [])
        ranked, found = self.ranked(query, self.config.passages)
        passages = [self.kb.passages[i] for i, _ in ranked]
        if self.config.reply == "extract" or self.backend is None:
            best = passages[0]
            return StreamedReply(iter([f"{best.title}: {first_sentences(best.text)} [{best.id}]"]), [best.id],
                                 found.notes)
        prompt, used, shortened = self.prompt(question, passages, history)
        notes = found.notes + (["some passages were shortened to fit the model's context"] if shortened else [])
        cited = [p.id for p in used]
        generated = self.backend.stream(prompt, self.config.max_tokens, stop=["\nQuestion:", "\n\n"])

        def pieces() -> Iterator[str]:
            wrote = False
            for piece in generated:
                piece = piece if wrote else piece.lstrip()
                if piece:
                    wrote = True
                    yield piece
            if not wrote:  # the model said nothing: quote the passage it was given
                yield first_sentences(used[0].text)
            yield f" [{', '.join(cited)}]"

        return StreamedReply(pieces(), cited, notes)

    def prompt(self, question: str, passages: list[Passage],
               history: Sequence[Turn]) -> tuple[str, list[Passage], bool]:
        """A prompt of the passages, the recent turns and the question that fits the context with room for the
        reply. A long question keeps its end (where the ask usually is); passages that do not fit whole are cut,
        and the first one is always kept, however short it has to be."""
        assert self.backend is not None
        count = self.backend.count_tokens
        budget = self.backend.context - self.config.max_tokens
        head = "Answer the customer's question from the passages, and say which passage you used.\n"
        question = keep_within(question, budget // 3, count, keep="end")
        sixth = budget // 6
        turns = "".join(f"Question: {keep_within(q, sixth, count)}\nAnswer: {keep_within(a, sixth, count)}\n"
                        for q, a in history[-1:])
        tail = f"{turns}Question: {question}\nAnswer:"
        if count(head + tail) > budget // 2:
            head, tail = "", f"Question: {question}\nAnswer:"
        used: list[Passage] = []
        body, shortened = "", False
        for passage in passages:
            room = budget - count(head + body + tail)
            block = keep_within(f"[{passage.id}] {passage.title}: {passage.text}", room - 1, count) + "\n"
            if count(block) > room or (used and not block.strip().endswith(passage.text.strip()[-20:])):
                shortened = True
                if used:
                    break
            body += block
            used.append(passage)
        return head + body + tail, used, shortened


def keep_within(text: str, tokens: int, count, keep: str = "start") -> str:
    """`text` cut by words to at most `tokens` tokens, keeping its start (or its end)."""
    words = text.split()
    while words and count(" ".join(words)) > tokens:
        drop = max(1, len(words) // 4)
        words = words[:-drop] if keep == "start" else words[drop:]
    return " ".join(words)


def words(text: str) -> str:
    """Lower-case words and numbers, single-spaced (punctuation dropped): how titles and questions are compared."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def is_follow_up(question: str) -> bool:
    return bool(FOLLOW_UP_WORDS & set(re.findall(r"[a-z']+", question.lower())))


def first_sentences(text: str, limit: int = 240) -> str:
    """The passage's opening, cut at a sentence end near `limit` characters."""
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > 40 else text[:limit].rsplit(" ", 1)[0] + " ..."


# ------------------------------------------------------------------------------------------------
# the command line


def build(args: argparse.Namespace) -> Assistant:
    backend: Backend | None = None
    if args.checkpoint and args.server:
        raise AssistantError("pass --checkpoint or --server, not both")
    if args.checkpoint:
        backend = LocalBackend.load(args.checkpoint)
    elif args.server:
        backend = HTTPBackend(args.server, api_key=args.api_key)
    config = AssistantConfig(retriever=args.retriever if backend is not None else "bm25", passages=args.passages,
                             reply=args.reply if backend is not None else "extract", max_tokens=args.max_tokens,
                             dense_weight=args.dense_weight, rrf_k=args.rrf_k)
    if args.min_bm25 is not None:
        config.min_bm25 = args.min_bm25
    if args.min_similarity is not None:
        config.min_similarity = args.min_similarity
    return Assistant(KnowledgeBase.load(args.kb), backend, config, cache_dir=Path(args.cache))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kb", help="knowledge base: a JSONL file of id/title/text rows or a folder of .txt/.md files "
                                "(default: the bundled Jargon File definitions)")
    p.add_argument("--checkpoint", help="a gptkit checkpoint (an embedding fine-tune retrieves best)")
    p.add_argument("--server", help="a gptkit serve URL instead of --checkpoint, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", help="the server's API key")
    p.add_argument("--retriever", default="hybrid", choices=RETRIEVERS)
    p.add_argument("--reply", default="generate", choices=("generate", "extract"))
    p.add_argument("--passages", type=int, default=3, help="passages retrieved into the prompt")
    p.add_argument("--dense-weight", type=float, default=AssistantConfig.dense_weight,
                   help="weight of the dense ranking in the hybrid fusion (BM25's is 1)")
    p.add_argument("--rrf-k", type=int, default=AssistantConfig.rrf_k, help="reciprocal-rank fusion's constant")
    p.add_argument("--max-tokens", type=int, default=64, help="length of a generated reply")
    p.add_argument("--min-bm25", type=float, help=f"'I don't know' threshold (default {AssistantConfig.min_bm25})")
    p.add_argument("--min-similarity", type=float, help="'I don't know' threshold on the cosine similarity")
    p.add_argument("--cache", default="out/customer_service", help="where the dense index is cached")
    p.add_argument("--question", action="append", help="ask this (repeat for a multi-turn conversation) and exit")
    p.add_argument("--serve", action="store_true", help="serve the chat page and an OpenAI-style chat API instead")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    return p


def print_reply(reply: Reply, started: float) -> None:
    for note in reply.notes:
        print(f"(note: {note})", file=sys.stderr)
    print(reply.text)
    print(f"  cited: {', '.join(reply.cited) or '-'}  ({time.perf_counter() - started:.2f} s)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        assistant = build(args)
        if args.serve:
            from chat_server import serve  # the web part: FastAPI and the chat page

            serve(assistant, host=args.host, port=args.port)
            return 0
        history: list[Turn] = []
        questions = args.question or None
        if questions is None:
            print(f"knowledge base: {assistant.kb.source}, {len(assistant.kb)} entries. Ask away (Ctrl-D to quit).",
                  file=sys.stderr)
        for question in questions or _stdin_questions():
            started = time.perf_counter()
            reply = assistant.reply(question, history)
            print_reply(reply, started)
            history.append((question, reply.text))
    except AssistantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _stdin_questions():
    while True:
        try:
            line = input("> " if sys.stdin.isatty() else "")
        except EOFError:
            return
        if line.strip():
            yield line.strip()


if __name__ == "__main__":
    sys.exit(main())
