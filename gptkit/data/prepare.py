"""`gptkit prepare`: text in, memory-mapped token files out.

A prepared dataset is a directory holding `train.bin` and `val.bin` (flat arrays of token ids,
uint16 when the vocabulary fits, else uint32, as in nanoGPT), the `tokenizer.json` that made
them, and `meta.json` describing both (see `TokenDataset`).

Everything streams: text is read in ~1 MB pieces cut at newlines, so memory stays flat however big
the input is. That takes three passes over the input:
  1. scan: check every byte is UTF-8 text and decide the train/val split,
  2. train the tokenizer on the training split (skipped when given a tokenizer.json),
  3. tokenise and append the ids to train.bin / val.bin.

The split is deterministic, so preparing twice gives byte-identical files:
  - one plain-text file: the first `1 - val_fraction` of its characters go to train, the rest
    to val (nanoGPT's shakespeare_char split), with no EOS tokens;
  - anything else (directories, .jsonl, several files) is a stream of documents: a document goes
    to val when a hash of its text falls below `val_fraction`, and every document is followed by
    the EOS token so the model sees where documents end.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import numpy as np
from tqdm import tqdm

from gptkit.checkpoint import write_atomically
from gptkit.data.dataset import FORMAT, FORMAT_VERSION, META_FILE, SPLITS
from gptkit.data.tokenizers import TOKENIZER_PRESETS, load_tokenizer_preset
from gptkit.errors import GptkitError, require
from gptkit.tokenizer import Tokenizer, iter_text_chunks

CORPORA_DIR = Path(__file__).resolve().parent / "corpora"

READ_BYTES = 1 << 20  # read input in ~1 MB pieces
ENCODE_PART_CHARS = 1 << 16  # ...and hand encode_batch 64K-character parts, so every core gets work
BATCH_CHARS = 1 << 18  # characters per encode_batch call: bounds the Rust side's per-token memory

Split = Literal["train", "val"]
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------
# bundled corpora


def bundled_corpora() -> list[str]:
    """Names of the corpora shipped inside the package."""
    return sorted(p.stem for p in CORPORA_DIR.glob("*.txt"))


def bundled_corpus_path(name: str = "tiny_shakespeare") -> Path:
    """Path of a bundled corpus (see gptkit/data/corpora/PROVENANCE.md for where each comes from)."""
    path = CORPORA_DIR / f"{name}.txt"
    require(path.is_file(), f"no bundled corpus named {name!r}; available: {', '.join(bundled_corpora()) or 'none'}")
    return path


# ------------------------------------------------------------------------------------------------
# reading: UTF-8 text and .jsonl, in pieces


@dataclass(frozen=True)
class Source:
    path: Path
    kind: Literal["text", "jsonl"]


class Piece(NamedTuple):
    """A stretch of text on its way to a split; `ends_document` marks the last piece of a document."""

    split: Split
    text: str
    n_bytes: int  # its UTF-8 size, for bits-per-byte
    ends_document: bool


def _decode(path: Path, data: bytes, offset: int) -> str:
    """Strict UTF-8 decoding, with an error that says where the file stops being text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GptkitError(f"{path} is not UTF-8 text: invalid byte 0x{data[e.start]:02x} at byte offset "
                          f"{offset + e.start}; convert it to UTF-8 first "
                          f"(e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.txt`)") from None
    nul = text.find("\x00")  # valid UTF-8, but no text file holds NUL bytes: it is binary
    if nul >= 0:
        raise GptkitError(f"{path} is not UTF-8 text: NUL byte at byte offset {offset + len(text[:nul].encode())} "
                          "(is it a binary file?)")
    return text


def _utf8_cut(data: bytes) -> int:
    """Where to cut `data` so no UTF-8 character straddles the cut: before the last lead byte."""
    i = len(data) - 1
    while i > 0 and len(data) - i < 4 and 0x80 <= data[i] < 0xC0:  # step back over continuation bytes
        i -= 1
    return i if data[i] >= 0xC0 else len(data)


