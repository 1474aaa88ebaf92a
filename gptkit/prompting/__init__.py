"""Prompting policies on a language model: zero/few-shot classification by label scoring (`classify`) and
conditions rendered into prompts (`conditions`); the names below are the ones a user imports."""

from gptkit.prompting.classify import (Prediction, PromptClassifier, PromptTemplate, ZeroShotClassifier,
                                       choose_examples, score_labels)
from gptkit.prompting.conditions import Condition, read_conditions, render_conditions

__all__ = ["Condition", "Prediction", "PromptClassifier", "PromptTemplate", "ZeroShotClassifier", "choose_examples",
           "read_conditions", "render_conditions", "score_labels"]
