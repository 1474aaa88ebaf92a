"""Hugging Face interop: imported and exported models compute what transformers computes, bit for bit on disk.

Nothing is downloaded: Hugging Face models are built with random weights from small configs and saved
with `save_pretrained`; the tokenizer is a gptkit-trained BPE. Weights are randomised well away from
the usual tiny init (biases and norm gains included), so a swapped or mistransposed tensor shows.
"""

import argparse
import contextlib
import io
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import gptkit
from gptkit.checkpoint import load_model, save_checkpoint
from gptkit.config import GPT2_FAMILY, LLAMA_FAMILY, ModelConfig
from gptkit.errors import GptkitError
from gptkit.inference.generate import generate
from gptkit.inference.sampling import SamplingParams
from gptkit.interop import export_hf, hf_to_model_config, import_hf
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

HF_KINDS = ["gpt2", "gpt2-untied", "gpt2-exact-gelu", "llama-gqa-tied", "llama-gqa-untied", "qwen2"]


@pytest.fixture(scope="module")
def tokenizer(shakespeare_text) -> Tokenizer:
    return Tokenizer.train_bpe([shakespeare_text[:100_000]], vocab_size=320)


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """N(0, 0.1^2) everywhere, norm gains around 1: logits with clear winners, biases that matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            if p.dim() == 1 and name.endswith("weight"):  # LayerNorm / RMSNorm gains
                p.add_(1.0)


def make_hf_config(kind: str, tok: Tokenizer):
    ids = dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    llama = dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, **ids)
    if kind.startswith("gpt2"):
        return transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                       tie_word_embeddings=kind != "gpt2-untied",
                                       activation_function="gelu" if kind == "gpt2-exact-gelu" else "gelu_new", **ids)
    if kind == "llama-gqa-tied":
        return transformers.LlamaConfig(**llama, rope_theta=5000.0, tie_word_embeddings=True)
    if kind == "llama-gqa-untied":
        return transformers.LlamaConfig(**llama, rope_theta=100000.0, tie_word_embeddings=False)
    if kind == "qwen2":
        return transformers.Qwen2Config(**llama, tie_word_embeddings=False)
    raise ValueError(kind)


def make_hf_dir(path, kind: str, tok: Tokenizer, *, dtype=torch.float32, **save_kwargs):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(make_hf_config(kind, tok))
    randomize_(model)
    model.to(dtype).save_pretrained(path, **save_kwargs)
    tok.save(path)  # tokenizer.json + tokenizer_config.json (bos/eos/pad, in Hugging Face's keys)
    return path


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("hf")
    return {kind: make_hf_dir(root / kind, kind, tokenizer) for kind in HF_KINDS}


@contextlib.contextmanager
def transformers_warnings():
    """Everything transformers logs at WARNING or above while loading."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)


def load_hf(path):
    """AutoModelForCausalLM + AutoTokenizer, asserting that nothing was missing, unexpected or misshapen."""
    with transformers_warnings() as log:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
        hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    text = log.getvalue()
    for word in ("MISSING", "UNEXPECTED", "MISMATCH", "missing", "unexpected", "newly initialized"):
        assert word not in text, text
    return model.eval(), hf_tok


def random_ids(vocab: int, shape=(2, 16), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def assert_same_logits(ours: GPT, hf_model, vocab: int) -> None:
    ids = random_ids(vocab)
    with torch.no_grad():
        mine, theirs = ours(ids), hf_model(ids).logits
    assert mine.shape == theirs.shape
    diff = (mine - theirs).abs().max().item()
    assert diff <= 1e-4, f"max abs logit difference {diff}"


def assert_same_greedy(ours: GPT, tok: Tokenizer, hf_model) -> None:
    prompt = random_ids(tok.vocab_size, (1, 8), seed=2)[0].tolist()
    ours_ids = generate(ours, tok, [prompt], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0].token_ids
    hf_model.generation_config.eos_token_id = None  # as ignore_eos: always 32 tokens
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32,
                                pad_token_id=tok.pad_id if tok.pad_id is not None else tok.eos_id)
    theirs = out[0, len(prompt):].tolist()
    assert len(ours_ids) == 32 and ours_ids == theirs


