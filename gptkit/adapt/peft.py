"""Parameter-efficient fine-tuning (PEFT) as model transformations.

`apply_peft(model, cfg)` rewrites a `GPT` in place so that only a small set of parameters trains:

- **lora** (Hu et al. 2021): each targeted `nn.Linear` W becomes W + (alpha/rank)·B·A with A (rank × in)
  and B (out × rank). B starts at zero, so the model starts out computing exactly what the base does.
- **adalora** (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"):
  the update is an SVD-like product Q·diag(Λ)·P whose singular values are pruned during training
  by `AdaLoRAAllocator`, so layers that matter keep more rank (see its docstring for the math).
- **adapter** (Houlsby et al. 2019): a bottleneck x + up(gelu(down(x))) after every attention and MLP
  sublayer; `up` starts at zero, so again the model starts as the base.
- **freeze**: train only the top `train_top_blocks` blocks (plus norms and head if asked).
- **full**: train everything (here so one config field switches between all of these).

Everything happens by module replacement from the outside: model.py knows nothing of PEFT. A wrapped
linear layer keeps the original `nn.Linear` as its `base` child, so a tied head stays tied to the
embedding and `merge_peft` can put the originals back, folded, to give a plain GPT again.

Targets (LoRA / AdaLoRA) name weight matrices of every block, or the output head:
  q, k, v   slices of the fused `attn.qkv` rows (sized for grouped-query attention)
  qkv       all of `attn.qkv` (what LoRA on GPT-2's fused `c_attn` is)
  o         `attn.proj`            fc        `mlp.fc` (SwiGLU: gate and up, fused, one update)
  mlp_proj  `mlp.proj`             mlp       fc + mlp_proj
  head      `lm_head`
The default, q and v, is the LoRA paper's (and litgpt's) choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptkit.files import write_atomically
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError, require, require_known_fields
from gptkit.models.gpt import GPT, RMSNorm

METHODS = ("full", "lora", "adapter", "adalora", "freeze")
TARGETS = ("q", "k", "v", "qkv", "o", "fc", "mlp_proj", "mlp", "head")
TARGET_HELP = ("q, k, v (slices of attn.qkv), qkv (all of attn.qkv), o (attn.proj), fc (mlp.fc), "
               "mlp_proj (mlp.proj), mlp (= fc + mlp_proj), head (lm_head)")
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FORMAT = "gptkit-peft"


@dataclass
class PeftConfig:
    """Which PEFT method to apply, and its settings (fields of other methods are ignored)."""

    method: Literal["full", "lora", "adapter", "adalora", "freeze"] = "lora"
    """full: train every weight. lora: low-rank updates on --targets. adapter: Houlsby bottlenecks after
    attention and MLP. adalora: LoRA whose rank budget moves to where it matters. freeze: only the top blocks."""
    rank: int = 8
    """LoRA: rank of each update."""
    alpha: float = 16.0
    """Updates are scaled by alpha / rank (AdaLoRA: alpha / init_rank), so retuning rank keeps the step size."""
    dropout: float = 0.0
    """Dropout on the input of the low-rank update."""
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    """LoRA/AdaLoRA: the matrices to update, from q, k, v, qkv (all three), o (attention output),
    fc, mlp_proj, mlp (both MLP matrices), head (the output layer)."""
    # adapter
    adapter_size: int = 32
    """Bottleneck width of each Houlsby adapter."""
    # AdaLoRA
    init_rank: int = 12
    """Singular triplets per targeted matrix at the start."""
    target_rank: int = 4
    """Average triplets per matrix left at the end (the final budget is target_rank x matrices)."""
    tinit: int = 0
    """Steps of warm-up before any pruning."""
    tfinal: int = 0
    """Steps at the end with the final allocation fixed."""
    delta_t: int = 10
    """Re-allocate the budget every this many steps."""
    sensitivity_beta: float = 0.85
    """EMA factor of the sensitivity |w * grad|."""
    uncertainty_beta: float = 0.85
    """EMA factor of its uncertainty |I - EMA(I)|."""
    orth_reg: float = 0.1
    """Weight of the orthogonality penalty on P and Q (`peft_loss_terms`)."""
    # freeze
    train_top_blocks: int = 2
    """freeze: train this many blocks at the top; the rest stay as they are."""
    train_norms: bool = True
    """Also train every LayerNorm/RMSNorm (all blocks' and the final one): few parameters, often helps."""
    train_head: bool = False
    """Also train lm_head; with tied embeddings that is the input embedding too."""

    def expanded_targets(self) -> list[str]:
        """Targets with `mlp` spelled out as fc and mlp_proj, each once, in the given order."""
        out: list[str] = []
        for target in self.targets:
            for t in ("fc", "mlp_proj") if target == "mlp" else (target,):
                if t not in out:
                    out.append(t)
        return out

    def validate(self) -> None:
        require(self.method in METHODS, f"peft: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method in ("lora", "adalora"):
            require(isinstance(self.targets, list) and len(self.targets) > 0,
                    f"peft: targets is empty; valid targets are {TARGET_HELP}")
            unknown = [t for t in self.targets if t not in TARGETS]
            require(not unknown, f"peft: target(s) {', '.join(map(repr, unknown))} match nothing in gptkit's model; "
                                 f"valid targets are {TARGET_HELP}")
            overlap = sorted({"q", "k", "v"} & set(self.targets))
            require("qkv" not in self.targets or not overlap,
                    f"peft: target 'qkv' already covers {', '.join(overlap)}; give either qkv or q/k/v")
            require(self.alpha > 0, f"peft: alpha must be positive, got {self.alpha}")
            require(0.0 <= self.dropout < 1.0, f"peft: dropout must be in [0, 1), got {self.dropout}")
        if self.method == "lora":
            require(self.rank >= 1, f"peft: rank must be >= 1, got {self.rank}")
        if self.method == "adalora":
            require(1 <= self.target_rank <= self.init_rank,
                    f"peft: AdaLoRA needs 1 <= target_rank <= init_rank, got {self.target_rank} and {self.init_rank}")
            require(self.tinit >= 0 and self.tfinal >= 0,
                    f"peft: tinit and tfinal must be >= 0, got {self.tinit} and {self.tfinal}")
            require(self.delta_t >= 1, f"peft: delta_t must be >= 1, got {self.delta_t}")
            for name in ("sensitivity_beta", "uncertainty_beta"):
                require(0.0 <= getattr(self, name) < 1.0, f"peft: {name} must be in [0, 1), got {getattr(self, name)}")
            require(self.orth_reg >= 0, f"peft: orth_reg must be >= 0, got {self.orth_reg}")
        if self.method == "adapter":
            require(self.adapter_size >= 1, f"peft: adapter_size must be >= 1, got {self.adapter_size}")
        if self.method == "freeze":
            require(self.train_top_blocks >= 0, f"peft: train_top_blocks must be >= 0, got {self.train_top_blocks}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PeftConfig":
        require_known_fields(cls, data, "peft config")
        cfg = cls(**data)
        cfg.validate()
        return cfg


# ------------------------------------------------------------------------------------------------
# the modules that replace or wrap the model's own


class LoRAPart(nn.Module):
    """One low-rank update B·A (out × in): A Kaiming-uniform like nn.Linear's weight, B zero."""

    def __init__(self, in_features: int, out_features: int, rank: int, like: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features, device=like.device, dtype=like.dtype))
        self.B = nn.Parameter(torch.zeros(out_features, rank, device=like.device, dtype=like.dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B)  # two thin matmuls; B·A is never formed

    def weight(self) -> torch.Tensor:
        return self.B @ self.A


class SVDPart(nn.Module):
    """AdaLoRA's update Q·diag(Λ ⊙ mask)·P: P (r × in) and Q (out × r) orthogonal at init, Λ zero.

    The mask (a buffer, saved with the adapter) switches singular triplets off without deleting them.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, like: torch.Tensor) -> None:
        super().__init__()
        P, Q = torch.empty(rank, in_features), torch.empty(out_features, rank)
        nn.init.orthogonal_(P)  # P·Pᵀ = I and Qᵀ·Q = I from the start: the regulariser starts at 0
        nn.init.orthogonal_(Q)
        self.P = nn.Parameter(P.to(like.device, like.dtype))
        self.lam = nn.Parameter(torch.zeros(rank, device=like.device, dtype=like.dtype))
        self.Q = nn.Parameter(Q.to(like.device, like.dtype))
        self.register_buffer("mask", torch.ones(rank, device=like.device, dtype=like.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.P) * (self.lam * self.mask), self.Q)

    def weight(self) -> torch.Tensor:
        return (self.Q * (self.lam * self.mask)) @ self.P


class LowRankLinear(nn.Module):
    """`base(x)` plus `scaling`·(a low-rank update on each of some slices of the output rows).

    One module can carry several updates (q and v of the fused qkv); rows no update covers get zeros.
    """

    def __init__(self, base: nn.Linear, parts: dict[str, nn.Module], slices: dict[str, tuple[int, int]],
                 scaling: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.lora = nn.ModuleDict(parts)
        self.slices = dict(sorted(slices.items(), key=lambda item: item[1][0]))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = self.dropout(x)
        pieces, end = [], 0
        for name, (start, stop) in self.slices.items():
            if start > end:
                pieces.append(y.new_zeros(*y.shape[:-1], start - end))
            pieces.append(self.lora[name](h))
            end = stop
        if end < y.shape[-1]:
            pieces.append(y.new_zeros(*y.shape[:-1], y.shape[-1] - end))
        return y + self.scaling * (torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0])

    def delta_weight(self) -> torch.Tensor:
        """The update as a (out, in) matrix, zero outside the slices: what merging adds to base.weight.
        Computed in fp32 at least (a bf16 model merges without rounding the update twice)."""
        weight = self.base.weight
        dtype = torch.promote_types(weight.dtype, torch.float32)
        delta = torch.zeros(weight.shape, dtype=dtype, device=weight.device)
        for name, (start, stop) in self.slices.items():
            delta[start:stop] = self.lora[name].weight().to(dtype)
        return self.scaling * delta


def _parts(kind: type[nn.Module], base: nn.Linear, rank: int,
           out_slices: Mapping[str, tuple[int, int]] | None) -> tuple[dict[str, nn.Module], dict[str, tuple[int, int]]]:
    slices = dict(out_slices or {"all": (0, base.out_features)})
    return {n: kind(base.in_features, stop - start, rank, base.weight) for n, (start, stop) in slices.items()}, slices


class LoRALinear(LowRankLinear):
    """LoRA on an nn.Linear (or on named slices of its output rows, `out_slices`: name -> (start, stop))."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 out_slices: Mapping[str, tuple[int, int]] | None = None) -> None:
        parts, slices = _parts(LoRAPart, base, rank, out_slices)
        super().__init__(base, parts, slices, alpha / rank, dropout)


class SVDLinear(LowRankLinear):
    """AdaLoRA on an nn.Linear: like LoRALinear, with SVD-parametrised updates of `init_rank` triplets."""

    def __init__(self, base: nn.Linear, init_rank: int, alpha: float, dropout: float = 0.0,
                 out_slices: Mapping[str, tuple[int, int]] | None = None) -> None:
        parts, slices = _parts(SVDPart, base, init_rank, out_slices)
        super().__init__(base, parts, slices, alpha / init_rank, dropout)


class Adapter(nn.Module):
    """Houlsby et al. 2019's bottleneck, h + up(gelu(down(h))); `up` starts at zero, so it starts as identity."""

    def __init__(self, dim: int, size: int, like: torch.Tensor) -> None:
        super().__init__()
        self.down = nn.Linear(dim, size, device=like.device, dtype=like.dtype)
        self.up = nn.Linear(size, dim, device=like.device, dtype=like.dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class WithAdapter(nn.Module):
    """A sublayer (attention or MLP) with an adapter on its output, before the residual add.

    Every argument passes through untouched, so attention still gets (x, rope, cache, slots) and
    KV-cache decoding works as before.
    """

    def __init__(self, base: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.base, self.adapter = base, adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.base(*args, **kwargs))


WRAPPERS = (LowRankLinear, WithAdapter)
PEFT_PARTS = (LoRAPart, SVDPart, Adapter)


# ------------------------------------------------------------------------------------------------
# applying, counting, merging


@dataclass
class PeftState:
    """What `apply_peft` records on the model (as `model.peft_state`) for merging and saving."""

    config: PeftConfig
    base_config: dict[str, Any]
    base_fingerprint: str | None
    """Taken before training (freeze and full change the base's own tensors); None on the meta device."""


def peft_state(model: nn.Module) -> PeftState | None:
    """The PEFT state of `model`, also when it is wrapped (DDP, torch.compile); None for a plain model."""
    for module in model.modules():
        state = module.__dict__.get("peft_state")
        if state is not None:
            return state
    return None


def target_slices(config: ModelConfig) -> dict[str, tuple[str, int, int]]:
    """Each target's (module path, in a block or for `head` in the model; first row; last row + 1)."""
    assert config.n_kv_head is not None and config.intermediate_size is not None
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    fc = 2 * config.intermediate_size if config.mlp == "swiglu" else config.intermediate_size
    return {"q": ("attn.qkv", 0, q), "k": ("attn.qkv", q, q + kv), "v": ("attn.qkv", q + kv, q + 2 * kv),
            "qkv": ("attn.qkv", 0, q + 2 * kv), "o": ("attn.proj", 0, config.n_embd), "fc": ("mlp.fc", 0, fc),
            "mlp_proj": ("mlp.proj", 0, config.n_embd), "head": ("lm_head", 0, config.vocab_size)}


def _slices_by_module(config: ModelConfig, cfg: PeftConfig) -> dict[str, dict[str, tuple[int, int]]]:
    """Full module path -> {target: (start, stop)}, for every block (and the head)."""
    layout, out = target_slices(config), {}
    for target in cfg.expanded_targets():
        path, start, stop = layout[target]
        paths = [path] if target == "head" else [f"blocks.{i}.{path}" for i in range(config.n_layer)]
        for p in paths:
            out.setdefault(p, {})[target] = (start, stop)
    return out


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _add_low_rank(model: GPT, cfg: PeftConfig) -> None:
    for path, slices in _slices_by_module(model.config, cfg).items():
        base = model.get_submodule(path)
        assert type(base) is nn.Linear, f"{path} is {type(base).__name__}, expected nn.Linear"
        if cfg.method == "lora":
            _replace(model, path, LoRALinear(base, cfg.rank, cfg.alpha, cfg.dropout, slices))
            continue
        smallest = min([base.in_features] + [stop - start for start, stop in slices.values()])
        require(cfg.init_rank <= smallest, f"peft: AdaLoRA init_rank {cfg.init_rank} exceeds the smallest side "
                                           f"({smallest}) of a targeted matrix in {path}")
        _replace(model, path, SVDLinear(base, cfg.init_rank, cfg.alpha, cfg.dropout, slices))


def _add_adapters(model: GPT, cfg: PeftConfig) -> None:
    for block in model.blocks:
        like = block.attn.proj.weight
        block.attn = WithAdapter(block.attn, Adapter(model.config.n_embd, cfg.adapter_size, like))
        block.mlp = WithAdapter(block.mlp, Adapter(model.config.n_embd, cfg.adapter_size, like))


def _chosen_parameters(model: GPT, cfg: PeftConfig) -> dict[str, nn.Parameter]:
    """The parameters `cfg` trains, by name (a tied weight under its first name)."""
    named = dict(model.named_parameters())
    if cfg.method == "full":
        return named
    if cfg.method == "freeze":
        first = model.config.n_layer - cfg.train_top_blocks
        chosen = {id(p) for i, block in enumerate(model.blocks) if i >= first for p in block.parameters()}
        if cfg.train_norms:
            chosen |= {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, RMSNorm)) for p in m.parameters()}
        if cfg.train_head:
            chosen |= {id(p) for p in model.lm_head.parameters()}
        return {name: p for name, p in named.items() if id(p) in chosen}
    return {f"{prefix}.{name}": p for prefix, m in model.named_modules() if isinstance(m, PEFT_PARTS)
            for name, p in m.named_parameters()}


def apply_peft(model: GPT, cfg: PeftConfig) -> GPT:
    """Transform `model` in place as `cfg` says and freeze everything else; returns `model`."""
    cfg.validate()
    require(peft_state(model) is None, "this model already has PEFT applied; start from the base model "
                                       "(or call merge_peft first)")
    if cfg.method == "freeze":
        require(cfg.train_top_blocks <= model.config.n_layer,
                f"peft: train_top_blocks ({cfg.train_top_blocks}) exceeds the model's {model.config.n_layer} blocks")
    fingerprint = base_fingerprint(model)  # now, before freeze/full training changes the base's own tensors
    if cfg.method in ("lora", "adalora"):
        _add_low_rank(model, cfg)
    elif cfg.method == "adapter":
        _add_adapters(model, cfg)
    chosen = {id(p) for p in _chosen_parameters(model, cfg).values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    model.peft_state = PeftState(dataclasses.replace(cfg, targets=list(cfg.targets)), model.config.to_dict(),
                                 fingerprint)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a shared (tied) tensor counts once."""
    params = list(model.parameters())  # parameters() yields each tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _unwrap_all(model: GPT, *, fold: bool) -> None:
    """Put every wrapped module's base back; with `fold`, low-rank updates are added into it first."""
    for path, module in list(model.named_modules()):
        if not isinstance(module, WRAPPERS):
            continue
        if fold:
            assert isinstance(module, LowRankLinear)
            _fold(model, path, module)
        _replace(model, path, module.base)
    for p in model.parameters():
        p.requires_grad_(True)
    del model.peft_state


def _fold(model: GPT, path: str, module: LowRankLinear) -> None:
    weight = module.base.weight
    with torch.no_grad():
        if path == "lm_head" and model.config.tie_embeddings:
            # The head's weight is the input embedding: folding into it would change the inputs too.
            # So the merged model gets its own head matrix, and its config says so.
            module.base.weight = weight = nn.Parameter(weight.detach().clone())
            model.config = dataclasses.replace(model.config, tie_embeddings=False)
        delta = module.delta_weight()
        weight.copy_((weight.to(delta.dtype) + delta).to(weight.dtype))


def merge_peft(model: GPT) -> GPT:
    """Fold LoRA/AdaLoRA updates into the base weights and remove the wrappers: a plain GPT again, all
    parameters trainable, ready for `save_checkpoint` and `export_hf`. A model without PEFT is returned as is.

    A LoRA on a tied head unties it (`config.tie_embeddings` becomes False): the update belongs to the
    head only. Adapters are nonlinear, so they cannot be folded into weights: that raises a GptkitError;
    keep them as files with `save_adapter` instead.
    """
    state = peft_state(model)
    if state is None:
        return model
    require(state.config.method != "adapter",
            "adapters cannot be merged: each adds a nonlinear bottleneck (gelu) that no weight matrix can express. "
            "Keep them as a small file with save_adapter and put them on the base with load_adapter")
    _unwrap_all(model, fold=True)
    return model


# ------------------------------------------------------------------------------------------------
# AdaLoRA


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


# ------------------------------------------------------------------------------------------------
# adapter files


def _fingerprint_tensors(model: GPT) -> list[torch.Tensor]:
    def base(m: nn.Module) -> nn.Module:
        while isinstance(m, WRAPPERS):
            m = m.base
        return m

    emb = model.tok_emb.weight
    rows = torch.linspace(0, emb.shape[0] - 1, min(emb.shape[0], 256), device=emb.device).long()
    return [emb[rows], base(base(model.blocks[0].attn).qkv).weight, base(base(model.blocks[-1].mlp).proj).weight,
            model.norm_f.weight]


def base_fingerprint(model: GPT) -> str | None:
    """sha256 over a few base tensors (256 embedding rows, the first qkv, the last MLP projection, the final
    norm): cheap, yet different for any two bases that are not copies. None for meta tensors."""
    tensors = _fingerprint_tensors(model)
    if any(t.is_meta for t in tensors):
        return None
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def peft_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds: PEFT parameters (+ AdaLoRA masks), or what freeze/full train."""
    state = peft_state(model)
    require(state is not None, "the model has no PEFT applied (apply_peft first)")
    assert state is not None
    if state.config.method in ("lora", "adalora", "adapter"):
        return {f"{prefix}.{name}": t.detach() for prefix, m in model.named_modules() if isinstance(m, PEFT_PARTS)
                for name, t in m.state_dict().items()}
    return {name: p.detach() for name, p in _chosen_parameters(model, state.config).items()}


def _describe(config: Mapping[str, Any]) -> str:
    return (f"{config.get('name')!r} ({config.get('n_layer')} layers, n_embd {config.get('n_embd')}, "
            f"{config.get('n_head')} heads / {config.get('n_kv_head')} kv, vocab {config.get('vocab_size')}, "
            f"{config.get('position')}/{config.get('norm')}/{config.get('mlp')})")


def save_adapter(model: GPT, cfg: PeftConfig, out_dir: str | Path,
                 base_checkpoint_info: str | Path | Mapping[str, Any] | None = None) -> Path:
    """Write `adapter_config.json` (cfg + the base's config and fingerprint + `base_checkpoint_info`, e.g.
    the base checkpoint's path) and `adapter_model.safetensors` (only `peft_state_dict`) into `out_dir`."""
    state = peft_state(model)
    require(state is not None, "save_adapter: the model has no PEFT applied (apply_peft first)")
    assert state is not None
    require(cfg.to_dict() == state.config.to_dict(),
            "save_adapter: cfg differs from the PeftConfig the model was transformed with")
    require(state.base_fingerprint is not None, "save_adapter: the base had no readable weights (meta device) "
                                                "when PEFT was applied, so there is no fingerprint to record")
    out = Path(out_dir)
    require(not out.is_file(), f"{out} is a file; pass a directory")
    require(not out.exists() or not any(out.iterdir()) or (out / ADAPTER_CONFIG_FILE).is_file(),
            f"{out} exists and is not an adapter directory; choose an empty or new directory")
    info = {"path": str(base_checkpoint_info)} if isinstance(base_checkpoint_info, (str, Path)) \
        else dict(base_checkpoint_info or {})
    meta = {"format": ADAPTER_FORMAT, "version": 1, "peft": cfg.to_dict(),
            "base": {"config": state.base_config, "fingerprint": state.base_fingerprint, "info": info}}
    tensors = {name: t.contiguous() for name, t in peft_state_dict(model).items()}

    def write(tmp: Path) -> None:
        (tmp / ADAPTER_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})

    return write_atomically(out, write)


def _read_adapter_config(path: Path) -> dict[str, Any]:
    config_file = path / ADAPTER_CONFIG_FILE
    require(path.is_dir(), f"adapter directory {path} does not exist")
    require(config_file.is_file(), f"{path} has no {ADAPTER_CONFIG_FILE}: not an adapter saved by save_adapter")
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GptkitError(f"{config_file} is not valid JSON: {e}") from None
    require(isinstance(meta, dict) and meta.get("format") == ADAPTER_FORMAT,
            f"{config_file} is not a gptkit adapter config (no \"format\": \"{ADAPTER_FORMAT}\"); "
            "Hugging Face PEFT adapters are not read by gptkit")
    require(isinstance(meta.get("peft"), dict) and isinstance(meta.get("base"), dict)
            and isinstance(meta["base"].get("config"), dict), f"{config_file} lacks its peft or base section")
    return meta


def _check_base(model: GPT, base: Mapping[str, Any], path: Path) -> None:
    """Refuse a base other than the one the adapter was trained on, saying which one it expects."""
    expected, have = base["config"], model.config.to_dict()
    info = f", base checkpoint {base['info']}" if base.get("info") else ""
    ignored = ("name", "dropout")  # informational / training-only
    differ = [f"{k}={expected.get(k)!r} (this model: {have.get(k)!r})" for k in sorted(set(expected) | set(have))
              if k not in ignored and expected.get(k) != have.get(k)]
    require(not differ, f"adapter {path} was trained on a different base model: it expects {_describe(expected)}"
                        f"{info}; differences: {'; '.join(differ)}")
    fingerprint = base_fingerprint(model)
    require(fingerprint == base.get("fingerprint"),
            f"adapter {path} was trained on base {_describe(expected)}{info}: this model has that shape but its "
            f"weights differ (fingerprint {str(fingerprint)[:12]}, expected {str(base.get('fingerprint'))[:12]}); "
            "load the base model the adapter was trained on")


def load_adapter(model: GPT, adapter_dir: str | Path) -> PeftConfig:
    """Check that `model` is the adapter's base, apply its PeftConfig and load its weights; returns the config."""
    path = Path(adapter_dir)
    meta = _read_adapter_config(path)
    cfg = PeftConfig.from_dict(meta["peft"])
    require(peft_state(model) is None, "load_adapter needs the plain base model, but this one already has PEFT applied")
    _check_base(model, meta["base"], path)
    weights_file = path / ADAPTER_WEIGHTS_FILE
    require(weights_file.is_file(), f"{path} has no {ADAPTER_WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError) as e:
        raise GptkitError(f"{weights_file} is not a readable safetensors file: {e}") from None
    apply_peft(model, cfg)
    try:
        expected = peft_state_dict(model)
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        require(not missing and not unexpected, f"{weights_file} does not match {ADAPTER_CONFIG_FILE}: missing "
                                                f"{missing[:5]}, unexpected {unexpected[:5]}")
        for name, target in expected.items():
            shape, want = tuple(tensors[name].shape), tuple(target.shape)
            require(shape == want, f"{weights_file}: {name} has shape {shape}, expected {want}")
        with torch.no_grad():
            for name, target in expected.items():
                target.copy_(tensors[name])
    except GptkitError:
        _unwrap_all(model, fold=False)  # leave the base as it was given
        raise
    return cfg
