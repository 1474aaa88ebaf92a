"""The one training loop: any model, any task, checkpoints and exact resume; knows nothing of what the task's data is.

Pretraining, fine-tuning, classification, multimodal and adversarial training all run through
`train()`: what differs is the *task* (where batches come from, how the loss is computed, how the
model is evaluated), never the loop. The loop owns everything else: optimizer and schedule,
gradient accumulation and clipping, mixed precision, evaluation, best-checkpoint keeping, early
stopping, logging, and exact resume.

Exact resume works because nothing in a run depends on hidden state that a checkpoint does not
hold: the batch for step s is a pure function of (seed, s), and the checkpoint stores the weights,
the optimizer moments, the step and the RNG state (for dropout).

Under `torchrun` every process runs this same loop on its share of each batch (DDP or FSDP, see
`gptkit.training.distributed`): rank 0 logs and writes checkpoints, and the figures it logs are
averaged over all processes.
"""

from __future__ import annotations

import dataclasses
import functools
import ctypes
import math
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint as recompute_in_backward
from tqdm.auto import tqdm

from gptkit.adapt.quantize import require_float
from gptkit.checkpoint import (load_trained_weights, load_training_state, resolve_checkpoint, save_checkpoint,
                               use_standard_layout)
from gptkit.errors import GptkitError, require
from gptkit.tokenizer import Tokenizer
from gptkit.training.distributed import (
    STRATEGIES,
    Dist,
    FullWeights,
    gradient_sync,
    load_optimizer_state,
    optimizer_state,
    process_group,
    wrap_model,
)
from gptkit.training.logger import RunLogger


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings of a training run."""

    max_iters: int = 2000
    """Optimizer steps to run."""
    batch_size: int = 32
    """Sequences per micro-batch in each process.
    One optimizer step sees batch_size x processes (torchrun's N) x grad_accum_steps sequences in all."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step in each process (global batch = batch_size * processes * grad_accum_steps)."""
    learning_rate: float = 1e-3
    min_lr: float | None = None
    """Learning rate at the end of the cosine decay; None means learning_rate / 10."""
    warmup_iters: int = 100
    lr_decay_iters: int | None = None
    """Steps over which the cosine decays; None means max_iters."""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    eval_interval: int = 250
    """Evaluate (and checkpoint) every this many steps, and at the end."""
    eval_iters: int = 20
    """Batches per periodic evaluation (the final evaluation covers the whole validation split)."""
    log_interval: int = 10
    early_stopping_patience: int = 0
    """Stop after this many evaluations without a better validation loss; 0 disables."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Autocast precision; auto = bfloat16 on GPUs that support it, else float32. On CPUs with AMX (Xeon 4th
    generation and later) bfloat16 trains GPT-2-small ~2.3x faster; models as small as `tiny` are slower in it."""
    compile: bool = False
    """torch.compile the model (faster steps after a one-off compilation)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps (under torchrun each process takes the GPU of its LOCAL_RANK)."""
    seed: int = 1337
    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"
    """How the processes of `torchrun --nproc_per_node=N` share the work; auto = ddp if N > 1, else single.
    ddp: a whole model per process, gradients averaged. fsdp: weights, gradients, optimizer state sharded."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of storing them.
    Much less activation memory, for about a third more compute."""

    def validate(self) -> None:
        for name in ("max_iters", "batch_size", "grad_accum_steps", "eval_interval", "eval_iters", "log_interval"):
            require(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        require(self.learning_rate > 0 and math.isfinite(self.learning_rate),
                f"--learning-rate must be a positive number, got {self.learning_rate}")
        require(self.warmup_iters >= 0, f"--warmup-iters must be >= 0, got {self.warmup_iters}")
        require(self.grad_clip >= 0, f"--grad-clip must be >= 0, got {self.grad_clip}")
        require(self.early_stopping_patience >= 0, "--early-stopping-patience must be >= 0")
        require(self.strategy in STRATEGIES,
                f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Task(Protocol):
    """What a kind of training plugs into the loop."""

    def train_batch(self, step: int, micro_step: int, device: torch.device) -> Any:
        """The batch for this (step, micro-step); must be a pure function of them and the seed."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Scalar training loss of `model` on `batch`."""

    def evaluate(self, model: nn.Module, device: torch.device, *, full: bool) -> dict[str, float]:
        """Validation metrics, including 'val_loss' (lower is better). `full`: the whole split."""

    def tokens_per_batch(self, batch: Any) -> int:
        """Tokens the model processes for one micro-batch (for throughput figures)."""

    # Optional: which validation metric picks the best checkpoint and drives early stopping,
    #   selection: tuple[str, str] = ("val_loss", "min")      # or e.g. ("val_macro_f1", "max")
    # Optional, for multi-process training:
    #   def for_rank(self, rank: int, world_size: int) -> Task
    # The task as process `rank` of `world_size` sees it: train_batch returns this rank's share of the
    # global batch, and evaluate splits its work across ranks and returns the global figures.


class TrainHook(Protocol):
    """Something that acts on the model after each optimizer step (e.g. `gptkit.adapt.peft.AdaLoRAAllocator`)."""

    def after_optimizer_step(self, step: int) -> None:
        """Called right after `optimizer.step()`, before the gradients are zeroed (they are still there to
        read); `step` is the 0-based index of the step just taken."""

    # Optional, for a hook with state of its own: it is saved in checkpoints and restored on resume.
    #   def state_dict(self) -> dict[str, torch.Tensor]
    #   def load_state_dict(self, state: dict[str, torch.Tensor]) -> None


@dataclass
class TrainResult:
    step: int
    best_value: float
    """The best value of the task's selection metric, `selected_by` (val_loss unless the task names another,
    e.g. val_macro_f1 for a classifier): checkpoint best/ holds the model that reached it."""
    final_metrics: dict[str, float]
    run_dir: Path
    selected_by: str = "val_loss"
    stopped_early: bool = False
    interrupted: bool = False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptkitError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    require(device.type != "cuda" or torch.cuda.is_available(), "--device cuda asked for, but no CUDA GPU is visible")
    return device


def autocast_context(device: torch.device, dtype: str):
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def learning_rate_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr, then flat."""
    min_lr = cfg.learning_rate / 10 if cfg.min_lr is None else cfg.min_lr
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return min_lr
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying biases and norm gains only hurts."""
    params = [p for p in model.parameters() if p.requires_grad]
    require(params, "the model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass instead of one small op per tensor.
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type in ("cpu", "cuda"))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def stop_requests() -> Iterator[dict[str, bool]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps, so it can save and exit cleanly."""
    flag = {"stop": False}
    previous = {}

    def handler(signum, frame):
        if flag["stop"]:  # a second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        flag["stop"] = True

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no signal handling, nothing else changes
        pass
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def checkpoint_activations(model: nn.Module) -> None:
    """Make each block recompute its activations during the backward pass instead of storing them.

    Done from outside the model, by wrapping each block's forward, so models/gpt.py knows nothing of it.
    use_reentrant=False is the variant PyTorch recommends: it works with torch.compile and FSDP, and it
    restores the RNG state for the recomputation, so dropout masks (and results) are unchanged.
    """
    require(hasattr(model, "blocks"),
            f"--gradient-checkpointing recomputes blocks, but {type(model).__name__} has none")
    for block in model.blocks:
        if not isinstance(block.forward, functools.partial):  # not wrapped by an earlier train() call
            block.forward = functools.partial(recompute_in_backward, block.forward, use_reentrant=False)


def restore_rng_state(state: dict[str, Any], d: Dist) -> None:
    """Each rank continues its own dropout RNG stream; a rank the saved run did not have keeps its fresh seed."""
    saved = state.get("rng_per_rank") or [state["rng"]]
    if d.rank < len(saved):
        set_rng_state(saved[d.rank])


def keep_freed_memory_in_process() -> bool:
    """Make glibc serve large allocations from its heap and keep freed memory, instead of mmap/munmap.

    By default glibc hands allocations above a threshold (128 KiB, rising to at most 32 MiB) straight
    to the kernel with mmap and unmaps them on free. A training step allocates and frees hundreds of
    MB of activations, logits and gradients, so every step page-faults all of it back in, zero-filled
    by the kernel. At GPT-2-small shape (benchmarks/train_throughput.py, one thread) this took gptkit
    from 65-79% to 83-86% of the matmul bound and HF's GPT-2 from 53% to 74-79%; at nanoGPT's baby
    shape it makes no difference. The cost: the process keeps its peak memory until it exits.
    Process-wide; call it before the big allocations. The same as starting the process with
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1 (-1: never trim). Returns False, changing nothing,
    where the C library is not glibc.
    """
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's <malloc.h>
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))
    except (OSError, AttributeError):
        return False


@contextmanager
def cpu_training_settings() -> Iterator[None]:
    """Settings that make CPU training steps faster, for the duration of `train`.

    Freed activations stay in the process (`keep_freed_memory_in_process`, process-wide and kept), and
    denormal floats flush to zero while training: a saturated softmax produces them, and x86 arithmetic
    on denormals is ~100x slower (one backward step measured 16x slower), for no difference in what the
    model learns. Flushing is switched off again afterwards (torch's default), because it is a
    process-wide CPU flag that other code (e.g. hypothesis, numerical tests) relies on being off.
    """
    keep_freed_memory_in_process()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def train(model: nn.Module, task: Task, cfg: TrainConfig, *, tokenizer: Tokenizer, run_dir: Path,
          resume: bool = False, extra_config: dict[str, Any] | None = None, quiet: bool = False,
          hooks: Sequence[TrainHook] = ()) -> TrainResult:
    """Train `model` on `task`, writing checkpoints `run_dir/last` and `run_dir/best` and logs.

    `hooks` run after every optimizer step (see `TrainHook`).

    Under torchrun, every process calls this with the same arguments and model weights.
    """
    cfg.validate()
    require_float(model)  # a quantized model's int8/int4 buffers have no gradients to train
    device = pick_device(cfg.device)
    settings = cpu_training_settings() if device.type == "cpu" else nullcontext()
    with settings, process_group(cfg.strategy, device) as d:
        return _train(model, task, cfg, d, tokenizer=tokenizer, run_dir=Path(run_dir), resume=resume,
                      extra_config=extra_config, quiet=quiet, hooks=hooks)


def _train(model: nn.Module, task: Task, cfg: TrainConfig, d: Dist, *, tokenizer: Tokenizer, run_dir: Path,
           resume: bool, extra_config: dict[str, Any] | None, quiet: bool,
           hooks: Sequence[TrainHook] = ()) -> TrainResult:
    device = d.device
    if d.world_size > 1:
        require(hasattr(task, "for_rank"), f"{type(task).__name__} cannot split its batches across processes "
                                           "(it has no for_rank method); run it in a single process")
        task = task.for_rank(d.rank, d.world_size)
    selected, mode = getattr(task, "selection", ("val_loss", "min"))
    require(mode in ("min", "max"), f"{type(task).__name__}.selection mode must be min or max, got {mode!r}")

    def better(value: float, best: float) -> bool:
        return value < best if mode == "min" else value > best

    step, best_val, evals_without_improvement, elapsed_before = 0, math.inf if mode == "min" else -math.inf, 0, 0.0
    state: dict[str, Any] | None = None
    if resume:
        last = resolve_checkpoint(run_dir / "last")
        load_trained_weights(model, last)  # full weights, into every process, before any sharding
        state = load_training_state(last)
        step, best_val = state["step"], state["best_val_loss"]
        evals_without_improvement, elapsed_before = state["evals_without_improvement"], state["elapsed_s"]
    use_standard_layout(model)  # a model that generated text before may hold transposed weights
    full_weights = FullWeights(model, d)
    if cfg.gradient_checkpointing:
        checkpoint_activations(model)
    model.to(device)
    wrapped = wrap_model(model, d)  # `model` stays the unwrapped module (FSDP shards it in place)
    optimizer = make_optimizer(model, cfg, device)
    torch.manual_seed(cfg.seed + d.rank)  # the dropout RNG; each process draws its own masks
    if state is not None:
        load_optimizer_state(model, optimizer, state["optimizer"], d)
        for hook, hook_state in zip(hooks, state.get("hooks", [])):
            if hook_state is not None:
                hook.load_state_dict(hook_state)  # type: ignore[attr-defined]
        restore_rng_state(state, d)
    train_config = {"train": cfg.to_dict(), **(extra_config or {})}
    compiled = torch.compile(wrapped) if cfg.compile else wrapped
    autocast = autocast_context(device, cfg.dtype)
    logger = RunLogger(run_dir, resume_step=step if resume else None, enabled=d.is_main)

    def checkpoint(*names: str) -> None:
        # Every process takes part in gathering (FSDP's weights and optimizer state are sharded, and each
        # process has its own RNG stream); rank 0 writes while the others wait.
        weights, optimizer_full = full_weights.gather(), optimizer_state(model, optimizer, d)
        rngs = d.gather(rng_state())
        if d.is_main:
            state = {"optimizer": optimizer_full, "step": step, "best_val_loss": best_val,
                     "evals_without_improvement": evals_without_improvement, "rng": rngs[0],
                     "elapsed_s": elapsed_before + time.perf_counter() - start}
            if d.world_size > 1:
                state["rng_per_rank"] = rngs
            if hooks:
                state["hooks"] = [hook.state_dict() if hasattr(hook, "state_dict") else None for hook in hooks]
            for name in names:
                save_checkpoint(run_dir / name, weights, tokenizer, training_state=state, train_config=train_config)
        d.barrier()

    def evaluate(full: bool) -> dict[str, float]:
        wrapped.eval()
        with torch.no_grad(), autocast:
            metrics = task.evaluate(compiled, device, full=full)
        wrapped.train()
        return metrics

    start = time.perf_counter()
    metrics: dict[str, float] = {}
    stopped_early = interrupted = False
    wrapped.train()
    bar = tqdm(total=cfg.max_iters, initial=step, desc="train", unit="step", disable=quiet or not d.is_main,
               dynamic_ncols=True)

    def say(message: str) -> None:  # progress and status go to stderr, results to stdout
        if not quiet and d.is_main:
            bar.write(message, file=sys.stderr)
    tokens_seen, window_start = 0, time.perf_counter()
    with stop_requests() as stop:
        while step < cfg.max_iters:
            lr = learning_rate_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, step_tokens = 0.0, 0
            for micro in range(cfg.grad_accum_steps):
                batch = task.train_batch(step, micro, device)
                # Processes exchange gradients only in the last micro-step's backward pass: averaging
                # the accumulated sums once gives the same result as averaging every micro-step.
                with gradient_sync(wrapped, enabled=micro == cfg.grad_accum_steps - 1):
                    with autocast:
                        loss = task.loss(compiled, batch)
                    (loss / cfg.grad_accum_steps).backward()
                loss_sum += loss.item()
                step_tokens += task.tokens_per_batch(batch)
            loss_sum, all_tokens = d.sum([loss_sum, float(step_tokens)])  # over processes: the global figures
            tokens_seen += int(all_tokens)
            require(math.isfinite(loss_sum), f"training diverged at step {step} (loss is {loss_sum}); "
                                             "lower --learning-rate or raise --warmup-iters")
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            for hook in hooks:  # before zero_grad: a hook may read the gradients (AdaLoRA's importance scores)
                hook.after_optimizer_step(step)
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_loss = loss_sum / (cfg.grad_accum_steps * d.world_size)

            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                now = time.perf_counter()
                tok_s = tokens_seen / max(now - window_start, 1e-9)
                tokens_seen, window_start = 0, now
                logger.log(step, {"train_loss": train_loss, "lr": lr, "tokens_per_s": tok_s})
                bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            bar.update(1)

            final = step == cfg.max_iters
            if step % cfg.eval_interval == 0 or final:
                metrics = evaluate(full=final)
                logger.log(step, metrics)
                improved = better(metrics[selected], best_val)
                if improved:
                    best_val, evals_without_improvement = metrics[selected], 0
                else:
                    evals_without_improvement += 1
                checkpoint(*(["best"] if improved else []), "last")
                say(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "val_tokens"))
                if cfg.early_stopping_patience and evals_without_improvement >= cfg.early_stopping_patience:
                    say(f"early stopping: no improvement in {evals_without_improvement} evaluations")
                    stopped_early = True
                    break
            # All processes must stop at the same step, even if the signal reached them at different times.
            if d.any(stop["stop"]):
                checkpoint("last")
                say(f"interrupted: saved {run_dir / 'last'} at step {step}; continue with --resume")
                interrupted = True
                break
    bar.close()
    logger.close()
    return TrainResult(step=step, best_value=best_val, final_metrics=metrics, run_dir=run_dir, selected_by=selected,
                       stopped_early=stopped_early, interrupted=interrupted)