def tensors_of(path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    assert files
    merged = {}
    for f in files:
        merged.update(load_file(str(f)))
    return merged


# ------------------------------------------------------------------------------------------------
# import


@pytest.mark.parametrize("kind", HF_KINDS)
def test_import_matches_transformers(tmp_path, hf_dirs, tokenizer, kind):
    ckpt = import_hf(hf_dirs[kind], tmp_path / "ckpt")
    ours, tok = load_model(ckpt)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs[kind]).eval()
    assert_same_logits(ours, hf_model, tok.vocab_size)
    assert_same_greedy(ours, tok, hf_model)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)


def test_import_maps_the_config(tmp_path, hf_dirs):
    config = ModelConfig.load(import_hf(hf_dirs["llama-gqa-untied"], tmp_path / "a") / "config.json")
    assert (config.n_head, config.n_kv_head, config.intermediate_size, config.block_size) == (4, 2, 80, 64)
    assert (config.rope_theta, config.norm_eps, config.tie_embeddings, config.bias) == (100000.0, 1e-5, False, False)
    qwen = ModelConfig.load(import_hf(hf_dirs["qwen2"], tmp_path / "b") / "config.json")
    assert (qwen.bias, qwen.attn_bias) == (False, True)
    gpt2 = ModelConfig.load(import_hf(hf_dirs["gpt2"], tmp_path / "c") / "config.json")
    assert (gpt2.position, gpt2.norm, gpt2.mlp, gpt2.bias, gpt2.tie_embeddings) == ("learned", "layernorm", "gelu",
                                                                                    True, True)
    exact = ModelConfig.load(import_hf(hf_dirs["gpt2-exact-gelu"], tmp_path / "d") / "config.json")
    assert (gpt2.gelu_approximation, exact.gelu_approximation) == ("tanh", "none")


@pytest.mark.parametrize("kind", HF_KINDS)
def test_round_trip_leaves_every_tensor_bit_identical(tmp_path, hf_dirs, kind):
    ckpt = import_hf(hf_dirs[kind], tmp_path / "ckpt")
    back = export_hf(ckpt, tmp_path / "back")
    before, after = tensors_of(hf_dirs[kind]), tensors_of(back)
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name
    assert (back / "tokenizer.json").read_bytes() == (hf_dirs[kind] / "tokenizer.json").read_bytes()


def test_bf16_round_trip_keeps_dtype(tmp_path, tokenizer):
    hf = make_hf_dir(tmp_path / "hf", "llama-gqa-untied", tokenizer, dtype=torch.bfloat16)
    back = export_hf(import_hf(hf, tmp_path / "ckpt"), tmp_path / "back")
    before, after = tensors_of(hf), tensors_of(back)
    assert all(t.dtype == torch.bfloat16 and torch.equal(t, after[n]) for n, t in before.items())
    assert json.loads((back / "config.json").read_text())["dtype"] == "bfloat16"


def test_sharded_and_pickle_checkpoints_import_alike(tmp_path, hf_dirs, tokenizer):
    reference = load_file(str(import_hf(hf_dirs["llama-gqa-untied"], tmp_path / "ref") / "model.safetensors"))
    sharded = make_hf_dir(tmp_path / "sharded", "llama-gqa-untied", tokenizer, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    pickled = tmp_path / "pickled"
    shutil.copytree(hf_dirs["llama-gqa-untied"], pickled)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    for source in (sharded, pickled):
        got = load_file(str(import_hf(source, tmp_path / f"{source.name}-ckpt") / "model.safetensors"))
        assert sorted(got) == sorted(reference) and all(torch.equal(got[k], reference[k]) for k in got)


def test_hub_style_gpt2_names_without_transformer_prefix(tmp_path, hf_dirs):
    # openai-community/gpt2 was saved from GPT2Model: `h.0.attn.c_attn.weight`, plus old causal-mask buffers.
    hub = tmp_path / "hub"
    shutil.copytree(hf_dirs["gpt2"], hub)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(str(hub / "model.safetensors")).items()}
    tensors["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    save_file(tensors, str(hub / "model.safetensors"), metadata={"format": "pt"})
    got = load_file(str(import_hf(hub, tmp_path / "ckpt") / "model.safetensors"))
    want = load_file(str(import_hf(hf_dirs["gpt2"], tmp_path / "ref") / "model.safetensors"))
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in got)


