"""Counterfactual edits of labelled text: small rule-based rewrites that flip the label (negation, antonyms) or
keep it (gender, names, places), each recorded with its rule; knows nothing of models, tokenizers or training.

    from gptkit.data.augment.counterfactual import apply_rule, counterfactuals, write_counterfactuals
    apply_rule("negation.insert", "The film is good.")   # -> ("The film is not good.", "is good → is not good")
    apply_rule("gender", "He loves her dog.")            # -> ("She loves his dog.", "He → She; her → his")
    edits = counterfactuals(read_labelled(bundled_labelled("sentiment")), kinds=("flip",))
    edits[0].text, edits[0].label, edits[0].rule, edits[0].edit, edits[0].source_index

The rules (`RULES`), each making at most one edit of a text:

  negation.insert  flip  a text with no negation and exactly one copula or modal ("is", "was", "can", "it's")
                         gets a "not" after it: "is good" → "is not good", "can" → "cannot",
                         "is still" → "is still not"
  negation.remove  flip  a text with exactly one negation loses it: "isn't" → "is", "won't" → "will",
                         "cannot" → "can", "is not" → "is", Penn Treebank "is n't" → "is"
  antonym          flip  every word of the antonym lexicon becomes its partner (good ↔ bad, loved ↔ hated)
  gender           keep  every gendered word is swapped (he ↔ she, man ↔ woman, king ↔ queen, his/him ↔ her)
  name             keep  every personal first name of the lexicon becomes its partner, of the same usual gender
  place            keep  cities, countries and nationalities are swapped (paris ↔ london, new york ↔ los angeles)

Precision over recall: a negation edit is made only where a single site makes the flip likely (a text with two
clauses or a double negative could keep its label when one part is negated), and swap rules edit whole words
only (never inside a hyphenated compound: "good-natured" stays). Case is kept per word ("Good" → "Bad",
"ISN'T" → "IS"), as are punctuation, spacing and the apostrophe style (' or ’); "a"/"an" before a swapped word
is fixed by the first letter of the new word (vowel letter → "an"). Every rule is deterministic.

`her` is both an object ("saw her") and a possessive ("her dog"): it becomes "his" when a word that can start a
noun phrase follows (not a preposition, conjunction, article, pronoun, auxiliary or punctuation), else "him";
likewise `his` becomes "her" before such a word and "hers" otherwise. The rule errs on a verb after an object
("made her cry" → "made his cry").

Labels. Flip edits reverse a binary label (the other of the two labels); for any other label set pass
`flip_labels`, a mapping from label to flipped label (e.g. {"1": "5", "2": "4", "4": "2", "5": "1"}): rows whose
label is not in it get no flip edits. Without one, flip edits of a non-binary set are refused. Keep edits keep
the label whatever the set.

The lexicons are tab-separated pairs in `gptkit/data/augment/lexicons/` (see PROVENANCE.md there), read from
the package, never downloaded.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from gptkit.data.labelled import LabelledData, bundled_labelled, read_labelled
from gptkit.errors import require

LEXICON_DIR = Path(__file__).resolve().parent / "lexicons"
LEXICONS = ("antonyms", "gender", "names", "places")
Kind = Literal["flip", "keep"]
KINDS: tuple[Kind, ...] = ("flip", "keep")
ARROW = " → "

_APOSTROPHE = "['’]"
WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")


# ------------------------------------------------------------------------------------------------
# lexicons


@lru_cache(maxsize=None)
def lexicon_pairs(name: str) -> tuple[tuple[str, str], ...]:
    """The (a, b) pairs of a shipped lexicon: "antonyms", "gender", "names" or "places"."""
    require(name in LEXICONS, f"no lexicon named {name!r}; available: {', '.join(LEXICONS)}")
    return read_pairs(LEXICON_DIR / f"{name}.tsv")


def read_pairs(path: Path) -> tuple[tuple[str, str], ...]:
    """Word pairs from a TSV file (`a<TAB>b` per line, `#` comments); every entry may appear only once."""
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip().lower() for f in line.split("\t")]
        require(len(fields) == 2 and all(fields), f"{path} line {number}: expected two tab-separated entries")
        for entry in fields:
            require(all(WORD.fullmatch(w) for w in entry.split()), f"{path} line {number}: {entry!r} is not words")
            require(entry not in seen, f"{path} line {number}: {entry!r} already appears on line {seen.get(entry)}")
            seen[entry] = number
        pairs.append((fields[0], fields[1]))
    return tuple(pairs)


# ------------------------------------------------------------------------------------------------
# case, articles


def match_case(source: str, word: str) -> str:
    """`word` (lower case) written in the case of `source`: UPPER, Title Case, Capitalised or lower."""
    letters = [c for c in source if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        word = word.upper()
    elif source[:1].isupper():
        words = source.split()
        if len(words) > 1 and all(w[:1].isupper() for w in words):
            word = " ".join(w[:1].upper() + w[1:] for w in word.split())
        else:
            word = word[:1].upper() + word[1:]
    return word.replace("'", "’") if "’" in source else word


def _article_for(article: str, following: str) -> str:
    wanted = "an" if following[:1].lower() in "aeiou" else "a"
    return match_case(article, wanted)


# ------------------------------------------------------------------------------------------------
# swap rules (antonym, gender, name, place)

# `her` is an object and a possessive; `his` a possessive determiner and a pronoun ("the choice is his").
# Before a word that cannot start a noun phrase (or before punctuation) they are the pronoun forms.
PRONOUNS = ("his", "her", "him", "hers")
NOT_NOUN_PHRASE = frozenset("""
a an the this that these those to in into on onto at by for from with without of off out up down over under
about as than and or but nor so yet if when while because though although before after since until again back
away too also very here there now then is was are were be been being has have had will would can could should
must may might do does did not it him her them me us you what how who why where all both each
""".split())


def _starts_noun_phrase(rest: str) -> bool:
    following = re.match(r"\s*([A-Za-z]+)", rest)
    return following is not None and following.group(1).lower() not in NOT_NOUN_PHRASE


def _gendered_pronoun(word: str, rest: str) -> str:
    if word == "him":
        return "her"
    if word == "hers":
        return "his"
    determiner = _starts_noun_phrase(rest)
    if word == "her":
        return "his" if determiner else "him"
    return "her" if determiner else "hers"  # his


class Swapper:
    """Swaps every entry of a bijective word-pair lexicon for its partner, whole words only."""

    def __init__(self, pairs: Iterable[tuple[str, str]],
                 resolve: Mapping[str, Callable[[str, str], str]] | None = None) -> None:
        self.partner: dict[str, str] = {}
        for a, b in pairs:
            self.partner[a], self.partner[b] = b, a
        self.resolve = dict(resolve or {})  # word -> f(word, text after it) -> replacement
        entries = sorted({*self.partner, *self.resolve}, key=lambda e: (-len(e), e))
        alternatives = "|".join(re.escape(e).replace("'", _APOSTROPHE).replace(r"\ ", r"\s+") for e in entries)
        # Whole words, not parts of a hyphenated compound; a possessive 's may follow.
        self.pattern = re.compile(rf"(?<![\w-])({alternatives})((?:['’]s)?)(?![\w-])", re.IGNORECASE)

    def __call__(self, text: str) -> tuple[str, str] | None:
        pieces: list[str] = []
        changes: list[str] = []
        position = 0
        for m in self.pattern.finditer(text):
            found, suffix = m.group(1), m.group(2)
            key = " ".join(found.lower().replace("’", "'").split())
            replacement = self.resolve[key](key, text[m.end():]) if key in self.resolve else self.partner[key]
            new = match_case(found, replacement)
            before = text[position:m.start()]
            article = re.search(r"(?<![\w'’-])(an?)(\s+)$", before, re.IGNORECASE)
            old_shown, new_shown = found + suffix, new + suffix
            if article:
                fixed = _article_for(article.group(1), new)
                if fixed != article.group(1):
                    before = before[:article.start(1)] + fixed + article.group(2)
                    old_shown = f"{article.group(1)}{article.group(2)}{old_shown}"
                    new_shown = f"{fixed}{article.group(2)}{new_shown}"
            pieces += [before, new, suffix]
            change = f"{old_shown}{ARROW}{new_shown}"
            if change not in changes:
                changes.append(change)
            position = m.end()
        if not changes:
            return None
        pieces.append(text[position:])
        return "".join(pieces), "; ".join(changes)


@lru_cache(maxsize=None)
def swapper(lexicon: str) -> Swapper:
    """The `Swapper` of a shipped lexicon (the gender one also handles his/her/him/hers)."""
    resolve = {word: _gendered_pronoun for word in PRONOUNS} if lexicon == "gender" else None
    return Swapper(lexicon_pairs(lexicon), resolve)


# ------------------------------------------------------------------------------------------------
# negation rules

# A negated auxiliary and what it is without its negation.
NEGATED = {
    "isn't": "is", "aren't": "are", "wasn't": "was", "weren't": "were", "ain't": "is",
    "doesn't": "does", "don't": "do", "didn't": "did", "hasn't": "has", "haven't": "have", "hadn't": "had",
    "can't": "can", "cannot": "can", "couldn't": "could", "won't": "will", "wouldn't": "would",
    "shouldn't": "should", "mustn't": "must", "mightn't": "might", "needn't": "need", "shan't": "shall",
}
# Penn Treebank tokenisation splits "can't" into "ca n't", "won't" into "wo n't".
TREEBANK_STEMS = {"ca": "can", "wo": "will", "sha": "shall", "ai": "is"}
# Words that negate but have no simple positive counterpart: they block insertion and count as a negation.
OTHER_NEGATIONS = frozenset({"never", "no", "nothing", "nobody", "none", "neither", "nor", "nowhere"})
# Where "not" can go: after a copula, a modal, or a pronoun's contracted copula ("it's not").
COPULAS = frozenset({"is", "are", "was", "were", "am"})
MODALS = frozenset({"will", "would", "can", "could", "should", "must", "might", "may"})
CONTRACTED_COPULAS = frozenset({"it's", "that's", "there's", "here's", "he's", "she's", "what's", "who's",
                                "they're", "we're", "you're", "i'm"})
INSERT_SITES = COPULAS | MODALS | CONTRACTED_COPULAS
# Adverbs that read better before the inserted "not": "is still not intact", "it's also not effective".
ADVERBS_BEFORE_NOT = frozenset({"also", "still", "certainly", "clearly", "definitely", "probably", "surely",
                                "simply", "just", "really", "obviously", "undoubtedly"})

_NEGATION = re.compile(r"(?<![\w'’-])(?:(\w+)\s+(n['’]t)|([A-Za-z]+n['’]t|cannot|not))(?![\w'’-])",
                       re.IGNORECASE)


def _words(text: str) -> list[re.Match[str]]:
    return [m for m in WORD.finditer(text)
            if (m.start() == 0 or text[m.start() - 1] != "-") and (m.end() == len(text) or text[m.end()] != "-")]


def _key(word: str) -> str:
    return word.lower().replace("’", "'")


def _negations(text: str) -> tuple[list[re.Match[str]], int]:
    """The removable negations of `text`, and the number of every negation (removable or not)."""
    removable = [m for m in _NEGATION.finditer(text)
                 if m.group(2) or _key(m.group(3)) in NEGATED or _key(m.group(3)) == "not"]
    other = sum(_key(m.group(0)) in OTHER_NEGATIONS for m in _words(text))
    unknown = sum(_key(m.group(0)).endswith("n't") and _key(m.group(0)) not in NEGATED and _key(m.group(0)) != "n't"
                  for m in _words(text))
    return removable, len(removable) + other + unknown


def _next_word(text: str, end: int) -> str:
    following = re.match(r"\s*([A-Za-z]+(?:['’][A-Za-z]+)*|\S)", text[end:])
    return following.group(1) if following else ""


def _shown(*words: str) -> str:
    return " ".join(w for w in words if w)


def insert_negation(text: str) -> tuple[str, str] | None:
    """"is good" → "is not good": a text without negation and with exactly one copula or modal."""
    _, negations = _negations(text)
    if negations:
        return None
    sites = [m for m in _words(text) if _key(m.group(0)) in INSERT_SITES]
    if len(sites) != 1:
        return None
    site = sites[0]
    word = site.group(0)
    not_ = " NOT" if len(word) > 1 and word.isupper() else " not"
    adverb = re.match(r"\s+([A-Za-z]+)", text[site.end():])
    if adverb and adverb.group(1).lower() in ADVERBS_BEFORE_NOT:  # "is still intact" -> "is still not intact"
        end = site.end() + adverb.end()
        following = _next_word(text, end)
        edited = text[:end] + not_ + text[end:]
        shown = _shown(word, adverb.group(1))
        return edited, f"{_shown(shown, following)}{ARROW}{_shown(shown + not_, following)}"
    following = _next_word(text, site.end())
    if _key(word) == "can":
        new = match_case(word, "cannot")
    else:  # "is" -> "is not", "IS" -> "IS NOT", "It's" -> "It's not"
        new = word + not_
    edited = text[:site.start()] + new + text[site.end():]
    return edited, f"{_shown(word, following)}{ARROW}{_shown(new, following)}"


def remove_negation(text: str) -> tuple[str, str] | None:
    """"isn't" → "is", "is not good" → "is good": a text with exactly one negation, which is removable."""
    removable, negations = _negations(text)
    if negations != 1 or len(removable) != 1:
        return None
    m = removable[0]
    following = _next_word(text, m.end())
    if m.group(2):  # treebank "is n't": drop the separate n't
        stem = m.group(1)
        new = match_case(stem, TREEBANK_STEMS.get(stem.lower(), stem.lower())) if stem.lower() in TREEBANK_STEMS \
            else stem
        return (text[:m.start()] + new + text[m.end():],
                f"{_shown(m.group(0), following)}{ARROW}{_shown(new, following)}")
    word = m.group(3)
    if _key(word) != "not":
        new = match_case(word, NEGATED[_key(word)])
        return text[:m.start()] + new + text[m.end():], f"{_shown(word, following)}{ARROW}{_shown(new, following)}"
    # A separate "not": drop it and one space beside it; a sentence-initial "Not bad" becomes "Bad".
    before, after = text[:m.start()], text[m.end():]
    if before.endswith((" ", "\t")):
        before = before[:-1]
    elif after.startswith((" ", "\t")):
        after = after[1:]
    previous = WORD.findall(before)
    new_following = following
    if word[:1].isupper() and not previous and after[:1].isalpha():
        after = after[:1].upper() + after[1:]
        new_following = following[:1].upper() + following[1:]
    context = previous[-1] if previous else ""
    return before + after, f"{_shown(context, word, following)}{ARROW}{_shown(context, new_following)}"


# ------------------------------------------------------------------------------------------------
# the rules


@dataclass(frozen=True)
class Rule:
    """A named edit: `apply(text)` returns (edited text, what changed) or None where the rule does not apply."""

    name: str
    kind: Kind  # "flip": the label flips; "keep": it stays
    apply: Callable[[str], tuple[str, str] | None]
    description: str


RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule("negation.insert", "flip", insert_negation, "add 'not' after the one copula or modal"),
    Rule("negation.remove", "flip", remove_negation, "remove the one negation"),
    Rule("antonym", "flip", lambda text: swapper("antonyms")(text), "swap sentiment words for their antonyms"),
    Rule("gender", "keep", lambda text: swapper("gender")(text), "swap gendered words"),
    Rule("name", "keep", lambda text: swapper("names")(text), "swap personal names"),
    Rule("place", "keep", lambda text: swapper("places")(text), "swap places and nationalities"),
)}


def apply_rule(name: str, text: str) -> tuple[str, str] | None:
    """(edited text, edit description) of one rule, or None where the rule does not apply to `text`."""
    require(name in RULES, f"no counterfactual rule named {name!r}; rules: {', '.join(RULES)}")
    return RULES[name].apply(text)


def select_rules(kinds: Sequence[str] = KINDS, rules: Sequence[str] | None = None) -> list[Rule]:
    """The rules of the given kinds ("flip", "keep"), optionally only those named in `rules`."""
    unknown_kinds = sorted(set(kinds) - set(KINDS))
    require(not unknown_kinds, f"unknown kind(s) {unknown_kinds}; kinds are flip (the label flips) and keep")
    require(kinds, "choose at least one kind: flip, keep")
    if rules:
        unknown = sorted(set(rules) - set(RULES))
        require(not unknown, f"unknown rule(s) {unknown}; rules: {', '.join(RULES)}")
    chosen = [r for r in RULES.values() if r.kind in kinds and (not rules or r.name in rules)]
    require(chosen, f"no rule is both of kind {'/'.join(kinds)} and among {list(rules or [])}")
    return chosen


def flip_label_map(labels: Sequence[str], flip_labels: Mapping[str, str] | None = None,
                   source: str = "the data") -> dict[str, str]:
    """How flip edits change a label: the other label of a binary set, or the given mapping."""
    if flip_labels:
        unknown = sorted({*flip_labels, *flip_labels.values()} - set(labels))
        require(not unknown, f"flip_labels names label(s) {unknown} that {source} does not have ({list(labels)})")
        return dict(flip_labels)
    require(len(labels) == 2,
            f"flip edits (negation, antonyms) reverse a binary polarity, but {source} has {len(labels)} label(s) "
            f"{list(labels)}: make keep edits only (kinds=('keep',), --kinds keep), or say how each label flips "
            f"with flip_labels (--flip-labels A=B B=A ...; labels left out get no flip edits)")
    first, second = labels
    return {first: second, second: first}


@dataclass(frozen=True)
class Counterfactual:
    """An edited row: its text and label, the row it came from, the rule and what changed."""

    text: str
    label: str
    source_index: int  # the row of the input it was made from
    rule: str  # a name in RULES, or "original" for an unedited row
    kind: str  # "flip", "keep" or "original"
    edit: str | None  # "is good → is not good"; None for an original

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "label": self.label, "source_index": self.source_index, "rule": self.rule,
                "kind": self.kind, "edit": self.edit}


def counterfactuals(data: LabelledData, kinds: Sequence[str] = KINDS, rules: Sequence[str] | None = None,
                    flip_labels: Mapping[str, str] | None = None) -> list[Counterfactual]:
    """Every edit the chosen rules make of every row, in row order (then rule order); deterministic."""
    chosen = select_rules(kinds, rules)
    flips = flip_label_map(data.labels, flip_labels, data.source or "the data") \
        if any(r.kind == "flip" for r in chosen) else {}
    edits = []
    for index, (text, label) in enumerate(data):
        for rule in chosen:
            if rule.kind == "flip" and label not in flips:
                continue
            result = rule.apply(text)
            if result is None:
                continue
            edited, change = result
            edits.append(Counterfactual(edited, flips[label] if rule.kind == "flip" else label, index, rule.name,
                                        rule.kind, change))
    return edits


def originals(data: LabelledData) -> list[Counterfactual]:
    """The unedited rows in the same record form (rule "original")."""
    return [Counterfactual(text, label, i, "original", "original", None) for i, (text, label) in enumerate(data)]


# ------------------------------------------------------------------------------------------------
# files


def read_data(spec: str | Path, text_column: str = "text", label_column: str = "label") -> LabelledData:
    """A labelled CSV/TSV/JSONL file, or a bundled set's name (sentiment, fortunes8)."""
    path = Path(spec)
    if not path.exists() and path.suffix == "" and "/" not in str(spec):
        path = bundled_labelled(str(spec))  # a bundled name, or an error naming the available ones
    return read_labelled(path, text_column=text_column, label_column=label_column)


