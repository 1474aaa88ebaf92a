"""GGUF export for llama.cpp users: a gptkit checkpoint of the GPT-2 or the Llama family, with its byte-level BPE
tokenizer, written as one .gguf file (float32, float16 or Q8_0) with the `gguf` package; knows nothing of the
command line.

    export_gguf("out/pretrain/tiny", "tiny.gguf", outtype="q8_0")
    # then, with llama.cpp: llama-cli -m tiny.gguf -p "ROMEO:"    or    llama-server -m tiny.gguf

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

from gptkit.checkpoint import load_model, resolve_checkpoint
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError, require
from gptkit.interop.hf import GPT2, LLAMA, export_family
from gptkit.tokenizer import Tokenizer

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
        pairs = {"norm1": "attn_norm", "attn.proj": "attn_output", "norm2": "ffn_norm", "mlp.proj": "ffn_down"}
        if family == "gpt2":
            pairs |= {"attn.qkv": "attn_qkv", "mlp.fc": "ffn_up"}
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
