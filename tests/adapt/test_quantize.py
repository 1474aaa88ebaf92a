"""Weight-only quantization (`gptkit.adapt.quantize`): the int8 and int4 weights and PyTorch's kernels against the
dequantized matrices, a quantized GPT against its float self, the tied embedding and head, the quantized checkpoint
through the one loader and the CLI, and the bad inputs."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from gptkit.adapt import quantize
from gptkit.adapt.quantize import (KERNEL_ROWS, ONEDNN_MIN_SIDE, Int4Weight, Int8Weight, QuantizeConfig,
                                   QuantizedLinear, is_quantized, quantize_model, quantized_bytes, write_quantized)
from gptkit.api import LLM, load
from gptkit.checkpoint import TRAIN_CONFIG_FILE, recorded_data_dir, save_checkpoint
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer
from gptkit.training.loop import TrainConfig, train


@pytest.fixture(scope="module")
def tokenizer(shakespeare_text) -> Tokenizer:
    return Tokenizer.train_char([shakespeare_text[:20_000]])


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=64)).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model, tokenizer):
    return save_checkpoint(tmp_path_factory.mktemp("quantize") / "float", model, tokenizer)


@pytest.mark.parametrize("weight_type,bound", [("int8", 0.01), ("int4", 0.12)])
def test_weight_only_kernels_multiply_by_the_dequantized_matrix(weight_type, bound, monkeypatch):
    monkeypatch.setattr(quantize, "_onednn_int8", lambda: False)  # int8: PyTorch's weight-only kernel instead
    torch.manual_seed(1)
    weight = torch.randn(512, 512)
    q = Int8Weight.quantize(weight) if weight_type == "int8" else Int4Weight.quantize(weight, 32)
    dequantized = q.dequantize()
    error = float(torch.linalg.norm(dequantized - weight) / torch.linalg.norm(weight))
    assert 0 < error < bound  # lossy, and within what the format allows
    few = torch.randn(KERNEL_ROWS, 512)  # a decode step: PyTorch's kernel, activations rounded to bfloat16
    expected = few @ dequantized.T
    got = q.matmul(few.view(KERNEL_ROWS, 1, 512)).view(KERNEL_ROWS, 512)
    assert float((got - expected).norm() / expected.norm()) < 0.01
    many = torch.randn(KERNEL_ROWS + 1, 512)  # a prefill: float32 against the dequantized matrix, exactly
    torch.testing.assert_close(q.matmul(many), many @ dequantized.T, atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not quantize._onednn_int8(), reason="this PyTorch build has no oneDNN int8 matmul")
def test_int8_rounds_each_row_of_activations_on_its_own_scale():
    torch.manual_seed(2)
    q = Int8Weight.quantize(torch.randn(ONEDNN_MIN_SIDE, ONEDNN_MIN_SIDE))
    bias = torch.randn(ONEDNN_MIN_SIDE)
    x = torch.randn(2 * KERNEL_ROWS + 3, ONEDNN_MIN_SIDE)
    x[3] *= 1000  # an outlier row: on a shared scale, every other row would round to a few levels
    row_scale = x.abs().amax(-1, keepdim=True) / 127
    rounded = torch.round(x / row_scale) * row_scale
    expected = rounded @ q.dequantize().T + bias
    got = q.matmul(x, bias)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
    # integer products summed exactly: a row's result is the same alone as in any batch
    for i in (0, 3, len(x) - 1):
        torch.testing.assert_close(q.matmul(x[i:i + 1], bias), got[i:i + 1], atol=0, rtol=1e-6)
    # against the float matmul: the two roundings (weights, activations) stay within a per cent
    float_out = x @ q.dequantize().T + bias
    others = torch.ones(len(x), dtype=torch.bool)
    others[3] = False
    assert float((got[others] - float_out[others]).norm() / float_out[others].norm()) < 0.01


def test_a_small_int8_matrix_multiplies_its_dequantized_float_copy():
    torch.manual_seed(3)
    q = Int8Weight.quantize(torch.randn(96, ONEDNN_MIN_SIDE // 4))  # below ONEDNN_MIN_SIDE: overhead-bound
    x, bias = torch.randn(1, 3, ONEDNN_MIN_SIDE // 4), torch.randn(96)
    torch.testing.assert_close(q.matmul(x, bias), x @ q.dequantize().T + bias)
    q.values[0, 0] = -q.values[0, 0]  # new values (a checkpoint loaded into the buffers): repack forgets the copy
    q.repack()
    torch.testing.assert_close(q.matmul(x, bias), x @ q.dequantize().T + bias)


def test_int8_rows_keep_their_extremes_exactly():
    weight = torch.tensor([[1.0, -0.5, 0.25], [-2.0, 0.0, 1.0]])
    q = Int8Weight.quantize(weight)
    assert q.values.dtype == torch.int8 and q.values.abs().amax(1).tolist() == [127, 127]
    torch.testing.assert_close(q.dequantize()[:, 0], weight[:, 0])


@pytest.mark.parametrize("mode,tolerance", [("int8", 0.02), ("int4", 0.2)])
def test_a_quantized_gpt_tracks_its_float_self(model, mode, tolerance):
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids)
        quantized = quantize_model(copy.deepcopy(model), QuantizeConfig(mode))
        out = quantized(ids)
    assert is_quantized(quantized) and not is_quantized(model)
    relative = float((out - reference).norm() / reference.norm())
    assert 0 < relative < tolerance, relative
    # the tied head reads the embedding's quantized matrix: one tensor, not two
    assert quantized.lm_head.weight_q is quantized.tok_emb.weight_q
    floats = sum(p.numel() * 4 for p in model.parameters())
    assert quantized_bytes(quantized) < floats * (0.35 if mode == "int8" else 0.33)
    if mode == "int4":
        assert any(isinstance(m, QuantizedLinear) and isinstance(m.weight_q, Int4Weight) for m in quantized.modules())


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_quantized_checkpoint_loads_through_the_one_loader(model, tokenizer, checkpoint, tmp_path, mode):
    llm = load(checkpoint, quantize=mode)
    out = write_quantized(llm.model, tokenizer, tmp_path / mode)
    assert json.loads((out / "quantization.json").read_text())["mode"] == mode
    again = LLM.load(out)
    assert is_quantized(again.model)
    ids = torch.tensor([tokenizer.encode("ROMEO: What light")])
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids), llm.model(ids))
    assert again.generate("ROMEO:", max_tokens=8, temperature=0) == llm.generate("ROMEO:", max_tokens=8, temperature=0)
    assert (out / "model.safetensors").stat().st_size < (checkpoint / "model.safetensors").stat().st_size / 2.5


def test_bad_quantization_requests_are_refused(checkpoint, tmp_path, tokenizer):
    with pytest.raises(GptkitError, match="unknown quantization 'int3'"):
        load(checkpoint, quantize="int3")
    with pytest.raises(GptkitError, match="float32 activations"):
        load(checkpoint, quantize="int8", dtype="bfloat16")
    with pytest.raises(GptkitError, match="group-size"):
        QuantizeConfig("int4", group_size=48).validate()
    llm = load(checkpoint, quantize="int8")
    with pytest.raises(GptkitError, match="already quantized"):
        quantize_model(llm.model, QuantizeConfig("int8"))
    with pytest.raises(GptkitError, match="needs float weights"):  # the one loop refuses a quantized model
        train(llm.model, None, TrainConfig(max_iters=1), tokenizer=tokenizer, run_dir=tmp_path / "train")
    out = write_quantized(llm.model, tokenizer, tmp_path / "q")
    with pytest.raises(GptkitError, match="already quantized"):
        load(out, quantize="int8")
    (out / "quantization.json").write_text("{not json")
    with pytest.raises(GptkitError, match="not a valid quantization record"):
        load(out)


def test_the_cli_quantizes_generates_and_refuses_to_train_a_quantized_checkpoint(checkpoint, tmp_path, run_cli):
    out = tmp_path / "int8"
    run = run_cli("quantize", "--checkpoint", str(checkpoint), "--out", str(out), "--mode", "int8")
    assert "-> " + str(out) in run.stdout and "MB" in run.stdout
    greedy = run_cli("generate", "--checkpoint", str(out), "--prompt", "ROMEO:", "--max-tokens", "6",
                     "--temperature", "0", "--no-stream")
    on_the_fly = run_cli("generate", "--checkpoint", str(checkpoint), "--quantize", "int8", "--prompt", "ROMEO:",
                         "--max-tokens", "6", "--temperature", "0", "--no-stream")
    assert greedy.stdout == on_the_fly.stdout and greedy.stdout.strip()
    refused = run_cli("finetune", "--checkpoint", str(out), "--task", "lm", "--data", str(checkpoint / "config.json"),
                      "--out", str(tmp_path / "ft"), check=False)
    assert refused.returncode != 0 and "quantized checkpoint" in refused.stderr and "Traceback" not in refused.stderr
    again = run_cli("quantize", "--checkpoint", str(checkpoint), "--out", str(out), check=False)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    # a trained checkpoint's record of its data travels with it, so `gptkit eval` of the quantized one finds it
    trained = tmp_path / "trained"
    shutil.copytree(checkpoint, trained)
    (trained / TRAIN_CONFIG_FILE).write_text(json.dumps({"data_dir": str(tmp_path / "data")}))
    run_cli("quantize", "--checkpoint", str(trained), "--out", str(tmp_path / "trained-int8"))
    assert recorded_data_dir(tmp_path / "trained-int8") == str(tmp_path / "data")


@pytest.mark.skipif(not quantize._onednn_int8(), reason="this PyTorch build has no oneDNN int8 matmul")
def test_weight_only_int8_keeps_an_outlier_channel_that_int8_activations_lose(model, monkeypatch, tmp_path, tokenizer):
    """One channel of every norm's output scaled up 100x and the next matmul's input column down (the same function
    in float), as GPT-2's LayerNorm gains make outlier channels: rounding each activation row to int8 on one scale
    crushes the other channels, while weight-only int8 keeps them (it loses only the shrunken column's precision).
    The plain model is the control."""
    monkeypatch.setattr(quantize, "ONEDNN_MIN_SIDE", 1)  # this small model's matrices through oneDNN too
    outlier = copy.deepcopy(model)
    with torch.no_grad():
        for block in outlier.blocks:
            for norm, linear in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc)):
                norm.weight[5] *= 100
                norm.bias[5] *= 100
                linear.weight[:, 5] /= 100
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))

    def error(base, mode: str) -> float:
        with torch.no_grad():
            reference, out = base(ids), quantize_model(copy.deepcopy(base), QuantizeConfig(mode))(ids)
        return float((out - reference).norm() / reference.norm())

    with torch.no_grad():
        torch.testing.assert_close(outlier(ids), model(ids), atol=1e-4, rtol=1e-4)  # the same float model
    plain_int8, outlier_int8 = error(model, "int8"), error(outlier, "int8")
    outlier_weight_only = error(outlier, "int8-weight-only")
    assert outlier_int8 > 5 * plain_int8  # the outlier channel costs int8 activations (measured 1.2% -> 14%)
    assert outlier_weight_only < outlier_int8 / 2  # weight-only int8 pays far less (measured 4.4%)
    # the mode is recorded and reloaded
    llm = LLM(quantize_model(copy.deepcopy(outlier), QuantizeConfig("int8-weight-only")), tokenizer)
    again = LLM.load(write_quantized(llm.model, tokenizer, tmp_path / "wo"))
    assert all(m.weight_only for m in again.model.modules() if isinstance(m, Int8Weight))
