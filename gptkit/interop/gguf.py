"""GGUF for llama.cpp users: a gptkit checkpoint of the GPT-2 or the Llama family, with its byte-level BPE tokenizer,
written as one .gguf file (float32, float16 or Q8_0) with the `gguf` package, and such a file read back into a
gptkit checkpoint; knows nothing of the command line.

    export_gguf("out/pretrain/tiny", "tiny.gguf", outtype="q8_0")
    # then, with llama.cpp: llama-cli -m tiny.gguf -p "ROMEO:"    or    llama-server -m tiny.gguf
    import_gguf("model.gguf", "out/from-gguf")      # GPT-2 or Llama architecture, "gpt2" (byte-level BPE) tokenizer

Tensors take llama.cpp's names and layouts, as its own converter (convert_hf_to_gguf.py) writes them: GPT-2's fused
q/k/v stays fused (`attn_qkv`); Llama's is split into `attn_q`, `attn_k`, `attn_v` and its fused gate/up into
`ffn_gate` and `ffn_up`, and q and k are permuted from the "rotate half" RoPE layout gptkit (like Hugging Face)
uses to llama.cpp's interleaved one. A tied head is written once (llama.cpp reuses `token_embd`). Q8_0 quantizes the
2-D weight matrices in blocks of 32 (llama.cpp's own format); norms, biases and the position table stay float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gptkit.checkpoint import load_model, resolve_checkpoint, save_checkpoint
from gptkit.config import LLAMA_FAMILY, ModelConfig
from gptkit.errors import GptkitError, require
from gptkit.interop.hf import GPT2, LLAMA, export_family
from gptkit.models.gpt import GPT
from gptkit.tokenizer import SpecialTokens, Tokenizer

OUTTYPES = ("f32", "f16", "q8_0")


def _gguf():
    try:
        import gguf  # optional: only exporting needs it
    except ImportError:
        raise GptkitError("GGUF export needs the gguf package: pip install gguf") from None
    return gguf


def llama_rope_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """q or k projection rows from the rotate-half RoPE layout to llama.cpp's interleaved one (what its converter
    does to Hugging Face Llama weights)."""
    out = weight.shape[0]
    return (weight.reshape(n_head, 2, out // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape))


def layer_names(family: str) -> dict[str, str]:
    """gptkit's name -> llama.cpp's for the per-layer tensors that map one to one (Llama's fused q/k/v and gate/up
    are split apart by the callers)."""
    names = {"norm1": "attn_norm", "attn.proj": "attn_output", "norm2": "ffn_norm", "mlp.proj": "ffn_down"}
    return names | {"attn.qkv": "attn_qkv", "mlp.fc": "ffn_up"} if family == "gpt2" else names


def gguf_tensors(state: dict[str, torch.Tensor], config: ModelConfig, family: str) -> dict[str, torch.Tensor]:
    """gptkit's tensors under llama.cpp's names, in its layouts."""
    out = {"token_embd.weight": state["tok_emb.weight"], "output_norm.weight": state["norm_f.weight"]}
    if "norm_f.bias" in state:
        out["output_norm.bias"] = state["norm_f.bias"]
    if not config.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    if family == "gpt2":
        out["position_embd.weight"] = state["pos_emb.weight"]
    q_rows, kv_rows = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"blk.{i}."
        pairs = layer_names(family)
        for a, b in pairs.items():
            for kind in ("weight", "bias"):
                if f"{ours}{a}.{kind}" in state:
                    out[f"{theirs}{b}.{kind}"] = state[f"{ours}{a}.{kind}"]
        if family == "llama":
            for kind in ("weight", "bias"):
                qkv = state.get(f"{ours}attn.qkv.{kind}")
                if qkv is None:
                    continue
                q, k, v = qkv.split([q_rows, kv_rows, kv_rows])
                out[f"{theirs}attn_q.{kind}"] = llama_rope_permute(q, config.n_head)
                out[f"{theirs}attn_k.{kind}"] = llama_rope_permute(k, config.n_kv_head)
                out[f"{theirs}attn_v.{kind}"] = v
            gate, up = state[f"{ours}mlp.fc.weight"].chunk(2)
            out[f"{theirs}ffn_gate.weight"], out[f"{theirs}ffn_up.weight"] = gate, up
    return out


def _token_types(tokenizer: Tokenizer, gguf) -> tuple[list[str], list[int]]:
    vocab = tokenizer.hf.get_vocab(with_added_tokens=True)
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    added = tokenizer.hf.get_added_tokens_decoder()
    types = [int(gguf.TokenType.CONTROL) if i in added and added[i].special else
             int(gguf.TokenType.USER_DEFINED) if i in added else int(gguf.TokenType.NORMAL) for i in range(len(tokens))]
    return tokens, types


def _merges(tokenizer: Tokenizer) -> list[str]:
    import json

    spec = json.loads(tokenizer.hf.to_str())
    model = spec["model"]
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("decoder"))
    require(model.get("type") == "BPE" and byte_level,
            "GGUF export needs a byte-level BPE tokenizer (gptkit's bpe or gpt2 tokenizers, GPT-2's byte-to-unicode "
            f"vocabulary); this checkpoint's is {tokenizer.describe()['kind']}, which llama.cpp's tokenizers cannot "
            "express (retrain the model with --tokenizer bpe)")
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def export_gguf(checkpoint: str | Path, out: str | Path, *, outtype: str = "f32", overwrite: bool = False) -> Path:
    """Write `checkpoint` (a plain or merged gptkit checkpoint) to the GGUF file `out`; returns its path."""
    gguf = _gguf()
    require(outtype in OUTTYPES, f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    out = Path(out)
    require(overwrite or not out.exists(), f"{out} exists; pass --overwrite to replace it")
    model, tokenizer = load_model(resolve_checkpoint(checkpoint))
    config = model.config
    family = export_family(config)
    require(family in (GPT2, LLAMA), f"llama.cpp has no architecture for this model ({family.architecture}: "
                                     "biases only on q/k/v); GGUF export takes the GPT-2 and Llama families")
    arch = "gpt2" if family is GPT2 else "llama"
    merges = _merges(tokenizer)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    tensors = gguf_tensors(state, config, arch)

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(Path(resolve_checkpoint(checkpoint)).name)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_file_type(file_type)
    if arch == "gpt2":
        writer.add_layer_norm_eps(config.norm_eps)
    else:
        writer.add_head_count_kv(config.n_kv_head)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_vocab_size(config.vocab_size)
    tokens, types = _token_types(tokenizer, gguf)
    require(len(tokens) == config.vocab_size, f"the tokenizer has {len(tokens)} tokens but the model's vocabulary "
                                              f"is {config.vocab_size}; llama.cpp needs them equal")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if tokenizer.bos_id is not None:
        writer.add_bos_token_id(tokenizer.bos_id)
    if tokenizer.eos_id is not None:
        writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_add_bos_token(False)  # gptkit prompts start without BOS
    for name, tensor in tensors.items():
        data = tensor.numpy()
        matrix = data.ndim == 2 and name not in ("position_embd.weight",)
        if outtype == "f16" and matrix:
            writer.add_tensor(name, data.astype(np.float16))
        elif outtype == "q8_0" and matrix and data.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)  # atomic: a killed export leaves no half-written model.gguf
    return out


# ------------------------------------------------------------------------------------------------
# import


def llama_rope_unpermute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of `llama_rope_permute`: llama.cpp's interleaved q/k rows back to the rotate-half layout."""
    out = weight.shape[0]
    return (weight.reshape(n_head, out // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape))


def _field(fields: dict, name: str, default=None):
    field = fields.get(name)
    return field.contents() if field is not None else default


def _gguf_config(fields: dict, arch: str, vocab_size: int, tied: bool) -> ModelConfig:
    def need(key: str):
        value = _field(fields, f"{arch}.{key}")
        require(value is not None, f"the GGUF file has no {arch}.{key}")
        return value

    common = dict(vocab_size=vocab_size, block_size=int(need("context_length")), n_layer=int(need("block_count")),
                  n_head=int(need("attention.head_count")), n_embd=int(need("embedding_length")),
                  intermediate_size=int(need("feed_forward_length")), tie_embeddings=tied)
    if arch == "gpt2":
        # llama.cpp computes GPT-2's GELU with the tanh approximation, as GPT-2 itself does.
        return ModelConfig(**common, norm_eps=float(need("attention.layer_norm_epsilon")), gelu_approximation="tanh")
    return ModelConfig(**common, **{**LLAMA_FAMILY, "norm_eps": float(need("attention.layer_norm_rms_epsilon"))},
                       n_kv_head=int(_field(fields, f"{arch}.attention.head_count_kv", common["n_head"])),
                       rope_theta=float(_field(fields, f"{arch}.rope.freq_base", 10000.0)))


def _gguf_tokenizer(fields: dict, gguf) -> Tokenizer:
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    require(_field(fields, "tokenizer.ggml.model") == "gpt2",
            f"gptkit reads GGUF tokenizers of llama.cpp's 'gpt2' kind (byte-level BPE), not "
            f"{_field(fields, 'tokenizer.ggml.model')!r}")
    tokens = list(_field(fields, "tokenizer.ggml.tokens"))
    types = list(_field(fields, "tokenizer.ggml.token_type", [int(gguf.TokenType.NORMAL)] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(fields, "tokenizer.ggml.merges", [])]
    added = {i for i, t in enumerate(types) if t in (int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED))}
    vocab = {token: i for i, token in enumerate(tokens)}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(tokens[i], special=types[i] == int(gguf.TokenType.CONTROL))
                           for i in sorted(added)])
    bos, eos = _field(fields, "tokenizer.ggml.bos_token_id"), _field(fields, "tokenizer.ggml.eos_token_id")
    return Tokenizer(hf, SpecialTokens(bos=tokens[bos] if bos is not None else None,
                                       eos=tokens[eos] if eos is not None else None, pad=None))


