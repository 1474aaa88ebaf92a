"""`gptkit prepare`: text in, memory-mapped token files out.

A prepared dataset is a directory holding `train.bin` and `val.bin` (flat arrays of token ids,
uint16 when the vocabulary fits, else uint32, as in nanoGPT), the `tokenizer.json` that made
them, and `meta.json` describing both (see `TokenDataset`).

Everything streams: text is read in ~1 MB pieces cut at newlines (Parquet files in record batches
of about that size), so memory stays flat however big the input is. That takes three passes over
the input:
  1. scan: check every byte is UTF-8 text and decide the train/val split,
  2. train the tokenizer on the training split (skipped when given a tokenizer.json),
  3. tokenise and append the ids to train.bin / val.bin, in parallel worker processes for big inputs.

The split is deterministic, so preparing twice gives byte-identical files:
  - one plain-text file: the first `1 - val_fraction` of its characters go to train, the rest
    to val (nanoGPT's shakespeare_char split), with no EOS tokens;
  - anything else (directories, .jsonl, .parquet, several files) is a stream of documents: a
    document goes to val when a hash of its text falls below `val_fraction`, and every document
    is followed by the EOS token so the model sees where documents end.

A `document_filter` (`gptkit prepare --filter-moderation`: `gptkit.safety.policy.DataFilter`) sees every
document in the scan and may leave it out of both splits; what it leaves out is counted in meta.json and
listed, one JSON line per document (source, index, reason, first characters), in OUT/filtered.jsonl.

The number of workers does not change the output either: each piece of text is tokenised on its
own, wherever it runs, and the results are written in input order. The dataset is built in a work
directory beside OUT and renamed into place at the end; a prepare that is killed continues from
where it stopped with `--resume` (see `gptkit.data.resume`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import sys
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, NamedTuple, Protocol, TypeVar

import numpy as np
import tokenizers
from tqdm import tqdm

from gptkit.data.dataset import FORMAT, FORMAT_VERSION, META_FILE, SPLITS, TOKENIZER_FILE, TokenDataset
from gptkit.data.parallel import cpu_cores, ordered_map
from gptkit.data.resume import PLAN_FILE, Progress, WorkDir, fingerprint
from gptkit.data.tokenizers import TOKENIZER_PRESETS, load_tokenizer_preset
from gptkit.errors import GptkitError, require
from gptkit.tokenizer import ROLES_FILE, Tokenizer, iter_text_chunks
from gptkit.version import __version__

if TYPE_CHECKING:  # imported when a Parquet file is read: most runs never need it
    import pyarrow.parquet as pq

CORPORA_DIR = Path(__file__).resolve().parent / "corpora"

READ_BYTES = 1 << 20  # read input in ~1 MB pieces
ENCODE_PART_CHARS = 1 << 16  # ...and hand encode_batch 64K-character parts, so every core gets work
BATCH_CHARS = 1 << 18  # characters per encode_batch call: bounds the Rust side's per-token memory
# Below this much text, tokenise in this process (with the tokenizers library's threads): spawning
# worker processes costs a second or two, more than they would save.
POOL_MIN_BYTES = 8 << 20

Split = Literal["train", "val"]
SourceKind = Literal["text", "jsonl", "parquet"]
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------
# bundled corpora


CORPUS_SUFFIXES = (".txt", ".txt.xz")  # the larger bundled corpora ship xz-compressed


def bundled_corpora() -> list[str]:
    """Names of the corpora shipped inside the package."""
    return sorted({p.name.split(".", 1)[0] for p in CORPORA_DIR.iterdir() if p.name.endswith(CORPUS_SUFFIXES)})


def bundled_corpus_path(name: str = "tiny_shakespeare") -> Path:
    """Path of a bundled corpus (see gptkit/data/corpora/PROVENANCE.md for where each comes from)."""
    for suffix in CORPUS_SUFFIXES:
        if (path := CORPORA_DIR / f"{name}{suffix}").is_file():
            return path
    raise GptkitError(f"no bundled corpus named {name!r}; available: {', '.join(bundled_corpora()) or 'none'}")


# ------------------------------------------------------------------------------------------------
# reading: UTF-8 text, .jsonl and .parquet, in pieces


SUFFIX_KINDS: dict[str, SourceKind] = {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet",
                                       ".txt.gz": "text", ".txt.xz": "text"}
COMPRESSED_OPENERS = {".gz": gzip.open, ".xz": lzma.open}


def source_kind(path: Path) -> SourceKind | None:
    """What a file holds, by its name: text (also gzip/xz-compressed .txt.gz, .txt.xz), jsonl or parquet."""
    name = path.name.lower()
    return next((kind for suffix, kind in SUFFIX_KINDS.items() if name.endswith(suffix)), None)


def open_binary(path: Path) -> IO[bytes]:
    """Open a file for reading bytes, decompressing .gz and .xz files as they are read."""
    opener = COMPRESSED_OPENERS.get(path.suffix.lower())
    return opener(path, "rb") if opener is not None else open(path, "rb")  # type: ignore[return-value]


@dataclass(frozen=True)
class Source:
    path: Path
    kind: SourceKind


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
    with open_binary(path) as f:
        offset, carry = 0, b""
        while True:
            try:
                block = f.read(read_bytes)
            except (OSError, EOFError, lzma.LZMAError) as e:  # a corrupt or truncated .gz / .xz file
                raise GptkitError(f"{path} could not be decompressed ({e}); is it a complete "
                                  f"{path.suffix} file?") from None
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


def read_parquet(path: Path, text_field: str) -> Iterator[str]:
    """The non-empty strings of the `text_field` column of a Parquet file, one row at a time.

    Only that column is read, in record batches of about READ_BYTES, so memory stays flat (pyarrow
    holds at most one row group's compressed column chunk). Null rows are skipped like empty
    strings: in a typed string column, null is how "no text" is stored (the schema already
    guarantees that every value is a string, which jsonl has to check line by line).
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise GptkitError(f"reading {path} needs pyarrow: pip install pyarrow") from None

    def unreadable(e: Exception) -> GptkitError:
        return GptkitError(f"{path} is not a readable Parquet file: {' '.join(str(e).split())}")

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise unreadable(e) from None
    schema = parquet.schema_arrow
    require(text_field in schema.names, f"{path} has no column \"{text_field}\"; its columns are {schema.names}: "
                                        "pass --text-field with the one holding the text")
    column_type = schema.field(text_field).type
    value_type = column_type.value_type if pa.types.is_dictionary(column_type) else column_type
    require(pa.types.is_string(value_type) or pa.types.is_large_string(value_type)
            or getattr(pa.types, "is_string_view", lambda _: False)(value_type),
            f"{path}: column \"{text_field}\" holds {column_type}, expected strings; pass --text-field with the "
            "column holding the text")
    try:
        for batch in parquet.iter_batches(batch_size=_parquet_batch_rows(parquet), columns=[text_field],
                                          use_threads=False):  # the cores are busy tokenising
            for text in batch.column(0).to_pylist():
                if text:
                    yield text
    except (pa.ArrowException, OSError) as e:
        raise unreadable(e) from None
    except UnicodeDecodeError as e:
        raise GptkitError(f"{path}: column \"{text_field}\" holds invalid UTF-8 ({e.reason})") from None


def _parquet_batch_rows(parquet: pq.ParquetFile) -> int:
    """Rows per record batch for ~READ_BYTES of data: few rows of long documents, many of short ones."""
    meta = parquet.metadata
    if meta.num_rows == 0:
        return 1024
    # All columns' size, not just the text's: an overestimate only makes batches smaller.
    row_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / meta.num_rows
    return int(min(65536, max(16, READ_BYTES // max(1.0, row_bytes))))


def iter_source_documents(source: Source, text_field: str) -> Iterator[Iterator[tuple[str, bytes]]]:
    """Each document of one source as an iterator of (text, raw bytes) pieces.

    A text file is one document; a .jsonl line or a Parquet row is another. A document's pieces
    must be consumed before asking for the next document. An empty text file yields an empty
    document; callers skip those.
    """
    if source.kind == "text":
        yield read_text(source.path)
        return
    rows = read_jsonl(source.path, text_field) if source.kind == "jsonl" else read_parquet(source.path, text_field)
    for text in rows:
        yield iter([(text, text.encode("utf-8"))])


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
        require(path.exists(), f"input {item} does not exist; pass a text file, a .jsonl or .parquet file, a "
                               f"directory of them, or a bundled corpus name ({', '.join(bundled_corpora())})")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if source_kind(p) is not None and p.is_file()
                           and not _is_hidden(p, path))
            require(files, f"input directory {path} holds no .txt, .txt.gz, .txt.xz, .jsonl or .parquet files")
            sources += [Source(p, source_kind(p)) for p in files]  # type: ignore[misc]
        else:  # a file named on the command line is text unless its name says otherwise
            sources.append(Source(path, source_kind(path) or "text"))
    return sources


# ------------------------------------------------------------------------------------------------
# pass 1: scan and split


DROPPED = 2
"""The split flag (`SplitPlan.doc_is_val`) of a document the document filter left out."""
FILTER_LOG = "filtered.jsonl"


class DocumentFilter(Protocol):
    """Decides which documents to leave out, e.g. `gptkit.safety.policy.DataFilter` (moderation)."""

    description: str
    """What it leaves out, for meta.json and messages."""

    def __call__(self, text: str) -> str | None:
        """Why a document containing `text` (a document or a piece of one) goes, or None to keep it."""
        ...


@dataclass
class SplitPlan:
    """Which text goes where; decided by one streaming pass over the input."""

    sources: list[Source]
    single_text: bool  # one plain-text file: split by characters, no EOS
    n_chars: int = 0
    n_bytes: int = 0
    split_at: int = 0  # single_text: characters before this go to train
    doc_is_val: bytearray = field(default_factory=bytearray)  # documents: a flag per non-empty one (DROPPED: left out)
    first_doc: array = field(default_factory=lambda: array("q"))  # per source: index of its first document's flag
    n_filtered: int = 0  # documents the document filter left out (not in n_chars / n_bytes)
    filtered_bytes: int = 0

    def describe(self, val_fraction: float) -> dict:
        if self.single_text:
            return {"split_rule": "characters", "split_at_char": self.split_at, "n_chars": self.n_chars,
                    "split_rule_description": f"text[:int(n_chars * (1 - {val_fraction}))] -> train, "
                                              "the rest -> val (nanoGPT's shakespeare_char split); no EOS"}
        return {"split_rule": "document_hash", "n_chars": self.n_chars,
                "split_rule_description": f"a document goes to val when blake2b-64(its UTF-8 text) / 2**64 < "
                                          f"{val_fraction} (the last document if that leaves val empty); "
                                          "EOS after every document"}

    def save(self, path: Path) -> None:
        """Write the plan (not the sources: a resumed run resolves the same ones) atomically."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, single_text=self.single_text, n_chars=self.n_chars, n_bytes=self.n_bytes,
                     split_at=self.split_at, doc_is_val=np.frombuffer(self.doc_is_val, np.uint8),
                     first_doc=np.frombuffer(self.first_doc, np.int64), n_filtered=self.n_filtered,
                     filtered_bytes=self.filtered_bytes)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, sources: list[Source]) -> SplitPlan:
        with np.load(path) as saved:
            return cls(sources, single_text=bool(saved["single_text"]), n_chars=int(saved["n_chars"]),
                       n_bytes=int(saved["n_bytes"]), split_at=int(saved["split_at"]),
                       doc_is_val=bytearray(saved["doc_is_val"].tobytes()),
                       first_doc=array("q", saved["first_doc"].tobytes()),
                       n_filtered=int(saved["n_filtered"]) if "n_filtered" in saved else 0,
                       filtered_bytes=int(saved["filtered_bytes"]) if "filtered_bytes" in saved else 0)


def _hash_fraction(h: hashlib.blake2b) -> float:
    """A hash digest as a number in [0, 1): stable across runs, machines and Python versions."""
    return int.from_bytes(h.digest(), "big") / 2.0 ** (8 * h.digest_size)


def _names(sources: list[Source]) -> str:
    return ", ".join(str(s.path) for s in sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")


def scan(sources: list[Source], text_field: str, val_fraction: float, *, progress: bool = True,
         document_filter: DocumentFilter | None = None, filter_log: IO[str] | None = None) -> SplitPlan:
    """Read everything once: validate it (so errors come before any slow work) and decide the split.

    document_filter: documents it gives a reason for are left out (DROPPED), each listed in `filter_log`.
    """
    plan = SplitPlan(sources, single_text=len(sources) == 1 and sources[0].kind == "text")
    names = _names(sources)
    require(document_filter is None or not plan.single_text,
            f"{names} is one plain-text file, which is one document: a document filter would keep or drop all of it; "
            "give the documents as a .jsonl file (one a line) or a directory of files")
    with tqdm(desc="scan", unit="B", unit_scale=True, file=sys.stderr, disable=not progress) as bar:
        for source in sources:
            plan.first_doc.append(len(plan.doc_is_val))
            for document in iter_source_documents(source, text_field):
                h, n_bytes, n_chars, reason, head = hashlib.blake2b(digest_size=8), 0, 0, None, ""
                for text, raw in document:
                    h.update(raw)  # raw bytes == the text's UTF-8, so all kinds of documents hash alike
                    n_bytes += len(raw)
                    n_chars += len(text)
                    bar.update(len(raw))
                    if document_filter is not None and reason is None and text:
                        head = head or text[:80]
                        reason = document_filter(text)
                if reason is not None:
                    if filter_log is not None:
                        filter_log.write(json.dumps({"source": str(source.path),
                                                     "document": len(plan.doc_is_val) - plan.first_doc[-1],
                                                     "reason": reason, "bytes": n_bytes, "start": head},
                                                    ensure_ascii=False) + "\n")
                    plan.doc_is_val.append(DROPPED)
                    plan.n_filtered += 1
                    plan.filtered_bytes += n_bytes
                    continue
                plan.n_bytes += n_bytes
                plan.n_chars += n_chars
                if n_bytes and not plan.single_text:
                    plan.doc_is_val.append(_hash_fraction(h) < val_fraction)
    require(plan.n_chars > 0, f"no text to prepare: {names} {'is' if len(sources) == 1 else 'are'} empty"
                              + (f" once the filter left out {plan.n_filtered} document(s)" if plan.n_filtered else ""))
    if plan.single_text:
        plan.split_at = int(plan.n_chars * (1 - val_fraction))
        require(0 < plan.split_at < plan.n_chars,
                f"{names} has only {plan.n_chars} characters: too few to split into train and val with "
                f"val_fraction={val_fraction}")
    else:
        kept = [i for i, flag in enumerate(plan.doc_is_val) if flag != DROPPED]
        if not any(plan.doc_is_val[i] for i in kept):  # tiny inputs: make sure val is not empty
            plan.doc_is_val[kept[-1]] = True
        require(not all(plan.doc_is_val[i] for i in kept),
                f"{names} hold{'s' if len(sources) == 1 else ''} {len(kept)} document(s), all of them "
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


class Position(NamedTuple):
    """A place in the stream of pieces: after the first `pieces` pieces of source number `source`."""

    source: int
    pieces: int


def source_pieces(plan: SplitPlan, index: int, text_field: str) -> Iterator[Piece]:
    """One source's pieces, labelled with their split (the same every time: all passes agree)."""
    if plan.single_text:
        yield from _split_by_characters(plan.sources[0].path, plan.split_at)
        return
    doc = plan.first_doc[index]
    for document in iter_source_documents(plan.sources[index], text_field):
        split: Split | None = None
        dropped = False
        for (text, raw), last in _with_last(document):
            if split is None and not dropped:  # only non-empty documents got a flag
                dropped = plan.doc_is_val[doc] == DROPPED
                split = "val" if plan.doc_is_val[doc] else "train"
                doc += 1
            if not dropped:
                yield Piece(split, text, len(raw), last)


def iter_pieces(plan: SplitPlan, text_field: str, start: Position = Position(0, 0)) -> Iterator[tuple[Position, Piece]]:
    """The input again from `start`, as pieces, each with the position just after it.

    A resumed run re-reads the source it stopped in and skips the pieces already written:
    cheap next to tokenising them, and it needs no format-specific seeking.
    """
    for index in range(start.source, len(plan.sources)):
        skip = start.pieces if index == start.source else 0
        for n, piece in enumerate(source_pieces(plan, index, text_field), start=1):
            if n > skip:
                yield Position(index, n), piece


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
    """Bound the tokenizers library's thread pool in this process by `workers`.

    `encode_batch` and BPE training run on a Rust (rayon) thread pool. Rayon reads
    RAYON_NUM_THREADS once, when the pool first starts; so this only takes effect if nothing in
    this process has used `tokenizers` in parallel yet, and never overrides a value the user set.
    Otherwise the pool keeps its size (all cores by default). TOKENIZERS_PARALLELISM is left to
    its default (parallel) except for one worker, where we switch parallelism off altogether.
    Worker processes (big inputs) switch it off too: there, the processes are the parallelism.
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


class Batch(NamedTuple):
    end: Position  # where the stream stands once these pieces are written
    pieces: list[Piece]


def _batches(pieces: Iterable[tuple[Position, Piece]], max_chars: int | None = None) -> Iterator[Batch]:
    """Group pieces into batches of about `max_chars` (default BATCH_CHARS) characters."""
    max_chars = max_chars or BATCH_CHARS
    batch: list[Piece] = []
    chars = 0
    for position, piece in pieces:
        batch.append(piece)
        chars += len(piece.text)
        if chars >= max_chars:
            yield Batch(position, batch)
            batch, chars = [], 0
    if batch:
        yield Batch(position, batch)


def encode_pieces(tokenizer: Tokenizer, batch: list[Piece]) -> list[list[int]]:
    """Token ids for each piece, encoded as ~64K-character parts cut at newlines.

    Parts go to `encode_batch` in groups of about BATCH_CHARS characters: the Rust side keeps
    ~100 bytes per token (offsets, token strings, masks) until the call returns, so the group
    size, not the input size, bounds memory. A piece's ids depend only on its own text, so how
    pieces are grouped (and by which process) never changes them.
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


class Encoded(NamedTuple):
    """A batch's token ids per split, ready to append, and the counts that go with them."""

    ids: dict[str, np.ndarray]
    n_bytes: dict[str, int]
    n_documents: dict[str, int]


def encode_batch(tokenizer: Tokenizer, pieces: list[Piece], dtype: np.dtype, eos_id: int | None) -> Encoded:
    """Tokenise a batch; with `eos_id`, put EOS after every document."""
    ids: dict[str, list[int]] = {s: [] for s in SPLITS}
    n_bytes, n_documents = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    for piece, piece_ids in zip(pieces, encode_pieces(tokenizer, pieces)):
        ids[piece.split] += piece_ids
        n_bytes[piece.split] += piece.n_bytes
        if piece.ends_document:
            n_documents[piece.split] += 1
            if eos_id is not None:
                ids[piece.split].append(eos_id)
    # numpy arrays, not lists: a worker sends them back to the parent as compact bytes.
    return Encoded({s: np.asarray(v, dtype=dtype) for s, v in ids.items()}, n_bytes, n_documents)


# What each worker process encodes with, loaded once by `_init_worker`.
_worker_state: tuple[Tokenizer, np.dtype, int | None] | None = None


def _init_worker(tokenizer_dir: str, dtype_name: str, eos_id: int | None) -> None:
    global _worker_state
    # One worker per core already: threads inside each would only fight over the same cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _worker_state = (Tokenizer.from_file(tokenizer_dir), np.dtype(dtype_name), eos_id)


def _encode_in_worker(pieces: list[Piece]) -> Encoded:
    assert _worker_state is not None, "_init_worker did not run"
    tokenizer, dtype, eos_id = _worker_state
    return encode_batch(tokenizer, pieces, dtype, eos_id)


def encode_batches(batches: Iterable[Batch], tokenizer: Tokenizer, dtype: np.dtype, eos_id: int | None, *,
                   processes: int, tokenizer_dir: Path) -> Iterator[tuple[Position, Encoded]]:
    """Each batch's end position and its tokens, in input order; with `processes` > 1, encoded by worker processes."""
    items = ((batch.end, batch.pieces) for batch in batches)
    if processes > 1:
        yield from ordered_map(_encode_in_worker, items, workers=processes, initializer=_init_worker,
                               initargs=(str(tokenizer_dir), dtype.name, eos_id))
    else:
        for end, pieces in items:
            yield end, encode_batch(tokenizer, pieces, dtype, eos_id)


def write_tokens(work: WorkDir, encoded: Iterable[tuple[Position, Encoded]], progress: Progress,
                 bar: tqdm) -> None:
    """Append each batch's ids to the work dir's train.bin / val.bin, recording after every batch how far they go."""
    started, new_tokens = time.monotonic(), 0
    with ExitStack() as stack:
        files = {s: stack.enter_context(open(work.token_file(s), "ab")) for s in SPLITS}
        for position, batch in encoded:
            for split in SPLITS:
                batch.ids[split].tofile(files[split])
                counts = progress.splits[split]
                counts["n_tokens"] += len(batch.ids[split])
                counts["n_bytes"] += batch.n_bytes[split]
                counts["n_documents"] += batch.n_documents[split]
                new_tokens += len(batch.ids[split])
            for f in files.values():  # into the OS before progress.json says so, or a kill could lose them
                f.flush()
            progress.source, progress.pieces = position
            work.save(progress)
            bar.update(sum(batch.n_bytes.values()))
            rate = new_tokens / max(time.monotonic() - started, 1e-9)
            bar.set_postfix_str(f"{tqdm.format_sizeof(rate)}tokens/s", refresh=False)


# ------------------------------------------------------------------------------------------------
# the whole thing


DATASET_FILES = ("train.bin", "val.bin", TOKENIZER_FILE, ROLES_FILE, META_FILE)


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


def _request(sources: list[Source], tokenizer: str | Path, vocab_size: int, val_fraction: float,
             text_field: str, document_filter: DocumentFilter | None = None) -> dict:
    """What determines the output bytes (not --workers: it does not change them), for `--resume` to check."""
    spec = str(tokenizer)
    tokenizer_file = None
    if spec not in ("char", "bpe", *TOKENIZER_PRESETS):
        path = Path(spec) / TOKENIZER_FILE if Path(spec).is_dir() else Path(spec)
        tokenizer_file = [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]
    options = {"tokenizer": spec, "tokenizer_file": tokenizer_file, "vocab_size": vocab_size,
               "val_fraction": val_fraction, "text_field": text_field, "read_bytes": READ_BYTES,
               "encode_part_chars": ENCODE_PART_CHARS, "gptkit": __version__,
               "tokenizers": tokenizers.__version__,
               "filter": document_filter.description if document_filter is not None else None}
    return fingerprint((s.path for s in sources), options)


def prepare(inputs: Sequence[str | Path] | str | Path, out_dir: str | Path, *, tokenizer: str | Path = "char",
            vocab_size: int = 512, val_fraction: float = 0.1, text_field: str = "text", workers: int | None = None,
            resume: bool = False, progress: bool = True, document_filter: DocumentFilter | None = None) -> dict:
    """Tokenise `inputs` into a prepared dataset in `out_dir`; return its meta.json contents.

    Args:
        inputs: text files, .jsonl files, .parquet files, directories of them (recursively,
            sorted), or bundled corpus names such as "tiny_shakespeare".
        out_dir: the dataset directory; written atomically (a killed run leaves no half dataset).
        tokenizer: "char", "bpe" (both trained on the training split), or a tokenizer.json path.
        vocab_size: vocabulary size of a trained BPE tokenizer.
        val_fraction: share of the text held out for validation, in (0, 1).
        text_field: the field (.jsonl) or column (.parquet) holding the text.
        workers: processes that tokenise in parallel (default: one per CPU core). Inputs under
            POOL_MIN_BYTES are tokenised in this process with that many threads instead. The
            output does not depend on it.
        resume: continue the unfinished prepare of the same inputs into `out_dir` (one that was
            killed or interrupted) instead of starting over; see `gptkit.data.resume`.
        progress: show progress bars and notes on stderr.
        document_filter: leaves documents out (`gptkit.safety.policy.DataFilter`: moderation); they are counted
            in meta.json ("filtered") and listed in OUT/filtered.jsonl. Not for a single plain-text file.
    """
    require(0 < val_fraction < 1, f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    workers = cpu_cores() if workers is None else workers
    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir)
    _limit_threads(workers)
    given = load_tokenizer_spec(tokenizer)  # before the scan: a bad path should fail fast
    input_list = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    sources = resolve_sources(input_list)

    def say(message: str) -> None:
        if progress:
            tqdm.write(f"gptkit prepare: {message}", file=sys.stderr)

    work, state = WorkDir.open(out_dir, _request(sources, tokenizer, vocab_size, val_fraction, text_field,
                                                 document_filter), resume=resume, say=say)
    try:
        plan = _scan_once(work, state, sources, text_field, val_fraction, progress, document_filter)
        if document_filter is not None:
            say(f"left out {plan.n_filtered:,} document(s) ({plan.filtered_bytes:,} bytes) with "
                f"{document_filter.description}; they are listed in {out_dir / FILTER_LOG}")
        tok = _tokenizer_once(work, state, plan, tokenizer, given, vocab_size, text_field, progress)
        dtype = token_dtype(tok.vocab_size)
        work.cut_token_files(state, dtype.itemsize)
        processes = workers if workers > 1 and plan.n_bytes >= POOL_MIN_BYTES else 1
        batches = _batches(iter_pieces(plan, text_field, Position(state.source, state.pieces)))
        encoded = encode_batches(batches, tok, dtype, None if plan.single_text else tok.eos_id,
                                 processes=processes, tokenizer_dir=work.path)
        with tqdm(total=plan.n_bytes, initial=state.n_bytes, desc="tokenize", unit="B", unit_scale=True,
                  file=sys.stderr, disable=not progress) as bar:
            write_tokens(work, encoded, state, bar)
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype.name,
            "vocab_size": tok.vocab_size, "tokenizer": tok.describe(), "eos_id": tok.eos_id,
            "tokenizer_source": _tokenizer_source(tokenizer),
            "splits": state.splits,
            "sources": [_describe_input(item) for item in input_list],
            "n_files": len(sources), "val_fraction": val_fraction, "text_field": text_field,
            **plan.describe(val_fraction),
        }
        if document_filter is not None:
            meta["filtered"] = {"documents": plan.n_filtered, "bytes": plan.filtered_bytes,
                                "filter": document_filter.description, "log": FILTER_LOG}
        (work.path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        work.publish(out_dir, DATASET_FILES + ((FILTER_LOG,) if document_filter is not None else ()))
    except GptkitError:
        work.remove()  # the input needs fixing, which a resume could not use anyway
        raise
    except KeyboardInterrupt:
        say(f"interrupted; the work so far is kept in {work.path}: rerun the same command with --resume to continue")
        raise
    return meta


def _scan_once(work: WorkDir, state: Progress, sources: list[Source], text_field: str, val_fraction: float,
               progress: bool, document_filter: DocumentFilter | None = None) -> SplitPlan:
    """Pass 1, or its saved result when resuming."""
    if state.plan_saved:
        return SplitPlan.load(work.path / PLAN_FILE, sources)
    if document_filter is None:
        plan = scan(sources, text_field, val_fraction, progress=progress)
    else:
        with open(work.path / FILTER_LOG, "w", encoding="utf-8") as log:
            plan = scan(sources, text_field, val_fraction, progress=progress, document_filter=document_filter,
                        filter_log=log)
    plan.save(work.path / PLAN_FILE)
    state.plan_saved = True
    work.save(state)
    return plan


def _tokenizer_once(work: WorkDir, state: Progress, plan: SplitPlan, spec: str | Path, given: Tokenizer | None,
                    vocab_size: int, text_field: str, progress: bool) -> Tokenizer:
    """Pass 2 (or the given tokenizer), saved to the work dir before any token is written; reloaded when resuming."""
    if state.tokenizer_saved:
        return Tokenizer.from_file(work.path)
    if given is None:
        pieces = (piece for _, piece in iter_pieces(plan, text_field))
        train_texts = (p.text for p in _progress(pieces, "train tokenizer", None, progress) if p.split == "train")
        tok = train_tokenizer(str(spec), train_texts, vocab_size)
    else:
        tok = given
    require(plan.single_text or tok.eos_id is not None,
            f"tokenizer {spec} has no EOS token to separate documents; use --tokenizer char or bpe")
    tok.save(work.path)  # the workers load it from here, and so does a resumed run
    state.tokenizer_saved = True
    work.save(state)
    return tok


def _tokenizer_source(spec: str | Path) -> str:
    if str(spec) in ("char", "bpe"):
        return "trained on the train split"
    return f"bundled:{spec}" if str(spec) in TOKENIZER_PRESETS else str(Path(spec).resolve())


def _describe_input(item: str | Path) -> str:
    """How meta.json names an input: its absolute path, or "bundled:NAME" (machine-independent)."""
    path = Path(item)
    if not path.exists() and str(item) in bundled_corpora():
        return f"bundled:{item}"
    return str(path.resolve())


def resolve_dataset(data: str, prepare_dir: Path, *, tokenizer: str, vocab_size: int) -> TokenDataset:
    """A prepared dataset: `data` itself if it is one, else `data` prepared into `prepare_dir` (reused if done)."""
    if (Path(data) / "meta.json").is_file():
        return TokenDataset(data)
    # Remember what was asked for, so a rerun reuses the prepared data instead of preparing it again;
    # the files' sizes and times are part of it, so an edited corpus is prepared afresh.
    files = fingerprint((s.path for s in resolve_sources([data])), {})["files_sha256"]
    wanted = json.dumps({"data": data, "tokenizer": tokenizer, "vocab_size": vocab_size, "files": files})
    request_file = prepare_dir / "request.json"
    if (prepare_dir / "meta.json").is_file() and request_file.is_file() and request_file.read_text() == wanted:
        return TokenDataset(prepare_dir)
    prepare([data], prepare_dir, tokenizer=tokenizer, vocab_size=vocab_size)
    request_file.write_text(wanted)
    return TokenDataset(prepare_dir)
