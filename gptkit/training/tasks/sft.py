"""Supervised fine-tuning on conversations: the loss only on assistant tokens (the chat format's mask)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from gptkit.errors import require
from gptkit.training.tasks.batches import batch_generator
from gptkit.training.tasks.lm import causal_lm_loss, causal_perturbation_mask


@dataclass
class SFTTask:
    """Instruction/chat tuning: next-token loss on assistant tokens only.

    Each example is a rendered conversation (token ids + a mask that is True on the assistant's
    tokens, see `gptkit.chat_format.render_chat`). Prompt and user tokens are context, not targets:
    their labels are -100, which `causal_lm_loss` ignores. Examples are packed: whole conversations
    are laid end to end into rows of `block_size + 1` tokens (none split across rows unless it is
    longer than a row, then it is cut), so little compute goes to padding.
    """

    train_examples: list[tuple[list[int], list[bool]]]
    val_examples: list[tuple[list[int], list[bool]]]
    block_size: int
    batch_size: int
    pad_id: int = 0
    seed: int = 1337

    def __post_init__(self) -> None:
        require(self.train_examples, "no training conversations")
        require(self.val_examples, "no validation conversations")

    def _rows(self, examples: list[tuple[list[int], list[bool]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pack examples into (B, block_size) inputs and targets (-100 where no loss is taken)."""
        width = self.block_size + 1
        rows: list[tuple[list[int], list[bool]]] = [([], [])]
        for ids, mask in examples:
            ids, mask = ids[:width], mask[:width]
            if len(rows[-1][0]) + len(ids) > width:
                rows.append(([], []))
            rows[-1][0].extend(ids)
            rows[-1][1].extend(mask)
        x = torch.full((len(rows), self.block_size), self.pad_id, dtype=torch.long)
        y = torch.full((len(rows), self.block_size), -100, dtype=torch.long)
        for r, (ids, mask) in enumerate(rows):
            n = len(ids) - 1
            x[r, :n] = torch.tensor(ids[:-1])
            targets = torch.tensor(ids[1:])
            y[r, :n] = torch.where(torch.tensor(mask[1:]), targets, torch.full_like(targets, -100))
        return x, y

    def train_batch(self, step: int, micro_step: int, device: torch.device):
        # Enough conversations to fill about batch_size rows; packing decides how many rows they take.
        generator = batch_generator(self.seed, step, micro_step)
        order = torch.randperm(len(self.train_examples), generator=generator).tolist()
        chosen, tokens = [], 0
        for i in order:
            if tokens >= self.batch_size * (self.block_size + 1):
                break
            chosen.append(self.train_examples[i])
            tokens += min(len(self.train_examples[i][0]), self.block_size + 1)
        x, y = self._rows(chosen)
        return x[:self.batch_size].to(device), y[:self.batch_size].to(device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return causal_lm_loss(model, *batch)

    def tokens_per_batch(self, batch) -> int:
        return batch[0].numel()

    def perturbation_mask(self, batch) -> torch.Tensor:
        return causal_perturbation_mask(batch[1])

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool) -> dict[str, float]:
        x, y = self._rows(self.val_examples)
        total, count = 0.0, 0
        for start in range(0, len(x), self.batch_size):
            xb, yb = x[start:start + self.batch_size].to(device), y[start:start + self.batch_size].to(device)
            n = int((yb != -100).sum())
            if n:
                total += causal_lm_loss(model, xb, yb).item() * n
                count += n
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": float(count)}