def import_gguf(path: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """A gptkit checkpoint at `out` from the GGUF file `path` (GPT-2 or Llama architecture; F32, F16 or Q8_0 and the
    other types `gguf` dequantizes). Weights are dequantized to float32."""
    gguf = _gguf()
    path, out = Path(path), Path(out)
    require(path.is_file(), f"GGUF file {path} does not exist")
    require(overwrite or not out.exists(), f"{out} exists; pass --overwrite to replace it")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise GptkitError(f"{path} is not a readable GGUF file: {e}") from None
    fields = reader.fields
    arch = _field(fields, "general.architecture")
    require(arch in ("gpt2", "llama"), f"{path} holds a {arch!r} model; gptkit imports the gpt2 and llama "
                                       "architectures")
    tensors = {}
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]
        data = t.data if t.tensor_type in (gguf.GGMLQuantizationType.F32,) else \
            gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = torch.from_numpy(np.asarray(data, dtype=np.float32).reshape(shape).copy())
    tokenizer = _gguf_tokenizer(fields, gguf)
    config = _gguf_config(fields, arch, tensors["token_embd.weight"].shape[0], "output.weight" not in tensors)
    require(config.vocab_size == tokenizer.vocab_size, f"{path}: {tokenizer.vocab_size} tokens for a vocabulary of "
                                                       f"{config.vocab_size}")
    model = GPT(config)
    expected = gguf_tensors({k: v for k, v in model.state_dict().items()}, config, arch)
    missing = sorted(set(expected) - set(tensors))
    require(not missing, f"{path} lacks tensors this {arch} model needs: {', '.join(missing[:5])}")
    state = _from_gguf_tensors(tensors, config, arch)
    model.load_state_dict(state, strict=not config.tie_embeddings)
    return save_checkpoint(out, model, tokenizer)


