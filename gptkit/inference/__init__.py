"""Running a trained model: the sampler, the one decode batch, scoring of prompts; knows nothing of checkpoints, HTTP
or the CLI."""
