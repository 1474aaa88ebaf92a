"""Pretraining a GPT from scratch: the `gptkit pretrain` job (data resolved, model built, the one loop run).

Knows nothing of the command line: `PretrainArgs` is a plain dataclass that the CLI turns into flags
(`gptkit.cli.args.PretrainFlags`), and a recipe's keys are its field names.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptkit.checkpoint import recorded_data_dir, resolve_checkpoint
from gptkit.config import PRESETS, ModelConfig
from gptkit.data.dataset import TokenDataset
from gptkit.data.prepare import resolve_dataset
from gptkit.errors import require
from gptkit.models.gpt import GPT
from gptkit.training.distributed import process_group
from gptkit.training.loop import TrainConfig, TrainResult, pick_device, train
from gptkit.training.tasks import AdversarialConfig, CausalLMTask, with_adversarial


def pretrain_train_defaults() -> TrainConfig:
    # The default recipe, tuned with benchmarks/time_to_loss.py: on the bundled corpus a 2,048-token BPE
    # beats characters at equal compute, and small batches at a high learning rate learn fastest.
    return TrainConfig(max_iters=800, batch_size=16, learning_rate=2e-3, warmup_iters=30, eval_interval=100)


@dataclass
class PretrainArgs:
    """Pretrain a GPT from scratch (default: the tiny model on the bundled Shakespeare corpus, on CPU, in minutes)."""

    preset: str = "tiny"
    """Model preset (see gptkit.config.PRESETS)."""
    config: Path | None = None
    """YAML recipe whose keys are these flags' names (model fields under `model:`)."""
    out: Path = Path("out/pretrain/tiny")
    """Run directory: checkpoints best/ and last/, log.jsonl, tensorboard/, loss.png."""
    data: str = "tiny_shakespeare"
    """A prepared dataset directory, a text/.jsonl file or directory (prepared into OUT/data), or a bundled corpus name."""
    tokenizer: str = "bpe"
    """When DATA needs preparing: char, bpe, gpt2, or a tokenizer.json path."""
    vocab_size: int = 2048
    """When DATA needs preparing with a BPE tokenizer: its vocabulary size."""
    resume: bool = False
    """Continue the run in OUT from its last checkpoint (exactly: same data order, optimizer and RNG state)."""
    overwrite: bool = False
    """Start afresh even if OUT already holds a run."""
    sample_tokens: int = 200
    """Tokens to sample from the best checkpoint at the end (0 to skip)."""
    train: TrainConfig = field(default_factory=pretrain_train_defaults)
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("tiny"))
    adv: AdversarialConfig = field(default_factory=AdversarialConfig)
    """Adversarial training on the input embeddings (--adversarial fgm|pgd|freelb, --adv-epsilon, ...)."""


@dataclass
class PretrainResult:
    train: TrainResult
    is_main: bool
    """Whether this process is rank 0 (under torchrun every process runs the job; rank 0 reports)."""


def pretrain(args: PretrainArgs, model_overrides: dict[str, Any] | None = None) -> PretrainResult:
    """Resolve the data (preparing it into OUT/data if needed), build the model and train it.

    model_overrides: the model fields set on top of the preset (by a recipe or flags); derived fields
    are recomputed from them. With `resume`, the run's own config and data are used instead.
    """
    model_overrides = dict(model_overrides or {})
    args.adv.validate(compile=args.train.compile)
    run_dir = args.out
    # Under torchrun every process runs this; rank 0 alone prepares data and prints.
    with process_group(args.train.strategy, pick_device(args.train.device)) as d:
        if args.resume:
            require((run_dir / "last").exists() or (run_dir / ".last.old").exists(),
                    f"nothing to resume: {run_dir} has no last/ checkpoint (drop --resume to start a new run)")
            last = resolve_checkpoint(run_dir / "last")
            config = ModelConfig.load(last / "config.json")
            dataset = TokenDataset(recorded_data_dir(last))
        else:
            existing = [p for p in (run_dir / "last", run_dir / "best") if p.exists()]
            require(not existing or args.overwrite,
                    f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to start afresh, "
                    "or choose another --out")
            with d.main_first():
                dataset = resolve_dataset(args.data, run_dir / "data", tokenizer=args.tokenizer,
                                          vocab_size=args.vocab_size)
            model_overrides.setdefault("vocab_size", dataset.vocab_size)
            config = ModelConfig.from_dict({**PRESETS.get(args.preset, {}), "name": args.preset, **model_overrides})
        require(config.vocab_size >= dataset.vocab_size,
                f"the model's vocab_size {config.vocab_size} is smaller than the tokenizer's {dataset.vocab_size}")
        torch.manual_seed(args.train.seed)
        model = GPT(config)
        if d.is_main:
            print(f"model: {config.name}, {model.num_parameters() / 1e6:.2f}M parameters "
                  f"({model.num_parameters(exclude_embeddings=True) / 1e6:.2f}M without embeddings); "
                  f"data: {dataset.path} ({dataset.n_tokens('train'):,} train tokens)"
                  + (f"; {d.world_size} processes ({d.strategy}), global batch "
                     f"{args.train.batch_size * d.world_size * args.train.grad_accum_steps} sequences"
                     if d.world_size > 1 else ""), file=sys.stderr)
        task = CausalLMTask(dataset, block_size=config.block_size, batch_size=args.train.batch_size,
                            seed=args.train.seed, eval_iters=args.train.eval_iters)
        extra = {"data_dir": str(Path(dataset.path).resolve()), "preset": args.preset,
                 **({"adversarial": args.adv.to_dict()} if args.adv.enabled else {})}
        result = train(model, with_adversarial(task, args.adv, args.train.seed), args.train,
                       tokenizer=dataset.tokenizer, run_dir=run_dir, resume=args.resume, extra_config=extra)
    return PretrainResult(result, d.is_main)

