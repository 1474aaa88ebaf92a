"""Model configuration: one dataclass, named presets; knows nothing of weights or training.

Every architecture variant the model supports is a field here, so a checkpoint's `config.json`
fully describes the network. Presets are plain dicts (data, not subclasses), each noting the
upstream model it mirrors.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gptkit.errors import GptkitError, require, require_known_fields


@dataclass
class ModelConfig:
    """Shape and flavour of the decoder-only Transformer."""

    name: str = "custom"
    """Preset name this config came from (informational)."""
    vocab_size: int = 50257
    """Rows of the token embedding; must be >= the tokenizer's vocabulary."""
    block_size: int = 1024
    """Maximum context length in tokens."""
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    """Key/value heads for grouped-query attention; None means n_head (plain multi-head)."""
    n_embd: int = 768
    intermediate_size: int | None = None
    """MLP hidden width; None means 4*n_embd for GELU and the Llama rule for SwiGLU."""
    position: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu"] = "gelu"
    gelu_approximation: Literal["tanh", "none"] = "tanh"
    """GELU MLPs only: "tanh" is GPT-2's approximation (transformers' gelu_new), "none" the exact erf form
    (nanoGPT's nn.GELU). On CPU the exact form is ~3x cheaper on training-sized tensors but costs ~8 us more
    per call on decode-sized ones (oneDNN's fixed cost)."""
    bias: bool = True
    """Bias in linear layers and LayerNorm (GPT-2: yes; Llama: no)."""
    attn_bias: bool | None = None
    """Bias on the fused query/key/value projection alone; None means as `bias`. Qwen2 has q/k/v biases but
    no others (bias=False, attn_bias=True)."""
    tie_embeddings: bool = True
    """Share the token embedding with the output head (GPT-2 and small Llamas do; big ones don't)."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.intermediate_size is None:
            if self.mlp == "swiglu":
                # Llama's rule: 2/3 of 4*d (same parameter count as a 4*d GELU MLP), rounded up to 64.
                self.intermediate_size = 64 * math.ceil(int(8 * self.n_embd / 3) / 64)
            else:
                self.intermediate_size = 4 * self.n_embd
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def qkv_bias(self) -> bool:
        return self.bias if self.attn_bias is None else self.attn_bias

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "intermediate_size"):
            require(getattr(self, name) > 0, f"model config: {name} must be positive, got {getattr(self, name)}")
        require(self.n_embd % self.n_head == 0,
                f"model config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        assert self.n_kv_head is not None
        require(0 < self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0,
                f"model config: n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        require(self.position in ("learned", "rope"), f"model config: position must be 'learned' or 'rope', got {self.position!r}")
        require(self.norm in ("layernorm", "rmsnorm"), f"model config: norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        require(self.mlp in ("gelu", "swiglu"), f"model config: mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        require(self.gelu_approximation in ("tanh", "none"),
                f"model config: gelu_approximation must be 'tanh' or 'none', got {self.gelu_approximation!r}")
        require(self.position != "rope" or self.head_dim % 2 == 0, "model config: RoPE needs an even head dimension")
        require(0.0 <= self.dropout < 1.0, f"model config: dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        require_known_fields(cls, data, "model config")
        return cls(**data)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise GptkitError(f"no model config at {path}") from None
        except json.JSONDecodeError as e:
            raise GptkitError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in PRESETS:
            raise GptkitError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls.from_dict({"name": name, **PRESETS[name], **overrides})


GPT2_FAMILY = dict(position="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)
LLAMA_FAMILY = dict(position="rope", norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", bias=False)

PRESETS: dict[str, dict[str, Any]] = {
    # CPU default, tuned with benchmarks/time_to_loss.py for the bundled corpus; vocab_size is
    # replaced by the tokenizer's at training time.
    # It keeps GPT-2's tanh GELU: the exact form goes through oneDNN on CPU, whose ~8 us of fixed cost per call
    # slows batch-1 decoding of a model this small (its training steps would be faster).
    "tiny": dict(GPT2_FAMILY, vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128),
    # nanoGPT's CPU "baby" shakespeare_char recipe, for comparisons (nanoGPT's MLP uses exact GELU).
    "baby": dict(GPT2_FAMILY, vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128,
                 gelu_approximation="none"),
    # A Llama-family model small enough for CPU tests and experiments.
    "tiny-llama": dict(LLAMA_FAMILY, vocab_size=512, block_size=256, n_layer=4, n_head=4, n_kv_head=2,
                       n_embd=128, tie_embeddings=False),
    # openai-community/gpt2 and friends.
    "gpt2": dict(GPT2_FAMILY, vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(GPT2_FAMILY, vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(GPT2_FAMILY, vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280),
    # A small Llama-style model (RoPE, RMSNorm, SwiGLU, GQA, untied head), ~60M parameters.
    "llama-small": dict(LLAMA_FAMILY, vocab_size=32000, block_size=1024, n_layer=8, n_head=8, n_kv_head=2,
                        n_embd=512, intermediate_size=1408, tie_embeddings=False),
    # HuggingFaceTB/SmolLM2-135M's shape.
    "smollm2-135m": dict(LLAMA_FAMILY, vocab_size=49152, block_size=2048, n_layer=30, n_head=9, n_kv_head=3,
                         n_embd=576, intermediate_size=1536, rope_theta=100000.0, tie_embeddings=True),
}
