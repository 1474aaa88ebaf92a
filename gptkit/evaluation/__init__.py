"""Measuring models: language-model loss and bits per byte (`lm`), classification reports (`classification`),
robustness under attack (`robustness`: embedding-space PGD, a character-level attack), CheckList-style behavioural
tests (`behavioural`); knows nothing of files or jobs."""
