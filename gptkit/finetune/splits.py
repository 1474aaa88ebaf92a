"""Train/validation/test splits for fine-tuning: labelled files (stratified) and conversations; knows nothing of
models."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gptkit.chat_format import render_chat
from gptkit.data.chat import bundled_chat, read_chat_jsonl
from gptkit.data.labelled import LabelledData, bundled_labelled, check_split, read_labelled, stratified_split
from gptkit.errors import require
from gptkit.tokenizer import Tokenizer


@dataclass
class SplitData:
    train: Any
    val: Any
    test: Any


def classification_splits(data_spec: str, *, text_column: str, label_column: str, val_fraction: float,
                          test_fraction: float, seed: int, val_data: str | None = None,
                          test_data: str | None = None) -> SplitData:
    """Train/val/test: stratified splits of one file, or the user's own val and/or test files."""
    def read(spec: str):
        path = Path(spec)
        if not path.exists():
            require(path.suffix == "" and "/" not in spec, f"{spec} does not exist")
            path = bundled_labelled(spec)  # a bundled set's name, or a clear error naming them
        return read_labelled(path, text_column=text_column, label_column=label_column)

    data = read(data_spec)
    train, val, test = stratified_split(data, val_fraction=0.0 if val_data else val_fraction,
                                        test_fraction=0.0 if test_data else test_fraction, seed=seed)
    given = {"validation": val_data, "test": test_data}
    for name, spec in given.items():
        if spec is not None:
            split = read(spec)
            check_split(train, split, name)
            if name == "validation":
                val = split.with_labels(train.labels)
            else:
                test = split.with_labels(train.labels)
    for name, split in (("validation", val), ("test", test)):
        require(len(split) > 0, f"{data_spec}: the {name} split is empty; raise its fraction, add rows or "
                                f"pass --{'val' if name == 'validation' else 'test'}-data")
        check_split(train, split, name)
    return SplitData(train, val, test)


def chat_splits(data_spec: str, tokenizer: Tokenizer, *, val_fraction: float, seed: int,
                template: str) -> SplitData:
    path = Path(data_spec)
    conversations = read_chat_jsonl(path) if path.exists() else bundled_chat(data_spec, seed=seed)
    require(len(conversations) >= 2, f"{data_spec}: need at least 2 conversations (one for validation)")
    rendered = [tuple(render_chat(c, tokenizer, template=template)) for c in conversations]  # type: ignore[arg-type]
    order = list(range(len(rendered)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_fraction * len(order)))
    return SplitData([rendered[i] for i in order[n_val:]], [rendered[i] for i in order[:n_val]], None)


def select_split(splits: SplitData, which: Literal["test", "val", "all"], *, limit: int | None = None,
                 seed: int = 0) -> LabelledData:
    """One split (or all rows) of a labelled set, cut to `limit` rows drawn at random with `seed`
    (files are often sorted by label, so the first rows would not do)."""
    require(which in ("test", "val", "all"), f"split must be test, val or all, got {which!r}")
    require(limit is None or limit >= 1, f"--limit must be at least 1, got {limit}")
    if which == "all":
        parts = (splits.train, splits.val, splits.test)
        data = LabelledData([t for p in parts for t in p.texts], [r for p in parts for r in p.row_labels],
                            list(splits.train.labels))
    else:
        data = splits.test if which == "test" else splits.val
    if limit is not None:
        chosen = random.Random(seed).sample(range(len(data)), min(limit, len(data)))
        data = data.subset(sorted(chosen))
    return data
