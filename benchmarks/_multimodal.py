"""What the multimodal benchmarks share: train a small GPT + encoder through the one loop, score greedy answers
on a held-out split, and the blind controls (media zeroed, media shuffled across the examples)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptkit.config import ModelConfig
from gptkit.data.multimodal import MediaExamples
from gptkit.finetune.multimodal import build_multimodal, load_multimodal
from gptkit.models.gpt import GPT
from gptkit.models.multimodal import MultimodalConfig
from gptkit.tokenizer import Tokenizer
from gptkit.training.loop import TrainConfig, train
from gptkit.training.tasks.multimodal import MultimodalTask, answer_scores


@dataclass
class Run:
    """A trained model's place on disk and what it cost."""

    best_dir: Path
    seconds: float
    trainable: int
    classes: list | None = None
    """Late fusion: the answers that are its classes."""


def accuracy(model, data: MediaExamples, pad_id: int = 0, classes=None) -> float:
    _, correct = answer_scores(model, data, pad_id=pad_id, classes=classes)
    return sum(correct) / len(correct)


def train_model(config: MultimodalConfig, tokenizer: Tokenizer, train_set: MediaExamples, val_set: MediaExamples, *,
                steps: int, run_dir: Path, width: int = 64, layers: int = 2, block_size: int = 64,
                batch_size: int = 64, lr: float = 3e-3, seed: int = 0, augment=None, classes=None) -> Run:
    """A fresh `width`-wide GPT with `config`'s encoder and projector, trained on `train_set`; best by val accuracy."""
    torch.manual_seed(seed)
    gpt = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=layers, n_head=4,
                          n_embd=width))
    model = build_multimodal(gpt, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    task = MultimodalTask(train_set, val_set, batch_size=batch_size, pad_id=0, seed=seed, augment=augment,
                          classes=classes)
    started = time.perf_counter()
    train(model, task, TrainConfig(max_iters=steps, learning_rate=lr, warmup_iters=min(50, steps // 10),
                                   eval_interval=max(steps // 5, 1), weight_decay=0.0, seed=seed),
          tokenizer=tokenizer, run_dir=run_dir, quiet=True)
    return Run(run_dir / "best", time.perf_counter() - started, trainable, classes)


def scored_rows(name: str, run: Run, test: MediaExamples, *, what: str = "media") -> list[dict]:
    """The trained model's test accuracy, and the same with the test media zeroed and shuffled (blind controls)."""
    best, _ = load_multimodal(run.best_dir)
    shuffled = test.with_media(test.media[np.random.default_rng(0).permutation(len(test))])
    zeroed = test.with_media(np.zeros_like(test.media))
    c = run.classes
    return [{"method": name, "test accuracy": f"{accuracy(best, test, classes=c):.3f}",
             "parameters trained": f"{run.trainable:,}", "train time s": f"{run.seconds:.0f}"},
            {"method": f"  blind: {what} zeroed", "test accuracy": f"{accuracy(best, zeroed, classes=c):.3f}",
             "parameters trained": "", "train time s": ""},
            {"method": f"  blind: {what} shuffled", "test accuracy": f"{accuracy(best, shuffled, classes=c):.3f}",
             "parameters trained": "", "train time s": ""}]


def baseline_row(name: str, accuracy_value: float, parameters: int | str = "0", seconds: float = 0.0) -> dict:
    return {"method": name, "test accuracy": f"{accuracy_value:.3f}",
            "parameters trained": parameters if isinstance(parameters, str) else f"{parameters:,}",
            "train time s": f"{seconds:.0f}"}


HEADERS = ["method", "test accuracy", "parameters trained", "train time s"]
