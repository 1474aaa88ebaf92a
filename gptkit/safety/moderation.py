"""Text moderation: rules (a curated profanity list matched through obfuscation) and, when given, a learned classifier
handed in as a function; knows nothing of checkpoints, HTTP or generation (`gptkit.api.load_moderator` builds a
moderator from a checkpoint, and the server and `prepare` use it through `gptkit.safety.policy`).

    moderator = Moderator()                               # rules only: the bundled list
    result = moderator.moderate("what the f.u.c.k")[0]
    result.flagged, result.categories, result.category_scores, result.matches[0].word   # True, ..., "fuck"
    Moderator(rules=Rules(words=["darn"]))                # a list of your own
    Moderator(learned=LearnedClassifier(predict, labels=["none", "sexual", ...], threshold=0.6))

Rules. The word list is better_profanity's, curated by gptkit/data/moderation/rules.json (ordinary words, anatomy,
names and identity terms are left to the learned part; slurs are category hate, sexual terms sexual, the rest
vulgarity). An entry matches through the usual obfuscations: any case; leetspeak (0 o, 1 i or l, 3 e, 4 a, 5 s, 7 t,
8 b, 9 g, @ a, $ s, ! i, + t, | l); repeated letters (fuuuck); a separator between every letter (f.u.c.k, f u c k,
f-u-c-k, f_u_c_k, f*u*c*k) or a single one inside a longer word (fu-ck); phrases with or without their spaces
(blow job, blowjob, blow-job). It matches whole words only, so a word that merely contains an entry is left alone
(Scunthorpe, assistant, classic, therapist, cocktail); and a match whose digits outnumber its letters (A55, 455) is
not one. All matching is one regular expression (a trie of the entries), linear in the text.

Learned part. `LearnedClassifier` wraps any function from texts to label probabilities (a classification
fine-tune: `gptkit moderate --train`); one label is the benign one, every other is a category. Text longer than
`chunk_chars` is cut into chunks (at sentence ends or spaces) and scored as its worst chunk; only the categories the
classifier was trained on are ever reported.

Input. A `str`, or `bytes` decoded as UTF-8 with invalid bytes replaced by U+FFFD (never an error); empty text is
not flagged. Output moderation (`Moderator.watch`, a `gptkit.inference.text.TextGuard`) checks generated text as it
grows and holds back the undecided tail: the last few words for the rules (at most MAX_PENDING_CHARS), the sentence
being written for the learned part.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from gptkit.data.moderation_data import BENIGN_LABEL, CATEGORIES, read_rules, read_wordlist
from gptkit.errors import require

# --- characters -----------------------------------------------------------------------------------------

LEET: dict[str, str] = {"a": "4@", "b": "8", "e": "3", "g": "9", "i": "1!|", "l": "1|", "o": "0", "s": "5$",
                        "t": "7+"}
"""The characters that may stand for a letter (the letter itself always may)."""
READS_AS: dict[str, str] = {"0": "o", "1": "il", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
                            "@": "a", "$": "s", "!": "i", "+": "t", "|": "l"}
"""What a leetspeak character in a list entry stands for (1: i or l)."""
_WORD = "a-z0-9"
LEFT, RIGHT = f"(?<![{_WORD}])", f"(?![{_WORD}])"
"""Whole words only: no letter or digit on either side of a match."""
SPACED_SEP = r"[\s.\-_*\ufffd]{1,3}"
"""Between the letters of a spelt-out word: f.u.c.k, f u c k, f-u-c-k, f_u_c_k, f*u*c*k."""
INNER_SEP = r"[.\-_*\ufffd]?"
"""Optionally inside a word of four letters or more: fu-ck, sh.it (and an undecodable byte, U+FFFD)."""
PHRASE_SEP = r"[\s\-_.]*"
"""Between the words of a phrase, or none: blow job, blowjob, blow-job."""
MAX_PENDING_CHARS = 200
"""Output moderation holds back at most this much text for the rules while a word or phrase is being written."""


def as_text(value: Any) -> str:
    """Moderation input as text: a str (unpaired surrogates replaced by U+FFFD), or bytes decoded as UTF-8 with
    invalid bytes replaced by U+FFFD."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    require(isinstance(value, str),
            f"moderation input must be text (a str, or UTF-8 bytes), got {type(value).__name__}")
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:  # lone surrogates (from JSON "\ud800", say): no tokenizer takes them
        return value.encode("utf-8", errors="replace").decode("utf-8")


