"""CheckList-style behavioural tests: they catch deliberately bad classifiers (negation ignored, keyed on names or
gender, brittle to typos) and pass a well-behaved hand-made one; the report's form; classifier adapters."""

import math
import random
import re

import numpy as np
import pytest
import torch

from gptkit.data.augment.counterfactual import lexicon_pairs
from gptkit.errors import GptkitError
from gptkit.evaluation.behavioural import (NEGATIVE_ADJECTIVES, NEGATIVE_VERBS, POSITIVE_ADJECTIVES, POSITIVE_VERBS,
                                           add_typo, behavioural_report, build_tests, dir_test,
                                           format_behavioural_report, inv, lower_spaced, mft, probabilities,
                                           run_tests)
from gptkit.prompting.classify import Prediction

LABELS = ["neg", "pos"]
POSITIVE_WORDS = {*POSITIVE_ADJECTIVES, *(w for pair in POSITIVE_VERBS for w in pair), "joy", "wonderful", "great"}
NEGATIVE_WORDS = {*NEGATIVE_ADJECTIVES, *(w for pair in NEGATIVE_VERBS for w in pair), "waste", "avoid", "awful",
                  "boring", "terrible"}
NEGATORS = {"not", "never", "no"}
TEXTS = ["the acting was good and he was charming .", "john's film is dull .", "a wonderful , moving story .",
         "she said it was awful .", "my brother loved the soundtrack ."]


def sorted_letters(word: str) -> str:
    return "".join(sorted(word))


