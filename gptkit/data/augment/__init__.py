"""Data augmentation: transforms of labelled text that make new training rows (`counterfactual`: minimal edits
that flip or keep the label); knows nothing of models or training."""