def _class(ch: str) -> str:
    """The regex for one character of an entry: a letter with its leetspeak stand-ins, a leet character with the
    letters it stands for, anything else itself."""
    if ch in READS_AS:
        letters = READS_AS[ch]
        chars = set(letters) | {ch} | {c for letter in letters for c in LEET.get(letter, "")}
    elif ch in LEET:
        chars = {ch} | set(LEET[ch])
    else:
        return re.escape(ch)
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


def _readings(entry: str) -> set[str]:
    """The plain-letter spellings of an entry (he11 -> hell, heil, ...), for matching it against the exclusions."""
    readings = {""}
    for ch in entry:
        options = READS_AS.get(ch, ch)
        readings = {r + o for r in readings for o in options}
        if len(readings) > 64:
            break
    return readings


_MATCHABLE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + "".join(READS_AS)
                       + ".-_*\ufffd")
"""Characters a match can hold (besides whitespace)."""
_SPELT_OUT = re.compile(r"^(?:[a-z0-9@$!+|][\s.\-_])+[a-z0-9@$!+|][.]?$")


# --- rules ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RuleMatch:
    """A word-list entry found in a text."""

    word: str
    """The list entry (e.g. "fuck")."""
    text: str
    """What the text said (e.g. "F.u.c.k")."""
    start: int
    end: int
    category: str


@dataclass(frozen=True)
class _Entry:
    word: str
    category: str
    tokens: tuple[tuple[str, ...], ...]  # the entry's token sequences (compact form, spelt-out form)

    @property
    def plain(self) -> bool:
        """Spelt in letters (and spaces): the name to give a match that several entries spell."""
        return all(c.isalpha() or c == " " for c in self.word)


def _entry_sequences(entry: str) -> list[tuple[str, ...]]:
    """The regex token sequences that spell one entry (see the module docstring)."""
    wildcard = entry.endswith("*")
    entry = entry.rstrip("*")
    if _SPELT_OUT.match(entry):  # f.u.c.k, s-o-b: the spelt-out form only ("sob" alone is a word)
        letters = [c for c in entry if c not in " .-_"]
        seq: list[str] = []
        for i, ch in enumerate(letters):
            seq += ([SPACED_SEP] if i else []) + [_class(ch) + "+"]
        return [tuple(seq)]
    words = [w for w in re.split(r"[\s\-_.]+", entry) if w]
    compact: list[str] = []
    for n, word in enumerate(words):
        if n:
            compact.append(PHRASE_SEP)
        runs: list[tuple[str, int]] = []
        for ch in word:
            cls = _class(ch)
            if runs and runs[-1][0] == cls:
                runs[-1] = (cls, runs[-1][1] + 1)
            else:
                runs.append((cls, 1))
        for i, (cls, count) in enumerate(runs):
            if i and len(word) >= 4:
                compact.append(INNER_SEP)
            compact.append(cls + ("+" if count == 1 else f"{{{count},}}"))
    if wildcard:
        compact.append("[a-z]*")
    sequences = [tuple(compact)]
    if len(words) == 1 and len(words[0]) >= 3 and not wildcard:  # f u c k
        spelt: list[str] = []
        for i, ch in enumerate(words[0]):
            spelt += ([SPACED_SEP] if i else []) + [_class(ch) + "+"]
        sequences.append(tuple(spelt))
    return sequences


def _trie_regex(sequences: Iterable[tuple[str, ...]]) -> str:
    """One alternation of token sequences with shared prefixes merged, so that matching tries a handful of
    branches at each word start rather than every entry."""
    root: dict[str, dict] = {}
    for seq in sequences:
        node = root
        for token in seq:
            node = node.setdefault(token, {})
        node[""] = {}

    def emit(node: dict[str, dict]) -> str:
        branches = [token + emit(child) for token, child in sorted(node.items()) if token]
        if not branches:
            return ""
        body = "(?:" + "|".join(branches) + ")" if len(branches) > 1 else branches[0]
        return f"(?:{body})?" if "" in node else body

    return emit(root)