def lexicon_classifier(*, negation: bool = True, typo_proof: bool = True, bias: set[str] = frozenset(),
                       bias_weight: float = 3.0):
    """A hand-made sentiment classifier: +1 per positive word, -1 per negative word, a negator flips the next
    polar word within three words (when `negation`), words matched by their letters in any order (when
    `typo_proof`: an adjacent swap keeps the letters), `bias_weight` added per word in `bias`."""
    key = sorted_letters if typo_proof else (lambda w: w)
    polarity = {key(w): 1 for w in POSITIVE_WORDS} | {key(w): -1 for w in NEGATIVE_WORDS}

    def classify(texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            words = re.findall(r"[a-z']+", text.lower())
            score, flip_within = 0.0, 0
            for word in words:
                value = polarity.get(key(word), 0)
                if value and flip_within:
                    value, flip_within = -value, 0
                score += value
                score += bias_weight * (word in bias or word.removesuffix("'s") in bias)
                if negation and (word in NEGATORS or word.endswith("n't")):
                    flip_within = 3
                else:
                    flip_within = max(0, flip_within - 1)
            p = 1 / (1 + math.exp(-2 * score))
            out.append([1 - p, p])
        return np.array(out)

    return classify


def report_of(classify, **options):
    return behavioural_report(classify, LABELS, positive="pos", texts=TEXTS, **options)


# --- the well-behaved classifier passes, the bad ones fail where they are bad ----------------------------


def test_a_well_behaved_classifier_passes_every_test():
    report = report_of(lexicon_classifier())
    assert set(report) == {"mft.vocabulary", "mft.negated_positive", "mft.negated_negative", "inv.typo",
                           "inv.name", "inv.gender", "dir.add_negative", "dir.add_positive"}
    for name, result in report.items():
        assert result["total"] > 0 and result["failures"] == 0, (name, result["examples"])
    assert report["inv.name"]["mean_abs_delta"] == 0.0


def test_bag_of_words_that_ignores_negation_fails_the_negation_tests_only():
    report = report_of(lexicon_classifier(negation=False))
    assert report["mft.negated_positive"]["failure_rate"] == 1.0
    assert report["mft.negated_negative"]["failure_rate"] == 1.0
    example = report["mft.negated_positive"]["examples"][0]
    assert example["expected"] == "negative" and example["predicted"] == "pos"
    assert " not " in example["text"] or "n't" in example["text"]
    for name in ("mft.vocabulary", "inv.name", "inv.gender", "dir.add_negative", "dir.add_positive"):
        assert report[name]["failures"] == 0, name


def test_a_classifier_keyed_on_names_fails_name_invariance():
    male_first = {a for a, _ in lexicon_pairs("names")}
    report = report_of(lexicon_classifier(bias=male_first))
    assert report["inv.name"]["failure_rate"] > 0.3  # the negative sentences turn positive with the first name
    assert report["inv.name"]["mean_abs_delta"] > 0.3
    assert report["inv.gender"]["failures"] == 0 and report["mft.negated_positive"]["failures"] == 0
    assert report_of(lexicon_classifier())["inv.name"]["failures"] == 0


def test_a_classifier_keyed_on_gender_fails_gender_invariance():
    report = report_of(lexicon_classifier(bias={"she", "her", "sister", "mother", "woman", "wife", "daughter"}))
    assert report["inv.gender"]["failure_rate"] > 0.3
    assert report["inv.name"]["failures"] == 0


def test_exact_word_matching_fails_the_typo_test():
    # Without texts the typos go into the templated sentences, where most words of four letters or more are polar.
    brittle = behavioural_report(lexicon_classifier(typo_proof=False), LABELS, positive="pos")["inv.typo"]
    assert brittle["failure_rate"] > 0.1  # about a fifth: typos in "movie" or "This" do no harm
    assert behavioural_report(lexicon_classifier(), LABELS, positive="pos")["inv.typo"]["failures"] == 0
    failure = brittle["examples"][0]
    assert failure["predicted"] != failure["predicted_original"]


def test_directional_tests_catch_a_classifier_that_reads_any_added_sentence_as_praise():
    generous = report_of(lambda texts: np.array([[0.0, 1.0] if " . " in t else [0.5, 0.5] for t in texts]))
    assert generous["dir.add_negative"]["failure_rate"] == 1.0
    assert generous["dir.add_positive"]["failures"] == 0


# --- the report, the builders, the adapters -------------------------------------------------------------


def test_report_entries_and_format():
    report = report_of(lexicon_classifier(negation=False), max_examples=2, max_cases=50)
    entry = report["mft.negated_positive"]
    assert entry["kind"] == "MFT" and entry["total"] == 50 and len(entry["examples"]) == 2
    assert entry["failure_rate"] == entry["failures"] / entry["total"]
    text = format_behavioural_report(report)
    assert "mft.negated_positive" in text and "100.0%" in text and "e.g." in text


def test_custom_tests_with_tolerance():
    classify = lambda texts: np.array([[0.45, 0.55] if "plus" in t else [0.5, 0.5] for t in texts])  # noqa: E731
    tests = [mft("m", "always positive?", ["a plus", "b"], "positive"),
             inv("i", "same label", [("a", "a plus"), ("b", "c")]),
             dir_test("d", "must not rise", [("a", "a plus")], "not_up")]
    strict = run_tests(classify, LABELS, tests, positive="pos", tolerance=0.0)
    assert [strict[n]["failures"] for n in "mid"] == [1, 1, 1]
    assert strict["i"]["mean_abs_delta"] == pytest.approx(0.025)
    assert run_tests(classify, LABELS, tests, positive="pos", tolerance=0.1)["d"]["failures"] == 0


def test_negated_negative_accepts_a_neutral_band():
    tests = [mft("n", "not negative", ["x"], "not_negative")]
    unsure = run_tests(lambda t: np.array([[0.6, 0.4]]), LABELS, tests, positive="pos")
    sure = run_tests(lambda t: np.array([[0.9, 0.1]]), LABELS, tests, positive="pos")
    assert unsure["n"]["failures"] == 0 and sure["n"]["failures"] == 1


def test_probabilities_take_arrays_tensors_and_predictions():
    as_array = lambda texts: np.array([[0.2, 0.8]] * len(texts))  # noqa: E731
    as_tensor = lambda texts: torch.tensor([[0.2, 0.8]] * len(texts), dtype=torch.float64)  # noqa: E731
    as_predictions = lambda texts: [Prediction("pos", {"pos": 0.8, "neg": 0.2}, {}) for _ in texts]  # noqa: E731
    for classify in (as_array, as_tensor, as_predictions):
        assert probabilities(classify, LABELS, ["a", "b", "c"], batch_size=2).tolist() == [[0.2, 0.8]] * 3
    with pytest.raises(GptkitError, match="no probability for label"):
        probabilities(as_predictions, ["neg", "neutral"], ["a"])
    with pytest.raises(GptkitError, match="one probability per label"):
        probabilities(lambda texts: np.zeros((len(texts), 3)), LABELS, ["a"])
    with pytest.raises(GptkitError, match="not one of the labels"):
        run_tests(as_array, LABELS, [], positive="1")


def test_suite_is_deterministic_and_styled():
    first = build_tests(TEXTS, style=lower_spaced, seed=3)
    assert first == build_tests(TEXTS, style=lower_spaced, seed=3)
    vocabulary = first[0].cases
    assert all(c.text == c.text.lower() and c.text.endswith(" .") for c in vocabulary)
    gender = next(t for t in first if t.name == "inv.gender")
    assert ("she said it was awful .", "he said it was awful .") in [(c.original, c.text) for c in gender.cases]
    assert lower_spaced("The film, I think, was good!") == "the film , i think , was good !"


def test_add_typo_swaps_two_adjacent_letters_of_one_word():
    typo = add_typo("The film was wonderful.", random.Random(0))
    assert typo != "The film was wonderful." and sorted(typo) == sorted("The film was wonderful.")
    assert len(typo) == len("The film was wonderful.")
    assert add_typo("a an it", random.Random(0)) is None
