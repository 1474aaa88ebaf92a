"""Text pairs for contrastive embedding training: (query, positive) rows from JSONL, from chat data, or from the
bundled sets, split into train and validation; knows nothing of tokenizers or models.

    pairs = read_pairs("pairs.jsonl")          # rows {"query": ..., "positive": ...}
    pairs = read_pairs("jargon")               # bundled: a question naming a Jargon File term -> its definition
    pairs = read_pairs("chatterbot")           # bundled: a ChatterBot question -> its answer
    train, val = split_pairs(pairs, val_fraction=0.1, seed=0)

Field names accepted for the two sides: query/positive, anchor/positive, question/answer, term/definition and
text_a/text_b. A chat file (`{"messages": [...]}` or `{"prompt", "response"}` rows) gives one pair per user turn
and the assistant reply after it. A pair given twice is kept once. A query may have several positives (two items
one user liked, say); in a batch, another row's positive for the same query then counts as a negative, which is
rare when the pairs are many.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from gptkit.data.chat import bundled_chat, read_chat_jsonl
from gptkit.data.labelled import jsonl_rows, read_utf8
from gptkit.errors import GptkitError, require
from gptkit.chat_format import Conversation

PAIR_FIELDS = (("query", "positive"), ("anchor", "positive"), ("question", "answer"), ("term", "definition"),
               ("text_a", "text_b"))
BUNDLED_PAIRS = ("jargon", "chatterbot")


@dataclass
class TextPairs:
    """Parallel lists: queries[i] is answered by positives[i]."""

    queries: list[str]
    positives: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, indices: list[int]) -> "TextPairs":
        return TextPairs([self.queries[i] for i in indices], [self.positives[i] for i in indices], self.source)


def read_pairs(spec: str | Path, *, seed: int = 0) -> TextPairs:
    """Pairs from a JSONL file (pair fields or chat rows) or a bundled set's name (jargon, chatterbot)."""
    path = Path(spec)
    if not path.exists():
        require(str(spec) in BUNDLED_PAIRS, f"{spec} is neither a file nor a bundled pair set "
                                            f"({', '.join(BUNDLED_PAIRS)})")
        return _dedupe(_conversation_pairs(bundled_chat(str(spec), seed=seed), str(spec)))
    require(path.is_file(), f"{path} is a directory; pairs come from one JSONL file")
    rows = list(jsonl_rows(path, read_utf8(path)))
    require(rows, f"{path} has no rows")
    first = rows[0].values
    if "messages" in first or ("prompt" in first and "response" in first):
        return _dedupe(_conversation_pairs(read_chat_jsonl(path), str(path)))
    queries, positives = [], []
    for row in rows:
        where = f"{path} line {row.line}"
        names = next((pair for pair in PAIR_FIELDS if all(k in row.values for k in pair)), None)
        if names is None:
            raise GptkitError(f"{where}: expected one of the field pairs "
                              f"{', '.join('/'.join(p) for p in PAIR_FIELDS)} (or chat rows); found "
                              f"{', '.join(map(repr, row.values)) or 'no fields'}")
        query, positive = (row.values[k] for k in names)
        require(isinstance(query, str) and isinstance(positive, str) and query.strip() and positive.strip(),
                f"{where}: {names[0]!r} and {names[1]!r} must be non-empty strings")
        queries.append(query)
        positives.append(positive)
    return _dedupe(TextPairs(queries, positives, str(path)))


def _conversation_pairs(conversations: list[Conversation], source: str) -> TextPairs:
    queries, positives = [], []
    for messages in conversations:
        for turn, reply in zip(messages, messages[1:]):
            if turn["role"] == "user" and reply["role"] == "assistant":
                queries.append(str(turn["content"]))
                positives.append(str(reply["content"]))
    require(queries, f"{source}: no user turn followed by an assistant reply")
    return TextPairs(queries, positives, source)


def _dedupe(pairs: TextPairs) -> TextPairs:
    seen: set[tuple[str, str]] = set()
    keep = []
    for i, pair in enumerate(zip(pairs.queries, pairs.positives)):
        if pair not in seen:
            seen.add(pair)
            keep.append(i)
    return pairs.subset(keep)


def split_pairs(pairs: TextPairs, *, val_fraction: float, seed: int) -> tuple[TextPairs, TextPairs]:
    """A seeded random train/validation split; the validation side has at least two pairs (one to find, one
    to confuse it with)."""
    require(0 < val_fraction < 1, f"--val-fraction must be in (0, 1), got {val_fraction}")
    require(len(pairs) >= 4, f"{pairs.source}: need at least 4 distinct pairs, got {len(pairs)}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = max(2, round(val_fraction * len(order)))
    return pairs.subset(sorted(order[n_val:])), pairs.subset(sorted(order[:n_val]))
