"""The attack suite: the DeepWordBug-style character attack on any texts -> probabilities function, and
embedding-space PGD on a gptkit classifier."""

import random

import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.evaluation.robustness import (
    EDITS,
    attack_summary,
    char_attack,
    edit_word,
    embedding_pgd,
    levenshtein,
    random_char_edits,
)
from gptkit.models.gpt import GPT
from gptkit.models.heads import SequenceClassifier

POSITIVE = {"good", "great", "superb"}


@pytest.fixture(autouse=True)
def one_thread():
    """A model this small runs fastest on one thread; on a busy machine two threads are 20x slower (sync waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def keyword_classifier(texts: list[str]) -> list[list[float]]:
    """P(positive) rises with the number of positive keywords spelled right: 0.2, 0.7, 0.9, 0.97 ..."""
    probs = []
    for text in texts:
        hits = sum(word in POSITIVE for word in text.lower().split())
        p = 1 - 0.8 * 0.375 ** hits
        probs.append([1 - p, p])
    return probs


TEXTS = ["the film was good and the cast was fun", "a great , superb story", "dull and slow", "good good great"]
LABELS = [1, 1, 0, 1]


def test_levenshtein_counts_single_character_edits():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("good", "godo") == 2 and levenshtein("good", "god") == 1 and levenshtein("", "abc") == 3
    rng = random.Random(0)
    for edit in EDITS:
        new = edit_word("keyboard", edit, rng)
        assert new != "keyboard" and levenshtein("keyboard", new) == (2 if edit == "swap" else 1), (edit, new)


def test_the_attack_flips_a_keyword_classifier_within_its_edit_budget():
    results = char_attack(keyword_classifier, TEXTS[:1], LABELS[:1], max_edits=2, seed=0)
    r = results[0]
    assert r.success and r.predicted == 0 and not r.skipped
    assert "good" not in r.perturbed.split() and r.words_changed == 1 and r.words == 9
    assert r.edit_distance == levenshtein(r.text, r.perturbed) <= 2
    assert r.share_perturbed == pytest.approx(1 / 9)
    # queries: the original, 9 texts with one word removed each, then one batch of candidate edits
    assert 1 + 9 < r.queries <= 1 + 9 + len(EDITS)


@pytest.mark.parametrize("budget", [0, 1, 2, 3, 6])
def test_the_edit_budget_is_never_exceeded(budget):
    for r in char_attack(keyword_classifier, TEXTS, LABELS, max_edits=budget, seed=1):
        assert levenshtein(r.text, r.perturbed) == r.edit_distance <= budget
        if budget == 0:
            assert r.perturbed == r.text and not r.success


def test_a_text_that_needs_more_edits_than_the_budget_survives():
    """'a great , superb story' needs both keywords broken (one edit each) before P(positive) < 0.5."""
    assert not char_attack(keyword_classifier, [TEXTS[1]], [1], max_edits=1)[0].success
    assert char_attack(keyword_classifier, [TEXTS[1]], [1], max_edits=2)[0].success


def test_the_attack_is_deterministic_under_a_seed():
    a = [r.to_dict() for r in char_attack(keyword_classifier, TEXTS, LABELS, max_edits=3, seed=7)]
    b = [r.to_dict() for r in char_attack(keyword_classifier, TEXTS, LABELS, max_edits=3, seed=7)]
    assert a == b


def test_misclassified_texts_are_skipped_and_the_summary_counts_them_wrong():
    results = char_attack(keyword_classifier, TEXTS, [1, 1, 1, 1], max_edits=2)  # "dull and slow" is wrong already
    assert results[2].skipped and not results[2].success and results[2].queries == 1
    summary = attack_summary(results)
    assert summary["clean_accuracy"] == 0.75
    broken = sum(r.success for r in results)
    assert summary["accuracy_under_attack"] == (3 - broken) / 4
    assert summary["attack_success_rate"] == broken / 3


def test_predictions_with_probs_mappings_are_read_in_label_order():
    """`LLM.classify` returns predictions with a `probs` dict (label -> probability), in the head's label order."""
    class Prediction:
        def __init__(self, p):
            self.probs = {"-1": p[0], "1": p[1]}

    as_predictions = lambda texts: [Prediction(p) for p in keyword_classifier(texts)]
    a = [r.to_dict() for r in char_attack(as_predictions, TEXTS, LABELS, max_edits=2)]
    assert a == [r.to_dict() for r in char_attack(keyword_classifier, TEXTS, LABELS, max_edits=2)]


def test_random_character_noise_stays_within_its_budget():
    rng = random.Random(3)
    for text in TEXTS * 5:
        for budget in (0, 1, 2, 4):
            noisy = random_char_edits(text, budget, rng)
            assert levenshtein(text, noisy) <= budget and (budget or noisy == text)


def test_bad_attack_settings_are_refused():
    with pytest.raises(GptkitError, match="max_edits"):
        char_attack(keyword_classifier, TEXTS, LABELS, max_edits=-1)
    with pytest.raises(GptkitError, match="edits"):
        char_attack(keyword_classifier, TEXTS, LABELS, edits=["scramble"])
    with pytest.raises(GptkitError, match="probabilities"):
        char_attack(lambda texts: [0.5] * len(texts), TEXTS, LABELS)


def test_embedding_pgd_lowers_accuracy_as_the_budget_grows():
    torch.manual_seed(0)
    model = SequenceClassifier(GPT(ModelConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16)),
                               ["a", "b"])
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 30, (int(n),), generator=g).tolist() for n in torch.randint(2, 10, (40,), generator=g)]
    with torch.no_grad():  # label each row by the model's own prediction: clean accuracy 100%
        labels = [int(model(torch.tensor([r]), torch.tensor([len(r)])).argmax()) for r in rows]
    none = embedding_pgd(model, rows, labels, epsilon=0.0, steps=2)
    assert none["clean_accuracy"] == 1.0 and none["accuracy_under_attack"] == 1.0
    weak = embedding_pgd(model, rows, labels, epsilon=0.05, steps=5, norm="linf")
    strong = embedding_pgd(model, rows, labels, epsilon=2.0, steps=5)
    assert strong["accuracy_under_attack"] <= weak["accuracy_under_attack"] <= 1.0
    assert strong["accuracy_under_attack"] < 0.5 and model.training  # the mode is restored
