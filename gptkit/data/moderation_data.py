"""The bundled moderation data (gptkit/data/moderation/, see its PROVENANCE.md): the profanity word list and gptkit's
curation of it, human-labelled offensive fortunes and benign ones, and their train/validation/test split held out by
category; knows nothing of models or of how text is moderated (`gptkit.safety.moderation`).

    splits = moderation_splits()              # LabelledData: labels none, sexual, hate, vulgarity, violence
    write_moderation_splits("out/moderation/data")   # train.jsonl, val.jsonl, test.jsonl for `gptkit finetune`

The split is held out by category, so that a classifier is scored on topics it never saw rather than rewarded for
learning topic instead of offensiveness:
  - benign test rows are the fortunes of four whole categories (drugs, food, law, politics: the bundled `fortunes8`
    rows of those, which the bundled `english_mix` pretraining corpus also leaves out); no fortune of those
    categories is trained or validated on;
  - offensive test rows are whole source files where a category has several (privates for sexual; misogyny and
    misandry for hate) and, for the categories that come from one file only (vulgarity, violence), a seeded 20%;
  - validation rows are a seeded share of the rest (benign and offensive), which training never sees.
Benign rows are fortunes and, so that the classifier does not take any unfamiliar prose for offence, other writing
(`read_benign_prose`) whose held-out parts are left for measuring false positives.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from gptkit.data.labelled import LabelledData, bundled_labelled
from gptkit.errors import require

MODERATION_DIR = Path(__file__).resolve().parent / "moderation"
WORDLIST_FILE = MODERATION_DIR / "better_profanity_wordlist.txt"
RULES_FILE = MODERATION_DIR / "rules.json"
OFFENSIVE_FILE = MODERATION_DIR / "offensive_strict.jsonl.gz"
BENIGN_FILE = MODERATION_DIR / "benign_fortunes.jsonl.gz"
BENIGN_PROSE_FILE = MODERATION_DIR / "benign_prose.jsonl.gz"

BENIGN_LABEL = "none"
"""The label of text that is fine; every other label of a moderation classifier is a category."""
CATEGORY_OF_SOURCE = {"sex": "sexual", "privates": "sexual", "racism": "hate", "ethnic": "hate", "hphobia": "hate",
                      "misogyny": "hate", "misandry": "hate", "vulgarity": "vulgarity", "black-humor": "violence"}
"""The curator's offensive files (their `strict` ones) and the category each one stands for (black-humor: jokes
about death, suicide and harm)."""
CATEGORIES = ("sexual", "hate", "vulgarity", "violence")
"""What the bundled data can teach a classifier; nothing else is ever scored."""
LABELS = (BENIGN_LABEL, *CATEGORIES)
TEST_SOURCES = ("privates", "misogyny", "misandry")
"""Offensive files held out whole for testing."""
TEST_BENIGN_CATEGORIES = ("drugs", "food", "law", "politics")
"""Benign fortune categories held out whole for testing (rows from the bundled fortunes8 set)."""


# ------------------------------------------------------------------------------------------------
# the files


def _read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@lru_cache(maxsize=1)
def read_wordlist() -> tuple[str, ...]:
    """better_profanity 0.7.0's word list, as shipped (one word or phrase a line)."""
    return tuple(line.strip() for line in WORDLIST_FILE.read_text(encoding="utf-8").splitlines() if line.strip())


@lru_cache(maxsize=1)
def read_rules() -> dict[str, Any]:
    """gptkit's curation of the word list (rules.json): entries to leave out, slurs, sexual stems."""
    return json.loads(RULES_FILE.read_text(encoding="utf-8"))


def read_offensive() -> list[dict[str, Any]]:
    """The curator's `strict` offensive fortunes: {"text", "category"} with the source file as category."""
    return _read_jsonl_gz(OFFENSIVE_FILE)