def read_text(path: Path, read_bytes: int | None = None) -> Iterator[tuple[str, bytes]]:
    """(text, its raw bytes) in pieces of about `read_bytes`, cut after a newline where there is one."""
    read_bytes = read_bytes or READ_BYTES
    with open(path, "rb") as f:
        offset, carry = 0, b""
        while True:
            block = f.read(read_bytes)
            data, carry = carry + block, b""
            if not data:
                return
            if block:  # more may follow: cut after the last newline in the second half, else between characters
                cut = data.rfind(b"\n", len(data) // 2) + 1 or _utf8_cut(data)
                data, carry = data[:cut], data[cut:]
                if not data:  # only part of one character so far: wait for the rest
                    continue
            yield _decode(path, data, offset), data
            offset += len(data)


def read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    """The non-empty `text_field` string of each line of a .jsonl file."""
    with open(path, "rb") as f:
        offset = 0
        for line_no, raw in enumerate(f, start=1):
            line = _decode(path, raw, offset)
            offset += len(raw)
            if not line.strip():
                continue  # blank lines (a trailing newline, say) hold no document
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise GptkitError(f"{path}, line {line_no} is not JSON ({e.msg}, column {e.colno}); "
                                  f"each line must be one object like {{\"{text_field}\": \"...\"}}") from None
            require(isinstance(record, dict),
                    f"{path}, line {line_no} is a JSON {type(record).__name__}, not an object with a "
                    f"\"{text_field}\" field")
            if text_field not in record:
                raise GptkitError(f"{path}, line {line_no} has no \"{text_field}\" field; its keys are "
                                  f"{sorted(record)}: pass --text-field with the one holding the text")
            text = record[text_field]
            require(isinstance(text, str),
                    f"{path}, line {line_no}: \"{text_field}\" is a {type(text).__name__}, expected a string")
            if text:
                yield text


def iter_documents(sources: Sequence[Source], text_field: str) -> Iterator[Iterator[tuple[str, bytes]]]:
    """Each document as an iterator of (text, raw bytes) pieces: a text file is one document, a .jsonl line another.

    A document's pieces must be consumed before asking for the next document. Empty text files
    yield an empty document; callers skip those.
    """
    for source in sources:
        if source.kind == "jsonl":
            for text in read_jsonl(source.path, text_field):
                yield iter([(text, text.encode("utf-8"))])
        else:
            yield read_text(source.path)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def resolve_sources(inputs: Sequence[str | Path]) -> list[Source]:
    """Expand paths, directories (recursively, sorted) and bundled corpus names into the files to read."""
    require(len(inputs) > 0,
            f"no input given: pass --input FILE_OR_DIR (or a bundled corpus: {', '.join(bundled_corpora())})")
    sources: list[Source] = []
    for item in inputs:
        path = Path(item)
        if not path.exists() and str(item) in bundled_corpora():
            path = bundled_corpus_path(str(item))
        require(path.exists(), f"input {item} does not exist; pass a text file, a .jsonl file, a directory "
                               f"of them, or a bundled corpus name ({', '.join(bundled_corpora())})")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file()
                           and not _is_hidden(p, path))
            require(files, f"input directory {path} holds no .txt or .jsonl files")
            sources += [Source(p, "jsonl" if p.suffix == ".jsonl" else "text") for p in files]
        else:
            sources.append(Source(path, "jsonl" if path.suffix == ".jsonl" else "text"))
    return sources


# ------------------------------------------------------------------------------------------------
# pass 1: scan and split


@dataclass
class SplitPlan:
    """Which text goes where; decided by one streaming pass over the input."""

    sources: list[Source]
    single_text: bool  # one plain-text file: split by characters, no EOS
    n_chars: int = 0
    n_bytes: int = 0
    split_at: int = 0  # single_text: characters before this go to train
    doc_is_val: bytearray = field(default_factory=bytearray)  # documents: one flag per non-empty document

    def describe(self, val_fraction: float) -> dict:
        if self.single_text:
            return {"split_rule": "characters", "split_at_char": self.split_at, "n_chars": self.n_chars,
                    "split_rule_description": f"text[:int(n_chars * (1 - {val_fraction}))] -> train, "
                                              "the rest -> val (nanoGPT's shakespeare_char split); no EOS"}
        return {"split_rule": "document_hash", "n_chars": self.n_chars,
                "split_rule_description": f"a document goes to val when blake2b-64(its UTF-8 text) / 2**64 < "
                                          f"{val_fraction} (the last document if that leaves val empty); "
                                          "EOS after every document"}