# ------------------------------------------------------------------------------------------------
# export


def make_gptkit_config(kind: str, vocab: int) -> ModelConfig:
    shape = dict(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_embd=32)
    if kind.startswith("gpt2"):
        return ModelConfig(name=kind, **{**GPT2_FAMILY, "tie_embeddings": kind == "gpt2"}, **shape)
    llama = dict(LLAMA_FAMILY, n_kv_head=2, intermediate_size=80, rope_theta=5000.0, **shape)
    if kind == "llama-gqa-untied":
        return ModelConfig(name=kind, **{**llama, "tie_embeddings": False})
    if kind == "llama-gqa-tied":
        return ModelConfig(name=kind, **{**llama, "tie_embeddings": True})
    if kind == "qwen2":
        return ModelConfig(name=kind, **{**llama, "tie_embeddings": False, "attn_bias": True})
    if kind == "llama-bias":  # attention_bias=True and mlp_bias=True in Llama's terms
        return ModelConfig(name=kind, **{**llama, "tie_embeddings": False, "bias": True})
    raise ValueError(kind)


def make_checkpoint(path, kind: str, tok: Tokenizer):
    torch.manual_seed(0)
    model = GPT(make_gptkit_config(kind, tok.vocab_size))
    randomize_(model)
    return save_checkpoint(path, model, tok)


