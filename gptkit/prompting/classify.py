"""Zero/few-shot classification by scoring each label's continuation with the shared scoring path; knows nothing of
training or serving.

    from gptkit import LLM
    from gptkit.data.labelled import bundled_labelled, read_labelled, stratified_split
    from gptkit.prompting.classify import PromptClassifier, PromptTemplate, choose_examples

    llm = LLM.load("out/pretrain/tiny")
    train, val, test = stratified_split(read_labelled(bundled_labelled("sentiment")))
    template = PromptTemplate("Review: {text}\\nSentiment: {label}",
                              label_words={"-1": "negative", "1": "positive"})
    shots = choose_examples(train, k=4, seed=0)                 # 2 per label, in shuffled order
    classifier = PromptClassifier(llm, train.labels, template, shots=shots, calibrate=True)
    classifier.predict(["a charming , often affecting journey ."])   # -> ["1"]
    report = classifier.evaluate(test)                          # gptkit.evaluation.classification_report

Classification by scoring. Each label becomes a continuation (its verbalizer word, `label_words`) of the
prompt (instructions, the shots, then the text up to `{label}`); the model's log-likelihood of each
continuation (`gptkit.inference.scoring.loglikelihood`, what `LLM.loglikelihood_batch` uses; summed, or divided by its token count with normalize="mean")
goes through a softmax over the labels. Nothing is sampled, so the answer is always a valid label.

Calibration (Zhao et al. 2021, "Calibrate Before Use"): a model's label probabilities carry a prior
from the prompt itself (the shots' labels and order, words that are simply more frequent). We measure
it as the mean label distribution p_cf for content-free inputs ("N/A", "", "[MASK]") under the same
prompt, then divide every distribution by p_cf and renormalise (subtract log p_cf, softmax). A
content-free input then scores uniform.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import yaml

from gptkit.data.labelled import LabelledData, shuffled_rows_by_label
from gptkit.errors import GptkitError, require
from gptkit.evaluation.classification import classification_report
from gptkit.inference.scoring import encode_pair, loglikelihood
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer

Normalize = Literal["sum", "mean"]


class LanguageModel(Protocol):
    """What prompting needs of a model: `gptkit.LLM` is one."""

    model: GPT
    tokenizer: Tokenizer
Example = tuple[str, str]  # (text, label)

# Content-free inputs of Zhao et al. 2021: the prompt's prior with no information about the input.
CONTENT_FREE = ("N/A", "", "[MASK]")


# ------------------------------------------------------------------------------------------------
# templates


@dataclass(frozen=True)
class PromptTemplate:
    """How a (text, label) pair reads: `template` holds `{text}` and ends with `{label}`.

    `instructions` (if any) open the prompt; `example_separator` joins the instructions, the shots and
    the query; `label_words` maps a label to the word the model scores for it (default: the label).
    Literal braces are written `{{` and `}}`.
    """

    template: str = "{text}\nLabel: {label}"
    instructions: str = ""
    example_separator: str = "\n\n"
    label_words: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(isinstance(self.template, str), "template must be a string")
        try:
            parts = list(string.Formatter().parse(self.template))
        except ValueError as e:
            raise GptkitError(f"template {self.template!r} is malformed ({e}); write {{{{ and }}}} for literal "
                              "braces") from None
        names = [name for _, name, _, _ in parts if name is not None]
        unknown = sorted({n for n in names if n not in ("text", "label")})
        require(not unknown, f"template {self.template!r} has unknown field(s) {unknown}: only {{text}} and "
                             "{label} are filled in (write {{ and }} for literal braces)")
        for name in ("text", "label"):
            require(names.count(name) == 1, f"template {self.template!r} must contain {{{name}}} exactly once "
                                            f"(found {names.count(name)})")
        require(all(not spec and not conv for _, name, spec, conv in parts if name is not None),
                f"template {self.template!r}: write plain {{text}} and {{label}}, without format specs or "
                "conversions")
        # The label is the continuation being scored, so nothing may follow it.
        require(parts[-1][1] == "label", f"template {self.template!r} must end with {{label}}: the label is the "
                                         "continuation whose likelihood is scored, so nothing may follow it")
        require(isinstance(self.label_words, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.label_words.items()),
            "label_words must map label strings to word strings")
        empty = sorted(k for k, v in self.label_words.items() if not v.strip())
        require(not empty, f"label_words gives label(s) {empty} an empty word")
        for name in ("instructions", "example_separator"):
            require(isinstance(getattr(self, name), str), f"{name} must be a string")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PromptTemplate":
        """From a dict (e.g. YAML/JSON) with keys template, instructions, example_separator, label_words."""
        require(isinstance(data, Mapping), f"a prompt template must be a mapping, got {type(data).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        require(not unknown, f"unknown prompt template key(s) {unknown}; allowed: {', '.join(allowed)}")
        words = data.get("label_words", {})
        require(isinstance(words, Mapping), "label_words must be a mapping from label to word")
        # YAML reads `1: positive` with an integer key; labels are strings everywhere else.
        return cls(**{**data, "label_words": {str(k): v for k, v in words.items()}})

    @classmethod
    def from_file(cls, path: str | Path) -> "PromptTemplate":
        """From a .yaml/.yml or .json file holding the `from_dict` mapping."""
        path = Path(path)
        require(path.is_file(), f"no prompt template file at {path}")
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise GptkitError(f"{path} could not be parsed: {e}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template, "instructions": self.instructions,
                "example_separator": self.example_separator, "label_words": dict(self.label_words)}

    def word(self, label: str) -> str:
        """The verbalizer of `label`: its label word, or the label itself."""
        return self.label_words.get(label, label)

    def render_example(self, text: str, label: str) -> str:
        """A solved example: the template with its text and its label's word."""
        return self.template.format(text=text, label=self.word(label))

    def render_query(self, text: str) -> str:
        """The template up to `{label}` (which is last), with `text` filled in."""
        return self.template.format(text=text, label="")