def _hash_fraction(h: hashlib.blake2b) -> float:
    """A hash digest as a number in [0, 1): stable across runs, machines and Python versions."""
    return int.from_bytes(h.digest(), "big") / 2.0 ** (8 * h.digest_size)


def scan(sources: list[Source], text_field: str, val_fraction: float, *, progress: bool = True) -> SplitPlan:
    """Read everything once: validate it (so errors come before any slow work) and decide the split."""
    plan = SplitPlan(sources, single_text=len(sources) == 1 and sources[0].kind == "text")
    names = ", ".join(str(s.path) for s in sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
    with tqdm(desc="scan", unit="B", unit_scale=True, file=sys.stderr, disable=not progress) as bar:
        for document in iter_documents(sources, text_field):
            h, n_bytes = hashlib.blake2b(digest_size=8), 0
            for text, raw in document:
                h.update(raw)  # raw bytes == the text's UTF-8, so .txt and .jsonl documents hash alike
                n_bytes += len(raw)
                plan.n_chars += len(text)
                bar.update(len(raw))
            plan.n_bytes += n_bytes
            if n_bytes and not plan.single_text:
                plan.doc_is_val.append(_hash_fraction(h) < val_fraction)
    require(plan.n_chars > 0, f"no text to prepare: {names} {'is' if len(sources) == 1 else 'are'} empty")
    if plan.single_text:
        plan.split_at = int(plan.n_chars * (1 - val_fraction))
        require(0 < plan.split_at < plan.n_chars,
                f"{names} has only {plan.n_chars} characters: too few to split into train and val with "
                f"val_fraction={val_fraction}")
    else:
        if not any(plan.doc_is_val):  # tiny inputs: make sure val is not empty
            plan.doc_is_val[-1] = True
        require(not all(plan.doc_is_val),
                f"{names} hold{'s' if len(sources) == 1 else ''} {len(plan.doc_is_val)} document(s), all of them "
                f"in val with val_fraction={val_fraction}: give more documents or a smaller --val-fraction")
    return plan


def _with_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Each item with a flag saying whether it is the last one."""
    iterator = iter(items)
    try:
        previous = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield previous, False
        previous = item
    yield previous, True


def iter_pieces(plan: SplitPlan, text_field: str) -> Iterator[Piece]:
    """The input again, as pieces labelled with their split (the same every time: passes 2 and 3 agree)."""
    if plan.single_text:
        yield from _split_by_characters(plan.sources[0].path, plan.split_at)
        return
    flags = iter(plan.doc_is_val)
    for document in iter_documents(plan.sources, text_field):
        split: Split | None = None
        for (text, raw), last in _with_last(document):
            if split is None:  # only non-empty documents got a flag
                split = "val" if next(flags) else "train"
            yield Piece(split, text, len(raw), last)


def _split_by_characters(path: Path, split_at: int) -> Iterator[Piece]:
    """One text file: characters [0, split_at) to train, the rest to val; each part ends a 'document'."""
    seen = 0
    for (text, raw), last in _with_last(read_text(path)):
        if seen >= split_at:
            yield Piece("val", text, len(raw), last)
        elif seen + len(text) <= split_at:
            yield Piece("train", text, len(raw), seen + len(text) == split_at)
        else:
            head, tail = text[:split_at - seen], text[split_at - seen:]
            head_bytes = len(head.encode("utf-8"))
            yield Piece("train", head, head_bytes, True)
            yield Piece("val", tail, len(raw) - head_bytes, last)
        seen += len(text)


# ------------------------------------------------------------------------------------------------
# pass 2: the tokenizer


def _limit_threads(workers: int) -> None:
    """Bound the tokenizers library's thread pool by `workers`.

    `encode_batch` and BPE training run on a Rust (rayon) thread pool. Rayon reads
    RAYON_NUM_THREADS once, when the pool first starts; so this only takes effect if nothing in
    this process has used `tokenizers` in parallel yet, and never overrides a value the user set.
    Otherwise the pool keeps its size (all cores by default). TOKENIZERS_PARALLELISM is left to
    its default (parallel) except for one worker, where we switch parallelism off altogether.
    """
    require(workers >= 1, f"--workers must be at least 1, got {workers}")
    os.environ.setdefault("RAYON_NUM_THREADS", str(workers))
    if workers == 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_tokenizer_spec(spec: str | Path) -> Tokenizer | None:
    """A bundled tokenizer (gpt2), or an existing one if `spec` is a path; None for "char" / "bpe" (trained later)."""
    if str(spec) in ("char", "bpe"):
        return None
    if str(spec) in TOKENIZER_PRESETS:
        return load_tokenizer_preset(str(spec))
    path = Path(spec)
    require(path.exists(), f"--tokenizer {spec} is neither 'char', 'bpe', a bundled tokenizer "
                           f"({', '.join(TOKENIZER_PRESETS)}) nor an existing tokenizer.json "
                           "(or a directory holding one)")
    return Tokenizer.from_file(path)


def train_tokenizer(kind: str, train_texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """Train a tokenizer on a stream of text (the training split only, so val never shapes it)."""
    if kind == "char":
        return Tokenizer.train_char(train_texts)
    return Tokenizer.train_bpe(train_texts, vocab_size)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves the files (and the reads) whenever every id fits; nanoGPT does the same."""
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


# ------------------------------------------------------------------------------------------------
# pass 3: tokenise and write


def _batches(pieces: Iterable[Piece], max_chars: int = BATCH_CHARS) -> Iterator[list[Piece]]:
    """Group pieces into batches of about `max_chars` characters."""
    batch: list[Piece] = []
    chars = 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece.text)
        if chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def encode_pieces(tokenizer: Tokenizer, batch: list[Piece]) -> list[list[int]]:
    """Token ids for each piece, encoded in parallel as ~64K-character parts cut at newlines.

    Parts go to `encode_batch` in groups of about BATCH_CHARS characters: the Rust side keeps
    ~100 bytes per token (offsets, token strings, masks) until the call returns, so the group
    size, not the input size, bounds memory.
    """
    ids: list[list[int]] = [[] for _ in batch]
    group: list[tuple[int, str]] = []  # (index of the piece it belongs to, part)
    chars = 0

    def flush() -> None:
        for (owner, _), part_ids in zip(group, tokenizer.encode_batch([part for _, part in group])):
            ids[owner].extend(part_ids)
        group.clear()

    for i, piece in enumerate(batch):
        for part in iter_text_chunks(piece.text, ENCODE_PART_CHARS):
            group.append((i, part))
            chars += len(part)
            if chars >= BATCH_CHARS:
                flush()
                chars = 0
    flush()
    return ids


