"""GGUF export (`gptkit convert --to-gguf`), read back with the `gguf` package's own reader: metadata, the tokenizer,
every tensor against the model's (f32 exactly, f16 and Q8_0 within their precision), llama.cpp's RoPE permutation,
and the refusals. A slow test runs the file in a real llama.cpp when one is built (GPTKIT_LLAMA_CPP=DIR/bin)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from gptkit.checkpoint import load_model, save_checkpoint  # noqa: E402
from gptkit.config import LLAMA_FAMILY, ModelConfig  # noqa: E402
from gptkit.errors import GptkitError  # noqa: E402
from gptkit.interop.gguf import export_gguf, gguf_tensors, import_gguf, llama_rope_permute  # noqa: E402
from gptkit.models.gpt import GPT  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def bpe(shakespeare_text) -> Tokenizer:
    return Tokenizer.train_bpe([shakespeare_text[:50_000]], 512)


def make_checkpoint(directory: Path, tokenizer: Tokenizer, family: str) -> tuple[Path, GPT]:
    torch.manual_seed(0)
    extra = dict(LLAMA_FAMILY, n_kv_head=2) if family == "llama" else {}
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64, **extra))
    return save_checkpoint(directory / family, model, tokenizer), model


def read(path: Path):
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_an_f32_export_holds_the_model_and_its_tokenizer(tmp_path, bpe, family):
    checkpoint, model = make_checkpoint(tmp_path, bpe, family)
    out = export_gguf(checkpoint, tmp_path / f"{family}.gguf")
    fields, tensors = read(out)
    config = model.config
    assert fields["general.architecture"] == family
    assert fields[f"{family}.context_length"] == config.block_size
    assert fields[f"{family}.block_count"] == config.n_layer
    assert fields[f"{family}.attention.head_count"] == config.n_head
    assert fields[f"{family}.embedding_length"] == config.n_embd
    vocab = bpe.hf.get_vocab(with_added_tokens=True)
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(fields["tokenizer.ggml.merges"]) > 100
    assert fields["tokenizer.ggml.eos_token_id"] == bpe.eos_id
    expected = gguf_tensors({k: v.detach() for k, v in model.state_dict().items()}, config, family)
    assert set(tensors) == set(expected) and "output.weight" not in tensors  # a tied head is written once
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(np.asarray(tensor.data).reshape(expected[name].shape), expected[name].numpy())
    if family == "llama":
        assert fields["llama.attention.head_count_kv"] == 2
        assert {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_gate.weight"} <= set(tensors)


def test_llama_rope_permutation_interleaves_each_heads_halves():
    rows = torch.arange(8.0)[:, None]  # two heads of dimension 4: [a0 a1 b0 b1] per head
    assert llama_rope_permute(rows, n_head=2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("outtype,tolerance", [("f16", 1e-3), ("q8_0", 2e-2)])
def test_smaller_outtypes_stay_within_their_precision(tmp_path, bpe, outtype, tolerance):
    checkpoint, model = make_checkpoint(tmp_path, bpe, "gpt2")
    f32 = read(export_gguf(checkpoint, tmp_path / "f32.gguf"))[1]
    small = read(export_gguf(checkpoint, tmp_path / f"{outtype}.gguf", outtype=outtype))[1]
    name = "blk.0.ffn_up.weight"
    expected = np.asarray(f32[name].data)
    if outtype == "q8_0":
        assert small[name].tensor_type == gguf.GGMLQuantizationType.Q8_0
        got = gguf.quants.dequantize(small[name].data, gguf.GGMLQuantizationType.Q8_0).reshape(expected.shape)
    else:
        got = np.asarray(small[name].data, dtype=np.float32)
    relative = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert 0 < relative < tolerance
    assert (tmp_path / f"{outtype}.gguf").stat().st_size < (tmp_path / "f32.gguf").stat().st_size * 0.6


def test_what_llama_cpp_cannot_read_is_refused(tmp_path, shakespeare_text, bpe, run_cli):
    char = Tokenizer.train_char([shakespeare_text[:10_000]])
    checkpoint, _ = make_checkpoint(tmp_path / "char", char, "gpt2")
    with pytest.raises(GptkitError, match="byte-level BPE"):
        export_gguf(checkpoint, tmp_path / "char.gguf")
    torch.manual_seed(0)
    qwen = GPT(ModelConfig(vocab_size=bpe.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32,
                           **dict(LLAMA_FAMILY, attn_bias=True)))
    with pytest.raises(GptkitError, match="llama.cpp has no architecture"):
        export_gguf(save_checkpoint(tmp_path / "qwen", qwen, bpe), tmp_path / "qwen.gguf")
    good, _ = make_checkpoint(tmp_path, bpe, "gpt2")
    run = run_cli("convert", "--to-gguf", str(good), "--out", str(tmp_path / "m.gguf"), "--outtype", "q8_0")
    assert "q8_0" in run.stdout and (tmp_path / "m.gguf").is_file()
    again = run_cli("convert", "--to-gguf", str(good), "--out", str(tmp_path / "m.gguf"), check=False)
    assert again.returncode != 0 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_gguf_file_reads_back_into_the_same_model(tmp_path, bpe, family, run_cli):
    checkpoint, model = make_checkpoint(tmp_path, bpe, family)
    exported = export_gguf(checkpoint, tmp_path / "m.gguf")
    run = run_cli("convert", "--from-gguf", str(exported), "--out", str(tmp_path / "back"))
    assert "imported" in run.stdout
    back, tokenizer = load_model(tmp_path / "back")
    ids = torch.tensor([bpe.encode("ROMEO: What light through yonder window")])
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model.eval()(ids))  # float32: exactly the same model
    assert tokenizer.encode("What light, what light!") == bpe.encode("What light, what light!")
    assert (tokenizer.eos_id, tokenizer.vocab_size) == (bpe.eos_id, bpe.vocab_size)
    with pytest.raises(GptkitError, match="not a readable GGUF file"):
        (tmp_path / "junk.gguf").write_bytes(b"GGUF but not really")
        import_gguf(tmp_path / "junk.gguf", tmp_path / "junk")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_llama_cpp_decodes_the_export_as_gptkit_does(tmp_path, run_cli, preset):
    """Greedy text of llama.cpp's llama-simple on the exported file equals gptkit's, for a model trained briefly
    (a random one repeats one token, which would match by accident); needs a llama.cpp build."""
    binaries = Path(os.environ.get("GPTKIT_LLAMA_CPP", "/nonexistent"))
    simple = binaries / "llama-simple"
    if not simple.is_file():
        pytest.skip("set GPTKIT_LLAMA_CPP to a llama.cpp build's bin/ directory (with llama-simple)")
    run_cli("pretrain", "--preset", preset, "--data", "tiny_shakespeare", "--tokenizer", "bpe", "--vocab-size",
            "512", "--max-iters", "150", "--model.n-layer", "2", "--model.n-embd", "64", "--model.n-head", "4",
            "--model.block-size", "64", "--batch-size", "8", "--sample-tokens", "0", "--out", str(tmp_path / "run"))
    out = export_gguf(tmp_path / "run", tmp_path / "model.gguf")
    prompt = "ROMEO: What light"
    ours = run_cli("generate", "--checkpoint", str(tmp_path / "run"), "--prompt", prompt, "--max-tokens", "16",
                   "--temperature", "0", "--no-stream").stdout.strip()
    assert len(set(ours.split())) >= 3, ours  # a text worth comparing
    run = subprocess.run([str(simple), "-m", str(out), "-n", "16", prompt], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == ours, (ours, run.stdout)


@pytest.mark.slow
def test_llama_cpps_own_converter_writes_what_gptkit_writes_and_it_imports_back(tmp_path):
    """llama.cpp's convert_hf_to_gguf.py (from the source beside GPTKIT_LLAMA_CPP's build) on gptkit's Hugging Face
    export of a GPT-2-tokenizer model: the same tensors as gptkit's own GGUF export, and `--from-gguf` reads its
    file back into the same model. (The converter identifies tokenizers by a hash of known ones: GPT-2's.)"""
    from gptkit.data.tokenizers import load_tokenizer_preset
    from gptkit.interop.hf import export_hf

    script = Path(os.environ.get("GPTKIT_LLAMA_CPP", "/nonexistent")).parent.parent / "convert_hf_to_gguf.py"
    if not script.is_file():
        pytest.skip("set GPTKIT_LLAMA_CPP to a llama.cpp build's bin/ inside its source tree (convert_hf_to_gguf.py)")
    tokenizer = load_tokenizer_preset("gpt2")
    checkpoint, model = make_checkpoint(tmp_path, tokenizer, "gpt2")
    hf_dir = export_hf(checkpoint, tmp_path / "hf")
    theirs = tmp_path / "converter.gguf"
    run = subprocess.run([sys.executable, str(script), str(hf_dir), "--outfile", str(theirs), "--outtype", "f32"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    _, their_tensors = read(theirs)
    _, our_tensors = read(export_gguf(checkpoint, tmp_path / "ours.gguf"))
    assert set(their_tensors) == set(our_tensors)
    for name, tensor in our_tensors.items():
        np.testing.assert_array_equal(np.asarray(their_tensors[name].data), np.asarray(tensor.data), err_msg=name)
    back, back_tokenizer = load_model(import_gguf(theirs, tmp_path / "back"))
    ids = torch.tensor([tokenizer.encode("Hello world, said the model")])
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(ids), model.eval()(ids))
    assert back_tokenizer.encode("Hello world, said the model") == ids[0].tolist()