def few_shot_prompt(template: PromptTemplate, examples: Sequence[Example], text: str,
                    labels: Sequence[str] | None = None) -> tuple[str, dict[str, str]]:
    """(context, {label: continuation}): instructions, solved examples and the query, then each label's word.

    `labels` defaults to the keys of `template.label_words`, else the sorted labels of `examples`.
    """
    if labels is None:
        labels = list(template.label_words) or sorted({label for _, label in examples})
    require(len(labels) > 0, "no labels to score: pass labels=[...] (or give the template label_words)")
    continuations = {label: template.word(label) for label in labels}
    words = list(continuations.values())
    clash = sorted({w for w in words if words.count(w) > 1})
    require(not clash, f"labels share the label word(s) {clash}, so they cannot be told apart; give each its own "
                       "word in label_words")
    parts = [template.instructions] if template.instructions else []
    parts += [template.render_example(t, label) for t, label in examples]
    parts.append(template.render_query(text))
    return template.example_separator.join(parts), continuations


def choose_examples(train: LabelledData, k: int, seed: int = 0, balanced: bool = True) -> list[Example]:
    """k (text, label) shots from `train`, in a seeded random order.

    Balanced: a round over the labels (in a seeded random order) takes one row of each, then the next
    round, until k, so label counts differ by at most one while every label has rows left. Otherwise a
    plain random sample.
    """
    require(0 <= k <= len(train), f"cannot choose {k} examples from {len(train)} rows")
    rng = random.Random(seed)
    if balanced:
        by_label = {label: rows for label, rows in shuffled_rows_by_label(train, seed).items() if rows}
        order = sorted(by_label)
        rng.shuffle(order)  # which labels get the extra shot when k is not a multiple is up to the seed
        chosen: list[int] = []
        depth = 0
        while len(chosen) < k:
            chosen += [by_label[label][depth] for label in order if depth < len(by_label[label])][:k - len(chosen)]
            depth += 1
        rng.shuffle(chosen)  # shots grouped by label bias the model towards the last group
    else:
        chosen = rng.sample(range(len(train)), k)
    return [(train.texts[i], train.row_labels[i]) for i in chosen]


# ------------------------------------------------------------------------------------------------
# scoring


@dataclass(frozen=True)
class Prediction:
    """A classified text: the most probable label, every label's probability and raw score."""

    label: str
    probs: dict[str, float]
    scores: dict[str, float]  # log-likelihood of each label's word (per token with normalize="mean")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def label_scores(llm: LanguageModel, texts: Sequence[str], labels: Sequence[str], template: PromptTemplate,
                 shots: Sequence[Example] = (), normalize: Normalize = "sum", batch_size: int = 16) -> np.ndarray:
    """[len(texts), len(labels)] log-likelihoods of each label's word after each text's prompt.

    One `loglikelihood_batch` call for every (text, label) pair. normalize="mean" divides by the
    continuation's token count (as `loglikelihood_batch` tokenises it), so long label words are not
    penalised for their length.
    """
    require(normalize in ("sum", "mean"), f"normalize must be 'sum' or 'mean', got {normalize!r}")
    require(len(labels) > 0, "no labels to score")
    requests: list[tuple[str, str]] = []
    for text in texts:
        context, continuations = few_shot_prompt(template, shots, text, labels)
        requests += [(context, continuations[label]) for label in labels]
    pairs = [encode_pair(llm.tokenizer, context, continuation) for context, continuation in requests]
    results = loglikelihood(llm.model, llm.tokenizer, pairs, batch_size=batch_size)
    scores = np.array([logprob for logprob, _ in results], dtype=np.float64).reshape(len(texts), len(labels))
    if normalize == "mean":
        # The API's own split of context and continuation, so the count matches the tokens scored.
        counts = [len(continuation) for _, continuation in pairs]
        scores = scores / np.array(counts, dtype=np.float64).reshape(scores.shape)
    return scores


