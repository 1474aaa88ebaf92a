"""The training loop end to end: logging, checkpoints, exact resume after SIGKILL, atomic saves."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptkit.checkpoint import load_model, resolve_checkpoint, save_checkpoint
from gptkit.files import write_atomically
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer
from gptkit.training.loop import TrainConfig, learning_rate_at


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "last" / "model.safetensors"))


def test_pretrain_writes_checkpoints_logs_and_plot(tmp_path, prepared_char, run_cli, small_model_flags):
    out = tmp_path / "run"
    run_cli("pretrain", "--data", str(prepared_char), "--out", str(out), "--max-iters", "20",
            "--eval-interval", "10", "--log-interval", "5", *small_model_flags)
    for name in ("best", "last"):
        for f in ("config.json", "model.safetensors", "tokenizer.json", "training_state.pt", "train_config.json"):
            assert (out / name / f).is_file(), f"{name}/{f} missing"
    assert (out / "loss.png").stat().st_size > 1000
    assert any((out / "tensorboard").iterdir())
    losses = train_losses(out)
    assert [s for s, _ in losses] == [5, 10, 15, 20]
    assert losses[-1][1] < losses[0][1], "loss did not go down"
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "val_bpb" in line]
    assert [e["step"] for e in evals] == [10, 20]
    assert all(math.isfinite(e["val_bpb"]) and e["val_bpb"] > 0 for e in evals)
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["step"] == 20


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, prepared_char, run_cli, small_model_flags):
    common = ["pretrain", "--data", str(prepared_char), "--max-iters", "60", "--eval-interval", "10",
              "--log-interval", "1", "--model.dropout", "0.1", *small_model_flags]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_cli(*common, "--out", str(straight))

    proc = subprocess.Popen([sys.executable, "-m", "gptkit", *common, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = killed / "last" / "training_state.pt"
    deadline = time.time() + 120
    while not state_file.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(state_file, weights_only=True)["step"]
    assert killed_at < 60, "the run finished before it could be killed; the test proves nothing"

    run_cli(*common, "--out", str(killed), "--resume")
    assert train_losses(killed) == train_losses(straight)
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_refuses_to_overwrite_a_run_without_flag(tmp_path, prepared_char, run_cli, small_model_flags):
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(prepared_char), "--out", str(out), "--max-iters", "2", "--eval-interval", "2",
            *small_model_flags]
    run_cli(*args)
    again = run_cli(*args, check=False)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    run_cli(*args, "--overwrite")


def small_checkpoint_parts():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return model, Tokenizer.train_char(["hello world"])


def test_crash_mid_save_leaves_previous_checkpoint_loadable(tmp_path):
    model, tok = small_checkpoint_parts()
    target = tmp_path / "run" / "last"
    save_checkpoint(target, model, tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def crash_halfway(tmp: Path) -> None:
        (tmp / "config.json").write_text("{")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(target, crash_halfway)
    loaded, _ = load_model(tmp_path / "run")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, before[k])
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last"], "temporary files left behind"


def test_process_killed_mid_save_leaves_previous_checkpoint(tmp_path):
    model, tok = small_checkpoint_parts()
    target = tmp_path / "last"
    save_checkpoint(target, model, tok)
    script = f"""
import time
from pathlib import Path
from gptkit.files import write_atomically
def slow(tmp):
    (tmp / "model.safetensors").write_bytes(b"partial")
    print("writing", flush=True)
    time.sleep(60)
write_atomically(Path({str(target)!r}), slow)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    loaded, _ = load_model(target)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])


def test_interrupted_swap_is_recovered(tmp_path):
    model, tok = small_checkpoint_parts()
    save_checkpoint(tmp_path / "last", model, tok)
    # A crash after moving the old checkpoint aside but before moving the new one in:
    (tmp_path / "last").rename(tmp_path / ".last.old")
    assert resolve_checkpoint(tmp_path) == tmp_path / "last"
    load_model(tmp_path)


def test_learning_rate_schedule_warms_up_then_decays_to_min():
    cfg = TrainConfig(max_iters=1000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100)
    lrs = [learning_rate_at(s, cfg) for s in range(1100)]
    assert all(a < b for a, b in zip(lrs[:100], lrs[1:101]))
    assert max(lrs) == pytest.approx(1e-3, rel=1e-2)
    assert all(a >= b for a, b in zip(lrs[100:1000], lrs[101:1001]))
    assert lrs[-1] == pytest.approx(1e-4)


