"""The multimodal task: captioning / question answering on images, next-token loss on the answer tokens only.

A batch holds each example's image and its sequence prompt + answer; MEDIA_SLOT ids mark where early
fusion puts the image's tokens (`media_mask`). The best checkpoint is the one whose greedy answers are
right most often on the validation split (`val_accuracy`): an answer counts when the argmax at every one
of its positions, given the right tokens before, is the right token, which is exactly when greedy
decoding produces it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.data.multimodal import MEDIA_SLOT, MediaExamples
from gptkit.errors import require
from gptkit.training.tasks.batches import batch_generator, sample_rows

IGNORE = -100


def answer_batch(examples: MediaExamples, rows: list[int], pad_id: int, device: torch.device | str = "cpu"):
    """(images, idx, media_mask, targets) for `rows`: targets are IGNORE except at answer tokens."""
    inputs, targets = [], []
    for i in rows:
        sequence = [*examples.prompts[i], *examples.answers[i]]
        inputs.append(sequence[:-1])
        targets.append([IGNORE] * (len(examples.prompts[i]) - 1) + list(examples.answers[i]))
    longest = max(len(x) for x in inputs)
    idx = torch.tensor([x + [pad_id] * (longest - len(x)) for x in inputs])
    target = torch.tensor([t + [IGNORE] * (longest - len(t)) for t in targets])
    media_mask = idx == MEDIA_SLOT
    images = torch.from_numpy(examples.images[rows])
    return images.to(device), idx.masked_fill(media_mask, 0).to(device), media_mask.to(device), target.to(device)


@torch.no_grad()
def answer_scores(model: nn.Module, examples: MediaExamples, *, pad_id: int, batch_size: int = 64,
                  device: torch.device | str = "cpu") -> tuple[float, list[bool]]:
    """(mean answer-token loss, per example: does greedy decoding produce its answer?)."""
    was_training = model.training
    model.eval()
    total, count, correct = 0.0, 0, []
    try:
        for start in range(0, len(examples), batch_size):
            images, idx, mask, target = answer_batch(examples, list(range(start, min(start + batch_size,
                                                                                    len(examples)))), pad_id, device)
            logits = model(idx, images, mask).float()
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

    def __post_init__(self) -> None:
        require(len(self.train) > 0 and len(self.val) > 0, "the multimodal task needs training and validation examples")

    def train_batch(self, step: int, micro_step: int, device: torch.device):
        rows = sample_rows(len(self.train), self.batch_size, batch_generator(self.seed, step, micro_step))
        return answer_batch(self.train, rows, self.pad_id, device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        images, idx, mask, target = batch
        logits = model(idx, images, mask)
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE)

    def tokens_per_batch(self, batch) -> int:
        return int(batch[1].numel())

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool) -> dict[str, float]:
        loss, correct = answer_scores(model, self.val, pad_id=self.pad_id, device=device)
        return {"val_loss": loss, "val_accuracy": sum(correct) / len(correct)}