class Rules:
    """A word list matched through obfuscation, whole words only (see the module docstring).

    words: the entries (default: the bundled better_profanity list); exclude: entries to leave out (default with the
    bundled list: rules.json's); categories: entry -> category (default: rules.json's slurs are hate, its sexual stems
    sexual, everything else `default_category`).
    """

    def __init__(self, words: Iterable[str] | None = None, *, exclude: Iterable[str] | None = None,
                 categories: Mapping[str, str] | None = None, default_category: str = "vulgarity") -> None:
        bundled = words is None
        curation = read_rules() if bundled else {}
        words = read_wordlist() if words is None else list(words)
        if exclude is None:
            exclude = [w for group in curation.get("exclude", {}).values() for w in group]
        excluded = {w.lower() for w in exclude}
        hate = set(curation.get("hate", ()))
        stems = tuple(curation.get("sexual_stems", ()))
        categories = {k.lower(): v for k, v in (categories or {}).items()}
        entries: dict[str, _Entry] = {}
        for raw in words:
            word = raw.strip().lower()
            require(word, "a word list entry is empty")
            spelt = bool(_SPELT_OUT.match(word.rstrip("*")))
            if word in excluded or (not spelt and _readings(word.rstrip("*")) & excluded):
                continue
            if word in categories:
                category = categories[word]
            elif word in hate:
                category = "hate"
            elif any(stem in word for stem in stems):
                category = "sexual"
            else:
                category = default_category
            entries.setdefault(word, _Entry(word, category, tuple(_entry_sequences(word))))
        require(entries or not words, "every word of the list is excluded")
        self.entries = list(entries.values())
        used = {e.category for e in self.entries}
        self.categories = tuple(c for c in CATEGORIES if c in used) + tuple(sorted(used - set(CATEGORIES)))
        """The categories the rules can report (those some entry has)."""
        self._named: dict[str, _Entry] = {}
        self._by_name = sorted(self.entries, key=lambda e: not e.plain)  # f.u.c.k is named "fuck", not "f_u_c_k"
        self._matchable = _MATCHABLE | {c for e in self.entries for c in e.word + e.word.upper()}
        self.max_words = max((len(re.split(r"[\s\-_.]+", e.word)) for e in self.entries), default=1)
        alternation = _trie_regex(s for e in self.entries for s in e.tokens)
        self.regex = re.compile(f"{LEFT}(?:{alternation}){RIGHT}" if alternation else r"(?!x)x", re.IGNORECASE)

    @classmethod
    @lru_cache(maxsize=1)
    def bundled(cls) -> "Rules":
        """The bundled, curated list (built once per process)."""
        return cls()

    def __len__(self) -> int:
        return len(self.entries)

    def finditer(self, text: str, start: int = 0) -> Iterable[RuleMatch]:
        """Every match from `start` on (a match's letters must outnumber its digits)."""
        for m in self.regex.finditer(text, start):
            found = m.group()
            letters = sum(c.isalpha() for c in found)
            if letters == 0 or letters < sum(c.isdigit() for c in found):
                continue
            entry = self._entry_of(found)
            yield RuleMatch(entry.word, found, m.start(), m.end(), entry.category)

    def find(self, text: str) -> list[RuleMatch]:
        return list(self.finditer(text))

    def _entry_of(self, found: str) -> _Entry:
        key = found.lower()
        if key not in self._named:
            # The alternation holds exactly the entries' patterns, so one of them spells it.
            self._named[key] = next(e for e in self._by_name
                                    if any(re.fullmatch("".join(seq), found, re.IGNORECASE) for seq in e.tokens))
        return self._named[key]

    def pending_start(self, text: str) -> int:
        """Where the undecided tail of a growing text begins: a match that ends in text still to come starts here
        or later. Three bounds, each enough on its own: the last `max_words` words (with any run of single letters
        among them, which may be a word spelt out); the run of characters a match can be made of (letters, digits,
        leetspeak, separators: a comma or a quote ends it); and MAX_PENDING_CHARS."""
        floor = max(len(text) - MAX_PENDING_CHARS, 0)
        pos, words = len(text), 0
        while pos > floor and words <= self.max_words:
            j = pos
            while j > 0 and text[j - 1].isspace():
                j -= 1
            k = j
            while k > 0 and not text[k - 1].isspace():
                k -= 1
            if k == j:
                break
            words += j - k > 1  # single characters may be a word spelt out: they do not count
            pos = k
        run = len(text)
        while run > floor and (text[run - 1] in self._matchable or text[run - 1].isspace()):
            run -= 1
        return max(pos, run, floor)


# --- the learned part -----------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n")


