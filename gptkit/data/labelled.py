"""Labelled text for classification: read CSV/TSV/JSONL, split by label, subsample, bundled sets.

    from gptkit.data.labelled import bundled_labelled, read_labelled, stratified_split, subsample_stratified
    data = read_labelled(bundled_labelled("sentiment"))          # 4,000 sentences, labels ["-1", "1"]
    train, val, test = stratified_split(data, val_fraction=0.1, test_fraction=0.1, seed=0)
    few, pool = subsample_stratified(train, 0.05, seed=0)       # 5% labelled, the rest an unlabelled pool
    train.texts[0], train.row_labels[0], train.label_ids[0]     # a text, its label, the label's index

A `LabelledData` keeps its rows in file order, each row's label as a string, and the label vocabulary
(`labels`, sorted: numerically when every label is an integer, else alphabetically). A label's id is its
index in `labels`. Splits and subsets keep their parent's vocabulary, so ids mean the same thing in
train, val and test even when a split lacks a label.

Formats, chosen by extension (or `format=`): `.csv`, `.tsv`/`.tab` (a header row names the columns) and
`.jsonl`/`.ndjson` (one JSON object per line; integer labels become strings). Files are read whole:
labelled sets for classification are small. Every problem a user can cause (a missing column, an
empty text, a malformed line, a non-UTF-8 byte) is a `GptkitError` naming the file and the line.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from gptkit.errors import GptkitError, require
from gptkit.tokenizer import Tokenizer

LABELLED_DIR = Path(__file__).resolve().parent / "labelled"

# name -> file in LABELLED_DIR (see PROVENANCE.md there for sources, licences and selection rules).
BUNDLED_LABELLED: dict[str, str] = {
    "sentiment": "sentence_polarity.csv",  # 4,000 movie-review sentences, label 1 / -1 (Pang & Lee)
    "fortunes8": "fortunes8.jsonl",  # 1,280 fortune cookies, 8 topics x 160
    "chatterbot": "chatterbot_en.jsonl",  # 898 English conversations (chat data: see gptkit.data.chat)
    "jargon": "jargon_short.jsonl",  # 913 Jargon File term -> definition entries (chat data)
}

Format = Literal["csv", "tsv", "jsonl"]
EXTENSIONS: dict[str, Format] = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# A file with at least this many rows whose every row has its own label was almost surely read with the
# wrong label column (a text or id column): there would be nothing to learn.
_DISTINCT_LABELS_CHECK_MIN_ROWS = 10


def bundled_labelled_names() -> list[str]:
    """Names of the labelled/chat data sets shipped inside the package."""
    return sorted(BUNDLED_LABELLED)


def bundled_labelled(name: str) -> Path:
    """Path of a bundled data set: "sentiment", "fortunes8", "chatterbot" or "jargon"."""
    require(name in BUNDLED_LABELLED,
            f"no bundled labelled data set named {name!r}; available: {', '.join(bundled_labelled_names())}")
    return LABELLED_DIR / BUNDLED_LABELLED[name]


# ------------------------------------------------------------------------------------------------
# the data


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Distinct labels, sorted numerically when all are integers ("-1" < "1" < "10"), else as strings."""
    distinct = set(labels)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


