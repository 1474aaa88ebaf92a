"""Robustness of classifiers: embedding-space PGD and a DeepWordBug-style character attack, and the perturbation
arithmetic that adversarial training shares with them; knows nothing of training loops, checkpoints or jobs.

Two attacks:

- `embedding_pgd(classifier, rows, labels, epsilon=...)`: projected gradient ascent on the cross-entropy
  in the space of input embeddings (Madry et al. 2018), a white-box bound on what a perturbation of
  per-example norm <= epsilon can do. Needs the model (a `SequenceClassifier` or anything called as
  `classifier(ids, lengths)` that embeds through a GPT's `tok_emb`).
- `char_attack(classify, texts, labels, max_edits=...)`: black-box, on text, in the manner of DeepWordBug
  (Gao et al. 2018): words ranked by how much the true-class probability drops when the word is removed,
  then the most important words get one character edit each (swap two adjacent letters, substitute a
  keyboard neighbour, delete, insert) until the prediction flips or the Levenshtein budget is spent.
  `classify` is any function texts -> probabilities (N, labels): a fine-tuned gptkit classifier
  (`LLM.load(dir).classify`), a scikit-learn pipeline's `predict_proba`, a rule.

The arithmetic: a perturbation δ has the shape of the embeddings, (B, T, d). Its norm is taken per
example over that example's whole (T, d) block, with padded positions masked out (they are neither
counted nor perturbed), never over the batch: each example gets its own budget, as in FreeLB (Zhu et al.
2020). `EmbeddingPerturbation` adds δ to an embedding module's output with a forward hook, so the model
code knows nothing of it. `gptkit.training.tasks.adversarial` trains against the same perturbations.
"""

from __future__ import annotations

import random
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.errors import GptkitError, require
from gptkit.models.gpt import GPT
from gptkit.models.heads import pad_batch

Norm = Literal["l2", "linf"]
NORMS: tuple[str, ...] = ("l2", "linf")
TINY = 1e-12  # guards divisions by a zero gradient or perturbation


# ------------------------------------------------------------------------------------------------
# perturbations of input embeddings


