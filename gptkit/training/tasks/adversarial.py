"""Adversarial training as a task wrapper in the one loop (FGM, PGD, FreeLB on input embeddings); knows nothing of
which weights train, what the data is, or the command line.

    task = AdversarialTask(ClassificationTask(...), AdversarialConfig("pgd", adv_epsilon=0.1), seed=cfg.seed)
    train(model, task, cfg, ...)

The objective for a batch x is  clean_weight · L(x) + weight · L_adv(x),  where L_adv is the loss at a
perturbation δ of the input embeddings with ||δ|| <= epsilon per example (L2 or L-inf over the example's
(T, d) block, padded positions masked; see `gptkit.evaluation.robustness`):

- fgm: one step, δ = ε · g/||g||₂ (L-inf: ε · sign(g), i.e. FGSM), g the gradient of the clean loss w.r.t.
  the embeddings (Miyato et al. 2017). The clean pass that gives g is the L(x) term: 2 forward passes.
- pgd: K steps of size α from δ=0 or a random point of the ball, each projected back onto the ball
  (Madry et al. 2018); L_adv = L(x + δ_K). K + 1 forward passes, + 1 for the clean term.
- freelb: K ascent steps, and L_adv = (1/K) Σ_t L(x + δ_t) over δ_0 .. δ_{K-1}, so the parameter gradient
  is the average of the K steps' gradients, accumulated as FreeLB does (Zhu et al. 2020). The K graphs
  are kept until the loop's backward pass (memory: K forward passes). --adv-clean-weight 0 is the paper's
  objective exactly; the default also keeps the clean term.

In every method δ is held constant (detached) in the term the parameters learn from, as in the papers.

Design: the perturbation is added by a forward hook on the GPT's token embedding (`tok_emb`) while the
wrapped task's own `loss(model, batch)` runs, so the wrapped task is unchanged and any model that embeds
through a GPT works: a `SequenceClassifier`, a bare GPT, with full, LoRA, adapter, AdaLoRA or freeze
fine-tuning (the perturbation is on the embeddings' output, whatever weights train). The alternative, an
`embed`/`loss_from_embeds` pair on every task and an `inputs_embeds` path through every head, would touch
every task and model for the same result. What a wrapped task must offer (`PerturbableTask`): its loss
runs through the token embedding once per call, and `perturbation_mask(batch)` says which (B, T)
positions are real tokens (padding is neither perturbed nor counted in the norm).

Randomness (PGD's and FreeLB's random start) comes from the generator of (seed, step, micro-step)
(`batch_generator`, on its own stream), so a resumed run draws the same δ as an uninterrupted one.
Not combinable with --compile (a hook added after compilation is not guaranteed to run in the compiled graph)
or multimodal tasks (their embeddings bypass `tok_emb`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn as nn

from gptkit.errors import require
from gptkit.evaluation.robustness import (
    NORMS,
    EmbeddingPerturbation,
    Norm,
    ascend,
    ascent_direction,
    input_embedding,
    random_start,
)
from gptkit.training.tasks.batches import batch_generator

METHODS: tuple[str, ...] = ("none", "fgm", "pgd", "freelb")
NOISE_STREAM = 104_729  # added to the seed: random starts are not the data sampler's draws


@dataclass
class AdversarialConfig:
    """Adversarial training on the input embeddings (classify, lm and sft fine-tuning; pretraining)."""

    adversarial: Literal["none", "fgm", "pgd", "freelb"] = "none"
    """fgm: one normalised gradient step; pgd: K projected steps; freelb: K steps, gradients averaged over them."""
    adv_epsilon: float = 0.1
    """Radius of each example's perturbation ball: the L2 (or L-inf) norm over its (tokens x width) embedding block.
    Mind the block's own norm (~5 for a sentence in the base-mix base): FGM at 2% of it helped there, 10% made PGD
    training collapse to one class (benchmarks/robustness.py)."""
    adv_steps: int = 3
    """pgd, freelb: ascent steps K (fgm takes one)."""
    adv_alpha: float | None = None
    """pgd, freelb: step size; default 2.5 x epsilon / steps (Madry et al.: enough to cross the ball)."""
    adv_weight: float = 1.0
    """Weight of the adversarial loss in  clean_weight x L(x) + weight x L(x + delta)."""
    adv_clean_weight: float = 1.0
    """Weight of the clean loss (0 with freelb: the paper's objective)."""
    adv_norm: Literal["l2", "linf"] = "l2"
    """Norm of the perturbation ball, per example over its real tokens."""
    adv_random_start: bool = True
    """pgd, freelb: start from a random point of the ball (else from zero)."""

    @property
    def enabled(self) -> bool:
        return self.adversarial != "none"

    @property
    def step_size(self) -> float:
        return 2.5 * self.adv_epsilon / self.adv_steps if self.adv_alpha is None else self.adv_alpha

    def validate(self, *, compile: bool = False) -> None:
        """Refuse bad settings; `compile`: whether the run compiles the model (hooks would not be traced)."""
        require(not (compile and self.enabled), "--adversarial does not combine with --compile: the perturbation "
                                                "is added by a hook a compiled model may skip; drop --compile")
        require(self.adversarial in METHODS, f"--adversarial must be one of {', '.join(METHODS)}, "
                                             f"got {self.adversarial!r}")
        require(self.adv_norm in NORMS, f"--adv-norm must be one of {', '.join(NORMS)}, got {self.adv_norm!r}")
        require(math.isfinite(self.adv_epsilon) and self.adv_epsilon > 0,
                f"--adv-epsilon must be a positive number, got {self.adv_epsilon}")
        require(self.adv_alpha is None or (math.isfinite(self.adv_alpha) and self.adv_alpha > 0),
                f"--adv-alpha must be a positive number, got {self.adv_alpha}")
        require(isinstance(self.adv_steps, int) and self.adv_steps >= 1,
                f"--adv-steps must be an integer >= 1, got {self.adv_steps}")
        for name in ("adv_weight", "adv_clean_weight"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0,
                    f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        require(self.adv_weight > 0 or self.adv_clean_weight > 0,
                "--adv-weight and --adv-clean-weight are both 0: nothing would be trained")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PerturbableTask(Protocol):
    """A task whose loss adversarial training can perturb."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The loss, computed through the model's GPT token embedding (once per call)."""

    def perturbation_mask(self, batch: Any) -> torch.Tensor:
        """(B, T) bool: True where the embedding input is a real token (False: padding, never perturbed)."""


@dataclass
class AdversarialBatch:
    """A wrapped task's batch, with the (step, micro-step) it was drawn for (they seed the random start)."""

    batch: Any
    step: int
    micro_step: int


class AdversarialTask:
    """Any `PerturbableTask`, trained on clean_weight · L(x) + weight · L(x + δ) (see the module docstring).

    Validation is the wrapped task's own (clean) evaluation; the logged train_loss is the whole objective.
    `last_delta` holds the δ of the latest adversarial term (detached), for inspection.
    """

    def __init__(self, task: PerturbableTask, config: AdversarialConfig, seed: int = 1337) -> None:
        config.validate()
        require(config.enabled, "AdversarialTask needs a method: fgm, pgd or freelb")
        require(hasattr(task, "perturbation_mask"),
                f"{type(task).__name__} cannot be trained adversarially: it has no perturbation_mask(batch)")
        self.task, self.config, self.seed = task, config, seed
        self.last_delta: torch.Tensor | None = None

    @property
    def selection(self) -> tuple[str, str]:
        return getattr(self.task, "selection", ("val_loss", "min"))

    def for_rank(self, rank: int, world_size: int) -> AdversarialTask:
        require(hasattr(self.task, "for_rank"), f"{type(self.task).__name__} cannot split its batches across "
                                                "processes (it has no for_rank method); run it in a single process")
        return AdversarialTask(self.task.for_rank(rank, world_size), self.config, self.seed)  # type: ignore[attr-defined]

    def train_batch(self, step: int, micro_step: int, device: torch.device) -> AdversarialBatch:
        return AdversarialBatch(self.task.train_batch(step, micro_step, device), step, micro_step)  # type: ignore[attr-defined]

    def tokens_per_batch(self, batch: AdversarialBatch) -> int:
        return self.task.tokens_per_batch(batch.batch)  # type: ignore[attr-defined]

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool) -> dict[str, float]:
        return self.task.evaluate(model, device, full=full)  # type: ignore[attr-defined]

    def loss(self, model: nn.Module, batch: AdversarialBatch) -> torch.Tensor:
        cfg, inner = self.config, batch.batch
        mask = self.task.perturbation_mask(inner)
        embedding = input_embedding(model)
        shape = (*mask.shape, embedding.embedding_dim)
        dtype, device = embedding.weight.dtype, embedding.weight.device
        norm: Norm = cfg.adv_norm  # type: ignore[assignment]

        def loss_at() -> torch.Tensor:
            return self.task.loss(model, inner)

        with EmbeddingPerturbation(embedding) as perturbation:
            clean: torch.Tensor | None = None
            if cfg.adversarial == "fgm":
                zero = torch.zeros(shape, dtype=dtype, device=device, requires_grad=True)
                perturbation.delta = zero
                clean = loss_at()
                (grad,) = torch.autograd.grad(clean, zero, retain_graph=cfg.adv_clean_weight > 0)
                delta = cfg.adv_epsilon * ascent_direction(grad, norm, mask)
                perturbation.delta = delta
                adversarial = loss_at()
            else:
                if cfg.adv_random_start:
                    generator = batch_generator(self.seed + NOISE_STREAM, batch.step, batch.micro_step)
                    start = random_start(shape, cfg.adv_epsilon, norm, mask, generator, device=device, dtype=dtype)
                else:
                    start = torch.zeros(shape, dtype=dtype, device=device)
                freelb = cfg.adversarial == "freelb"
                delta, losses = ascend(loss_at, perturbation, start, steps=cfg.adv_steps, alpha=cfg.step_size,
                                       epsilon=cfg.adv_epsilon, norm=norm, mask=mask, keep_graphs=freelb)
                if freelb:
                    adversarial = torch.stack(losses).mean()
                else:
                    perturbation.delta = delta
                    adversarial = loss_at()
            self.last_delta = delta.detach()
            if cfg.adv_clean_weight == 0:
                return cfg.adv_weight * adversarial
            if clean is None:
                perturbation.delta = None
                clean = loss_at()
        return cfg.adv_clean_weight * clean + cfg.adv_weight * adversarial


def with_adversarial(task: Any, config: AdversarialConfig, seed: int) -> Any:
    """`task` wrapped for adversarial training, or `task` itself when config.adversarial is none."""
    return AdversarialTask(task, config, seed) if config.enabled else task