@dataclass(frozen=True)
class LabelledData:
    """Texts with one label each, and the label vocabulary (`labels`; a label's id is its index there)."""

    texts: list[str]
    row_labels: list[str]  # the label of each row, as a string
    labels: list[str]  # the vocabulary
    source: str = ""  # where the rows came from, for messages

    def __post_init__(self) -> None:
        require(len(self.texts) == len(self.row_labels),
                f"{len(self.texts)} texts but {len(self.row_labels)} labels: give one label per text")
        require(len(set(self.labels)) == len(self.labels), f"the label vocabulary repeats a label: {self.labels}")
        unknown = sorted(set(self.row_labels) - set(self.labels))
        require(not unknown, f"{self._where()}label(s) {unknown} are not in the label vocabulary {self.labels}")

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], labels: Sequence[str] | None = None,
                   source: str = "") -> "LabelledData":
        """From (text, label) pairs; the vocabulary is `labels` or the sorted distinct labels."""
        pairs = list(pairs)
        texts, row_labels = [t for t, _ in pairs], [str(label) for _, label in pairs]
        return cls(texts, row_labels, list(labels) if labels is not None else sort_labels(row_labels), source)

    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    @cached_property
    def label_ids(self) -> list[int]:
        """Each row's label as its index in `labels`."""
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[label] for label in self.row_labels]

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:  # the rows themselves would flood a REPL
        return f"LabelledData({len(self)} rows, labels={self.labels}, source={self.source!r})"

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(text, label) pairs."""
        return iter(zip(self.texts, self.row_labels))

    def label_counts(self) -> dict[str, int]:
        """Rows per label, for every label of the vocabulary (0 for an absent one), in vocabulary order."""
        counts = dict.fromkeys(self.labels, 0)
        for label in self.row_labels:
            counts[label] += 1
        return counts

    def subset(self, indices: Iterable[int]) -> "LabelledData":
        """The rows at `indices` (in that order), with the same vocabulary."""
        indices = list(indices)
        return LabelledData([self.texts[i] for i in indices], [self.row_labels[i] for i in indices],
                            list(self.labels), self.source)

    def with_labels(self, labels: Sequence[str]) -> "LabelledData":
        """The same rows over another vocabulary (which must hold every row's label), e.g. to align files."""
        return LabelledData(list(self.texts), list(self.row_labels), list(labels), self.source)


# ------------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class Row:
    """A row of a CSV/TSV/JSONL file: its values by column, and the line it starts on."""

    line: int  # 1-based line where the row starts, for messages
    values: dict[str, Any]


def read_labelled(path: str | Path, text_column: str = "text", label_column: str = "label", *,
                  format: Format | None = None, labels: Sequence[str] | None = None) -> LabelledData:
    """Read a labelled CSV, TSV or JSONL file.

    `format` overrides the extension; `labels` fixes the vocabulary (its order gives the ids), so that
    separately read train and test files share ids, and a row with a label outside it is an error.
    """
    path = Path(path)
    require(path.is_file(), f"no labelled data file at {path}")
    kind = format or _format_of(path)
    require(kind in ("csv", "tsv", "jsonl"), f"unknown format {kind!r}; use csv, tsv or jsonl")
    text = read_utf8(path)
    rows = list(jsonl_rows(path, text) if kind == "jsonl" else _delimited_rows(path, text, kind))
    require(rows, f"{path} has no rows" + (" (only a header)" if kind != "jsonl" and text.strip() else ""))
    texts, row_labels = _columns(path, rows, text_column, label_column)
    if labels is not None:
        outside = sorted(set(row_labels) - set(labels))
        if outside:
            line = rows[row_labels.index(outside[0])].line
            raise GptkitError(f"{path} line {line}: label {outside[0]!r} is not one of the given labels {list(labels)}")
    vocabulary = list(labels) if labels is not None else sort_labels(row_labels)
    distinct = len(set(row_labels))
    require(len(rows) < _DISTINCT_LABELS_CHECK_MIN_ROWS or distinct < len(rows),
            f"{path}: every one of its {len(rows)} rows has a different label, so there is nothing to learn; "
            f"is label_column={label_column!r} the right column? columns: {', '.join(rows[0].values)}")
    return LabelledData(texts, row_labels, vocabulary, str(path))


def _format_of(path: Path) -> Format:
    suffix = path.suffix.lower()
    require(suffix in EXTENSIONS,
            f"cannot tell the format of {path} from its extension {suffix or '(none)'!r}: use one of "
            f"{', '.join(EXTENSIONS)} or pass format='csv'|'tsv'|'jsonl'")
    return EXTENSIONS[suffix]


def read_utf8(path: Path) -> str:
    """The file as text (a UTF-8 BOM is dropped), with an error naming the line of a non-UTF-8 byte."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise GptkitError(f"{path} line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); convert the file to UTF-8 "
                          f"first, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`") from None


def _delimited_rows(path: Path, text: str, kind: str) -> Iterator[Row]:
    delimiter = "\t" if kind == "tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        previous_end = reader.line_num
        for fields in reader:
            start, previous_end = previous_end + 1, reader.line_num  # a quoted field may span lines
            if not fields:  # a blank line
                continue
            require(len(fields) == len(header),
                    f"{path} line {start}: {len(fields)} fields but the header has {len(header)} "
                    f"({', '.join(header)}); quote fields that contain {'tabs' if kind == 'tsv' else 'commas'}")
            yield Row(start, dict(zip(header, fields)))
    except csv.Error as e:
        raise GptkitError(f"{path} line {reader.line_num}: malformed {kind.upper()}: {e}") from None


def jsonl_rows(path: Path, text: str) -> Iterator[Row]:
    """The JSON objects of JSONL `text` (read from `path`), skipping blank lines; errors name the line."""
    # Split on "\n" only: str.splitlines would also split on U+2028 etc., which JSON strings may hold raw.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptkitError(f"{path} line {number}: malformed JSON ({e.msg} at column {e.colno})") from None
        require(isinstance(value, dict), f"{path} line {number}: expected a JSON object, found {type(value).__name__}")
        yield Row(number, value)


def _columns(path: Path, rows: list[Row], text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for number, row in enumerate(rows, start=1):
        where = f"{path} row {number} (line {row.line})"
        for column, role in ((text_column, "text_column"), (label_column, "label_column")):
            require(column in row.values,
                    f"{where}: no column {column!r} ({role}); available columns: "
                    f"{', '.join(map(str, row.values)) or 'none'}")
        text, label = row.values[text_column], row.values[label_column]
        require(isinstance(text, str), f"{where}: column {text_column!r} holds {_json_type(text)}, expected a string")
        require(text.strip() != "", f"{where}: empty text in column {text_column!r}")
        # Integer labels are common in JSONL (0/1); floats and other types are ambiguous as class names.
        require(isinstance(label, (str, int)) and not isinstance(label, bool),
                f"{where}: column {label_column!r} holds {_json_type(label)}, expected a string or an integer")
        label = str(label).strip()
        require(label != "", f"{where}: empty label in column {label_column!r}")
        texts.append(text)
        labels.append(label)
    return texts, labels


def _json_type(value: Any) -> str:
    """A short description of a JSON value for messages: null, or its (abbreviated) JSON text."""
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 40 else shown[:37] + "..."


# ------------------------------------------------------------------------------------------------
# splitting


def shuffled_rows_by_label(data: LabelledData, seed: int) -> dict[str, list[int]]:
    """Each label's row indices, shuffled. A generator per label (seeded with the seed and the label) means
    one label's rows never change another's cut, whatever else is in the file."""
    by_label: dict[str, list[int]] = {label: [] for label in data.labels}
    for i, label in enumerate(data.row_labels):
        by_label[label].append(i)
    for label, indices in by_label.items():
        random.Random(f"{seed}/{label}").shuffle(indices)  # str seeds hash with SHA-512: stable across runs
    return by_label


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def stratified_split(data: LabelledData, val_fraction: float = 0.1, test_fraction: float = 0.1,
                     seed: int = 0) -> tuple[LabelledData, LabelledData, LabelledData]:
    """(train, val, test): each label's rows shuffled with `seed` and cut in the given proportions.

    Per label, round(n * test_fraction) rows go to test and round(n * val_fraction) to val (halves round
    up), but training always keeps at least one row of each label. Rows stay in file order within a split.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        require(0 <= fraction < 1, f"{name} must be in [0, 1), got {fraction}")
    require(val_fraction + test_fraction < 1,
            f"val_fraction + test_fraction must leave rows for training, got {val_fraction} + {test_fraction}")
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for indices in shuffled_rows_by_label(data, seed).values():
        n = len(indices)
        n_test, n_val = _round_half_up(n * test_fraction), _round_half_up(n * val_fraction)
        while n and n_test + n_val >= n:  # keep one row of the label for training
            if n_test >= n_val:
                n_test -= 1
            else:
                n_val -= 1
        parts["test"] += indices[:n_test]
        parts["val"] += indices[n_test:n_test + n_val]
        parts["train"] += indices[n_test + n_val:]
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        require(fraction == 0 or parts[name],
                f"the {name} split is empty: {len(data)} rows in {len(data.labels)} labels are too few for "
                f"{name}_fraction={fraction} (each label keeps at least one row for training)")
    train, val, test = (data.subset(sorted(parts[name])) for name in ("train", "val", "test"))
    check_split(train, val, "val")
    check_split(train, test, "test")
    return train, val, test


def subsample_stratified(data: LabelledData, fraction: float,
                         seed: int = 0) -> tuple[LabelledData, LabelledData]:
    """(labelled, unlabelled_pool): `fraction` of each label's rows (at least one), and all the others.

    For "only 5% of the labels" experiments: keep `labelled` for training and treat the pool's texts as
    unlabelled (its labels stay available for analysis).
    """
    require(0 < fraction <= 1, f"fraction must be in (0, 1], got {fraction}")
    keep: list[int] = []
    for indices in shuffled_rows_by_label(data, seed).values():
        if indices:
            keep += indices[:max(1, _round_half_up(len(indices) * fraction))]
    kept = set(keep)
    return data.subset(sorted(keep)), data.subset(i for i in range(len(data)) if i not in kept)


def check_split(train: LabelledData, test: LabelledData, split_name: str = "test") -> None:
    """Raise when a label of `test` never occurs in `train` (a classifier could never have learned it)."""
    missing = sort_labels(set(test.row_labels) - set(train.row_labels))
    if len(missing) == 1:
        raise GptkitError(f"label {missing[0]!r} appears in the {split_name} split but never in training")
    require(not missing, f"labels {', '.join(map(repr, missing))} appear in the {split_name} split but never in "
                         "training")


def encode_for_classification(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids per text, cut to `max_len`, each ending in EOS when the tokenizer has one.

    The closing EOS gives "last" pooling the same kind of token to read the whole text from in every
    row (GPT-1 appended an extract token for the same reason).
    """
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    keep = max_len - len(eos)
    return [ids[:keep] + eos for ids in tokenizer.encode_batch(list(texts))]