def _from_gguf_tensors(tensors: dict[str, torch.Tensor], config: ModelConfig, family: str) -> dict[str, torch.Tensor]:
    """llama.cpp's names and layouts back to gptkit's (the inverse of `gguf_tensors`)."""
    state = {"tok_emb.weight": tensors["token_embd.weight"], "norm_f.weight": tensors["output_norm.weight"]}
    if "output_norm.bias" in tensors:
        state["norm_f.bias"] = tensors["output_norm.bias"]
    state["lm_head.weight"] = tensors.get("output.weight", tensors["token_embd.weight"])
    if family == "gpt2":
        state["pos_emb.weight"] = tensors["position_embd.weight"]
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"blk.{i}."
        pairs = layer_names(family)
        for a, b in pairs.items():
            for kind in ("weight", "bias"):
                if f"{theirs}{b}.{kind}" in tensors:
                    state[f"{ours}{a}.{kind}"] = tensors[f"{theirs}{b}.{kind}"]
        if family == "llama":
            for kind in ("weight", "bias"):
                if f"{theirs}attn_q.{kind}" not in tensors:
                    continue
                q = llama_rope_unpermute(tensors[f"{theirs}attn_q.{kind}"], config.n_head)
                k = llama_rope_unpermute(tensors[f"{theirs}attn_k.{kind}"], config.n_kv_head)
                state[f"{ours}attn.qkv.{kind}"] = torch.cat([q, k, tensors[f"{theirs}attn_v.{kind}"]])
            state[f"{ours}mlp.fc.weight"] = torch.cat([tensors[f"{theirs}ffn_gate.weight"],
                                                       tensors[f"{theirs}ffn_up.weight"]])
    return state
