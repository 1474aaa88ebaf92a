"""Wall time for a pretraining recipe to reach a validation bits-per-byte target on the bundled corpus.

The target, 2.770 bits/byte (1.9202 nats/char), is what nanoGPT's CPU "baby" shakespeare_char recipe
reaches after 2,000 iterations (~150 s on this machine class). Validation is always the exact last
10% of the bundled tiny_shakespeare text (nanoGPT's split), scored in full at every evaluation;
evaluation time is excluded from the training clock and reported separately.

    python benchmarks/time_to_loss.py                       # gptkit's default `tiny` recipe, 3 runs
    python benchmarks/time_to_loss.py --recipes tiny,baby   # also nanoGPT's baby recipe, interleaved
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from gptkit.training.pretrain import PretrainArgs
from gptkit.data.prepare import resolve_dataset
from gptkit.config import PRESETS, ModelConfig
from gptkit.evaluation.lm import evaluate_tokens
from gptkit.models.gpt import GPT
from gptkit.training.loop import TrainConfig, train
from gptkit.training.tasks import CausalLMTask

TARGET_BPB = 2.770


def recipes() -> dict[str, tuple[PretrainArgs, dict]]:
    """name -> (pretrain arguments, model overrides)."""
    default = PretrainArgs()  # exactly what `gptkit pretrain` runs with no flags
    baby = replace(default, preset="baby", tokenizer="char", train=TrainConfig(
        max_iters=2000, batch_size=12, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000,
        beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250))
    return {"tiny": (default, {}), "baby": (baby, {})}


@dataclass
class Outcome:
    recipe: str
    reached_at_step: int | None
    train_seconds_to_target: float | None
    final_bpb: float
    train_seconds_total: float
    eval_seconds: float
    prepare_seconds: float


class TimedTask(CausalLMTask):
    """The LM task, but every evaluation scores the whole validation split and pauses the clock."""

    def __init__(self, *args, eval_every: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_every = eval_every
        self.history: list[tuple[int, float, float]] = []  # (step, train seconds, bpb)
        self.eval_seconds = 0.0
        self.started = time.perf_counter()
        self.step = 0

    def train_batch(self, step, micro_step, device):
        self.step = step + 1
        return super().train_batch(step, micro_step, device)

    def evaluate(self, model, device, *, full):
        t0 = time.perf_counter()
        train_seconds = t0 - self.started - self.eval_seconds
        metrics = evaluate_tokens(model, self.dataset.split("val"), self.dataset.n_bytes("val"),
                                  block_size=self.block_size, batch_size=64, device=device)
        self.eval_seconds += time.perf_counter() - t0
        self.history.append((self.step, train_seconds, metrics["val_bpb"]))
        return metrics


def run_recipe(name: str, args: PretrainArgs, overrides: dict, eval_every: int, workdir: Path) -> Outcome:
    t0 = time.perf_counter()
    dataset = resolve_dataset(args.data, workdir / f"data-{name}", tokenizer=args.tokenizer,
                              vocab_size=args.vocab_size)
    prepare_seconds = time.perf_counter() - t0
    config = ModelConfig.from_dict({**PRESETS[args.preset], "name": args.preset, **overrides,
                                    "vocab_size": dataset.vocab_size})
    torch.manual_seed(args.train.seed)
    model = GPT(config)
    cfg = replace(args.train, eval_interval=eval_every)
    task = TimedTask(dataset, block_size=config.block_size, batch_size=cfg.batch_size, seed=cfg.seed,
                     eval_every=eval_every)
    train(model, task, cfg, tokenizer=dataset.tokenizer, run_dir=workdir / f"run-{name}", quiet=True)
    reached = next(((s, t) for s, t, bpb in task.history if bpb <= TARGET_BPB), (None, None))
    total = task.history[-1][1]
    return Outcome(name, reached[0], reached[1], task.history[-1][2], total, task.eval_seconds, prepare_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="tiny", help="comma-separated: " + ", ".join(recipes()))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=100, help="steps between full validation passes")
    opts = parser.parse_args()
    available = recipes()
    names = opts.recipes.split(",")
    unknown = [n for n in names if n not in available]
    if unknown:
        sys.exit(f"unknown recipe(s) {unknown}; choose from {list(available)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; target val bpb <= {TARGET_BPB}")
    outcomes: dict[str, list[Outcome]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(opts.repeats):
            for name in names:  # interleaved, so machine noise hits every recipe alike
                args, overrides = available[name]
                o = run_recipe(name, args, overrides, opts.eval_every, Path(tmp) / f"{repeat}")
                outcomes[name].append(o)
                reached = (f"reached at step {o.reached_at_step} after {o.train_seconds_to_target:.1f} s"
                           if o.reached_at_step else "did not reach the target")
                print(f"[{repeat + 1}/{opts.repeats}] {name}: {reached}; final bpb {o.final_bpb:.4f} after "
                      f"{o.train_seconds_total:.1f} s training (+{o.eval_seconds:.1f} s eval, "
                      f"{o.prepare_seconds:.1f} s data prep)", flush=True)
    print("\nrecipe   median s to target (training + data prep)   median final bpb   runs reaching target")
    for name, runs in outcomes.items():
        times = [o.train_seconds_to_target + o.prepare_seconds for o in runs if o.train_seconds_to_target]
        med = f"{statistics.median(times):8.1f}" if times else "     n/a"
        print(f"{name:<8} {med}                                    "
              f"{statistics.median(o.final_bpb for o in runs):.4f}             {len(times)}/{len(runs)}")


if __name__ == "__main__":
    main()
