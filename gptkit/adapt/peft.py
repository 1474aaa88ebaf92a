"""Parameter-efficient fine-tuning (PEFT) as model transformations applied from outside; knows nothing of training or
checkpoints.

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

Everything happens by module replacement from the outside: models/gpt.py knows nothing of PEFT. A wrapped
linear layer keeps the original `nn.Linear` as its `base` child, so a tied head stays tied to the
embedding and `merge_peft` can put the originals back, folded, to give a plain GPT again.

Targets (LoRA / AdaLoRA) name weight matrices of every block, or the output head:
  q, k, v   slices of the fused `attn.qkv` rows (sized for grouped-query attention)
  qkv       all of `attn.qkv` (what LoRA on GPT-2's fused `c_attn` is)
  o         `attn.proj`            fc        `mlp.fc` (SwiGLU: gate and up, fused, one update)
  mlp_proj  `mlp.proj`             mlp       fc + mlp_proj
  head      `lm_head`
The default, q and v, is the LoRA paper's (and litgpt's) choice.

This module owns the config and the transformation (apply, count, merge); the modules it inserts are in
`gptkit.adapt.modules`, AdaLoRA's training-time parts in `gptkit.adapt.adalora`, and adapter files in
`gptkit.adapt.files`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from gptkit.config import ModelConfig
from gptkit.errors import require, require_known_fields
from gptkit.models.gpt import GPT, RMSNorm
from gptkit.adapt.modules import PEFT_PARTS, WRAPPERS, Adapter, LoRALinear, LowRankLinear, SVDLinear, WithAdapter

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


def chosen_parameters(model: GPT, cfg: PeftConfig) -> dict[str, nn.Parameter]:
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
    chosen = {id(p) for p in chosen_parameters(model, cfg).values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    model.peft_state = PeftState(dataclasses.replace(cfg, targets=list(cfg.targets)), model.config.to_dict(),
                                 fingerprint)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a shared (tied) tensor counts once."""
    params = list(model.parameters())  # parameters() yields each tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def unwrap_all(model: GPT, *, fold: bool) -> None:
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
    unwrap_all(model, fold=True)
    return model


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
