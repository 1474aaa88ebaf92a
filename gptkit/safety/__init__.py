"""Safety: moderation of text (rules and a learned classifier, `moderation`) and the policies built on it
(`policy`: the training-data filter, the server's request guard, system prompts); knows nothing of HTTP."""