def read_benign() -> list[dict[str, Any]]:
    """3,000 inoffensive fortunes of the categories not held out for testing, matched in length to the offensive rows
    (so that length tells a classifier nothing): {"text", "category"}."""
    return _read_jsonl_gz(BENIGN_FILE)


def read_benign_prose() -> list[dict[str, Any]]:
    """953 benign rows of other writing, matched in length like the fortunes: paragraphs of four Austen novels, King
    James verses of the Old Testament, Jargon File definitions outside the bundled `jargon` set ({"text", "category":
    austen|kjv|jargon}). Fortunes alone taught a classifier that any long or archaic prose is offensive; the other
    two novels, the New Testament and the bundled `jargon` set stay unseen, for measuring false positives."""
    return _read_jsonl_gz(BENIGN_PROSE_FILE)


def read_benign_test() -> list[dict[str, Any]]:
    """The benign test rows: the bundled fortunes8 rows of TEST_BENIGN_CATEGORIES."""
    with open(bundled_labelled("fortunes8"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{"text": r["text"], "category": r["label"]} for r in rows if r["label"] in TEST_BENIGN_CATEGORIES]


# ------------------------------------------------------------------------------------------------
# text style


_QUOTES = (("\u201c", '"'), ("\u201d", '"'), ("\u2018", "'"), ("\u2019", "'"), ("\u2014", " -- "), ("\u2013", "-"),
           ("\u2026", "..."), ("``", '"'), ("''", '"'))


def english_mix_style(text: str) -> str:
    """Text as the bundled `english_mix` corpus is written (gptkit/data/corpora/PROVENANCE.md): lower case, the
    punctuation , . ! ? ; : ( ) [ ] " set off by spaces, typographic quotes and dashes as ASCII, whitespace runs as
    one space. A classifier fine-tuned from a base pretrained on that corpus reads text best in its style."""
    text = re.sub(r".\x08", "", text).replace("\x08", "").replace("\xad", "")
    for a, b in _QUOTES:
        text = text.replace(a, b)
    text = re.sub(r"--+", " -- ", text.lower())
    text = re.sub(r'([,.!?;:()\[\]"])', r" \1 ", text)
    return re.sub(r"\s+", " ", text).strip()


IDENTITY_TERMS = (
    "jew", "jews", "jewish", "muslim", "muslims", "moslem", "moslems", "islamic", "christian", "christians",
    "catholic", "catholics", "protestant", "protestants", "hindu", "hindus", "buddhist", "buddhists", "sikh", "sikhs",
    "atheist", "atheists", "gay", "gays", "lesbian", "lesbians", "bisexual", "bisexuals", "homosexual", "homosexuals",
    "transgender", "queer", "queers", "mexican", "mexicans", "italian", "italians", "irish", "chinese", "japanese",
    "asian", "asians", "african", "africans", "arab", "arabs", "hispanic", "hispanics", "latino", "latinos")
"""Words naming a religion, an ethnicity or nationality, or a sexual orientation or gender identity, that
`identity_blind` hides from the learned moderator. Left out because they are mostly something else: black, white
(colours), polish (the verb), straight, old, young; man and woman (far too common to hide, and what misogyny is
about)."""
_IDENTITY = re.compile(r"(?<![a-z'])(?:" + "|".join(sorted(IDENTITY_TERMS, key=len, reverse=True)) + r")(?![a-z'])")


def identity_blind(text: str) -> str:
    """Lower-case text with every IDENTITY_TERMS word deleted: "blindness" (Garg et al. 2019), so that a classifier
    trained on jokes at a group's expense cannot learn the group's name as a sign of offence (trained without it,
    the learned moderator flagged 70 of 96 benign template sentences saying someone is Jewish). Deleted, not
    replaced: a placeholder word stood for every group at once and became the strongest sign of offence of all
    (71% of such sentences flagged; benchmarks/moderation_quality.py)."""
    return re.sub(r" {2,}", " ", _IDENTITY.sub("", text)).strip()


TEXT_STYLES: dict[str, Callable[[str], str]] = {"raw": lambda text: text, "english_mix": english_mix_style,
                                                "english_mix_blind": lambda text: identity_blind(english_mix_style(text))}
"""How a moderation classifier's input is written, by name (recorded in its moderation.json)."""


def text_style(name: str) -> Callable[[str], str]:
    require(name in TEXT_STYLES, f"unknown text style {name!r}; choose one of {sorted(TEXT_STYLES)}")
    return TEXT_STYLES[name]


# ------------------------------------------------------------------------------------------------
# the split


@dataclass(frozen=True)
class ModerationSplits:
    """Train/validation/test rows (labels LABELS) and where each split's rows come from."""

    train: LabelledData
    val: LabelledData
    test: LabelledData
    sources: dict[str, dict[str, int]]
    """split -> "label/source category" -> rows, e.g. sources["test"]["sexual/privates"]."""


def moderation_splits(*, seed: int = 0, val_fraction: float = 0.12, test_fraction: float = 0.2,
                      style: str = "raw") -> ModerationSplits:
    """The bundled offensive and benign rows, split held out by category (see the module docstring).

    test_fraction: the share of the single-file categories (vulgarity, violence) drawn for testing;
    val_fraction: the share of the remaining rows drawn for validation. style: a TEXT_STYLES name.
    """
    require(0 < val_fraction < 1 and 0 < test_fraction < 1, "val_fraction and test_fraction must be in (0, 1)")
    rng = random.Random(seed)
    restyle = text_style(style)
    parts: dict[str, list[tuple[str, str, str]]] = {"train": [], "val": [], "test": []}  # (text, label, source)
    by_source: dict[str, list[str]] = {}
    for row in read_offensive():
        by_source.setdefault(row["category"], []).append(row["text"])
    sources_of: dict[str, list[str]] = {}
    for source in by_source:
        sources_of.setdefault(CATEGORY_OF_SOURCE[source], []).append(source)
    rest: list[tuple[str, str, str]] = []
    for source, texts in sorted(by_source.items()):
        label = CATEGORY_OF_SOURCE[source]
        rows = [(t, label, source) for t in texts]
        if source in TEST_SOURCES:
            parts["test"] += rows
        elif len(sources_of[label]) == 1:  # one file only: hold out a random share of it
            rng.shuffle(rows)
            n_test = round(test_fraction * len(rows))
            parts["test"] += rows[:n_test]
            rest += rows[n_test:]
        else:
            rest += rows
    rest += [(r["text"], BENIGN_LABEL, r["category"]) for r in read_benign() + read_benign_prose()]
    parts["test"] += [(r["text"], BENIGN_LABEL, r["category"]) for r in read_benign_test()]
    rng.shuffle(rest)
    n_val = round(val_fraction * len(rest))
    parts["val"], parts["train"] = rest[:n_val], rest[n_val:]
    data = {name: LabelledData([restyle(t) for t, _, _ in rows], [label for _, label, _ in rows], list(LABELS),
                               source=f"bundled moderation data ({name})")
            for name, rows in parts.items()}
    sources = {name: _count(f"{label}/{source}" for _, label, source in rows) for name, rows in parts.items()}
    return ModerationSplits(data["train"], data["val"], data["test"], sources)


def _count(keys) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def write_moderation_splits(out_dir: str | Path, **options: Any) -> dict[str, Path]:
    """`moderation_splits(**options)` as OUT_DIR/{train,val,test}.jsonl ({"text", "label"} a line), ready for
    `gptkit finetune --task classify --data OUT_DIR/train.jsonl --val-data OUT_DIR/val.jsonl --test-data ...`."""
    splits = moderation_splits(**options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("train", "val", "test"):
        split: LabelledData = getattr(splits, name)
        path = paths[name] = out / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for text, label in split:
                f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    (out / "sources.json").write_text(json.dumps(splits.sources, indent=2) + "\n")
    return paths
