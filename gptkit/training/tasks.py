"""Tasks: what a kind of training plugs into the one loop (a batch source, a loss, an evaluation)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.models.heads import pad_batch, predict_proba
from gptkit.data.dataset import TokenDataset
from gptkit.errors import require
from gptkit.evaluation.classification import classification_report
from gptkit.evaluation.lm import eval_windows, lm_metrics, mean_token_loss
from gptkit.training.distributed import all_reduce_sum


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


# ------------------------------------------------------------------------------------------------
# fine-tuning tasks: classification and instruction/chat tuning


def sample_rows(n_rows: int, batch_size: int, generator: torch.Generator) -> list[int]:
    """`batch_size` distinct row indices (all rows, shuffled, when there are fewer)."""
    return torch.randperm(n_rows, generator=generator)[:batch_size].tolist()


@dataclass
class ClassificationTask:
    """Sequence classification: cross-entropy on a `SequenceClassifier`'s label logits.

    The best checkpoint is the one with the highest validation macro-F1 (`selection`), which, unlike
    accuracy, does not reward ignoring rare labels.

    lm_weight: weight of an auxiliary next-token loss on the same texts, added to the classification
    loss as in GPT-1 (Radford et al., 2018, section 3.2, which used 0.5): it keeps the body a language
    model of the new domain while the head learns, a regulariser for small labelled sets.
    """

    train_rows: list[list[int]]
    train_labels: list[int]
    val_rows: list[list[int]]
    val_labels: list[int]
    labels: list[str]
    batch_size: int
    seed: int = 1337
    lm_weight: float = 0.0
    selection: tuple[str, str] = ("val_macro_f1", "max")

    def train_batch(self, step: int, micro_step: int, device: torch.device):
        chosen = sample_rows(len(self.train_rows), self.batch_size, batch_generator(self.seed, step, micro_step))
        ids, lengths = pad_batch([self.train_rows[i] for i in chosen])
        labels = torch.tensor([self.train_labels[i] for i in chosen])
        return ids.to(device), lengths.to(device), labels.to(device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        ids, lengths, labels = batch
        if not self.lm_weight:
            return F.cross_entropy(model(ids, lengths).float(), labels)
        label_logits, lm_logits = model(ids, lengths, return_lm_logits=True)
        positions = torch.arange(ids.shape[1] - 1, device=ids.device)
        targets = ids[:, 1:].masked_fill(positions >= (lengths[:, None] - 1), -100)  # no loss on padding
        lm_loss = F.cross_entropy(lm_logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return F.cross_entropy(label_logits.float(), labels) + self.lm_weight * lm_loss

    def tokens_per_batch(self, batch) -> int:
        return int(batch[1].sum())

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool) -> dict[str, float]:
        # Validation sets for classification are small: every evaluation scores all of it.
        probs = predict_proba(model, self.val_rows, batch_size=max(self.batch_size, 32), device=device)
        targets = torch.tensor(self.val_labels)
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), targets).item()
        report = classification_report(self.val_labels, probs.argmax(-1).tolist(), self.labels)
        return {"val_loss": loss, "val_accuracy": report["accuracy"], "val_macro_f1": report["macro avg"]["f1"]}


@dataclass
class SFTTask:
    """Instruction/chat tuning: next-token loss on assistant tokens only.

    Each example is a rendered conversation (token ids + a mask that is True on the assistant's
    tokens, see `gptkit.data.chat.render_chat`). Prompt and user tokens are context, not targets:
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
