"""The one training loop and the tasks that plug into it."""

from gptkit.training.loop import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