def content_free_prior(llm: LanguageModel, labels: Sequence[str], template: PromptTemplate, shots: Sequence[Example] = (),
                       normalize: Normalize = "sum", content_free: Sequence[str] = CONTENT_FREE,
                       batch_size: int = 16) -> np.ndarray:
    """p_cf: the mean label distribution over the content-free inputs, under the same prompt."""
    require(len(content_free) > 0, "calibration needs at least one content-free input")
    probs = _softmax(label_scores(llm, content_free, labels, template, shots, normalize, batch_size))
    return probs.mean(axis=0)


def calibrated_probs(scores: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """softmax(scores) / prior, renormalised: log-space subtraction of the prompt's label prior."""
    # A prior that underflowed to 0 would divide by zero; the smallest float keeps it finite and decisive.
    return _softmax(scores - np.log(np.maximum(prior, np.finfo(np.float64).tiny)))


def score_labels(llm: LanguageModel, texts: Sequence[str], labels: Sequence[str], template: PromptTemplate,
                 shots: Sequence[Example] = (), calibrate: bool = False, normalize: Normalize = "sum", *,
                 content_free: Sequence[str] = CONTENT_FREE, batch_size: int = 16) -> list[Prediction]:
    """Classify each text by the probability of each label's word after the (few-shot) prompt."""
    labels = list(labels)
    require(len(set(labels)) == len(labels), f"labels repeat: {labels}")
    scores = label_scores(llm, texts, labels, template, shots, normalize, batch_size)
    prior = content_free_prior(llm, labels, template, shots, normalize, content_free, batch_size) if calibrate else None
    return _predictions(labels, scores, prior)


def _predictions(labels: list[str], scores: np.ndarray, prior: np.ndarray | None) -> list[Prediction]:
    probs = _softmax(scores) if prior is None else calibrated_probs(scores, prior)
    return [Prediction(labels[int(np.argmax(p))], dict(zip(labels, map(float, p))), dict(zip(labels, map(float, s))))
            for p, s in zip(probs, scores)]


@dataclass
class PromptClassifier:
    """A zero- or few-shot classifier: a model, the labels, a template and shots (see `score_labels`)."""

    llm: LanguageModel
    labels: Sequence[str]
    template: PromptTemplate = field(default_factory=PromptTemplate)
    shots: Sequence[Example] = ()
    calibrate: bool = False
    normalize: Normalize = "sum"
    content_free: Sequence[str] = CONTENT_FREE
    batch_size: int = 16
    _prior: np.ndarray | None = field(default=None, init=False, repr=False)

    def prior(self) -> dict[str, float]:
        """The content-free label prior p_cf (computed once per classifier)."""
        if self._prior is None:
            self._prior = content_free_prior(self.llm, self.labels, self.template, self.shots, self.normalize,
                                             self.content_free, self.batch_size)
        return dict(zip(self.labels, map(float, self._prior)))

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        """A `Prediction` per text."""
        labels = list(self.labels)
        scores = label_scores(self.llm, texts, labels, self.template, self.shots, self.normalize, self.batch_size)
        if self.calibrate:
            self.prior()  # computes self._prior once
        return _predictions(labels, scores, self._prior if self.calibrate else None)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The predicted label of each text."""
        return [p.label for p in self.classify(texts)]

    def evaluate(self, data: LabelledData) -> dict[str, Any]:
        """`classification_report` of this classifier's predictions on `data` (over `data.labels`)."""
        outside = sorted(set(self.labels) - set(data.labels))
        require(not outside, f"the classifier's label(s) {outside} are not in the data's labels {data.labels}")
        index = {label: i for i, label in enumerate(data.labels)}
        predicted = [index[label] for label in self.predict(data.texts)]
        return classification_report(data.label_ids, predicted, list(data.labels))


ZeroShotClassifier = PromptClassifier  # the usual name; with shots it is a few-shot classifier
