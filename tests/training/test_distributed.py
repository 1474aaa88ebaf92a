"""Multi-process training under torchrun (gloo on CPU): the same losses as one process, resume across process counts.

Every run uses the same global batch: 8 sequences per micro-step in one process, or 4 in each of two,
with 2 micro-steps of gradient accumulation (so DDP's no_sync and FSDP's deferred reduction are exercised).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.models.gpt import GPT
from gptkit.training.distributed import resolve_strategy
from gptkit.training.loop import TrainConfig, train
from gptkit.training.tasks import CausalLMTask

# A schedule that moves the weights visibly in a few steps (no long warmup), with clipping active.
TRAIN_FLAGS = ["--max-iters", "8", "--lr-decay-iters", "8", "--warmup-iters", "2", "--learning-rate", "1e-2",
               "--eval-interval", "4", "--eval-iters", "3", "--log-interval", "1", "--grad-accum-steps", "2",
               "--grad-clip", "0.5"]
# Two ranks on two cores: one thread each, or they fight over the cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def pretrain_args(small_model_flags):
    """`pretrain_args(data, out, *extra)`: the `gptkit pretrain` arguments every run here shares."""
    at = small_model_flags.index("--batch-size")
    model_flags = [*small_model_flags[:at], *small_model_flags[at + 2:]]  # each run sets its own batch size

    def args(data: Path, out: Path, *extra: str) -> list[str]:
        return ["pretrain", "--data", str(data), "--out", str(out), *model_flags, *TRAIN_FLAGS, *extra]

    return args


def torchrun_command(args: list[str], nproc: int = 2) -> list[str]:
    # --standalone picks a free port, so runs by other people on the same machine do not collide.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "gptkit", *args]


def run(command: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    return run(torchrun_command(args, nproc))


def single(args: list[str]) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "gptkit", *args])


def log_values(run_dir: Path, key: str) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if key in r}


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "last" / "model.safetensors"))


def assert_same_training(run: Path, reference: Path, *, val: bool = True) -> None:
    """Same train loss at every step and the same final weights (to float tolerance)."""
    losses, expected = log_values(run, "train_loss"), log_values(reference, "train_loss")
    assert list(losses) == list(expected) == list(range(1, 9))
    assert losses == pytest.approx(expected, rel=1e-4)
    if val:
        assert log_values(run, "val_loss") == pytest.approx(log_values(reference, "val_loss"), rel=1e-5)
    a, b = last_weights(run), last_weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, prepared_char, pretrain_args) -> Path:
    """One process, 8 sequences per micro-step, 8 steps without interruption."""
    out = tmp_path_factory.mktemp("single") / "run"
    single(pretrain_args(prepared_char, out, "--batch-size", "8"))
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_exactly_like_one(tmp_path, prepared_char, reference_run, strategy, pretrain_args):
    out = tmp_path / strategy
    proc = torchrun(pretrain_args(prepared_char, out, "--batch-size", "4", "--strategy", strategy))
    assert_same_training(out, reference_run)
    assert proc.stdout.count("done: step 8") == 1, "only rank 0 should print"
    assert f"2 processes ({strategy}), global batch 16 sequences" in proc.stderr


def test_fsdp_checkpoint_resumes_in_one_process(tmp_path, prepared_char, reference_run, pretrain_args):
    out = tmp_path / "run"
    torchrun(pretrain_args(prepared_char, out, "--batch-size", "4", "--strategy", "fsdp", "--max-iters", "4"))
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["step"] == 4 and len(state["rng_per_rank"]) == 2
    assert "blocks.0.attn.qkv.weight" in state["optimizer"]["state"], "optimizer state should be keyed by name"
    single(pretrain_args(prepared_char, out, "--batch-size", "8", "--resume"))
    # The 2-process run's last evaluation was its final (full-split) one, so compare train losses only.
    assert_same_training(out, reference_run, val=False)


def test_one_process_checkpoint_resumes_on_two_with_fsdp(tmp_path, prepared_char, reference_run, pretrain_args):
    out = tmp_path / "run"
    single(pretrain_args(prepared_char, out, "--batch-size", "8", "--max-iters", "4"))
    # Gradient checkpointing along the way: it must change nothing but memory, also under FSDP.
    torchrun(pretrain_args(prepared_char, out, "--batch-size", "4", "--strategy", "fsdp", "--resume",
                           "--gradient-checkpointing"))
    assert_same_training(out, reference_run, val=False)


def test_sigterm_stops_all_ranks_at_one_step_and_resumes_in_one_process(tmp_path, prepared_char, pretrain_args):
    """torchrun passes SIGTERM on to its ranks; they agree on a step, save it, and one process resumes it exactly."""
    schedule = ["--max-iters", "2000", "--lr-decay-iters", "2000", "--eval-interval", "20"]
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(torchrun_command(pretrain_args(prepared_char, out, "--batch-size", "4", *schedule)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    state_file = out / "last" / "training_state.pt"
    deadline = time.time() + 120
    while not state_file.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    stopped_at = torch.load(state_file, weights_only=True)["step"]
    assert 20 <= stopped_at < 2000
    assert max(log_values(out, "train_loss")) == stopped_at, "rank 0 logged beyond the step it saved"

    end = str(stopped_at + 3)
    single(pretrain_args(prepared_char, out, "--batch-size", "8", "--resume", *schedule, "--max-iters", end))
    straight = tmp_path / "straight"
    single(pretrain_args(prepared_char, straight, "--batch-size", "8", *schedule, "--max-iters", end))
    losses, expected = log_values(out, "train_loss"), log_values(straight, "train_loss")
    assert list(losses) == list(expected)
    assert losses == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------------------------------------
# in one process


def test_ranks_split_each_global_batch_by_rows(prepared_char):
    from gptkit.data.dataset import TokenDataset

    dataset = TokenDataset(prepared_char)
    whole = CausalLMTask(dataset, block_size=16, batch_size=8)
    halves = [CausalLMTask(dataset, block_size=16, batch_size=4).for_rank(r, 2) for r in range(2)]
    for step, micro in [(0, 0), (3, 1)]:
        x, y = whole.train_batch(step, micro, torch.device("cpu"))
        parts = [h.train_batch(step, micro, torch.device("cpu")) for h in halves]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_strategy_auto_and_misuse():
    assert resolve_strategy("auto", 1) == "single" and resolve_strategy("auto", 4) == "ddp"
    assert resolve_strategy("fsdp", 1) == "fsdp"
    with pytest.raises(GptkitError, match="ddp or fsdp"):
        resolve_strategy("single", 2)
    with pytest.raises(GptkitError, match="strategy"):
        TrainConfig(strategy="zero3").validate()


def test_saved_optimizer_layout_is_torch_distributed_checkpoints(prepared_char):
    """Unsharded runs write the layout FSDP writes (torch.distributed.checkpoint's full state dict), by name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from gptkit.training.distributed import Dist, load_optimizer_state, optimizer_state
    from gptkit.training.loop import make_optimizer

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16))
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    model(torch.zeros(2, 16, dtype=torch.long)).sum().backward()
    optimizer.step()
    single = Dist("single", 0, 1, torch.device("cpu"))
    ours = optimizer_state(model, optimizer, single)
    theirs = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    assert ours["state"].keys() == theirs["state"].keys()
    for name, moments in ours["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, theirs["state"][name][key]), (name, key)
    fresh = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    load_optimizer_state(model, fresh, theirs, single)
    loaded, saved = fresh.state_dict(), optimizer.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    for i, moments in saved["state"].items():
        for key, value in moments.items():
            assert torch.equal(loaded["state"][i][key], value), (i, key)


def train_in_process(prepared: Path, run_dir: Path, **overrides) -> GPT:
    from gptkit.data.dataset import TokenDataset

    dataset = TokenDataset(prepared)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=dataset.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32,
                            dropout=0.1))
    cfg = TrainConfig(**{"max_iters": 3, "batch_size": 4, "eval_interval": 3, "eval_iters": 1, "log_interval": 1,
                         "warmup_iters": 0, "learning_rate": 1e-2, **overrides})
    task = CausalLMTask(dataset, block_size=32, batch_size=cfg.batch_size, seed=cfg.seed, eval_iters=cfg.eval_iters)
    train(model, task, cfg, tokenizer=dataset.tokenizer, run_dir=run_dir, quiet=True)
    return model


@pytest.fixture(scope="module")
def plain_in_process(tmp_path_factory, prepared_char) -> Path:
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    train_in_process(prepared_char, run_dir)
    return run_dir


def test_gradient_checkpointing_gives_the_same_training(tmp_path, prepared_char, plain_in_process):
    """Recomputed activations, dropout masks included, are the stored ones: the same steps, bit for bit."""
    train_in_process(prepared_char, tmp_path, gradient_checkpointing=True)
    a, b = last_weights(plain_in_process), last_weights(tmp_path)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_fsdp_in_one_process_matches_plain_training(tmp_path, prepared_char, plain_in_process):
    """--strategy fsdp without torchrun: a group of one, through the sharded code paths (DTensors, gathering)."""
    train_in_process(prepared_char, tmp_path, strategy="fsdp")
    assert log_values(tmp_path, "train_loss") == pytest.approx(log_values(plain_in_process, "train_loss"), rel=1e-5)
    a, b = last_weights(plain_in_process), last_weights(tmp_path)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
