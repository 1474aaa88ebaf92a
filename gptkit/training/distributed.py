"""Multi-process training: the processes `torchrun` starts all run the same `train()` loop.

    torchrun --nproc_per_node=8 -m gptkit pretrain --strategy ddp ...     # or --strategy fsdp

What this module adds to the loop, and nothing more:

- `process_group()` joins the group torchrun describes (NCCL on GPUs, gloo on CPUs), one GPU per process.
- `wrap_model()` applies the strategy. DDP keeps a whole copy of the model in every process and
  averages gradients during the backward pass. FSDP2 (`fully_shard`) keeps only a 1/N slice of every
  weight, gradient and optimizer moment in each process and gathers a block's weights just before
  the block runs: it trains models whose training state does not fit one GPU.
- `gradient_sync()` skips the gradient exchange on all but the last micro-step of an accumulated
  batch: averaging once per optimizer step gives the same result, at 1/accum of the traffic.
- Checkpoints stay unsharded (full weights in model.safetensors, full optimizer state keyed by
  parameter name in training_state.pt), written by rank 0, so a run resumes on any number of processes.

Data is split in the task (see `CausalLMTask.for_rank`): every process draws the offsets of the
whole global batch from the same (seed, step, micro-step) generator and keeps its own rows, so a run
on N processes sees exactly the batches of a single-process run with an N times larger batch.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from gptkit.errors import require

Strategy = Literal["single", "ddp", "fsdp"]
STRATEGIES = ("auto", "single", "ddp", "fsdp")


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run: its rank, the number of processes, its device."""

    strategy: Strategy
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, prints and writes checkpoints."""
        return self.rank == 0

    @property
    def in_group(self) -> bool:
        return self.strategy != "single"

    def barrier(self) -> None:
        if self.in_group:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all processes (the values themselves in a single-process run)."""
        return all_reduce_sum(values, self.device) if self.in_group else values

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on any: lets all ranks agree to stop at the same step."""
        return self.sum([float(flag)])[0] > 0 if self.in_group else flag

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.in_group:
            return [obj]
        objects: list[Any] = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first, then the others (e.g. rank 0 prepares data, the others reuse it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over all processes; the values themselves when there is no process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    # float64: loss sums and token counts of a whole validation split must add up exactly.
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def resolve_strategy(strategy: str, world_size: int) -> Strategy:
    """auto means ddp under torchrun with several processes, else single."""
    require(strategy in STRATEGIES, f"unknown --strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if strategy == "auto":
        return "ddp" if world_size > 1 else "single"
    require(strategy != "single" or world_size == 1,
            f"--strategy single with {world_size} processes: each would train its own copy of the model on the "
            "same data; use --strategy ddp or fsdp, or run without torchrun")
    return strategy  # type: ignore[return-value]


def launched_world_size() -> int:
    """Processes in the run: the existing process group's size, else what torchrun says (1 without it)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: torch.device) -> torch.device:
    """One GPU per process: the process with LOCAL_RANK k uses cuda:k."""
    if device.type != "cuda":
        return device
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


@contextmanager
def process_group(strategy: str, device: torch.device) -> Iterator[Dist]:
    """This process's place in the run; joins (and at the end leaves) the process group if it needs one.

    Re-entrant: if the group already exists (the CLI joins it before preparing data), it is used and
    left to whoever made it. `--strategy ddp|fsdp` without torchrun runs as a group of one.
    """
    world_size = launched_world_size()
    resolved = resolve_strategy(strategy, world_size)
    if resolved == "single":
        yield Dist("single", 0, 1, device)
        return
    require(device.type in ("cpu", "cuda"), f"--strategy {resolved} runs on CPUs or CUDA GPUs, not {device.type}")
    device = rank_device(device)
    if dist.is_initialized():
        yield Dist(resolved, dist.get_rank(), world_size, device)
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "WORLD_SIZE" in os.environ:  # started by torchrun: it set RANK, MASTER_ADDR and MASTER_PORT too
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield Dist(resolved, dist.get_rank(), world_size, device)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# the model


