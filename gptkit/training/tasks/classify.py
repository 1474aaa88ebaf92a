"""The sequence-classification task: a head on the GPT, cross-entropy, best checkpoint by validation macro-F1."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.evaluation.classification import classification_report
from gptkit.models.heads import pad_batch, predict_proba
from gptkit.training.tasks.batches import batch_generator, sample_rows


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

    def perturbation_mask(self, batch) -> torch.Tensor:
        """(B, T) True at real tokens: where adversarial training may perturb the embeddings."""
        ids, lengths, _ = batch
        return torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool) -> dict[str, float]:
        # Validation sets for classification are small: every evaluation scores all of it.
        probs = predict_proba(model, self.val_rows, batch_size=max(self.batch_size, 32), device=device)
        targets = torch.tensor(self.val_labels)
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), targets).item()
        report = classification_report(self.val_labels, probs.argmax(-1).tolist(), self.labels)
        return {"val_loss": loss, "val_accuracy": report["accuracy"], "val_macro_f1": report["macro avg"]["f1"]}
