"""Helpers shared by the benchmark scripts: fair timing on a noisy machine, tables, machine facts.

Benchmarks here run on shared CPUs where other work comes and goes, so a figure taken from one side
and later one from the other side measures the neighbours as much as the code. Every comparison
therefore goes through `interleaved_medians`: one round times each side once, in turn, and the
figure reported is the median over rounds.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Samples:
    """Timings of one callable, one entry per round."""

    wall: list[float] = field(default_factory=list)
    """Wall-clock seconds."""
    cpu: list[float] = field(default_factory=list)
    """CPU seconds of this process, all threads (user + system)."""

    @property
    def median(self) -> float:
        """Median wall-clock seconds."""
        return statistics.median(self.wall)

    @property
    def cpu_use(self) -> float:
        """Median CPU seconds per wall second: about the thread count on an idle machine, less when
        other processes take the cores (then the wall-clock figures are pessimistic)."""
        return statistics.median(c / w for c, w in zip(self.cpu, self.wall))


def process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def interleaved_medians(named_callables: dict[str, Callable[[], Any]], repeats: int, *,
                        warmup: int = 1) -> dict[str, Samples]:
    """Time each callable `repeats` times, in rounds that call every callable once in turn.

    Returns name -> Samples (wall and CPU seconds per call, in round order); `.median` is the
    figure to report. Every callable is first called `warmup` times, also in turn, untimed.
    """
    for _ in range(warmup):
        for fn in named_callables.values():
            fn()
    samples = {name: Samples() for name in named_callables}
    for _ in range(repeats):
        for name, fn in named_callables.items():
            cpu, start = process_cpu_seconds(), time.perf_counter()
            fn()
            samples[name].wall.append(time.perf_counter() - start)
            samples[name].cpu.append(process_cpu_seconds() - cpu)
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """'min-max' of the values, for showing how noisy a median is."""
    return f"{_number(min(values))}-{_number(max(values))}"


def _number(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """A plain aligned text table; numbers right-aligned, everything else left-aligned."""
    def text(cell: Any) -> str:
        if isinstance(cell, float):
            return _number(cell)
        if isinstance(cell, int):
            return f"{cell:,}"
        return str(cell)

    cells = [[text(c) for c in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for entry in f:
                if entry.startswith("model name"):
                    return entry.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_features() -> str:
    """The vector/matrix extensions that decide CPU matmul speed (AVX-512, AMX for bf16/int8)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            for entry in f:
                if entry.startswith("flags"):
                    flags = set(entry.split(":", 1)[1].split())
                    return " ".join(w for w in wanted if w in flags) or "none of " + ", ".join(wanted)
    except OSError:
        pass
    return "unknown"


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare figures across machines (and to see if the machine was busy)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "features": cpu_features(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load average (1 min)"] = round(os.getloadavg()[0], 2)
    return info


def print_machine_info() -> None:
    print("; ".join(f"{k}: {v}" for k, v in machine_info().items()))


from gptkit.training.loop import keep_freed_memory_in_process  # noqa: E402,F401  (re-exported for the scripts)