def write_counterfactuals(data: str | Path, out: str | Path, *, kinds: Sequence[str] = KINDS,
                          rules: Sequence[str] | None = None, text_column: str = "text", label_column: str = "label",
                          edits_only: bool = False, flip_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`gptkit augment --counterfactual`: read a labelled file, write JSONL of its rows (unless `edits_only`) and
    their counterfactual edits, one record per line ({"text", "label", "source_index", "rule", "kind", "edit"};
    `gptkit finetune --data OUT` reads it). Returns the counts: rows read, edits per rule, rows written."""
    out = Path(out)
    rows = read_data(data, text_column, label_column)
    require(not out.exists() or Path(rows.source).resolve() != out.resolve(),
            f"--out {out} is the input file; write the augmented rows elsewhere")
    require(not out.is_dir(), f"--out {out} is a directory; give a .jsonl file path")
    edits = counterfactuals(rows, kinds, rules, flip_labels)
    records = edits if edits_only else sorted(originals(rows) + edits, key=lambda r: r.source_index)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    by_rule = Counter(e.rule for e in edits)
    return {"source": rows.source, "rows": len(rows), "edits": len(edits),
            "rows_edited": len({e.source_index for e in edits}), "written": len(records), "out": str(out),
            "by_rule": {r.name: by_rule.get(r.name, 0) for r in select_rules(kinds, rules)}}
