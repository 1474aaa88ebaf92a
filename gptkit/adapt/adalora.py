"""AdaLoRA's training-time parts: the orthogonality penalty and the allocator that prunes singular values to a rank
budget."""

from __future__ import annotations


import torch
import torch.nn as nn

from gptkit.errors import require
from gptkit.adapt.modules import SVDPart
from gptkit.adapt.peft import peft_state


def orthogonal_regularization(model: nn.Module) -> torch.Tensor:
    """Σ over AdaLoRA updates of ||P·Pᵀ − I||²_F + ||Qᵀ·Q − I||²_F (keeps P, Q near-orthogonal, so Λ are
    singular values and pruning one drops one direction); 0 when the model has none."""
    terms = []
    for m in model.modules():
        if isinstance(m, SVDPart):
            eye = torch.eye(m.lam.numel(), device=m.P.device, dtype=m.P.dtype)
            terms.append(((m.P @ m.P.T - eye) ** 2).sum() + ((m.Q.T @ m.Q - eye) ** 2).sum())
    return torch.stack(terms).sum() if terms else torch.zeros(())


def peft_loss_terms(model: nn.Module) -> torch.Tensor:
    """What PEFT adds to the training loss: orth_reg × `orthogonal_regularization` for AdaLoRA, else 0."""
    state = peft_state(model)
    if state is None or state.config.method != "adalora" or state.config.orth_reg == 0:
        return torch.zeros(())
    return state.config.orth_reg * orthogonal_regularization(model)


class AdaLoRAAllocator:
    """Prunes AdaLoRA's singular triplets to a shrinking budget (Zhang et al. 2023, section 3).

    Each update is ΔW = Q·diag(Λ)·P, and triplet i is (Λ_i, row i of P, column i of Q). Importance of a
    weight w is its sensitivity I = |w · ∂L/∂w| (the loss change if w were zeroed, to first order),
    smoothed and paired with its uncertainty:
        Ī ← β1·Ī + (1−β1)·I,    Ū ← β2·Ū + (1−β2)·|I − Ī|,    s(w) = Ī·Ū
    and the triplet scores S_i = s(Λ_i) + mean_j s(P_ij) + mean_j s(Q_ji). The budget b(t), the number
    of triplets kept over all matrices, stays at init_rank × matrices until tinit, falls cubically
        b(t) = b_T + (b_0 − b_T)·(1 − (t − tinit)/(T − tinit − tfinal))³
    to target_rank × matrices at T − tfinal, and stays there. Every delta_t steps the b(t) best-scoring
    triplets keep mask 1 and the others get 0. Masked triplets keep their values (no gradient reaches
    them, and their scores decay), so a triplet comes back only if others' scores fall below its own.

    Call `after_optimizer_step(step)` after each optimizer step and before zeroing gradients (it is a
    `TrainHook` of gptkit.training.loop.train); `step` is the 0-based index of the step just taken.
    """

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        state = peft_state(model)
        require(state is not None and state.config.method == "adalora",
                "AdaLoRAAllocator needs a model transformed by apply_peft with method='adalora'")
        assert state is not None
        self.cfg, self.total_steps = state.config, total_steps
        require(self.cfg.tinit + self.cfg.tfinal < total_steps,
                f"AdaLoRA: tinit ({self.cfg.tinit}) + tfinal ({self.cfg.tfinal}) must be less than the "
                f"total steps ({total_steps}), leaving steps to prune in")
        self.parts = [m for m in model.modules() if isinstance(m, SVDPart)]
        self.init_budget = self.cfg.init_rank * len(self.parts)
        self.target_budget = self.cfg.target_rank * len(self.parts)
        self.ema: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}  # (part, P/lam/Q) -> (Ī, Ū)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The smoothed importance scores, so a resumed run prunes exactly as an uninterrupted one."""
        return {f"{i}.{name}.{which}": t for (i, name), pair in self.ema.items()
                for which, t in zip(("mean", "unc"), pair)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.ema = {}
        for key in state:
            i, name, _ = key.split(".")
            self.ema[(int(i), name)] = (state[f"{i}.{name}.mean"], state[f"{i}.{name}.unc"])

    def budget_at(self, t: int) -> int:
        """Triplets to keep after `t` steps (the paper's cubic schedule)."""
        ti, tf, T = self.cfg.tinit, self.cfg.tfinal, self.total_steps
        if t <= ti:
            return self.init_budget
        if t >= T - tf:
            return self.target_budget
        left = 1 - (t - ti) / (T - ti - tf)
        return round(self.target_budget + (self.init_budget - self.target_budget) * left ** 3)

    def active(self) -> int:
        """Triplets not masked, over all matrices."""
        return int(sum(part.mask.sum().item() for part in self.parts))

    def after_optimizer_step(self, step: int) -> None:
        t = step + 1  # steps done
        final = self.total_steps - self.cfg.tfinal
        if t > final:
            return  # final phase: the allocation made at T - tfinal stays
        self._update_scores()
        if t > self.cfg.tinit and ((t - self.cfg.tinit) % self.cfg.delta_t == 0 or t == final):
            self._allocate(self.budget_at(t))

    @torch.no_grad()
    def _smoothed(self, i: int, name: str, w: torch.Tensor) -> torch.Tensor:
        """s(w) = Ī·Ū for one tensor, after folding in this step's sensitivity."""
        sensitivity = (w * w.grad).abs().float() if w.grad is not None else torch.zeros_like(w, dtype=torch.float32)
        mean, unc = self.ema.get((i, name), (torch.zeros_like(sensitivity), torch.zeros_like(sensitivity)))
        mean = self.cfg.sensitivity_beta * mean + (1 - self.cfg.sensitivity_beta) * sensitivity
        unc = self.cfg.uncertainty_beta * unc + (1 - self.cfg.uncertainty_beta) * (sensitivity - mean).abs()
        self.ema[(i, name)] = (mean, unc)
        return mean * unc

    def _update_scores(self) -> None:
        self.scores = [self._smoothed(i, "lam", p.lam) + self._smoothed(i, "P", p.P).mean(dim=1)
                       + self._smoothed(i, "Q", p.Q).mean(dim=0) for i, p in enumerate(self.parts)]

    @torch.no_grad()
    def _allocate(self, budget: int) -> None:
        scores = torch.cat(self.scores)
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[scores.topk(min(budget, scores.numel())).indices] = True
        for part, mask in zip(self.parts, keep.split([p.mask.numel() for p in self.parts])):
            part.mask.copy_(mask.to(part.mask.dtype))
