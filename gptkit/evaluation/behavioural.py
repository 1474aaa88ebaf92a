"""Behavioural tests of a sentiment classifier in the manner of CheckList (Ribeiro et al. 2020): minimum
functionality, invariance and directional tests with their failure rates; knows nothing of models or checkpoints:
a classifier is a function from texts to label probabilities.

    from gptkit.evaluation.behavioural import behavioural_report, format_behavioural_report, lower_spaced
    llm = LLM.load("out/ft/sentiment")
    report = behavioural_report(llm.classify, labels=["-1", "1"], positive="1", texts=test.texts, style=lower_spaced)
    report["mft.negated_positive"]   # {"kind": "MFT", "failures": 12, "total": 240, "failure_rate": 0.05, ...}
    print(format_behavioural_report(report))

`classify(texts)` may return an (N, labels) array or tensor of probabilities, or a list of objects with a `probs`
mapping from label to probability (what `LLM.classify` returns); `labels` says which column is which. A model
directly: `classify=lambda texts: predict_labels(model, tokenizer, texts)` (`gptkit.finetune.spec`), or any
scikit-learn pipeline's `predict_proba`.

The tests (`build_tests`):

  mft.vocabulary        MFT  "The {thing} was {adjective}.", "I {liked} this {thing}." with positive and negative
                             words: the prediction is the word's polarity
  mft.negated_positive  MFT  "The {thing} was not {positive}.", "This {thing} isn't ...", "I didn't {like} this
                             {thing}.": the prediction is negative
  mft.negated_negative  MFT  the same with negative words: the prediction is not negative, or unsure (p(positive)
                             at least 1/3, CheckList's neutral band for binary models)
  inv.typo              INV  the given `texts` (or the templated sentences) with two adjacent letters of one word
                             swapped: the predicted label does not change
  inv.name              INV  "{name} said the {thing} was {adjective}." with the name swapped, and `texts` holding
                             names swapped by the counterfactual name rule: the label does not change
  inv.gender            INV  "He/She said ...", "My brother/sister ...", and `texts` swapped by the gender rule: the
                             label does not change
  dir.add_negative      DIR  a negative sentence appended ("I hated it."): p(positive) does not rise by more than
                             `tolerance`
  dir.add_positive      DIR  a positive sentence appended ("I loved it."): p(positive) does not fall by more than
                             `tolerance`

`tolerance` is 0.1, CheckList's for its sentiment directional tests. Templates are written in ordinary English;
`style` rewrites every text built from a template before it is classified (`lower_spaced` matches the bundled
review sentences: lower case, punctuation split off). Cases are drawn deterministically from `seed`.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gptkit.data.augment.counterfactual import apply_rule, lexicon_pairs
from gptkit.errors import require

Classify = Callable[[list[str]], Any]
TestKind = Literal["MFT", "INV", "DIR"]

THINGS = ("movie", "film", "story", "plot", "acting", "script", "ending", "cast", "soundtrack", "dialogue")
POSITIVE_ADJECTIVES = ("good", "great", "excellent", "wonderful", "brilliant", "enjoyable", "funny", "charming",
                       "beautiful", "amazing")
NEGATIVE_ADJECTIVES = ("bad", "terrible", "awful", "boring", "dull", "stupid", "weak", "tedious", "ugly",
                       "dreadful")
# (past tense, base form): "I liked this film." / "I didn't like this film."
POSITIVE_VERBS = (("liked", "like"), ("loved", "love"), ("enjoyed", "enjoy"), ("admired", "admire"))
NEGATIVE_VERBS = (("hated", "hate"), ("disliked", "dislike"), ("despised", "despise"), ("regretted", "regret"))
NEGATIVE_PHRASES = ("I hated it.", "It was a waste of time.", "The ending was awful.", "Avoid it.",
                    "It was boring.", "What a terrible film.")
POSITIVE_PHRASES = ("I loved it.", "It was a joy to watch.", "The ending was wonderful.", "See it.",
                    "It was brilliant.", "What a great film.")
GENDER_FRAMES = (("He", "She"), ("My brother", "My sister"), ("My father", "My mother"), ("The man", "The woman"),
                 ("My husband", "My wife"), ("My son", "My daughter"))
NEUTRAL_BAND = 1 / 3  # CheckList: a binary model is "neutral" when p(positive) lies within [1/3, 2/3]


def lower_spaced(text: str) -> str:
    """Lower case with sentence punctuation split off ("The film was good." -> "the film was good ."), the style
    of the bundled review sentences (Pang & Lee)."""
    return re.sub(r"(?<=\S)([.,!?;:])(?=\s|$)", r" \1", text.lower())


# ------------------------------------------------------------------------------------------------
# cases and tests


@dataclass(frozen=True)
class Case:
    """One check: an MFT case has `text` and `expect`; INV and DIR cases compare `text` with `original`."""

    text: str
    expect: str | None = None  # MFT: "positive", "negative" or "not_negative"
    original: str | None = None  # INV/DIR: the unperturbed text


@dataclass
class BehaviouralTest:
    name: str
    kind: TestKind
    description: str
    cases: list[Case] = field(default_factory=list)


def mft(name: str, description: str, texts: Sequence[str], expect: str) -> BehaviouralTest:
    """A minimum-functionality test: each text's prediction must be `expect` ("positive", "negative" or
    "not_negative": anything but a confident negative)."""
    require(expect in ("positive", "negative", "not_negative"), f"expect must be positive, negative or "
                                                                f"not_negative, got {expect!r}")
    return BehaviouralTest(name, "MFT", description, [Case(t, expect=expect) for t in texts])


def inv(name: str, description: str, pairs: Sequence[tuple[str, str]]) -> BehaviouralTest:
    """An invariance test: each (original, perturbed) pair must get the same predicted label."""
    return BehaviouralTest(name, "INV", description, [Case(p, original=o) for o, p in pairs])


def dir_test(name: str, description: str, pairs: Sequence[tuple[str, str]],
             direction: Literal["not_up", "not_down"]) -> BehaviouralTest:
    """A directional test: p(positive) of each perturbed text must not rise ("not_up") or fall ("not_down")
    against its original's by more than the tolerance."""
    require(direction in ("not_up", "not_down"), f"direction must be not_up or not_down, got {direction!r}")
    return BehaviouralTest(name, "DIR", description, [Case(p, expect=direction, original=o) for o, p in pairs])