def write_tokens(out: Path, pieces: Iterable[Piece], tokenizer: Tokenizer, dtype: np.dtype, *,
                 eos_after_documents: bool) -> dict[str, dict[str, int]]:
    """Append each piece's ids to out/{split}.bin; return per-split token, byte and document counts."""
    stats = {s: {"n_tokens": 0, "n_bytes": 0, "n_documents": 0} for s in SPLITS}
    with ExitStack() as stack:
        files = {s: stack.enter_context(open(out / f"{s}.bin", "ab")) for s in SPLITS}
        for batch in _batches(pieces):
            ids_by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
            for piece, ids in zip(batch, encode_pieces(tokenizer, batch)):
                ids_by_split[piece.split] += ids
                stats[piece.split]["n_bytes"] += piece.n_bytes
                if piece.ends_document:
                    stats[piece.split]["n_documents"] += 1
                    if eos_after_documents:
                        ids_by_split[piece.split].append(tokenizer.eos_id)
            for split, ids in ids_by_split.items():
                np.asarray(ids, dtype=dtype).tofile(files[split])
                stats[split]["n_tokens"] += len(ids)
    return stats


# ------------------------------------------------------------------------------------------------
# the whole thing


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier prepared dataset: the write swaps the whole directory."""
    require(not out_dir.is_file(), f"--out {out_dir} is a file; pass a directory path for the prepared dataset")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        require((out_dir / META_FILE).is_file(),
                f"--out {out_dir} is a non-empty directory that is not a prepared dataset (no {META_FILE}); "
                "preparing would replace it, so choose a new directory or empty it first")


def _progress(pieces: Iterable[Piece], desc: str, total: int | None, enabled: bool) -> Iterator[Piece]:
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=not enabled) as bar:
        for piece in pieces:
            yield piece
            bar.update(piece.n_bytes)


def prepare(inputs: Sequence[str | Path] | str | Path, out_dir: str | Path, *, tokenizer: str | Path = "char",
            vocab_size: int = 512, val_fraction: float = 0.1, text_field: str = "text", workers: int = 2,
            progress: bool = True) -> dict:
    """Tokenise `inputs` into a prepared dataset in `out_dir`; return its meta.json contents.

    Args:
        inputs: text files, .jsonl files, directories of them (recursively, sorted), or bundled
            corpus names such as "tiny_shakespeare".
        out_dir: the dataset directory; written atomically (a killed run leaves no half dataset).
        tokenizer: "char", "bpe" (both trained on the training split), or a tokenizer.json path.
        vocab_size: vocabulary size of a trained BPE tokenizer.
        val_fraction: share of the text held out for validation, in (0, 1).
        text_field: the field holding the text in .jsonl lines.
        workers: threads for the tokenizers library (see `_limit_threads` for when this applies).
        progress: show progress bars on stderr.
    """
    require(0 < val_fraction < 1, f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir)
    _limit_threads(workers)
    given = load_tokenizer_spec(tokenizer)  # before the scan: a bad path should fail fast
    sources = resolve_sources([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    plan = scan(sources, text_field, val_fraction, progress=progress)

    def pieces(desc: str, total: int | None) -> Iterator[Piece]:
        return _progress(iter_pieces(plan, text_field), desc, total, progress)

    if given is None:
        train_texts = (p.text for p in pieces("train tokenizer", None) if p.split == "train")
        tok = train_tokenizer(str(tokenizer), train_texts, vocab_size)
    else:
        tok = given
    require(plan.single_text or tok.eos_id is not None,
            f"tokenizer {tokenizer} has no EOS token to separate documents; use --tokenizer char or bpe")
    dtype = token_dtype(tok.vocab_size)
    meta: dict = {}

    def write(tmp: Path) -> None:
        stats = write_tokens(tmp, pieces("tokenize", plan.n_bytes), tok, dtype,
                             eos_after_documents=not plan.single_text)
        tok.save(tmp)
        meta.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype.name,
            "vocab_size": tok.vocab_size, "tokenizer": tok.describe(), "eos_id": tok.eos_id,
            "tokenizer_source": _tokenizer_source(tokenizer, given),
            "splits": stats,
            "sources": [_describe_input(item) for item in ([inputs] if isinstance(inputs, (str, Path)) else inputs)],
            "n_files": len(sources), "val_fraction": val_fraction, "text_field": text_field,
            **plan.describe(val_fraction),
        })
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    write_atomically(out_dir, write)
    return meta


def _tokenizer_source(spec: str | Path, given: Tokenizer | None) -> str:
    if given is None:
        return "trained on the train split"
    return f"bundled:{spec}" if str(spec) in TOKENIZER_PRESETS else str(Path(spec).resolve())


def _describe_input(item: str | Path) -> str:
    """How meta.json names an input: its absolute path, or "bundled:NAME" (machine-independent)."""
    path = Path(item)
    if not path.exists() and str(item) in bundled_corpora():
        return f"bundled:{item}"
    return str(path.resolve())