def real_positions(delta: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, 1) 1.0 at real tokens, 0.0 at padding (all ones without a mask)."""
    if mask is None:
        return torch.ones(*delta.shape[:2], 1, dtype=delta.dtype, device=delta.device)
    require(tuple(mask.shape) == tuple(delta.shape[:2]),
            f"mask of shape {tuple(mask.shape)} does not match perturbation {tuple(delta.shape)}")
    return mask.to(device=delta.device, dtype=delta.dtype).unsqueeze(-1)


def per_example_norm(delta: torch.Tensor, norm: Norm, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) norm of each example's (T, d) block over its real positions."""
    flat = (delta * real_positions(delta, mask)).flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def project(delta: torch.Tensor, epsilon: float, norm: Norm, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The nearest point of each example's epsilon-ball (L2: rescaled if outside; L-inf: clipped); zero on padding."""
    real = real_positions(delta, mask)
    delta = delta * real
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    scale = (epsilon / per_example_norm(delta, norm).clamp_min(TINY)).clamp(max=1.0)
    return delta * scale[:, None, None]


def ascent_direction(grad: torch.Tensor, norm: Norm, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The steepest-ascent step of unit norm per example: g/||g||_2 for L2, sign(g) for L-inf; zero on padding."""
    grad = grad * real_positions(grad, mask)
    if norm == "linf":
        return grad.sign()
    return grad / per_example_norm(grad, norm).clamp_min(TINY)[:, None, None]


def random_start(shape: Sequence[int], epsilon: float, norm: Norm, mask: torch.Tensor | None,
                 generator: torch.Generator, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A point drawn uniformly from each example's epsilon-ball (over its real positions), from `generator`.

    Drawn on the CPU from the caller's generator, so the draw depends only on it (a resumed run redraws it).
    """
    shape = tuple(shape)
    real = real_positions(torch.empty(shape), None if mask is None else mask.cpu())
    if norm == "linf":
        delta = (2 * torch.rand(shape, generator=generator) - 1) * epsilon * real
    else:
        direction = ascent_direction(torch.randn(shape, generator=generator), "l2",
                                     None if mask is None else mask.cpu())
        dims = (real.flatten(1).sum(1) * shape[-1]).clamp_min(1)  # real coordinates per example
        radius = epsilon * torch.rand(shape[0], generator=generator) ** (1 / dims)  # uniform in the ball
        delta = direction * radius[:, None, None]
    return delta.to(device=device, dtype=dtype)


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The token embedding of the (first) GPT inside `model`, whose output a perturbation is added to."""
    for module in model.modules():
        if isinstance(module, GPT):
            return module.tok_emb
    raise GptkitError(f"{type(model).__name__} holds no GPT: embedding perturbations need a GPT's token embedding")


class EmbeddingPerturbation:
    """While active (a `with` block), adds `self.delta` (B, T, d) to the output of `embedding`; None adds nothing.

    A forward hook, so any model that embeds its tokens through the module is perturbed without knowing it.
    """

    def __init__(self, embedding: nn.Module) -> None:
        self.embedding = embedding
        self.delta: torch.Tensor | None = None
        self._handle: Any = None

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self.delta is None:
            return None
        require(self.delta.shape == output.shape, f"perturbation of shape {tuple(self.delta.shape)} for "
                                                  f"embeddings of shape {tuple(output.shape)}")
        return output + self.delta.to(output.dtype)

    def __enter__(self) -> EmbeddingPerturbation:
        self._handle = self.embedding.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()
        self.delta = None


def ascend(loss_at: Callable[[], torch.Tensor], perturbation: EmbeddingPerturbation, delta: torch.Tensor, *,
           steps: int, alpha: float, epsilon: float, norm: Norm, mask: torch.Tensor | None,
           keep_graphs: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`steps` projected steepest-ascent steps on `loss_at()` from `delta`: δ <- Π(δ + α · direction(∇δ L)).

    Returns the last δ (detached) and the loss at each δ visited before a step (δ_0 .. δ_{K-1}); with
    `keep_graphs` those losses keep their graphs (FreeLB adds them up), else they are detached. Only δ's
    gradient is computed here: parameter gradients are left alone.
    """
    losses = []
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        perturbation.delta = delta
        loss = loss_at()
        (grad,) = torch.autograd.grad(loss, delta, retain_graph=keep_graphs)
        losses.append(loss if keep_graphs else loss.detach())
        delta = project(delta.detach() + alpha * ascent_direction(grad, norm, mask), epsilon, norm, mask)
    perturbation.delta = None
    return delta.detach(), losses


def embedding_pgd(classifier: nn.Module, rows: Sequence[Sequence[int]], labels: Sequence[int], *, epsilon: float,
                  steps: int = 10, alpha: float | None = None, norm: Norm = "l2", random_init: bool = False,
                  seed: int = 0, batch_size: int = 32, device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy of `classifier` on token rows before and after an L2/L-inf PGD attack of budget `epsilon`.

    `classifier(ids, lengths)` returns label logits and embeds through a GPT's `tok_emb`. alpha defaults
    to 2.5 · epsilon / steps (Madry et al.: enough to cross the ball from any start). Run in eval mode.
    """
    require(norm in NORMS, f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    require(epsilon >= 0 and steps >= 1, f"epsilon must be >= 0 and steps >= 1, got {epsilon}, {steps}")
    require(len(rows) == len(labels) and len(rows) > 0, "give one label per row, and at least one row")
    alpha = 2.5 * epsilon / steps if alpha is None else alpha
    embedding = input_embedding(classifier)
    generator = torch.Generator().manual_seed(seed)
    was_training = classifier.training
    classifier.eval()
    clean = attacked = 0
    try:
        with EmbeddingPerturbation(embedding) as perturbation, torch.enable_grad():
            for start in range(0, len(rows), batch_size):
                ids, lengths = pad_batch([list(r) for r in rows[start:start + batch_size]])
                ids, lengths = ids.to(device), lengths.to(device)
                target = torch.tensor(labels[start:start + batch_size], device=ids.device)
                mask = torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]
                shape = (*ids.shape, embedding.embedding_dim)
                with torch.no_grad():
                    clean += int((classifier(ids, lengths).argmax(-1) == target).sum())
                delta0 = random_start(shape, epsilon, norm, mask, generator, device=ids.device) if random_init \
                    else torch.zeros(shape, device=ids.device)

                def loss_at(ids=ids, lengths=lengths, target=target) -> torch.Tensor:
                    return F.cross_entropy(classifier(ids, lengths).float(), target, reduction="sum")

                delta, _ = ascend(loss_at, perturbation, delta0, steps=steps, alpha=alpha, epsilon=epsilon,
                                  norm=norm, mask=mask)
                perturbation.delta = delta
                with torch.no_grad():
                    attacked += int((classifier(ids, lengths).argmax(-1) == target).sum())
                perturbation.delta = None
    finally:
        classifier.train(was_training)
    n = len(rows)
    return {"clean_accuracy": clean / n, "accuracy_under_attack": attacked / n,
            "attack_success_rate": (clean - attacked) / max(clean, 1), "epsilon": float(epsilon), "steps": steps}


# ------------------------------------------------------------------------------------------------
# a character-level attack on text


# Neighbours on a QWERTY keyboard (same row and the rows above and below): a plausible typo.
def keyboard_neighbours(rows: Sequence[str] = ("qwertyuiop", "asdfghjkl", "zxcvbnm")) -> dict[str, str]:
    """Each key's neighbours: left and right on its row, and the nearest three on the rows above and below."""
    near: dict[str, str] = {}
    for r, row in enumerate(rows):
        for i, key in enumerate(row):
            keys = {row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)}
            for other in (r - 1, r + 1):
                if 0 <= other < len(rows):
                    keys |= {rows[other][j] for j in (i - 1, i, i + 1) if 0 <= j < len(rows[other])}
            near[key] = "".join(sorted(keys))
    return near


KEYBOARD_NEIGHBOURS = keyboard_neighbours()
LETTERS = "abcdefghijklmnopqrstuvwxyz"
WORD = re.compile(r"\w+")
EDITS = ("swap", "substitute", "delete", "insert")
EDIT_COST = {"swap": 2, "substitute": 1, "delete": 1, "insert": 1}  # in Levenshtein distance


def levenshtein(a: str, b: str) -> int:
    """Edit distance between two strings (insertions, deletions, substitutions; a swap of two letters costs 2)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_word(word: str, edit: str, rng: random.Random) -> str | None:
    """`word` with one character edit of kind `edit` at a random place, or None where it cannot apply."""
    if edit == "swap":
        places = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        if not places:
            return None
        i = rng.choice(places)
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if edit == "substitute":
        i = rng.randrange(len(word))
        lower = word[i].lower()
        choices = KEYBOARD_NEIGHBOURS.get(lower) or "".join(c for c in LETTERS if c != lower)
        new = rng.choice(choices)
        return word[:i] + (new.upper() if word[i].isupper() else new) + word[i + 1:]
    if edit == "delete":
        if len(word) < 2:  # that would delete the word, not a character of it
            return None
        i = rng.randrange(len(word))
        return word[:i] + word[i + 1:]
    if edit == "insert":
        i = rng.randrange(len(word) + 1)
        return word[:i] + rng.choice(LETTERS) + word[i:]
    raise GptkitError(f"unknown edit {edit!r}; choose from {', '.join(EDITS)}")


def random_char_edits(text: str, max_edits: int, rng: random.Random, edits: Sequence[str] = EDITS,
                      weight: Callable[[str], float] | None = None) -> str:
    """`text` with random character edits of the attack's kinds, one per word at random words, until the
    Levenshtein budget `max_edits` is spent: noise for training on perturbed copies (augmentation).

    weight: word -> positive weight; words are then picked with probability in proportion to it (weighted
    sampling without replacement), e.g. to put the noise where an attack would, on words that carry the label.
    """
    spans = [m.span() for m in WORD.finditer(text)]
    words = {i: text[a:b] for i, (a, b) in enumerate(spans)}
    budget = max_edits
    if weight is None:
        order = rng.sample(range(len(spans)), len(spans))
    else:  # Efraimidis & Spirakis: sort by u^(1/w), largest first
        keys = {i: rng.random() ** (1 / max(weight(words[i]), TINY)) for i in words}
        order = sorted(words, key=lambda i: -keys[i])
    for i in order:
        kinds = [e for e in edits if EDIT_COST[e] <= budget]
        if not kinds:
            break
        kind = rng.choice(kinds)
        new = edit_word(words[i], kind, rng)
        if new is not None:
            words[i], budget = new, budget - EDIT_COST[kind]
    return _join(text, spans, words)


@dataclass
class CharAttackResult:
    """The outcome of attacking one text."""

    text: str
    perturbed: str
    """The text after the attack's edits (the original where none were kept)."""
    label: int
    predicted: int
    """The classifier's label for `perturbed`."""
    skipped: bool
    """Misclassified before any edit, so not attacked (it counts as wrong under attack)."""
    success: bool
    """The prediction flipped away from the true label within the budget."""
    words_changed: int
    words: int
    edit_distance: int
    """Levenshtein distance between `text` and `perturbed` (at most the attack's max_edits)."""
    queries: int
    """Texts the classifier was asked about for this example, the original included."""

    @property
    def share_perturbed(self) -> float:
        return self.words_changed / max(self.words, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "share_perturbed": self.share_perturbed}


def char_attack(classify: Callable[[list[str]], Any], texts: Sequence[str], labels: Sequence[int], *,
                max_edits: int = 4, max_words: int | None = None, edits: Sequence[str] = EDITS,
                seed: int = 0) -> list[CharAttackResult]:
    """Attack each text with character edits (DeepWordBug); one `CharAttackResult` per text.

    classify: texts -> label probabilities (N, num_labels), anything `torch.as_tensor` takes, or a list of
    predictions with a `probs` mapping (`LLM.classify`); labels are indices into that order.
    max_edits: Levenshtein budget per text (a swap costs 2, the other edits 1); 0 changes nothing.
    max_words: try at most this many of the most important words (default: all of them).
    edits: the kinds of edit tried on each word; the one that lowers the true-class probability most is kept
    (of equals the cheapest; none if none lowers it). Deterministic: the random places and letters come from (seed, text).
    """
    require(max_edits >= 0, f"max_edits must be >= 0, got {max_edits}")
    require(max_words is None or max_words >= 0, f"max_words must be >= 0, got {max_words}")
    require(set(edits) <= set(EDITS) and edits, f"edits must be some of {', '.join(EDITS)}, got {list(edits)}")
    require(len(texts) == len(labels), f"{len(texts)} texts but {len(labels)} labels")

    def ask(batch: list[str]) -> torch.Tensor:
        out = classify(batch)
        if len(out) and hasattr(out[0], "probs"):  # `LLM.classify`'s predictions: probs by label, in label order
            out = [list(p.probs.values()) for p in out]
        probs = torch.as_tensor(out, dtype=torch.float32)
        require(probs.dim() == 2 and probs.shape[0] == len(batch),
                f"classify must return (N, num_labels) probabilities for N texts, got shape {tuple(probs.shape)}")
        return probs

    return [_attack_one(ask, text, int(label), max_edits, max_words, tuple(edits), seed)
            for text, label in zip(texts, labels)]


def _attack_one(ask: Callable[[list[str]], torch.Tensor], text: str, label: int, max_edits: int,
                max_words: int | None, edits: tuple[str, ...], seed: int) -> CharAttackResult:
    rng = random.Random(f"{seed}\0{text}")  # str seeds are hashed with SHA-512: stable across runs and machines
    spans = [m.span() for m in WORD.finditer(text)]
    probs = ask([text])
    queries = 1
    predicted = int(probs[0].argmax())

    def result(perturbed: str, predicted: int, changed: int, skipped: bool = False) -> CharAttackResult:
        return CharAttackResult(text, perturbed, label, predicted, skipped, not skipped and predicted != label,
                                changed, len(spans), levenshtein(text, perturbed), queries)

    if predicted != label:
        return result(text, predicted, 0, skipped=True)
    if max_edits == 0 or not spans:
        return result(text, predicted, 0)
    # Word importance: the drop in the true class's probability when the word is removed.
    removed = [text[:a].rstrip() + (" " if text[:a].strip() and text[b:].strip() else "") + text[b:].lstrip()
               for a, b in spans]
    drops = probs[0, label] - ask(removed)[:, label]
    queries += len(removed)
    order = sorted(range(len(spans)), key=lambda i: (-float(drops[i]), i))
    words = [text[a:b] for a, b in spans]
    current_p, budget, changed = float(probs[0, label]), max_edits, 0
    for i in order[:max_words]:
        candidates = [(edit, new) for edit in edits if EDIT_COST[edit] <= budget
                      for new in [edit_word(words[i], edit, rng)] if new is not None]
        if not candidates:
            if budget == 0:
                break
            continue
        trial = [_join(text, spans, {**dict(enumerate(words)), i: new}) for _, new in candidates]
        trial_probs = ask(trial)
        queries += len(trial)
        # The edit that lowers the true class's probability most; of equals, the cheapest (then the first).
        best = min(range(len(candidates)), key=lambda k: (float(trial_probs[k, label]), EDIT_COST[candidates[k][0]], k))
        if float(trial_probs[best, label]) >= current_p:
            continue  # no edit of this word helps: keep the budget for the next word
        edit, words[i] = candidates[best]
        budget -= EDIT_COST[edit]
        changed += 1
        current_p, predicted = float(trial_probs[best, label]), int(trial_probs[best].argmax())
        if predicted != label:
            break
    return result(_join(text, spans, dict(enumerate(words))), predicted, changed)


def _join(text: str, spans: list[tuple[int, int]], words: dict[int, str]) -> str:
    """`text` with the word at each span replaced by `words[i]` (everything between words kept)."""
    pieces, last = [], 0
    for i, (a, b) in enumerate(spans):
        pieces += [text[last:a], words[i]]
        last = b
    return "".join(pieces) + text[last:]


def attack_summary(results: Sequence[CharAttackResult]) -> dict[str, float]:
    """Clean accuracy, accuracy under attack, attack success rate (over the texts classified right before the
    attack), the mean share of words perturbed and of edit distance (over successful attacks), and queries
    per attacked text."""
    require(len(results) > 0, "no attack results to summarise")
    attacked = [r for r in results if not r.skipped]
    broken = [r for r in attacked if r.success]
    mean = lambda values: statistics.fmean(values) if values else 0.0
    return {"examples": float(len(results)), "clean_accuracy": len(attacked) / len(results),
            "accuracy_under_attack": (len(attacked) - len(broken)) / len(results),
            "attack_success_rate": len(broken) / max(len(attacked), 1),
            "words_perturbed": mean([r.share_perturbed for r in broken]),
            "edit_distance": mean([float(r.edit_distance) for r in broken]),
            "queries_per_example": mean([float(r.queries) for r in attacked])}
