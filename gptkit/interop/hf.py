"""Hugging Face checkpoints in and out: GPT-2 and the Llama family (Llama, SmolLM2, Qwen2).

`import_hf` turns a local Hugging Face model directory (config.json, *.safetensors or a
pytorch_model.bin, tokenizer.json) into a gptkit checkpoint; `export_hf` turns a gptkit checkpoint
into a directory that `transformers.AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load as is. Neither needs `transformers` installed, and gptkit never
downloads anything: a model on the Hub has to be fetched first (`hf download NAME --local-dir DIR`).

How tensors correspond is data: one `Family` table per architecture pairs each gptkit tensor with the
Hugging Face tensor(s) it is made of. Two things differ beyond names:
- gptkit fuses q, k and v into one `attn.qkv` matrix (rows in that order) and a SwiGLU MLP's gate and
  up projections into one `mlp.fc` (gate first); Llama keeps them apart, GPT-2 fuses q, k, v too.
- GPT-2's `Conv1D` layers store their weight as (in, out), the transpose of `nn.Linear`'s.
Both are exact rearrangements, so a round trip leaves every tensor bit-identical, and tensors keep
their dtype (a bf16 checkpoint stays bf16). RoPE needs no permutation: Hugging Face's Llama weights
use the same "rotate half" layout as gptkit.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptkit.chat_format import has_chat_tokens, jinja_chat_template
from gptkit.checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, resolve_checkpoint
from gptkit.files import write_atomically
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError, require
from gptkit.models.gpt import GPT
from gptkit.tokenizer import ROLES_FILE, SpecialTokens, Tokenizer

HF_CONFIG_FILE = "config.json"
HF_TOKENIZER_FILE = "tokenizer.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# ------------------------------------------------------------------------------------------------
# the mapping tables


@dataclass(frozen=True)
class Family:
    """How one Hugging Face architecture names the tensors of gptkit's model."""

    architecture: str
    model_type: str
    base_prefix: str
    """Prefix of the base model's tensors; checkpoints saved from the base model (GPT2Model) lack it."""
    top: tuple[tuple[str, str], ...]
    """(gptkit name, Hugging Face name) outside the layers."""
    layer_prefix: str
    layer: tuple[tuple[str, tuple[str, ...]], ...]
    """(gptkit name, Hugging Face names) in layer i: several names are concatenated along rows."""
    conv1d: frozenset[str] = frozenset()
    """gptkit names (within a layer) whose Hugging Face weight is stored transposed (GPT-2's Conv1D)."""
    ignorable: str = r"$^"
    """Hugging Face tensors that are not weights (buffers some old checkpoints saved): skipped on import."""


GPT2 = Family(
    architecture="GPT2LMHeadModel", model_type="gpt2", base_prefix="transformer.",
    top=(("tok_emb.weight", "transformer.wte.weight"), ("pos_emb.weight", "transformer.wpe.weight"),
         ("norm_f.weight", "transformer.ln_f.weight"), ("norm_f.bias", "transformer.ln_f.bias"),
         ("lm_head.weight", "lm_head.weight")),
    layer_prefix="transformer.h.",
    layer=(("norm1.weight", ("ln_1.weight",)), ("norm1.bias", ("ln_1.bias",)),
           ("attn.qkv.weight", ("attn.c_attn.weight",)), ("attn.qkv.bias", ("attn.c_attn.bias",)),
           ("attn.proj.weight", ("attn.c_proj.weight",)), ("attn.proj.bias", ("attn.c_proj.bias",)),
           ("norm2.weight", ("ln_2.weight",)), ("norm2.bias", ("ln_2.bias",)),
           ("mlp.fc.weight", ("mlp.c_fc.weight",)), ("mlp.fc.bias", ("mlp.c_fc.bias",)),
           ("mlp.proj.weight", ("mlp.c_proj.weight",)), ("mlp.proj.bias", ("mlp.c_proj.bias",))),
    conv1d=frozenset({"attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight"}),
    ignorable=r"transformer\.h\.\d+\.attn\.(masked_)?bias",  # the causal mask, saved by transformers < 4.31
)

