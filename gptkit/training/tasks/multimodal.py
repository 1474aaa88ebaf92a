"""The multimodal task: captioning / question answering on media, next-token loss on the answer tokens only;
for late fusion, classification: each distinct answer is a class, cross-entropy over the classes.

A batch holds each example's media (image, clip or audio) and its sequence prompt + answer; MEDIA_SLOT ids
mark where early fusion puts the media's tokens (`media_mask`). The best checkpoint is the one whose greedy answers are
right most often on the validation split (`val_accuracy`): an answer counts when the argmax at every one
of its positions, given the right tokens before, is the right token, which is exactly when greedy
decoding produces it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.data.multimodal import MEDIA_SLOT, MediaExamples
from gptkit.errors import require
from gptkit.training.tasks.batches import batch_generator, sample_rows

IGNORE = -100
Classes = list[tuple[int, ...]]
"""Late fusion: the distinct answers (token ids) in the order of the model's labels."""


def answer_classes(examples: MediaExamples) -> Classes:
    """The distinct answers of `examples`, sorted: a late-fusion model's classes."""
    return sorted({tuple(a) for a in examples.answers})


def label_batch(examples: MediaExamples, rows: list[int], classes: Classes, pad_id: int):
    """(media, idx, lengths, labels) for late fusion: the prompt's text alone, right-padded, and the answer's
    class (-1 for an answer that is none of the classes: a held-out answer the head cannot give, scored wrong)."""
    index = {c: i for i, c in enumerate(classes)}
    texts = [[t for t in examples.prompts[i] if t != MEDIA_SLOT] or [pad_id] for i in rows]
    longest = max(len(t) for t in texts)
    idx = torch.tensor([t + [pad_id] * (longest - len(t)) for t in texts])
    lengths = torch.tensor([len(t) for t in texts])
    labels = torch.tensor([index.get(tuple(examples.answers[i]), -1) for i in rows])
    return torch.from_numpy(examples.media[rows]), idx, lengths, labels


def answer_batch(examples: MediaExamples, rows: list[int], pad_id: int, device: torch.device | str = "cpu"):
    """(media, idx, media_mask, targets) for `rows`: targets are IGNORE except at answer tokens."""
    inputs, targets = [], []
    for i in rows:
        sequence = [*examples.prompts[i], *examples.answers[i]]
        inputs.append(sequence[:-1])
        targets.append([IGNORE] * (len(examples.prompts[i]) - 1) + list(examples.answers[i]))
    longest = max(len(x) for x in inputs)
    idx = torch.tensor([x + [pad_id] * (longest - len(x)) for x in inputs])
    target = torch.tensor([t + [IGNORE] * (longest - len(t)) for t in targets])
    media_mask = idx == MEDIA_SLOT
    media = torch.from_numpy(examples.media[rows])
    return media.to(device), idx.masked_fill(media_mask, 0).to(device), media_mask.to(device), target.to(device)


def is_late(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "fusion", None) == "late"


@torch.no_grad()
def answer_scores(model: nn.Module, examples: MediaExamples, *, pad_id: int, batch_size: int = 64,
                  device: torch.device | str = "cpu", classes: Classes | None = None) -> tuple[float, list[bool]]:
    """(mean answer-token loss, per example: does greedy decoding produce its answer?); for a late-fusion model
    (`classes` needed): (mean cross-entropy over the classes, per example: is its class the most likely?)."""
    was_training = model.training
    model.eval()
    total, count, correct = 0.0, 0, []
    try:
        for start in range(0, len(examples), batch_size):
            rows = list(range(start, min(start + batch_size, len(examples))))
            if is_late(model):
                require(classes is not None, "scoring a late-fusion model needs its classes")
                media, idx, lengths, labels = (t.to(device) for t in label_batch(examples, rows, classes, pad_id))
                logits = model(idx, media, lengths).float()
                total += F.cross_entropy(logits, labels, reduction="sum", ignore_index=-1).item()
                count += int((labels >= 0).sum())
                correct += (logits.argmax(-1) == labels).tolist()
                continue
            media, idx, mask, target = answer_batch(examples, rows, pad_id, device)
            logits = model(idx, media, mask).float()
            scored = target != IGNORE
            total += F.cross_entropy(logits[scored], target[scored], reduction="sum").item()
            count += int(scored.sum())
            right = (logits.argmax(-1) == target) | ~scored
            correct += right.all(dim=1).tolist()
    finally:
        model.train(was_training)
    return total / max(count, 1), correct


@dataclass
class MultimodalTask:
    train: MediaExamples
    val: MediaExamples
    batch_size: int
    pad_id: int = 0
    seed: int = 1337
    selection: tuple[str, str] = ("val_accuracy", "max")
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    """A training-time transform of a batch's media (e.g. `gptkit.data.audio.augment_clips`), drawing from
    the batch's own generator; validation sees the media as they are."""
    classes: Classes | None = None
    """Late fusion: the answers that are the model's classes (`answer_classes`); None: answers are generated."""

    def __post_init__(self) -> None:
        require(len(self.train) > 0 and len(self.val) > 0, "the multimodal task needs training and validation examples")

    def train_batch(self, step: int, micro_step: int, device: torch.device):
        generator = batch_generator(self.seed, step, micro_step)
        rows = sample_rows(len(self.train), self.batch_size, generator)
        if self.classes is not None:
            media, idx, mask_or_lengths, target = label_batch(self.train, rows, self.classes, self.pad_id)
        else:
            media, idx, mask_or_lengths, target = answer_batch(self.train, rows, self.pad_id)
        if self.augment is not None:
            media = self.augment(media, generator)
        return media.to(device), idx.to(device), mask_or_lengths.to(device), target.to(device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        media, idx, mask_or_lengths, target = batch
        logits = model(idx, media, mask_or_lengths)  # late fusion: label logits, given lengths
        if self.classes is not None:
            return F.cross_entropy(logits.float(), target)
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE)

    def tokens_per_batch(self, batch) -> int:
        return int(batch[1].numel())

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool) -> dict[str, float]:
        loss, correct = answer_scores(model, self.val, pad_id=self.pad_id, device=device, classes=self.classes)
        return {"val_loss": loss, "val_accuracy": sum(correct) / len(correct)}
