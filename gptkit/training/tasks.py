"""Tasks: what a kind of training plugs into the one loop (a batch source, a loss, an evaluation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.data.dataset import TokenDataset
from gptkit.evaluation import evaluate_tokens, lm_metrics, mean_token_loss


def batch_generator(seed: int, step: int, micro_step: int = 0) -> torch.Generator:
    """A generator whose state depends only on (seed, step, micro_step): batches need no saved data cursor."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro_step) % (2**63))


def causal_lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; targets of -100 are ignored (prompt or padding positions)."""
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)


@dataclass
class CausalLMTask:
    """Pretraining or continued pretraining on a prepared token dataset."""

    dataset: TokenDataset
    block_size: int
    batch_size: int
    seed: int = 1337
    eval_iters: int = 20

    def train_batch(self, step: int, micro_step: int, device: torch.device):
        x, y = self.dataset.batch("train", self.batch_size, self.block_size, batch_generator(self.seed, step, micro_step))
        return x.to(device), y.to(device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return causal_lm_loss(model, *batch)

    def tokens_per_batch(self, batch) -> int:
        return batch[0].numel()

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool) -> dict[str, float]:
        if full:
            return evaluate_tokens(model, self.dataset.split("val"), self.dataset.n_bytes("val"),
                                   block_size=self.block_size, batch_size=self.batch_size, device=device)
        # A fixed sample of validation batches, the same at every evaluation, so the curve is comparable.
        generator = batch_generator(self.seed, -1)
        batches = [self.dataset.batch("val", self.batch_size, self.block_size, generator) for _ in range(self.eval_iters)]
        loss, _ = mean_token_loss(model, batches, device)
        return lm_metrics(loss, self.dataset.n_tokens("val") / self.dataset.n_bytes("val"))
