"""Quantization of a built GPT's weights: every `nn.Linear` and the token embedding rewritten to int8 (one scale per
output channel) or int4 (groups of `group_size` input channels, a scale and a zero point each), computed with
PyTorch's own CPU kernels, and the quantized checkpoint's files (quantization.json beside the usual ones); knows
nothing of training or the command line.

    quantize_model(gpt, QuantizeConfig("int8"))       # in place; returns the model
    gpt(ids)                                           # the same forward from a quarter (int8) of the bytes
    write_quantized(gpt, tokenizer, "out/tiny-int8")   # a checkpoint that `gptkit.load` reads back quantized

As gpt-fast does it, the technique transforms the model from outside: `models/gpt.py` never learns about it.
Norms, attention, the KV cache and the sampler stay float32; only weights are stored small. How a quantized matmul
runs was chosen by measuring on the reference CPU (torch 2.13, GPT-2-small's 48 block matrices, out of cache; see
benchmarks/quantization.py):
- int8 multiplies int8 by int8 through oneDNN (`torch.ops.onednn.qlinear_pointwise`, VNNI/AMX): each row of
  activations is rounded to int8 on its own scale, as llama.cpp's Q8_0 dot product rounds its activations, so a
  row's result never depends on its batch. 5.0 ms for one row and 7.8 ms for eight, against float32's 12.5 and
  22 ms and the weight-only `_weight_int8pack_mm` kernel's 5.1 and 17 ms; a 128-row prefill 37 ms against 86.
  Where the build has no oneDNN int8 matmul, or with mode "int8-weight-only" (for models whose activations have
  outlier channels, which rounding a row to int8 on one scale hurts: a 40x channel cost +0.90% perplexity, weight-
  only +0.01%), the weight-only kernel runs instead (below).
- int4 (and int8 without oneDNN) uses PyTorch's weight-only kernels (`_weight_int4pack_mm_for_cpu`,
  `_weight_int8pack_mm`), fast only with bfloat16 activations and slower than float32 beyond ~8 rows. So up to
  `KERNEL_ROWS` rows (a decode step) the input is rounded to bfloat16 for the kernel, and more rows (a prefill,
  an evaluation) multiply float32 by the dequantized matrix, as fast as float32 itself.
A tied embedding and head (GPT-2) share one quantized matrix: the head's per-output-channel scales are the
embedding's per-row scales. Quantized weights are for inference: training them is refused (`require_float`).
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError, require
from gptkit.files import write_atomically
from gptkit.models.gpt import GPT, unshared_state
from gptkit.tokenizer import Tokenizer

QUANTIZATION_FILE = "quantization.json"
ONEDNN_MIN_SIDE = 512
"""int8 matrices with both sides at least this go through oneDNN; smaller ones multiply a dequantized float copy.
Measured (torch 2.13): oneDNN's int8 matmul costs 25-40 us a call at any small size and takes paths 10-80x slower
for some (a single row against a side of 256: 2.4 ms; 128 x 512: 1.7 ms), where float32 takes 7-10 us."""
KERNEL_ROWS = 8
"""Rows up to which the weight-only kernels run (bfloat16 activations); beyond, a dequantized float32 matmul."""
WEIGHTS_FILE = "model.safetensors"

MODES = ("int8", "int8-weight-only", "int4")
"""int8: int8 weights, and large matrices round their activations to int8 (fast); int8-weight-only: int8 weights,
float activations (slower for batches, for models whose activations have outlier channels); int4: 4-bit groups."""
INT4_GROUPS = (32, 64, 128, 256)
"""Group sizes the int4 CPU kernel takes."""


@dataclass(frozen=True)
class QuantizeConfig:
    mode: str = "int8"
    """int8 (and int8-weight-only): per-output-channel symmetric scales; int4: asymmetric groups of group_size
    input channels. See MODES."""
    group_size: int = 32
    """int4: input channels sharing a scale and zero point (32, 64, 128 or 256; smaller is closer to float)."""

    def validate(self) -> None:
        require(self.mode in MODES, f"unknown quantization {self.mode!r}: choose {' or '.join(MODES)}")
        require(self.mode != "int4" or self.group_size in INT4_GROUPS,
                f"--group-size must be one of {', '.join(map(str, INT4_GROUPS))} for int4, got {self.group_size}")

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# the weights


class Int8Weight(nn.Module):
    """A (N, K) matrix as int8 values and one float scale per row: w[n, k] ~ values[n, k] * scales[n]."""

    def __init__(self, values: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("values", values)
        self.register_buffer("scales", scales)
        self._packed: torch.Tensor | None = None  # oneDNN's layout of `values`, made on first matmul
        self._zero_points: torch.Tensor | None = None
        self._dequantized: torch.Tensor | None = None  # a small matrix's float copy, made on first matmul
        self.weight_only = False
        """Keep activations in floating point (PyTorch's weight-only kernel) instead of oneDNN's int8 x int8."""

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Int8Weight:
        weight = weight.detach().float().contiguous()  # a decode-layout (transposed) weight too
        # Symmetric, round to nearest: the largest magnitude of each row maps to 127.
        scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12)
        values = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(values, scales)

    def dequantize(self) -> torch.Tensor:
        return self.values.float() * self.scales[:, None]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.values[ids].float() * self.scales[ids].unsqueeze(-1)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., K) @ w.T (+ bias) -> (..., N), in x's dtype."""
        flat = x.reshape(-1, x.shape[-1])
        if min(self.values.shape) < ONEDNN_MIN_SIDE:
            # A small matrix is cheap to read whatever its type, and its matmul is all call overhead: float32
            # against a dequantized copy (made once) is the fastest (7 us against oneDNN's 30 us at 384 x 128).
            if self._dequantized is None:
                self._dequantized = self.dequantize().t().contiguous().t()  # the decode layout (see decode.py)
            out = torch.nn.functional.linear(flat.float(), self._dequantized, None if bias is None else bias.float())
        elif _onednn_int8() and not self.weight_only:
            out = self._onednn_matmul(flat.float(), bias)
        else:  # PyTorch's weight-only kernel, fast with bfloat16 activations, slow beyond a few rows
            if flat.shape[0] > KERNEL_ROWS:
                out = flat @ self.dequantize().to(x.dtype).T
            else:
                out = torch.ops.aten._weight_int8pack_mm(flat.to(torch.bfloat16), self.values,
                                                         self.scales.to(torch.bfloat16))
            out = out.float() if bias is None else out.float() + bias
        return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])

    def _onednn_matmul(self, flat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # Each row of activations is rounded to int8 on its own scale (its largest magnitude maps to 127), so a
        # row's result never depends on the rows batched with it; oneDNN multiplies int8 by int8 (VNNI or AMX
        # where the CPU has them) and applies the weight's per-channel scales, the row scales are applied after.
        row_scale = flat.abs().amax(-1, keepdim=True).clamp_min_(1e-12).div_(127)
        rows = torch.round(flat / row_scale).to(torch.int8)
        if self._packed is None:
            self._packed = torch.ops.onednn.qlinear_prepack(self.values, None)
            self._zero_points = torch.zeros(self.values.shape[0], dtype=torch.long)
        out = torch.ops.onednn.qlinear_pointwise(rows, 1.0, 0, self._packed, self.scales, self._zero_points, None,
                                                 1.0, 0, torch.float32, "none", [], "")
        return out.mul_(row_scale) if bias is None else torch.addcmul(bias.float(), out, row_scale)

    def repack(self) -> None:
        """Forget the copies made from `values` (after a checkpoint's tensors were loaded into them)."""
        self._packed = self._dequantized = None

    def __getstate__(self) -> dict:
        # The packed copy is an opaque oneDNN tensor that cannot be copied or pickled; both copies are rebuilt.
        state = self.__dict__.copy()
        state["_packed"] = state["_dequantized"] = None
        return state


@functools.cache
def _onednn_int8() -> bool:
    """Whether this PyTorch build multiplies int8 by int8 through oneDNN (x86 builds do): probed once."""
    try:
        values = torch.ones(8, 8, dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(values, None)
        out = torch.ops.onednn.qlinear_pointwise(values[:1], 1.0, 0, packed, torch.ones(8),
                                                 torch.zeros(8, dtype=torch.long), None, 1.0, 0, torch.float32, "none",
                                                 [], "")
        return bool(torch.equal(out, torch.full((1, 8), 8.0)))
    except (RuntimeError, AttributeError):
        return False


class Int4Weight(nn.Module):
    """A (N, K) matrix as 4-bit values in groups of `group_size` along K, each group with a scale and a zero point:
    w ~ (q - 8) * scale + zero, q in 0..15 (the convention of PyTorch's int4 kernels). `values` holds q unpacked (one
    uint8 per value, what a checkpoint stores); `packed` is the kernel's CPU layout, made once at load."""

    def __init__(self, values: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> None:
        super().__init__()
        self.group_size = group_size
        self.register_buffer("values", values)
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # (K / group, N, 2)
        self.register_buffer("packed", self.pack(values), persistent=False)

    @staticmethod
    def pack(values: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(values.int(), 1)

    def repack(self) -> None:
        """Rebuild the kernel's layout from `values` (after a checkpoint's tensors were loaded into them)."""
        self.packed = self.pack(self.values)

    @classmethod
    def quantize(cls, weight: torch.Tensor, group_size: int) -> Int4Weight:
        n, k = weight.shape
        require(k % group_size == 0, f"a matrix with {k} input channels cannot be cut into int4 groups of {group_size}")
        groups = weight.detach().float().contiguous().reshape(n, k // group_size, group_size)
        low, high = groups.amin(-1), groups.amax(-1)
        # Asymmetric: each group's range [low, high] spread over the 16 levels; zero is the value of level 8.
        scales = ((high - low) / 15).clamp_min(1e-12)
        values = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
        zeros = low + 8 * scales
        scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()
        return cls(values.reshape(n, k), scales_and_zeros, group_size)

    def dequantize(self) -> torch.Tensor:
        n, k = self.values.shape
        scales, zeros = self.scales_and_zeros.transpose(0, 1).unbind(-1)  # (N, K / group) each
        groups = self.values.reshape(n, k // self.group_size, self.group_size).float()
        return ((groups - 8) * scales[..., None] + zeros[..., None]).reshape(n, k)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > KERNEL_ROWS:
            out = flat @ self.dequantize().to(x.dtype).T
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat.to(torch.bfloat16), self.packed, self.group_size,
                                                            self.scales_and_zeros.to(torch.bfloat16)).to(x.dtype)
        if bias is not None:
            out = out + bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


# ------------------------------------------------------------------------------------------------
# the modules that replace nn.Linear and nn.Embedding


class QuantizedLinear(nn.Module):
    def __init__(self, weight: Int8Weight | Int4Weight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_q = weight
        self.in_features, self.out_features = weight.values.shape[1], weight.values.shape[0]
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight_q.matmul(x, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized matrix (for code that reads `.weight`, e.g. a head's shape); not used by forward."""
        return self.weight_q.dequantize()


class QuantizedEmbedding(nn.Module):
    """Token embeddings from an int8 matrix: only the looked-up rows are widened to float."""

    def __init__(self, weight: Int8Weight) -> None:
        super().__init__()
        self.weight_q = weight
        self.num_embeddings, self.embedding_dim = weight.values.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight_q.rows(ids)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_q.dequantize()


# ------------------------------------------------------------------------------------------------
# the transformation


def quantize_model(model: nn.Module, config: QuantizeConfig) -> nn.Module:
    """Rewrite `model`'s linear layers and token embedding in place (and return it), in eval mode.

    int4 applies to the linear layers whose input width divides into groups; the others, the embedding and a head
    tied to it take int8 (the embedding's rows are looked up one at a time, so groups along them buy nothing).
    """
    config.validate()
    require(not is_quantized(model), "this model is already quantized")
    model.eval()
    tied = _tied_head(model)
    shared: Int8Weight | None = None
    embedding = getattr(model, "tok_emb", None)
    weight_only = config.mode == "int8-weight-only"

    def int8(weight: torch.Tensor) -> Int8Weight:
        q = Int8Weight.quantize(weight)
        q.weight_only = weight_only
        return q

    if isinstance(embedding, nn.Embedding):
        shared = int8(embedding.weight)
        model.tok_emb = QuantizedEmbedding(shared)  # type: ignore[assignment]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            if tied and child is tied and shared is not None:
                setattr(parent, name, QuantizedLinear(shared, child.bias))
            elif config.mode == "int4" and child.in_features % config.group_size == 0 \
                    and child.out_features % 8 == 0:
                setattr(parent, name, QuantizedLinear(Int4Weight.quantize(child.weight, config.group_size),
                                                      child.bias))
            else:
                setattr(parent, name, QuantizedLinear(int8(child.weight), child.bias))
    model.quantization = config  # type: ignore[assignment]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _tied_head(model: nn.Module) -> nn.Linear | None:
    head, embedding = getattr(model, "lm_head", None), getattr(model, "tok_emb", None)
    if isinstance(head, nn.Linear) and isinstance(embedding, nn.Embedding) and head.weight is embedding.weight:
        return head
    return None


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (QuantizedLinear, QuantizedEmbedding)) for m in model.modules())


def require_float(model: nn.Module, what: str = "training") -> None:
    if is_quantized(model):
        raise GptkitError(f"{what} needs float weights and this model is quantized: train the float checkpoint, "
                          "then quantize it (`gptkit quantize`)")


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of the quantized weights (buffers and parameters; int4's packed copy instead of its values). Not
    counted: the float copy each int8 matrix smaller than ONEDNN_MIN_SIDE keeps in memory for speed."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for name, tensor in list(module.named_buffers(recurse=False)) + list(module.named_parameters(recurse=False)):
            if isinstance(module, Int4Weight) and name == "values":
                continue  # the forward reads the packed copy
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def dequantize_linear_error(weight: torch.Tensor, config: QuantizeConfig) -> float:
    """Relative Frobenius error of quantizing one matrix (for tests and reports)."""
    q = Int4Weight.quantize(weight, config.group_size) if config.mode == "int4" else Int8Weight.quantize(weight)
    return float(torch.linalg.norm(q.dequantize() - weight) / torch.linalg.norm(weight))


# ------------------------------------------------------------------------------------------------
# the quantized checkpoint


def write_quantized(model: GPT, tokenizer: Tokenizer, target: str | Path, *, carry: Sequence[Path] = ()) -> Path:
    """A checkpoint directory (written atomically): config.json, tokenizer.json, quantization.json and the quantized
    tensors in model.safetensors (int8 values and scales; int4 values one per byte, scales and zero points).
    `carry`: files copied in as they are, those that exist (the float checkpoint's record of its training data, so
    that `gptkit eval` finds the held-out split)."""
    config: QuantizeConfig | None = getattr(model, "quantization", None)
    require(config is not None and is_quantized(model), "write_quantized needs a model quantized by quantize_model")
    state = unshared_state(model.state_dict())

    def write(tmp: Path) -> None:
        model.config.save(tmp / "config.json")
        (tmp / QUANTIZATION_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")  # type: ignore[union-attr]
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "gptkit_quantization": config.mode})
        tokenizer.save(tmp)
        for path in carry:
            if Path(path).is_file():
                shutil.copyfile(path, tmp / Path(path).name)

    return write_atomically(Path(target), write)


def read_quantization(path: Path) -> QuantizeConfig:
    try:
        config = QuantizeConfig(**json.loads((Path(path) / QUANTIZATION_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise GptkitError(f"{path / QUANTIZATION_FILE} is not a valid quantization record: {e}") from None
    config.validate()
    return config


def load_quantized(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """A quantized checkpoint as the quantized GPT it was written from (CPU: the kernels are PyTorch's CPU ones)."""
    path = Path(path)
    require(torch.device(device).type == "cpu", f"quantized checkpoints run on the CPU, not {device}")
    config = read_quantization(path)
    model = quantize_model(GPT(ModelConfig.load(path / "config.json")), config)  # the modules, then their tensors
    tensors = load_file(str(path / WEIGHTS_FILE))
    expected = model.state_dict()
    stored = set(unshared_state(expected))  # a tied embedding and head: stored once, re-tied by the module structure
    missing = sorted(stored - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    require(not missing and not unexpected, f"{path / WEIGHTS_FILE} does not match a {config.mode} model of its "
                                            f"config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict(tensors, strict=False)
    for module in model.modules():
        if isinstance(module, (Int4Weight, Int8Weight)):
            module.repack()
    return model.eval(), Tokenizer.from_file(path / "tokenizer.json")


__all__ = ["MODES", "ONEDNN_MIN_SIDE", "Int4Weight", "Int8Weight", "QuantizeConfig", "QuantizedEmbedding", "QuantizedLinear",
           "is_quantized", "load_quantized", "quantize_model", "quantized_bytes", "require_float", "write_quantized"]
