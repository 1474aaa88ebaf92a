"""Prompting policies on a language model: zero/few-shot classification by label scoring (`classify`) and conditions rendered into prompts (`conditions`)."""