def chunks(text: str, size: int) -> list[tuple[int, int]]:
    """(start, end) of pieces of `text` of at most `size` characters, cut after a sentence end or at a space where
    there is one in the second half, so that a long text is scored piece by piece; none for blank text."""
    require(size >= 1, f"chunk size must be positive, got {size}")
    out: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while start < n:
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            break
        end = min(n, start + size)
        if end < n:
            window = text[start:end]
            cut = max((m.end() for m in _SENTENCE_END.finditer(window) if m.end() > size // 2), default=0)
            if not cut:
                cut = window.rfind(" ", size // 2) + 1
            end = start + cut if cut > 0 else end
        out.append((start, end))
        start = end
    return out


Predict = Callable[[list[str]], list[Mapping[str, float]]]
"""Texts -> for each, a probability per label (a classification model's softmax)."""


@dataclass
class LearnedScore:
    offensive: float
    """1 - P(benign label), of the worst chunk."""
    categories: dict[str, float]
    """Each category's probability, its maximum over the chunks."""
    worst: tuple[int, int] | None = None
    """(start, end) of the worst chunk."""


@dataclass
class LearnedClassifier:
    """A classifier of texts into a benign label and categories, with the threshold at which text is flagged.

    predict: texts -> label probabilities; labels: every label it predicts (one of them `benign_label`);
    threshold: flag when 1 - P(benign) reaches it; chunk_chars: longer texts are scored in chunks of this many
    characters; style: how texts are written before `predict` sees them (e.g. lower-cased, as in training).
    """

    predict: Predict
    labels: Sequence[str]
    threshold: float = 0.5
    benign_label: str = BENIGN_LABEL
    chunk_chars: int = 400
    style: Callable[[str], str] = field(default=lambda text: text)
    batch_size: int = 32
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        require(self.benign_label in self.labels,
                f"the classifier's labels {list(self.labels)} do not include the benign label {self.benign_label!r}")
        require(0 < self.threshold <= 1, f"the moderation threshold must be in (0, 1], got {self.threshold}")
        self.categories = tuple(label for label in self.labels if label != self.benign_label)
        """What it can report: the labels it was trained on, but the benign one."""

    def score(self, texts: Sequence[str]) -> list[LearnedScore]:
        """Each text's score (its worst chunk's); blank text scores 0 without running the model."""
        pieces = [chunks(text, self.chunk_chars) for text in texts]
        flat = [self.style(text[a:b]) for text, spans in zip(texts, pieces) for a, b in spans]
        probs: list[Mapping[str, float]] = []
        with self._lock:  # one model, shared by the server's threads
            for i in range(0, len(flat), self.batch_size):
                probs += self.predict(flat[i:i + self.batch_size])
        out, k = [], 0
        for spans in pieces:
            best = LearnedScore(0.0, dict.fromkeys(self.categories, 0.0))
            for span in spans:
                p = probs[k]
                k += 1
                offensive = 1.0 - float(p.get(self.benign_label, 0.0))
                for c in self.categories:
                    best.categories[c] = max(best.categories[c], float(p.get(c, 0.0)))
                if best.worst is None or offensive > best.offensive:
                    best.offensive, best.worst = offensive, span
            out.append(best)
        return out


# --- results and the moderator ---------------------------------------------------------------------------

@dataclass
class ModerationResult:
    """One text's verdict, in OpenAI's terms (flagged, categories, category_scores) plus what decided it."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    score: float
    """The moderation score: 1.0 when a rule matched, else the learned classifier's 1 - P(benign) (0 without one).
    `gptkit prepare --filter-moderation T` drops documents scoring T or more."""
    matches: list[RuleMatch] = field(default_factory=list)
    """The word-list entries found (word, the text that spelt it, where, category)."""
    learned: float | None = None
    """The learned classifier's 1 - P(benign), or None without one."""

    def to_dict(self) -> dict[str, Any]:
        return {"flagged": self.flagged, "categories": self.categories, "category_scores": self.category_scores,
                "score": self.score, "matches": [asdict(m) for m in self.matches], "learned": self.learned}


class Moderator:
    """Rules and, optionally, a learned classifier (see the module docstring).

    rules: a `Rules`, True for the bundled list, False for none (the learned part alone); learned: a
    `LearnedClassifier`. A text is flagged when a rule matches or the classifier's score reaches its threshold.
    """

    def __init__(self, *, rules: Rules | bool = True, learned: LearnedClassifier | None = None) -> None:
        self.rules: Rules | None = Rules.bundled() if rules is True else rules or None
        self.learned = learned
        require(self.rules is not None or learned is not None, "a moderator needs rules, a learned classifier or both")
        known = [*(self.rules.categories if self.rules else ()), *(learned.categories if learned else ())]
        self.categories = tuple(dict.fromkeys(c for c in (*CATEGORIES, *known) if c in known))
        """The categories it reports: the rules' and those the classifier was trained on, never others."""

    def describe(self) -> str:
        parts = []
        if self.rules is not None:
            parts.append(f"rules ({len(self.rules)} words)")
        if self.learned is not None:
            parts.append(f"learned classifier (threshold {self.learned.threshold:.3g})")
        return " + ".join(parts)

    def moderate(self, texts: str | bytes | Sequence[str | bytes]) -> list[ModerationResult]:
        """A result per text (one text: a list of one)."""
        items = [texts] if isinstance(texts, (str, bytes, bytearray)) else list(texts)
        decoded = [as_text(t) for t in items]
        learned = self.learned.score(decoded) if self.learned is not None else [None] * len(decoded)
        return [self._result(text, score) for text, score in zip(decoded, learned)]

    def score(self, text: str | bytes) -> float:
        """The moderation score of one text (1.0 for a rule match: the classifier is then not run)."""
        text = as_text(text)
        if self.rules is not None and next(iter(self.rules.finditer(text)), None) is not None:
            return 1.0
        return self.moderate(text)[0].score

    def _result(self, text: str, learned: LearnedScore | None) -> ModerationResult:
        matches = self.rules.find(text) if self.rules is not None else []
        scores = dict.fromkeys(self.categories, 0.0)
        flags = dict.fromkeys(self.categories, False)
        for m in matches:
            scores[m.category], flags[m.category] = 1.0, True
        overall = 1.0 if matches else 0.0
        if learned is not None:
            assert self.learned is not None
            for c, p in learned.categories.items():
                scores[c] = max(scores[c], p)
                flags[c] = flags[c] or p >= self.learned.threshold
            if learned.offensive >= self.learned.threshold and learned.categories:  # flagged: its likeliest category
                top = max(learned.categories, key=learned.categories.__getitem__)
                flags[top] = True
            overall = max(overall, learned.offensive)
        return ModerationResult(flagged=bool(matches) or any(flags.values()), categories=flags,
                                category_scores=scores, score=overall, matches=matches,
                                learned=None if learned is None else learned.offensive)

    # --- output moderation (gptkit.inference.text.TextGuard) ---
    def watch(self) -> "ModerationWatch":
        """A watcher for one generated text (`SamplingParams(guard=moderator)`)."""
        return ModerationWatch(self)


class ModerationWatch:
    """Checks one growing text: the rules on its new words, the learned classifier on each finished sentence."""

    def __init__(self, moderator: Moderator) -> None:
        self.moderator = moderator
        self.rules_from = 0  # the rules have cleared the text before this
        self.learned_from = 0  # the classifier has cleared the text before this

    def check(self, text: str, final: bool) -> tuple[int | None, int]:
        cuts: list[int] = []
        rules, learned = self.moderator.rules, self.moderator.learned
        safe = len(text)
        if rules is not None:
            for m in rules.finditer(text, self.rules_from):
                if final or m.end < len(text):  # at the very end, the word may still go on
                    cuts.append(m.start)
                    break
            self.rules_from = max(self.rules_from, len(text) if final else rules.pending_start(text))
            safe = self.rules_from
        if learned is not None:
            spans = self._sentences(text, final, learned.chunk_chars)
            if spans:
                for (a, b), score in zip(spans, learned.score([text[a:b] for a, b in spans])):
                    if score.offensive >= learned.threshold:
                        cuts.append(a)
                        break
            safe = min(safe, self.learned_from)
        cut = min(cuts) if cuts else None
        return cut, (len(text) if cut is None and final else safe)

    def _sentences(self, text: str, final: bool, size: int) -> list[tuple[int, int]]:
        """The sentences finished since the last call (a long run without a sentence end is cut at `size`)."""
        spans = []
        start = self.learned_from
        for m in _SENTENCE_END.finditer(text, start):
            if m.end() < len(text) or final:
                spans.append((start, m.end()))
                start = m.end()
        while len(text) - start > size:
            cut = text.rfind(" ", start + size // 2, start + size) + 1 or start + size
            spans.append((start, cut))
            start = cut
        if final and start < len(text):
            spans.append((start, len(text)))
            start = len(text)
        self.learned_from = start
        return [(a + len(text[a:b]) - len(text[a:b].lstrip()), b) for a, b in spans if text[a:b].strip()]
