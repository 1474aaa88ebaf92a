"""Measuring models: language-model loss and bits per byte (`lm`), classification reports (`classification`); knows
nothing of files or jobs."""
