"""Training throughput on 1 and 2 processes (torchrun, gloo on CPU), at the same global batch.

Each side is a real `gptkit pretrain` run on the bundled corpus (character tokens), started as a user
would; the figure is the median of the tokens/s the run logs (all processes together), leaving out
the first logging window (warm-up). The sides:

  1 process, 2 threads     plain `gptkit pretrain`, global batch B, torch using both cores
  1 process, 1 thread      the same on one core: the per-core rate that 2 processes would double at best
  2 x DDP, 1 thread each   `torchrun --nproc_per_node=2 ... --strategy ddp`, B/2 sequences per process
  2 x FSDP, 1 thread each  the same with weights, gradients and optimizer state sharded

On a 2-core machine expect little or no gain: two processes only trade intra-op threads for
processes, and add a gradient all-reduce (DDP) or weight all-gathers and gradient reduce-scatters
(FSDP) per step. The point is that the numbers are the same (the final train loss column agrees
across sides, because every side sees the same global batches) at a measured overhead. Sides run in
turn within each round and medians are reported, as the machines these run on are shared; when other
work takes the cores, the 2-thread process suffers most (its threads wait for each other at every
op), so read scaling from the 1-thread sides.

    python benchmarks/ddp_scaling.py                          # tiny shape, 3 rounds (about 3 minutes)
    python benchmarks/ddp_scaling.py --repeats 5 --steps 80 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import print_machine_info, print_table, spread  # noqa: E402

from gptkit.data.prepare import prepare  # noqa: E402

# The tiny preset's shape (4 layers, 4 heads, 128 wide, 128-token context) with character tokens.
MODEL_FLAGS = ["--preset", "tiny", "--model.block-size", "128", "--sample-tokens", "0"]


@dataclass(frozen=True)
class Side:
    name: str
    processes: int
    threads: int
    strategy: str


SIDES = [Side("1 process, 2 threads", 1, 2, "single"), Side("1 process, 1 thread", 1, 1, "single"),
         Side("2 x DDP, 1 thread each", 2, 1, "ddp"), Side("2 x FSDP, 1 thread each", 2, 1, "fsdp")]


@dataclass
class Run:
    tokens_per_s: float
    wall_s: float
    final_train_loss: float


def run_side(side: Side, data: Path, out: Path, *, steps: int, global_batch: int, log_every: int) -> Run:
    args = ["pretrain", "--data", str(data), "--out", str(out), "--overwrite", *MODEL_FLAGS,
            "--batch-size", str(global_batch // side.processes), "--strategy", side.strategy,
            "--max-iters", str(steps), "--log-interval", str(log_every), "--eval-interval", str(steps),
            "--eval-iters", "1", "--warmup-iters", "10", "--device", "cpu"]
    if side.processes == 1:
        command = [sys.executable, "-m", "gptkit", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={side.processes}", "-m", "gptkit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(side.threads), "PYTHONPATH": str(HERE.parent)}
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{side.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    windows = [r for r in records if "tokens_per_s" in r]
    return Run(statistics.median(r["tokens_per_s"] for r in windows[1:]), wall, windows[-1]["train_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every side once")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (sequences per step), even")
    parser.add_argument("--log-every", type=int, default=10, help="steps per throughput window")
    opts = parser.parse_args()
    if opts.batch_size % 2:
        sys.exit("--batch-size must be even, so that two processes can split it")
    print_machine_info()
    print(f"shape: tiny preset (4 layers, 128 wide), context 128, char vocabulary; global batch {opts.batch_size} "
          f"x 128 = {opts.batch_size * 128:,} tokens per step; {opts.steps} steps per run, {opts.repeats} rounds\n")
    runs: dict[str, list[Run]] = {side.name: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(["tiny_shakespeare"], data, tokenizer="char")
        for repeat in range(opts.repeats):
            for side in SIDES:  # interleaved, so machine noise hits every side alike
                run = run_side(side, data, Path(tmp) / "run", steps=opts.steps, global_batch=opts.batch_size,
                               log_every=opts.log_every)
                runs[side.name].append(run)
                print(f"[{repeat + 1}/{opts.repeats}] {side.name}: {run.tokens_per_s:,.0f} tok/s, "
                      f"{run.wall_s:.1f} s wall (with start-up), final train loss {run.final_train_loss:.6f}",
                      flush=True)
    base = statistics.median(r.tokens_per_s for r in runs[SIDES[0].name])
    rows = []
    for side in SIDES:
        tok_s = [r.tokens_per_s for r in runs[side.name]]
        rows.append([side.name, statistics.median(tok_s), spread(tok_s), f"{statistics.median(tok_s) / base:.2f}x",
                     statistics.median(r.wall_s for r in runs[side.name]),
                     f"{runs[side.name][-1].final_train_loss:.6f}"])
    print()
    print_table(rows, ["side", "tokens/s (median)", "spread", "vs 1 process", "run wall s", "final train loss"])


if __name__ == "__main__":
    main()