_LLAMA_LAYER = (
    ("norm1.weight", ("input_layernorm.weight",)),
    ("attn.qkv.weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")),
    ("attn.qkv.bias", ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")),
    ("attn.proj.weight", ("self_attn.o_proj.weight",)), ("attn.proj.bias", ("self_attn.o_proj.bias",)),
    ("norm2.weight", ("post_attention_layernorm.weight",)),
    ("mlp.fc.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    ("mlp.fc.bias", ("mlp.gate_proj.bias", "mlp.up_proj.bias")),
    ("mlp.proj.weight", ("mlp.down_proj.weight",)), ("mlp.proj.bias", ("mlp.down_proj.bias",)),
)
_LLAMA_TOP = (("tok_emb.weight", "model.embed_tokens.weight"), ("norm_f.weight", "model.norm.weight"),
              ("lm_head.weight", "lm_head.weight"))
LLAMA = Family(architecture="LlamaForCausalLM", model_type="llama", base_prefix="model.", top=_LLAMA_TOP,
               layer_prefix="model.layers.", layer=_LLAMA_LAYER,
               ignorable=r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # saved by transformers < 4.36
# Qwen2 is Llama with biases on q, k and v only (gptkit: bias=False, attn_bias=True).
QWEN2 = Family(architecture="Qwen2ForCausalLM", model_type="qwen2", base_prefix="model.", top=_LLAMA_TOP,
               layer_prefix="model.layers.", layer=_LLAMA_LAYER, ignorable=LLAMA.ignorable)

FAMILIES = {family.architecture: family for family in (GPT2, LLAMA, QWEN2)}
SUPPORTED_ARCHITECTURES = tuple(FAMILIES)


@dataclass(frozen=True)
class Rule:
    """One gptkit tensor and the Hugging Face tensors it is made of."""

    ours: str
    theirs: tuple[str, ...]
    rows: tuple[int, ...] | None
    """Rows of each Hugging Face tensor when several are concatenated (fused q|k|v, gate|up)."""
    transpose: bool


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """gptkit's tensors for `config` and their shapes; a tied output head is stored once, as tok_emb."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = GPT(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_embeddings:
        del shapes["lm_head.weight"]
    return shapes


def rules_for(family: Family, config: ModelConfig) -> list[Rule]:
    """The family's table, unrolled over layers and kept to the tensors this config has."""
    hd = config.head_dim
    assert config.n_kv_head is not None and config.intermediate_size is not None
    fused_rows = {"attn.qkv": (config.n_head * hd, config.n_kv_head * hd, config.n_kv_head * hd),
                  "mlp.fc": (config.intermediate_size, config.intermediate_size)}
    rules = [Rule(ours, (theirs,), None, False) for ours, theirs in family.top]
    for i in range(config.n_layer):
        for ours, theirs in family.layer:
            rows = fused_rows[ours.rsplit(".", 1)[0]] if len(theirs) > 1 else None
            rules.append(Rule(f"blocks.{i}.{ours}", tuple(f"{family.layer_prefix}{i}.{t}" for t in theirs), rows,
                              ours in family.conv1d))
    shapes = expected_shapes(config)
    return [rule for rule in rules if rule.ours in shapes]


def their_shapes(rule: Rule, ours: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes of the Hugging Face tensors behind a gptkit tensor of shape `ours`."""
    parts = [(rows, *ours[1:]) for rows in rule.rows] if rule.rows else [ours]
    return [tuple(reversed(shape)) for shape in parts] if rule.transpose else parts


# ------------------------------------------------------------------------------------------------
# configs: Hugging Face <-> ModelConfig


def _rope_theta(hf: dict[str, Any]) -> float:
    # transformers 5 writes `rope_parameters`; 4.x wrote `rope_theta` and `rope_scaling`.
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    require(kind == "default", f"RoPE scaling {kind!r} is not supported: gptkit implements plain RoPE "
                               "(rope_type 'default') only")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


# transformers' GPT-2 activation names -> gptkit's gelu_approximation. gelu_new, gelu_pytorch_tanh and gelu_fast
# are all the tanh approximation (the last two only compute it differently).
GELU_APPROXIMATION = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


def hf_gpt2_activation(config: ModelConfig) -> str:
    """The `activation_function` of the GPT2Config whose MLP computes what `config`'s does."""
    return "gelu_new" if config.gelu_approximation == "tanh" else "gelu"


def _gpt2_config(hf: dict[str, Any]) -> dict[str, Any]:
    act = hf.get("activation_function", "gelu_new")
    require(act in GELU_APPROXIMATION,
            f"activation_function {act!r} is not supported: gptkit's GPT-2 MLP is GELU, exact ('gelu') or with "
            f"the tanh approximation ({', '.join(a for a in GELU_APPROXIMATION if a != 'gelu')})")
    require(hf.get("scale_attn_weights", True) and not hf.get("scale_attn_by_inverse_layer_idx", False),
            "only GPT-2's standard attention scaling (1/sqrt(head_dim)) is supported")
    require(not hf.get("add_cross_attention", False), "GPT-2 with cross-attention is not a decoder-only model")
    return dict(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
                n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"], position="learned", norm="layernorm",
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu", gelu_approximation=GELU_APPROXIMATION[act],
                bias=True,
                tie_embeddings=hf.get("tie_word_embeddings", True), dropout=hf.get("resid_pdrop", 0.0))


def _llama_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(hf.get("hidden_act", "silu") == "silu",
            f"hidden_act {hf.get('hidden_act')!r} is not supported: gptkit's SwiGLU MLP uses SiLU")
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or n_embd // n_head
    require(head_dim * n_head == n_embd,
            f"head_dim {head_dim} x {n_head} heads != hidden_size {n_embd}: gptkit needs head_dim = "
            "hidden_size / heads")
    attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    require(attention_bias == mlp_bias,
            f"attention_bias={attention_bias} with mlp_bias={mlp_bias} is not supported: gptkit's `bias` flag "
            "covers every linear layer (or only q/k/v, as in Qwen2)")
    return dict(vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
                n_layer=hf["num_hidden_layers"], n_head=n_head,
                n_kv_head=hf.get("num_key_value_heads") or n_head, n_embd=n_embd,
                intermediate_size=hf["intermediate_size"], position="rope", rope_theta=_rope_theta(hf),
                norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", bias=bool(attention_bias),
                tie_embeddings=hf.get("tie_word_embeddings", False), dropout=hf.get("attention_dropout", 0.0))


def _qwen2_config(hf: dict[str, Any]) -> dict[str, Any]:
    window = hf.get("sliding_window")
    require(not hf.get("use_sliding_window", False) or window is None
            or window >= hf.get("max_position_embeddings", 0),
            "Qwen2 with sliding-window attention is not supported: gptkit attends over the whole context")
    base = {k: v for k, v in hf.items() if k not in ("attention_bias", "mlp_bias")}
    return {**_llama_config(base), "bias": False, "attn_bias": True}


_FROM_HF: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "GPT2LMHeadModel": _gpt2_config, "LlamaForCausalLM": _llama_config, "Qwen2ForCausalLM": _qwen2_config}
_MODEL_TYPES = {family.model_type: family.architecture for family in FAMILIES.values()}


def family_of(hf: dict[str, Any], where: str = HF_CONFIG_FILE) -> Family:
    """The supported family a Hugging Face config.json describes."""
    architectures = hf.get("architectures") or []
    if not architectures and hf.get("model_type") in _MODEL_TYPES:  # configs written without `architectures`
        architectures = [_MODEL_TYPES[hf["model_type"]]]
    known = [a for a in architectures if a in FAMILIES]
    if not known:
        named = ", ".join(architectures) or f"model_type {hf.get('model_type')!r}"
        raise GptkitError(f"{where}: architecture {named} is not supported; gptkit converts "
                          f"{', '.join(SUPPORTED_ARCHITECTURES)} (SmolLM2 and TinyLlama are LlamaForCausalLM)")
    return FAMILIES[known[0]]


def hf_to_model_config(hf: dict[str, Any], name: str = "hf", where: str = HF_CONFIG_FILE) -> ModelConfig:
    """A ModelConfig equal in function to a Hugging Face config.json (raises GptkitError when none is)."""
    family = family_of(hf, where)
    try:
        fields = _FROM_HF[family.architecture](hf)
    except KeyError as e:
        raise GptkitError(f"{where}: {family.architecture} config has no {e.args[0]!r}") from None
    except GptkitError as e:
        raise GptkitError(f"{where}: {e}") from None
    return ModelConfig(name=name, **fields)


def export_family(config: ModelConfig) -> Family:
    """The Hugging Face architecture that computes exactly what `config` does, or a GptkitError naming why none."""
    layout = (config.position, config.norm, config.mlp)
    if layout == ("learned", "layernorm", "gelu"):
        require(config.bias and config.qkv_bias,
                f"GPT-2 has biases in every linear layer and LayerNorm; this model has bias={config.bias}, "
                f"attn_bias={config.attn_bias}, which transformers' GPT2LMHeadModel cannot express")
        require(config.n_kv_head == config.n_head,
                f"GPT-2 has no grouped-query attention; this model has n_kv_head={config.n_kv_head} < "
                f"n_head={config.n_head}")
        return GPT2
    if layout == ("rope", "rmsnorm", "swiglu"):
        if config.qkv_bias == config.bias:
            return LLAMA
        require(config.qkv_bias, "biases everywhere but q/k/v (bias=True, attn_bias=False) map to no "
                                 "transformers architecture")
        return QWEN2
    raise GptkitError(
        f"no transformers architecture has position={config.position}, norm={config.norm}, mlp={config.mlp}: "
        "export supports the GPT-2 family (learned + layernorm + gelu -> GPT2LMHeadModel) and the Llama "
        "family (rope + rmsnorm + swiglu -> LlamaForCausalLM, or Qwen2ForCausalLM with q/k/v-only biases)")


def model_config_to_hf(config: ModelConfig, special: dict[str, int | None], dtype: str = "float32") -> dict[str, Any]:
    """The config.json of the Hugging Face model equal to gptkit's `config`."""
    family = export_family(config)
    ids = {f"{role}_token_id": special.get(role) for role in ("bos", "eos", "pad")}
    common = dict(architectures=[family.architecture], model_type=family.model_type, vocab_size=config.vocab_size,
                  tie_word_embeddings=config.tie_embeddings, dtype=dtype, **ids)
    if family is GPT2:
        # n_ctx beside n_positions, as OpenAI's GPT-2 configs have it: llama.cpp's converter reads n_ctx.
        return dict(common, n_positions=config.block_size, n_ctx=config.block_size, n_embd=config.n_embd,
                    n_layer=config.n_layer,
                    n_head=config.n_head, n_inner=config.intermediate_size,
                    activation_function=hf_gpt2_activation(config),
                    layer_norm_epsilon=config.norm_eps, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
                    attn_pdrop=config.dropout, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                    reorder_and_upcast_attn=False)
    llama = dict(common, hidden_size=config.n_embd, intermediate_size=config.intermediate_size,
                 num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                 num_key_value_heads=config.n_kv_head, max_position_embeddings=config.block_size,
                 rms_norm_eps=config.norm_eps, hidden_act="silu", attention_dropout=config.dropout,
                 # Both spellings: transformers 4.x reads rope_theta, 5.x rope_parameters.
                 rope_theta=config.rope_theta,
                 rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta})
    if family is QWEN2:
        return dict(llama, use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layer)
    return dict(llama, head_dim=config.head_dim, attention_bias=config.bias, mlp_bias=config.bias)


# ------------------------------------------------------------------------------------------------
# reading a Hugging Face directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GptkitError(f"{path} is not valid JSON: {e}") from None
    require(isinstance(data, dict), f"{path} must hold a JSON object")
    return data


def require_local_dir(path: str | Path) -> Path:
    """`path` as a local model directory; a Hub name gets told that gptkit never downloads."""
    p = Path(path)
    if p.is_dir():
        return p
    if not p.exists():
        if re.fullmatch(r"[\w][\w.-]*/[\w.-]+|[\w][\w.-]*", str(path)):
            raise GptkitError(f"{path} is not a local directory, and gptkit never downloads: if it is a model on "
                              f"the Hugging Face Hub, fetch it first (`hf download {path} --local-dir DIR`) and "
                              "pass that DIR")
        raise GptkitError(f"{path} does not exist")
    raise GptkitError(f"{path} is a file; pass the directory that holds config.json, the weights and tokenizer.json")


def _weight_files(hf_dir: Path) -> list[Path]:
    """The files holding the weights, in the order transformers prefers them."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = hf_dir / index_name
        if index.is_file():  # sharded: the index maps every tensor to its shard
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            require(shards, f"{index} maps no tensors to files")
            missing = [s for s in shards if not (hf_dir / s).is_file()]
            require(not missing, f"{index} names shard(s) that are not there: {', '.join(missing)}")
            return [hf_dir / s for s in shards]
        if (hf_dir / single).is_file():
            return [hf_dir / single]
    present = sorted(p.name for p in hf_dir.iterdir() if p.suffix in (".h5", ".msgpack", ".gguf", ".pt", ".ckpt",
                                                                       ".bin", ".safetensors", ".pth"))
    found = f" (found {', '.join(present)}: not a format gptkit imports)" if present else ""
    raise GptkitError(f"{hf_dir} has no weights gptkit can read{found}: expected model.safetensors, sharded "
                      "model-*.safetensors with model.safetensors.index.json, or pytorch_model.bin")


def _load_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only: a pickle may carry code that runs on load; this mode only rebuilds tensors.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1][:200]
        raise GptkitError(
            f"{path} cannot be loaded safely: it is a pickle that needs more than tensors ({reason}). "
            "Unpickling arbitrary objects can run code, so gptkit only reads pickles with "
            "torch.load(weights_only=True), and safetensors. If you trust the file, convert it to "
            "model.safetensors yourself (torch.load + safetensors.torch.save_file) and import that") from None
    except Exception as e:  # a truncated or foreign file
        raise GptkitError(f"{path} is not a readable PyTorch checkpoint: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    require(isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()),
            f"{path} does not hold a mapping of tensor names to tensors")
    # A pickle keeps tied tensors as one storage; safetensors cannot save them apart, so copy repeats.
    seen: set[int] = set()
    for name, tensor in state.items():
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            state[name] = tensor.clone()
        seen.add(storage)
    return state


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face checkpoint directory, by name (shards merged)."""
    tensors: dict[str, torch.Tensor] = {}
    for path in _weight_files(hf_dir):
        if path.suffix == ".safetensors":
            try:
                part = load_file(str(path))
            except (SafetensorError, OSError) as e:
                raise GptkitError(f"{path} is not a readable safetensors file: {e}") from None
        else:
            part = _load_pickle_weights(path)
        duplicated = sorted(set(part) & set(tensors))
        require(not duplicated, f"{path} repeats tensors of another shard: {', '.join(duplicated[:5])}")
        tensors.update(part)
    return tensors


def _full_name(name: str, family: Family) -> str:
    """The name as the *ForCausalLM class has it (hub GPT-2 was saved from GPT2Model: `h.0.*`, no `transformer.`)."""
    return name if name.startswith((family.base_prefix, "lm_head.")) else family.base_prefix + name


def _describe(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def hf_to_gptkit_tensors(tensors: dict[str, torch.Tensor], family: Family,
                         config: ModelConfig) -> dict[str, torch.Tensor]:
    """gptkit's state dict from a Hugging Face one; names missing, surplus or misshapen tensors if any."""
    original = {_full_name(name, family): name for name in tensors}
    tensors = {_full_name(name, family): t for name, t in tensors.items()}
    shapes = expected_shapes(config)
    rules = rules_for(family, config)
    used = {name for rule in rules for name in rule.theirs}
    missing = sorted(name for name in used if name not in tensors)
    require(not missing, f"the checkpoint lacks tensor(s) that config.json implies: {_describe(missing)}")
    ignorable = re.compile(family.ignorable)
    # A tied head may be saved anyway (old checkpoints did); transformers ignores it, and so do we.
    surplus = sorted(original[name] for name in tensors if name not in used and not ignorable.fullmatch(name)
                     and not (config.tie_embeddings and name == "lm_head.weight"))
    require(not surplus, f"the checkpoint has tensor(s) that config.json does not explain: {_describe(surplus)}")
    ours: dict[str, torch.Tensor] = {}
    for rule in rules:
        parts = [tensors[name] for name in rule.theirs]
        for name, part, shape in zip(rule.theirs, parts, their_shapes(rule, shapes[rule.ours])):
            require(tuple(part.shape) == shape,
                    f"tensor {name} has shape {tuple(part.shape)} but config.json implies {shape}")
        tensor = torch.cat(parts) if len(parts) > 1 else parts[0]
        ours[rule.ours] = tensor.t().contiguous() if rule.transpose else tensor.contiguous()
    return ours


def gptkit_to_hf_tensors(tensors: dict[str, torch.Tensor], family: Family,
                         config: ModelConfig) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of `family` from gptkit's (the inverse of `hf_to_gptkit_tensors`)."""
    theirs: dict[str, torch.Tensor] = {}
    for rule in rules_for(family, config):
        tensor = tensors[rule.ours]
        # clone: split parts are views of one storage, which safetensors refuses to save as separate tensors
        parts = [p.clone() for p in tensor.split(list(rule.rows))] if rule.rows else [tensor]
        for name, part in zip(rule.theirs, parts):
            theirs[name] = part.t().contiguous() if rule.transpose else part.contiguous()
    return theirs


def read_hf_special_tokens(hf_dir: Path, tokenizer: Tokenizer, hf_config: dict[str, Any]) -> SpecialTokens:
    """The BOS/EOS/PAD tokens a Hugging Face directory names.

    Token names in tokenizer_config.json / special_tokens_map.json come first (they are what
    AutoTokenizer uses); ids in generation_config.json / config.json fill the gaps (hub GPT-2 names its
    <|endoftext|> only there). A role named nowhere keeps gptkit's default if the vocabulary has it.
    """
    def read(name: str) -> dict[str, Any]:
        return _read_json(hf_dir / name) if (hf_dir / name).is_file() else {}

    found: dict[str, str | None] = {}
    for data in (read(ROLES_FILE), read(SPECIAL_TOKENS_MAP_FILE)):
        for role in ("bos", "eos", "pad"):
            if f"{role}_token" in data and role not in found:  # an explicit null counts: "this model has none"
                value = data[f"{role}_token"]
                found[role] = value.get("content") if isinstance(value, dict) else value
    for data in (read(GENERATION_CONFIG_FILE), hf_config):
        for role in ("bos", "eos", "pad"):
            value = data.get(f"{role}_token_id")
            if isinstance(value, list):  # several stop ids (Llama 3 chat): the first is the canonical EOS
                value = value[0] if value else None
            if role not in found and isinstance(value, int):
                found[role] = tokenizer.id_to_token(value)
    return SpecialTokens(**found)


# ------------------------------------------------------------------------------------------------
# import and export


def _require_writable(out: Path, overwrite: bool) -> None:
    require(not out.exists() or out.is_dir(), f"--out {out} is a file; pass a directory")
    require(overwrite or not out.exists() or not any(out.iterdir()),
            f"{out} already exists and is not empty; choose another --out or pass --overwrite")


def import_hf(hf_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Convert a local Hugging Face model directory into a gptkit checkpoint at `out`; returns `out`."""
    hf_dir, out = require_local_dir(hf_dir), Path(out)
    _require_writable(out, overwrite)
    config_path = hf_dir / HF_CONFIG_FILE
    require(config_path.is_file(), f"{hf_dir} has no {HF_CONFIG_FILE}: a Hugging Face model directory holds "
                                   "config.json, the weights (*.safetensors or pytorch_model.bin) and tokenizer.json")
    hf_config = _read_json(config_path)
    family = family_of(hf_config, str(config_path))
    config = hf_to_model_config(hf_config, name=hf_dir.resolve().name, where=str(config_path))
    tokenizer_path = hf_dir / HF_TOKENIZER_FILE
    require(tokenizer_path.is_file(),
            f"{hf_dir} has no {HF_TOKENIZER_FILE}, which gptkit needs for the tokenizer. If the model only ships "
            "a slow tokenizer (vocab.json + merges.txt, or tokenizer.model), write one once with transformers: "
            f"AutoTokenizer.from_pretrained('{hf_dir}').save_pretrained('{hf_dir}')")
    tokenizer = Tokenizer.from_file(tokenizer_path)  # validates the file
    tokenizer = Tokenizer(tokenizer.hf, read_hf_special_tokens(hf_dir, tokenizer, hf_config))
    require(tokenizer.vocab_size <= config.vocab_size,
            f"{tokenizer_path} has {tokenizer.vocab_size} tokens but the model only {config.vocab_size} embeddings")
    try:
        tensors = hf_to_gptkit_tensors(read_hf_weights(hf_dir), family, config)
    except GptkitError as e:
        raise GptkitError(f"{hf_dir}: {e}") from None

    def write(tmp: Path) -> None:
        config.save(tmp / CONFIG_FILE)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)  # byte for byte: nothing lost in a re-serialisation
        (tmp / ROLES_FILE).write_text(json.dumps(tokenizer.special.to_hf_config(), indent=2) + "\n")

    return write_atomically(out, write)


def _read_gptkit_tensors(path: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    weights = path / WEIGHTS_FILE
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise GptkitError(f"{weights} is not a readable safetensors file: {e}") from None
    if config.tie_embeddings and "tok_emb.weight" not in tensors and "lm_head.weight" in tensors:
        tensors["tok_emb.weight"] = tensors.pop("lm_head.weight")  # a tied matrix may be saved under either name
    elif config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    shapes = expected_shapes(config)
    missing = sorted(set(shapes) - set(tensors))
    require(not missing, f"{weights} lacks tensor(s) that config.json implies: {_describe(missing)}")
    surplus = sorted(set(tensors) - set(shapes))
    require(not surplus, f"{weights} has tensor(s) that config.json does not explain: {_describe(surplus)}")
    for name, shape in shapes.items():
        require(tuple(tensors[name].shape) == shape,
                f"tensor {name} has shape {tuple(tensors[name].shape)} but config.json implies {shape}")
    return tensors


def hf_tokenizer_files(tokenizer: Tokenizer, block_size: int) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json, so that AutoTokenizer knows BOS/EOS/PAD."""

    named = {k: v for k, v in tokenizer.special.to_hf_config().items() if v is not None}
    # gptkit's role-token chat template, when the tokenizer has the tokens: apply_chat_template then
    # renders conversations exactly as gptkit's SFT trained on them.
    has_roles = has_chat_tokens(tokenizer)
    chat = {"chat_template": jinja_chat_template(tokenizer, "tokens")} if has_roles else {}
    return {
        ROLES_FILE: {"tokenizer_class": "PreTrainedTokenizerFast", **named, "model_max_length": block_size,
                     "clean_up_tokenization_spaces": False, **chat},
        SPECIAL_TOKENS_MAP_FILE: named,
    }


def export_hf(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a gptkit checkpoint (or a run directory's best) as a Hugging Face model directory; returns `out`."""
    path, out = resolve_checkpoint(checkpoint), Path(out)
    _require_writable(out, overwrite)
    config = ModelConfig.load(path / CONFIG_FILE)
    family = export_family(config)
    tokenizer = Tokenizer.from_file(path / TOKENIZER_FILE)
    tensors = gptkit_to_hf_tensors(_read_gptkit_tensors(path, config), family, config)
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}
    hf_config = model_config_to_hf(config, ids, dtype)
    generation = {f"{role}_token_id": i for role, i in ids.items() if i is not None}

    def write(tmp: Path) -> None:
        (tmp / HF_CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
        # metadata format=pt: transformers checks it to know the file was written from PyTorch tensors
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.copyfile(path / TOKENIZER_FILE, tmp / HF_TOKENIZER_FILE)
        for name, data in hf_tokenizer_files(tokenizer, config.block_size).items():
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n")

    return write_atomically(out, write)