def test_invalid_train_config_is_rejected():
    with pytest.raises(GptkitError, match="max-iters"):
        TrainConfig(max_iters=0).validate()
    with pytest.raises(GptkitError, match="learning-rate"):
        TrainConfig(learning_rate=float("nan")).validate()


def train_in_process(prepared, tmp_path, *, compile: bool = False, **train_overrides):
    from gptkit.data.dataset import TokenDataset
    from gptkit.training.loop import train
    from gptkit.training.tasks import CausalLMTask

    dataset = TokenDataset(prepared)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=dataset.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32))
    cfg = TrainConfig(**{"max_iters": 10, "batch_size": 8, "eval_interval": 5, "eval_iters": 2, "log_interval": 1,
                         "compile": compile, **train_overrides})
    task = CausalLMTask(dataset, block_size=32, batch_size=cfg.batch_size, seed=cfg.seed, eval_iters=cfg.eval_iters)
    result = train(model, task, cfg, tokenizer=dataset.tokenizer, run_dir=tmp_path, quiet=True)
    return model, result


def test_gradient_accumulation_matches_one_big_batch(tmp_path, prepared_char, monkeypatch):
    """Two micro-batches of 4 give the same update as one batch of the same 8 sequences."""
    from gptkit.training import tasks

    # Make micro-batch m of step s the m-th half of the 8-sequence batch of step s.
    original = tasks.CausalLMTask.train_batch

    def halves(self, step, micro_step, device):
        x, y = original(tasks.CausalLMTask(self.dataset, self.block_size, 8, self.seed), step, 0, device)
        if self.batch_size == 8:
            return x, y
        return x[micro_step * 4:(micro_step + 1) * 4], y[micro_step * 4:(micro_step + 1) * 4]

    monkeypatch.setattr(tasks.CausalLMTask, "train_batch", halves)
    big, _ = train_in_process(prepared_char, tmp_path / "big", batch_size=8, grad_accum_steps=1, max_iters=3)
    small, _ = train_in_process(prepared_char, tmp_path / "small", batch_size=4, grad_accum_steps=2, max_iters=3)
    for (name, a), b in zip(big.state_dict().items(), small.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


def test_early_stopping_ends_a_run_that_stops_improving(tmp_path, prepared_char):
    # Updates of ~1e-12 vanish when added to float32 weights of ~1e-2, so the validation loss stays
    # exactly the same and no evaluation counts as an improvement.
    _, result = train_in_process(prepared_char, tmp_path, max_iters=200, eval_interval=2, learning_rate=1e-12,
                                 min_lr=1e-12, warmup_iters=0, early_stopping_patience=2)
    assert result.stopped_early and result.step < 200
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in logged) == result.step


def test_bfloat16_autocast_on_cpu_trains_float32_weights_close_to_float32(tmp_path, prepared_char):
    """`--dtype bfloat16` on CPU: matmuls in bfloat16, weights and optimizer state kept in float32."""
    full, full_result = train_in_process(prepared_char, tmp_path / "fp32", max_iters=10, dtype="float32")
    half, half_result = train_in_process(prepared_char, tmp_path / "bf16", max_iters=10, dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in half.parameters())
    start = train_losses(tmp_path / "bf16")[0][1]
    assert half_result.best_value < start  # it learns
    # bfloat16 keeps 8 bits of mantissa: the losses agree to a few percent, not bit for bit.
    assert half_result.best_value == pytest.approx(full_result.best_value, rel=0.03)
    assert half_result.best_value != full_result.best_value


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, prepared_char):
    eager, _ = train_in_process(prepared_char, tmp_path / "eager", max_iters=3)
    compiled, _ = train_in_process(prepared_char, tmp_path / "compiled", max_iters=3, compile=True)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)


def test_training_leaves_the_floating_point_mode_as_it_found_it(tmp_path, prepared_char):
    """Denormals flush to zero only while training: the flag is process-wide, and other code relies on it."""
    from gptkit.data.dataset import TokenDataset
    from gptkit.training.loop import TrainConfig, train
    from gptkit.training.tasks import CausalLMTask

    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a denormal
    assert (tiny * 1).item() != 0.0
    dataset = TokenDataset(prepared_char)
    model = GPT(ModelConfig(vocab_size=dataset.vocab_size, block_size=16, n_layer=1, n_head=1, n_embd=8))
    train(model, CausalLMTask(dataset, block_size=16, batch_size=2), TrainConfig(max_iters=2, eval_interval=2,
          eval_iters=1, warmup_iters=0), tokenizer=dataset.tokenizer, run_dir=tmp_path / "run", quiet=True)
    assert (tiny * 1).item() != 0.0
