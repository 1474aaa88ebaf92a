"""The contrastive embedding task: (query, positive) token rows, an InfoNCE loss with in-batch negatives, and
retrieval on the validation pairs (recall@1, MRR) as the selection metric; knows nothing of files or tokenizers.

The model is a `gptkit.models.heads.SentenceEmbedder` (or a module wrapping one): called as `model(ids, lengths)`
it returns pooled, L2-normalised final hidden states, the vectors `LLM.embed` gives. Each step embeds B queries
and their B positives in one padded batch of 2B rows (one forward pass, as distributed training needs) and scores every
query against every positive: the B x B cosine matrix divided by a temperature is the logits of a B-way
classification whose answer is the diagonal, the other B - 1 positives being the negatives (in-batch
negatives, as in SimCSE and DPR). The loss is symmetric (query -> positive and positive -> query), as CLIP's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.models.heads import pad_batch
from gptkit.training.tasks.batches import batch_generator, sample_rows


def symmetric_info_nce(queries: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over the (B, B) cosine logits, both ways: row i's answer is column i, the rest are negatives."""
    logits = queries @ positives.T / temperature
    targets = torch.arange(len(queries), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def retrieval_metrics(queries: torch.Tensor, positives: torch.Tensor) -> dict[str, float]:
    """Recall@1, recall@5 and MRR of each query finding its own positive (row i) among all positives."""
    scores = queries @ positives.T
    own = scores.diagonal().unsqueeze(1)
    rank = (scores >= own).sum(1)  # ties count against the query: a collapsed model, all vectors equal, ranks last
    return {"recall_at_1": (rank == 1).float().mean().item(), "recall_at_5": (rank <= 5).float().mean().item(),
            "mrr": (1.0 / rank.float()).mean().item()}


@dataclass
class ContrastiveTask:
    """Sentence embeddings by contrastive training with in-batch negatives; best checkpoint by validation MRR.

    temperature: the softmax temperature of the cosine logits (0.05 as in SimCSE; smaller sharpens the
    penalty on hard negatives).
    """

    train_queries: list[list[int]]
    train_positives: list[list[int]]
    val_queries: list[list[int]]
    val_positives: list[list[int]]
    batch_size: int
    temperature: float = 0.05
    seed: int = 1337
    selection: tuple[str, str] = ("val_mrr", "max")

    def train_batch(self, step: int, micro_step: int, device: torch.device):
        chosen = sample_rows(len(self.train_queries), self.batch_size, batch_generator(self.seed, step, micro_step))
        ids, lengths = pad_batch([self.train_queries[i] for i in chosen] + [self.train_positives[i] for i in chosen])
        return ids.to(device), lengths.to(device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        ids, lengths = batch
        q, p = model(ids, lengths).chunk(2)
        return symmetric_info_nce(q, p, self.temperature)

    def tokens_per_batch(self, batch) -> int:
        return int(batch[1].sum())

    @torch.no_grad()
    def embed_all(self, model: nn.Module, rows: list[list[int]], device: torch.device) -> torch.Tensor:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # little padding per batch
        parts, step = [], max(self.batch_size, 32)
        for start in range(0, len(order), step):
            ids, lengths = pad_batch([rows[i] for i in order[start:start + step]])
            parts.append(model(ids.to(device), lengths.to(device)).float().cpu())
        out = torch.empty(len(rows), parts[0].shape[1])
        out[order] = torch.cat(parts)
        return out

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool) -> dict[str, float]:
        # The validation pairs are few: every evaluation embeds all of them and ranks every positive per query.
        was_training = model.training
        model.eval()
        q = self.embed_all(model, self.val_queries, device)
        p = self.embed_all(model, self.val_positives, device)
        model.train(was_training)
        loss = symmetric_info_nce(q, p, self.temperature).item()
        return {"val_loss": loss, **{f"val_{k}": v for k, v in retrieval_metrics(q, p).items()}}
