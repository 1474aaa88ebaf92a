"""The causal language-modelling task (pretraining and continued pretraining) on a prepared token dataset."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.data.dataset import TokenDataset
from gptkit.evaluation.lm import eval_windows, lm_metrics, mean_token_loss
from gptkit.training.distributed import all_reduce_sum
from gptkit.training.tasks.batches import batch_generator


def causal_lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; targets of -100 are ignored (prompt or padding positions)."""
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)


def causal_perturbation_mask(y: torch.Tensor) -> torch.Tensor:
    """(B, T) True at the positions up to each row's last target: with causal attention, the inputs after it
    (padding) cannot change the loss, so adversarial training leaves them alone."""
    positions = torch.arange(y.shape[1], device=y.device)
    last = torch.where(y != -100, positions, -1).amax(dim=1)
    return positions <= last[:, None]


@dataclass
class CausalLMTask:
    """Pretraining or continued pretraining on a prepared token dataset."""

    dataset: TokenDataset
    block_size: int
    batch_size: int
    """Sequences per micro-batch in each process."""
    seed: int = 1337
    eval_iters: int = 20
    rank: int = 0
    world_size: int = 1

    def for_rank(self, rank: int, world_size: int) -> "CausalLMTask":
        """The task as process `rank` of `world_size` sees it: its rows of each global batch."""
        return dataclasses.replace(self, rank=rank, world_size=world_size)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch (all of them in a single-process run)."""
        return t[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def train_batch(self, step: int, micro_step: int, device: torch.device):
        # Every process cuts the whole global batch and keeps its own rows, so N processes see exactly the
        # batches of one process with an N times larger batch. Cutting the other rows costs a few
        # hundred KB of reads from the memory map: nothing next to a forward pass.
        x, y = self.dataset.batch("train", self.global_batch_size, self.block_size,
                                  batch_generator(self.seed, step, micro_step))
        return self._rows(x).to(device), self._rows(y).to(device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return causal_lm_loss(model, *batch)

    def tokens_per_batch(self, batch) -> int:
        return batch[0].numel()

    def perturbation_mask(self, batch) -> torch.Tensor:
        return causal_perturbation_mask(batch[1])

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool) -> dict[str, float]:
        if full:  # the whole split, every token predicted exactly once
            tokens = self.dataset.split("val")
            batches: Iterable = eval_windows(tokens, self.block_size, self.global_batch_size)
            loss, count = self._mean_token_loss(model, batches, device)
            return {**lm_metrics(loss, len(tokens) / self.dataset.n_bytes("val")), "val_tokens": float(count)}
        # A fixed sample of validation batches, the same at every evaluation, so the curve is comparable.
        generator = batch_generator(self.seed, -1)
        batches = [self.dataset.batch("val", self.global_batch_size, self.block_size, generator)
                   for _ in range(self.eval_iters)]
        loss, _ = self._mean_token_loss(model, batches, device)
        return lm_metrics(loss, self.dataset.n_tokens("val") / self.dataset.n_bytes("val"))

    def _mean_token_loss(self, model: nn.Module, batches: Iterable, device: torch.device) -> tuple[float, int]:
        """Mean token loss over `batches` (global batches): each process scores its rows, the sums are added up.

        The same windows in the same global batches as a single-process run, so the figure is the same.
        """
        if self.world_size == 1:
            return mean_token_loss(model, batches, device)
        total, count = 0.0, 0
        for x, y in batches:
            if len(self._rows(x)) == 0:
                # A short last batch can leave this process without rows. It still runs a forward pass
                # (and discards it): under FSDP every forward gathers weights from all processes, so all
                # of them must run the same number of forward passes.
                model(x[:1].to(device))
                continue
            loss, n = mean_token_loss(model, [(self._rows(x), self._rows(y))], device)
            total, count = total + loss * n, count + n
        total, count = all_reduce_sum([total, float(count)], device)
        return total / max(count, 1.0), int(count)