def add_typo(text: str, rng: random.Random) -> str | None:
    """`text` with two adjacent, different letters swapped inside one word of four or more letters."""
    words = list(re.finditer(r"[A-Za-z]{4,}", text))
    rng.shuffle(words)
    for word in words:
        spots = [i for i in range(word.start(), word.end() - 1) if text[i] != text[i + 1]]
        if spots:
            i = rng.choice(spots)
            return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    return None


def _sample(items: list[Any], limit: int, rng: random.Random) -> list[Any]:
    return items if len(items) <= limit else rng.sample(items, limit)


def build_tests(texts: Sequence[str] = (), *, style: Callable[[str], str] = lambda t: t, seed: int = 0,
                max_cases: int = 400) -> list[BehaviouralTest]:
    """The CheckList-style suite (see the module docstring); `texts` (e.g. a held-out split) feed the typo,
    name, gender and directional tests besides the templates. At most `max_cases` cases per test."""
    require(max_cases >= 1, f"max_cases must be at least 1, got {max_cases}")
    rng = random.Random(f"behavioural/{seed}")
    texts = [t for t in texts if t.strip()]

    def sentences(adjectives: Sequence[str], verbs: Sequence[tuple[str, str]], negated: bool) -> list[str]:
        made = []
        for thing in THINGS:
            for adjective in adjectives:
                made.append(f"The {thing} was not {adjective}." if negated else f"The {thing} was {adjective}.")
                made.append(f"This {thing} isn't {adjective}." if negated else f"This {thing} is {adjective}.")
            for past, base in verbs:
                made.append(f"I didn't {base} this {thing}." if negated else f"I {past} this {thing}.")
        return [style(s) for s in made]

    positive = sentences(POSITIVE_ADJECTIVES, POSITIVE_VERBS, negated=False)
    negative = sentences(NEGATIVE_ADJECTIVES, NEGATIVE_VERBS, negated=False)
    tests = [
        BehaviouralTest("mft.vocabulary", "MFT", "plain positive and negative sentences get their polarity",
                        [Case(t, expect="positive") for t in _sample(positive, max_cases // 2, rng)]
                        + [Case(t, expect="negative") for t in _sample(negative, max_cases // 2, rng)]),
        mft("mft.negated_positive", "a negated positive word is negative ('The film was not good.')",
            _sample(sentences(POSITIVE_ADJECTIVES, POSITIVE_VERBS, negated=True), max_cases, rng), "negative"),
        mft("mft.negated_negative", "a negated negative word is positive or neutral ('The film was not bad.')",
            _sample(sentences(NEGATIVE_ADJECTIVES, NEGATIVE_VERBS, negated=True), max_cases, rng),
            "not_negative"),
    ]

    base = texts or positive + negative
    typos = [(t, typo) for t in base if (typo := add_typo(t, random.Random(f"{seed}/typo/{t}"))) is not None]
    tests.append(inv("inv.typo", "one typo (two adjacent letters swapped) keeps the label",
                     _sample(typos, max_cases, rng)))

    names = list(lexicon_pairs("names"))
    templated_names = [(style(f"{a.title()} said the {thing} was {adjective}."),
                        style(f"{b.title()} said the {thing} was {adjective}."))
                       for (a, b), thing, adjective in zip(names, itertools.cycle(THINGS),
                                                           itertools.cycle(POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES))]
    tests.append(inv("inv.name", "swapping a person's name keeps the label",
                     _sample(_swapped(texts, "name") + templated_names, max_cases, rng)))

    templated_gender = [(style(f"{he} said the {thing} was {adjective}."),
                         style(f"{she} said the {thing} was {adjective}."))
                        for (he, she), thing, adjective in itertools.product(
                            GENDER_FRAMES, THINGS[:4], POSITIVE_ADJECTIVES[:4] + NEGATIVE_ADJECTIVES[:4])]
    tests.append(inv("inv.gender", "swapping gendered words (he/she, brother/sister, ...) keeps the label",
                     _sample(_swapped(texts, "gender") + templated_gender, max_cases, rng)))

    def appended(phrases: Sequence[str]) -> list[tuple[str, str]]:
        return [(t, t.rstrip() + " " + style(phrases[i % len(phrases)])) for i, t in enumerate(base)]

    tests.append(dir_test("dir.add_negative", "appending a negative sentence does not raise p(positive)",
                          _sample(appended(NEGATIVE_PHRASES), max_cases, rng), "not_up"))
    tests.append(dir_test("dir.add_positive", "appending a positive sentence does not lower p(positive)",
                          _sample(appended(POSITIVE_PHRASES), max_cases, rng), "not_down"))
    return tests


def _swapped(texts: Sequence[str], rule: str) -> list[tuple[str, str]]:
    return [(t, edited[0]) for t in texts if (edited := apply_rule(rule, t)) is not None]


# ------------------------------------------------------------------------------------------------
# running


def probabilities(classify: Classify, labels: Sequence[str], texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """(N, len(labels)) probabilities of `classify` on `texts`, in batches; accepts arrays, tensors or
    Prediction-like objects (a `probs` mapping from label to probability)."""
    rows: list[np.ndarray] = []
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        out = classify(chunk)
        if len(out) and hasattr(out[0], "probs"):
            missing = sorted(set(labels) - set(out[0].probs))
            require(not missing, f"the classifier's predictions have no probability for label(s) {missing}; "
                                 f"pass the labels it predicts ({sorted(out[0].probs)})")
            array = np.array([[float(p.probs[label]) for label in labels] for p in out], dtype=np.float64)
        else:
            array = np.asarray(out.detach().cpu() if hasattr(out, "detach") else out, dtype=np.float64)
        require(array.shape == (len(chunk), len(labels)),
                f"the classifier returned shape {array.shape} for {len(chunk)} texts and {len(labels)} labels; "
                "it must return one probability per label for each text")
        rows.append(array)
    return np.concatenate(rows) if rows else np.zeros((0, len(labels)))


def run_tests(classify: Classify, labels: Sequence[str], tests: Sequence[BehaviouralTest], *, positive: str,
              negative: str | None = None, tolerance: float = 0.1, max_examples: int = 5,
              batch_size: int = 256) -> dict[str, dict[str, Any]]:
    """{test name: {kind, description, failures, total, failure_rate, examples}} (INV and DIR tests also give
    mean_abs_delta, the mean |Δ p(positive)|); every distinct text is classified once."""
    labels = list(labels)
    require(positive in labels, f"positive={positive!r} is not one of the labels {labels}")
    if negative is None:
        require(len(labels) == 2, f"with {len(labels)} labels, say which is negative (negative=...)")
        negative = next(label for label in labels if label != positive)
    require(negative in labels and negative != positive,
            f"negative={negative!r} must be one of the labels {labels}, other than positive")
    require(0 <= tolerance < 1, f"tolerance must be in [0, 1), got {tolerance}")
    texts = sorted({t for test in tests for case in test.cases for t in (case.text, case.original) if t is not None})
    probs = probabilities(classify, labels, texts, batch_size)
    row = {t: i for i, t in enumerate(texts)}
    pos = labels.index(positive)

    def predicted(text: str) -> str:
        return labels[int(probs[row[text]].argmax())]

    def p_positive(text: str) -> float:
        return float(probs[row[text], pos])

    report: dict[str, dict[str, Any]] = {}
    for test in tests:
        failed: list[dict[str, Any]] = []
        deltas: list[float] = []
        for case in test.cases:
            label, p = predicted(case.text), p_positive(case.text)
            if test.kind == "MFT":
                ok = {"positive": label == positive, "negative": label == negative,
                      "not_negative": label != negative or p >= NEUTRAL_BAND}[case.expect or ""]
                detail = {"text": case.text, "expected": case.expect, "predicted": label, "p_positive": round(p, 4)}
            else:
                assert case.original is not None
                before = p_positive(case.original)
                delta = p - before
                deltas.append(abs(delta))
                if test.kind == "INV":
                    ok = label == predicted(case.original)
                else:
                    ok = delta <= tolerance if case.expect == "not_up" else delta >= -tolerance
                detail = {"original": case.original, "text": case.text, "predicted_original": predicted(case.original),
                          "predicted": label, "p_positive_original": round(before, 4), "p_positive": round(p, 4)}
            if not ok:
                failed.append(detail)
        total = len(test.cases)
        result: dict[str, Any] = {"kind": test.kind, "description": test.description, "failures": len(failed),
                                  "total": total, "failure_rate": len(failed) / total if total else 0.0,
                                  "examples": failed[:max_examples]}
        if test.kind != "MFT":
            result["mean_abs_delta"] = float(np.mean(deltas)) if deltas else 0.0
        report[test.name] = result
    return report


def behavioural_report(classify: Classify, labels: Sequence[str], *, positive: str, negative: str | None = None,
                       texts: Sequence[str] = (), style: Callable[[str], str] = lambda t: t, seed: int = 0,
                       max_cases: int = 400, tolerance: float = 0.1,
                       max_examples: int = 5) -> dict[str, dict[str, Any]]:
    """Build the suite (`build_tests`) and run it on `classify` (`run_tests`)."""
    tests = build_tests(texts, style=style, seed=seed, max_cases=max_cases)
    return run_tests(classify, labels, tests, positive=positive, negative=negative, tolerance=tolerance,
                     max_examples=max_examples)


def format_behavioural_report(report: dict[str, dict[str, Any]], examples: int = 1) -> str:
    """A table of the tests' failure rates, with up to `examples` failing cases under each."""
    lines = [f"{'test':<22} {'kind':<4} {'failed':>7} {'total':>6} {'rate':>7}  description"]
    for name, result in report.items():
        lines.append(f"{name:<22} {result['kind']:<4} {result['failures']:>7} {result['total']:>6} "
                     f"{100 * result['failure_rate']:>6.1f}%  {result['description']}")
        for example in result["examples"][:examples]:
            shown = {k: v for k, v in example.items() if k != "original"}
            lines.append(f"{'':<22} e.g. {shown}")
    return "\n".join(lines)