def wrap_model(model: nn.Module, d: Dist) -> nn.Module:
    """The module to train through: `model` itself, DDP around it, or `model` sharded in place (FSDP2).

    `model` must already be on `d.device`. After FSDP, `model`'s parameters are DTensor shards.
    """
    if d.strategy == "ddp":
        # Our buffers (RoPE tables) are constants: syncing them would put a collective into every
        # forward pass, evaluation included. (torch 2.13 renamed the flag.)
        renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        no_buffer_sync = {"forward_sync_buffers": False} if renamed else {"broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                                       gradient_as_bucket_view=True, **no_buffer_sync)
    if d.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        require(hasattr(model, "blocks"), f"--strategy fsdp shards a model block by block, but "
                                          f"{type(model).__name__} has no `blocks`")
        # Sharding slices each process's own copy; unlike DDP, FSDP does not check that they agree.
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
        # One shard group per block: a block's weights are gathered just before it runs and freed right
        # after, so only about one block is ever whole. The root group holds the rest (embeddings, final
        # norm, head; a tied head shares the embedding's shard).
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    return model


def gradient_sync(wrapped: nn.Module, enabled: bool):
    """Context for one micro-step's backward pass: exchange gradients only if `enabled`.

    Gradients of the skipped micro-steps accumulate locally and go out with the last one.
    """
    if isinstance(wrapped, DistributedDataParallel):
        return nullcontext() if enabled else wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # an FSDP2 module
        wrapped.set_requires_gradient_sync(enabled)
    return nullcontext()


# FSDP's state-dict helpers are imported only by runs that shard: they pull in DTensor and sympy,
# seconds of start-up that every other command would pay.


def _full_on_rank0():
    """Unsharded tensors, gathered into rank 0's host memory only (the other ranks would throw them away)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


class FullWeights:
    """The model to write to model.safetensors on rank 0: the model itself, or for FSDP an unsharded copy.

    FSDP's parameters are shards, so rank 0 keeps a host-memory copy of the model (made before
    sharding) and refreshes it from the gathered weights at each checkpoint; save_checkpoint then
    writes it like any model (tied weights once). It costs one model's size of host memory on rank 0.
    """

    def __init__(self, model: nn.Module, d: Dist) -> None:
        self.model, self.d = model, d
        self.copy = copy.deepcopy(model).cpu() if d.strategy == "fsdp" and d.is_main else None

    def gather(self) -> nn.Module | None:
        """The full model on rank 0, None elsewhere. Every rank must call it (FSDP gathers collectively)."""
        if self.d.strategy != "fsdp":
            return self.model if self.d.is_main else None
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.model, options=_full_on_rank0())
        if self.copy is None:
            return None
        self.copy.load_state_dict(state)
        return self.copy


# The optimizer state is saved in one layout for every strategy: torch's own `optimizer.state_dict()`
# with parameter names in place of its positional ids, and unsharded tensors. It is the layout of
# torch.distributed.checkpoint's full optimizer state dict, so FSDP reads and writes it directly, and
# any strategy on any number of processes can resume from it.


def _positional_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter the optimizer holds, in its positional-id order (a tied weight: its first name)."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, d: Dist) -> dict[str, Any]:
    """The full optimizer state keyed by parameter name, on rank 0 ({} elsewhere); every rank must call it.

    `model` is the unwrapped model (not DDP, not compiled).
    """
    if d.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_full_on_rank0())
    if not d.is_main:
        return {}
    names, state = _positional_names(model, optimizer), optimizer.state_dict()
    return {"state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], d: Dist) -> None:
    """Load what `optimizer_state` saved, whatever the strategy and process count that saved it."""
    if d.strategy == "fsdp":  # every rank holds the full state; each keeps its shard
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))
        return
    if isinstance(state["param_groups"][0]["params"][0], str):
        index = {name: i for i, name in enumerate(_positional_names(model, optimizer))}
        state = {"state": {index[name]: s for name, s in state["state"].items()},
                 "param_groups": [{**g, "params": [index[name] for name in g["params"]]}
                                  for g in state["param_groups"]]}
    optimizer.load_state_dict(state)  # (positional ids as they are: a checkpoint from before names)