@pytest.mark.parametrize("kind,architecture", [
    ("gpt2", "GPT2LMHeadModel"), ("gpt2-untied", "GPT2LMHeadModel"), ("llama-gqa-tied", "LlamaForCausalLM"),
    ("llama-gqa-untied", "LlamaForCausalLM"), ("llama-bias", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_export_loads_cleanly_and_matches(tmp_path, tokenizer, kind, architecture):
    out = export_hf(make_checkpoint(tmp_path / "ckpt", kind, tokenizer), tmp_path / "hf")
    hf_model, hf_tok = load_hf(out)
    assert type(hf_model).__name__ == architecture
    ours, tok = load_model(tmp_path / "ckpt")
    assert_same_logits(ours, hf_model, tok.vocab_size)
    assert_same_greedy(ours, tok, hf_model)
    text = "ROMEO: But soft, what light through yonder window breaks?\n"
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    if kind == "gpt2":  # transformers' apply_chat_template renders conversations as gptkit's SFT does
        from gptkit.chat_format import render_chat

        messages = [{"role": "user", "content": "What light?"}, {"role": "assistant", "content": "The east."}]
        ids = hf_tok.apply_chat_template(messages, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids  # transformers 5: a dict
        assert list(ids) == render_chat(messages, tok).ids


def test_warning_capture_would_catch_a_missing_tensor(tmp_path, tokenizer):
    """The clean-load check above is not vacuous: a dropped tensor is reported."""
    out = export_hf(make_checkpoint(tmp_path / "ckpt", "llama-gqa-untied", tokenizer), tmp_path / "hf")
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    with transformers_warnings() as log:
        _, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert "model.norm.weight" in info["missing_keys"] and "MISSING" in log.getvalue()
    with pytest.raises(AssertionError):
        load_hf(out)


def test_export_refuses_combinations_transformers_lacks(tmp_path, tokenizer):
    config = ModelConfig(**{**make_gptkit_config("gpt2", tokenizer.vocab_size).to_dict(), "position": "rope"})
    save_checkpoint(tmp_path / "ckpt", GPT(config), tokenizer)
    with pytest.raises(GptkitError, match="position=rope, norm=layernorm, mlp=gelu"):
        export_hf(tmp_path / "ckpt", tmp_path / "hf")
    config = ModelConfig(**{**make_gptkit_config("gpt2", tokenizer.vocab_size).to_dict(), "n_kv_head": 2})
    save_checkpoint(tmp_path / "ckpt2", GPT(config), tokenizer)
    with pytest.raises(GptkitError, match="grouped-query"):
        export_hf(tmp_path / "ckpt2", tmp_path / "hf")


# ------------------------------------------------------------------------------------------------
# tokenizer roles


def test_llama_style_special_tokens_survive_import_and_export(tmp_path, hf_dirs, tokenizer):
    hf = tmp_path / "hf"
    shutil.copytree(hf_dirs["llama-gqa-untied"], hf)
    raw = Tokenizer.from_file(hf / "tokenizer.json").hf
    raw.add_special_tokens(["<s>", "</s>"])  # two more tokens than the model has embeddings
    raw.save(str(hf / "tokenizer.json"))
    # tokenizer_config.json names roles as AddedToken dicts or strings; pad is explicitly absent.
    roles = json.dumps({"bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>", "pad_token": None})
    (hf / "tokenizer_config.json").write_text(roles)
    with pytest.raises(GptkitError, match="322 tokens but the model only 320 embeddings"):
        import_hf(hf, tmp_path / "too-small")
    grown = make_hf_dir(tmp_path / "grown", "llama-gqa-untied", Tokenizer(raw))  # a 322-row model
    shutil.copy(hf / "tokenizer_config.json", grown / "tokenizer_config.json")
    ckpt = import_hf(grown, tmp_path / "ckpt")
    _, tok = load_model(ckpt)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (raw.token_to_id("<s>"), raw.token_to_id("</s>"), None)
    assert tok.encode("hi", add_bos=True)[0] == tok.bos_id
    _, hf_tok = load_hf(export_hf(ckpt, tmp_path / "back"))
    assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token) == ("<s>", "</s>", None)


def test_roles_fall_back_to_generation_config_ids(tmp_path, hf_dirs, tokenizer):
    """SmolLM2-style: no roles in tokenizer_config.json; generation_config.json says which id ends a turn."""
    hf = tmp_path / "hf"
    shutil.copytree(hf_dirs["llama-gqa-tied"], hf)
    (hf / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    end = tokenizer.token_to_id("<|end|>")
    (hf / "generation_config.json").write_text(json.dumps({"bos_token_id": tokenizer.eos_id, "eos_token_id": [end]}))
    _, tok = load_model(import_hf(hf, tmp_path / "ckpt"))
    assert (tok.bos_id, tok.eos_id) == (tokenizer.eos_id, end)
    saved = json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())
    assert saved["eos_token"] == "<|end|>"


# ------------------------------------------------------------------------------------------------
# GPT-2's own tokenizer, shipped in the package


def test_gpt2_tokenizer_preset_gives_gpt2_ids(tmp_path, small_text_file):
    from gptkit.data.prepare import prepare
    from gptkit.data.tokenizers import HERE, load_tokenizer_preset

    assert HERE.is_relative_to(Path(gptkit.__file__).resolve().parent), "the tokenizer must ship in the package"
    tok = load_tokenizer_preset("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" The quick brown fox") == [383, 2068, 7586, 21831]
    assert tok.encode("<|endoftext|>") == [50256] and tok.encode(",\n") == [11, 198]
    assert (tok.vocab_size, tok.eos_id, tok.bos_id, tok.pad_id) == (50257, 50256, 50256, None)
    text = "naïve café, 中文：床前明月光, emoji 🙂👍🏽, tabs\tand\r\nnewlines"
    assert tok.decode(tok.encode(text)) == text
    meta = prepare([str(small_text_file)], tmp_path / "data", tokenizer="gpt2")
    assert meta["vocab_size"] == 50257 and meta["tokenizer_source"] == "bundled:gpt2"
    assert Tokenizer.from_file(tmp_path / "data").encode("Hello world") == [15496, 995]


# ------------------------------------------------------------------------------------------------
# bad input


def test_unknown_architecture_names_the_supported_ones(tmp_path, hf_dirs):
    hf = tmp_path / "hf"
    shutil.copytree(hf_dirs["gpt2"], hf)
    (hf / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    with pytest.raises(GptkitError, match="BertForMaskedLM is not supported.*GPT2LMHeadModel, LlamaForCausalLM"):
        import_hf(hf, tmp_path / "ckpt")


def test_missing_tensor_is_named(tmp_path, hf_dirs):
    hf = tmp_path / "hf"
    shutil.copytree(hf_dirs["llama-gqa-untied"], hf)
    tensors = load_file(str(hf / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(GptkitError, match=r"lacks tensor\(s\).*model\.layers\.1\.self_attn\.k_proj\.weight"):
        import_hf(hf, tmp_path / "ckpt")


def test_unexplained_tensor_is_named(tmp_path, hf_dirs):
    hf = tmp_path / "hf"
    shutil.copytree(hf_dirs["llama-gqa-untied"], hf)
    tensors = load_file(str(hf / "model.safetensors"))
    tensors["score.weight"] = torch.zeros(2, 32)  # e.g. a classification head: not a causal LM's
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(GptkitError, match=r"tensor\(s\) that config.json does not explain: score\.weight"):
        import_hf(hf, tmp_path / "ckpt")


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path, hf_dirs):
    hf = tmp_path / "hf"
    shutil.copytree(hf_dirs["llama-gqa-untied"], hf)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    with pytest.raises(GptkitError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight has shape \(80, 32\) but "
                                          r"config\.json implies \(64, 32\)"):
        import_hf(hf, tmp_path / "ckpt")


def test_pickle_needing_code_is_refused(tmp_path, hf_dirs):
    hf = tmp_path / "hf"
    shutil.copytree(hf_dirs["gpt2"], hf)
    tensors = load_file(str(hf / "model.safetensors"))
    torch.save({**tensors, "args": argparse.Namespace(lr=1)}, hf / "pytorch_model.bin")
    (hf / "model.safetensors").unlink()
    with pytest.raises(GptkitError, match="cannot be loaded safely.*weights_only=True"):
        import_hf(hf, tmp_path / "ckpt")


@pytest.mark.parametrize("missing,needle", [("config.json", "has no config.json"),
                                            ("tokenizer.json", "has no tokenizer.json"),
                                            ("model.safetensors", "no weights gptkit can read")])
def test_missing_files_are_named(tmp_path, hf_dirs, missing, needle):
    hf = tmp_path / "hf"
    shutil.copytree(hf_dirs["gpt2"], hf)
    (hf / missing).unlink()
    with pytest.raises(GptkitError, match=needle):
        import_hf(hf, tmp_path / "ckpt")


def test_hub_names_are_not_downloaded(tmp_path):
    with pytest.raises(GptkitError, match="never downloads.*hf download HuggingFaceTB/SmolLM2-135M"):
        import_hf("HuggingFaceTB/SmolLM2-135M", tmp_path / "ckpt")


def test_unsupported_variants_are_refused():
    llama = dict(architectures=["LlamaForCausalLM"], vocab_size=10, hidden_size=8, intermediate_size=16,
                 num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(GptkitError, match="RoPE scaling 'llama3'"):
        hf_to_model_config({**llama, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    with pytest.raises(GptkitError, match="hidden_act 'gelu'"):
        hf_to_model_config({**llama, "hidden_act": "gelu"})
    gpt2 = dict(architectures=["GPT2LMHeadModel"], vocab_size=10, n_embd=8, n_layer=1, n_head=2)
    with pytest.raises(GptkitError, match="activation_function 'relu' is not supported.*exact \\('gelu'\\)"):
        hf_to_model_config({**gpt2, "activation_function": "relu"})
    with pytest.raises(GptkitError, match="no 'hidden_size'"):
        hf_to_model_config({k: v for k, v in llama.items() if k != "hidden_size"})


def test_existing_output_is_not_clobbered(tmp_path, hf_dirs):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "precious.txt").write_text("keep me")
    with pytest.raises(GptkitError, match="--overwrite"):
        import_hf(hf_dirs["gpt2"], tmp_path / "ckpt")
    import_hf(hf_dirs["gpt2"], tmp_path / "ckpt", overwrite=True)
    assert not (tmp_path / "ckpt" / "precious.txt").exists()


# ------------------------------------------------------------------------------------------------
# command line


def test_cli_convert_both_ways(tmp_path, hf_dirs, capsys):
    from gptkit.cli import main

    main(["convert", "--from-hf", str(hf_dirs["llama-gqa-tied"]), "--out", str(tmp_path / "ckpt")])
    assert "imported" in capsys.readouterr().out
    main(["convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")])
    assert "LlamaForCausalLM" in capsys.readouterr().out
    for bad in ([], ["--from-hf", str(hf_dirs["gpt2"]), "--to-hf", str(tmp_path / "ckpt")]):
        with pytest.raises(SystemExit) as exit_info:
            main(["convert", *bad, "--out", str(tmp_path / "x")])
        assert exit_info.value.code == 2
        assert "exactly one of --from-hf" in capsys.readouterr().err
