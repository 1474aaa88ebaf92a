"""The learned moderator's fine-tuning job: `train_moderator` fine-tunes a classification head on the bundled
moderation data with `gptkit finetune --task classify`'s job, calibrates its threshold and writes moderation.json
(`gptkit.finetune.moderation`); knows nothing of how text is moderated or of the command line.

    gptkit moderate --train --checkpoint out/pretrain/base-mix --out out/moderation
    # the same as: gptkit finetune --task classify --checkpoint BASE --out out/moderation --data D/train.jsonl
    #   --val-data D/val.jsonl --test-data D/test.jsonl   (D from gptkit.data.moderation_data.write_moderation_splits)
    # then a threshold calibrated on the validation split, written to out/moderation/best/moderation.json

`train_moderator` writes the bundled moderation data split held out by category (`moderation_splits`) to OUT/data,
fine-tunes a classification head (labels none, sexual, hate, vulgarity, violence) with `run_finetune`, picks the
threshold on 1 - P(none) with the best validation F1 among those flagging at most `max_fpr` of the benign validation
rows, and reports precision, recall, F1, false-positive rate and ROC-AUC on the test split.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gptkit.adapt.peft import PeftConfig
from gptkit.checkpoint import CONFIG_FILE, resolve_checkpoint
from gptkit.config import ModelConfig
from gptkit.data.labelled import read_labelled
from gptkit.data.moderation_data import BENIGN_LABEL, TEXT_STYLES, write_moderation_splits
from gptkit.errors import require
from gptkit.evaluation.detection import calibrate_threshold, flag_report
from gptkit.finetune.job import FinetuneArgs, finetune_train_defaults, run_finetune, say
from gptkit.finetune.moderation import ModerationSpec
from gptkit.finetune.spec import load_finetuned, predict_labels

CHARS_PER_TOKEN = 3.0
"""Chunks of long text for the classifier: this many characters per token of its context (English BPE text runs
about 4; fewer keeps a chunk inside the context)."""


@dataclass
class ModeratorTrainArgs:
    """Train the learned half of the moderator on the bundled moderation data."""

    checkpoint: Path
    """The base checkpoint (or run directory) to fine-tune, e.g. out/pretrain/base-mix."""
    out: Path = Path("out/moderation")
    """Run directory: data/, best/ (the moderator: finetune.json, moderation.json, ...), last/, report.json."""
    method: Literal["full", "lora", "adapter", "adalora", "freeze"] = "full"
    max_iters: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    eval_interval: int = 100
    pooling: Literal["last", "mean"] = "last"
    model_dropout: float | None = 0.1
    lm_weight: float = 0.0
    """Weight of GPT-1's auxiliary next-token loss on the training texts (0: off)."""
    text_style: str = "english_mix_blind"
    """How texts are written for the classifier: english_mix (lower case, punctuation spaced: the style of the
    bundled english_mix corpus the configs/base-mix.yaml base is pretrained on), english_mix_blind (the same with
    the words naming religions, ethnicities, orientations hidden: `moderation_data.identity_blind`) or raw."""
    max_fpr: float = 0.02
    """The threshold flags at most this share of the benign validation rows."""
    seed: int = 0
    """Seed of the data split and of training."""
    overwrite: bool = False
    quiet: bool = False


def train_moderator(args: ModeratorTrainArgs) -> dict[str, Any]:
    """Fine-tune, calibrate and test a learned moderator; returns the summary written to OUT/report.json."""
    require(args.text_style in TEXT_STYLES,
            f"--text-style must be one of {sorted(TEXT_STYLES)}, got {args.text_style!r}")
    base = resolve_checkpoint(args.checkpoint)
    paths = write_moderation_splits(args.out / "data", seed=args.seed, style=args.text_style)
    finetune = FinetuneArgs(
        checkpoint=base, data=str(paths["train"]), val_data=str(paths["val"]), test_data=str(paths["test"]),
        out=args.out, task="classify", peft=PeftConfig(method=args.method), pooling=args.pooling,
        model_dropout=args.model_dropout, lm_weight=args.lm_weight, split_seed=args.seed, overwrite=args.overwrite,
        quiet=args.quiet,
        train=dataclasses.replace(finetune_train_defaults(), max_iters=args.max_iters, batch_size=args.batch_size,
                                  learning_rate=args.learning_rate,
                                  eval_interval=min(args.eval_interval, args.max_iters), seed=args.seed,
                                  warmup_iters=min(20, max(1, args.max_iters // 10))))
    summary = run_finetune(finetune)
    best = args.out / "best"
    model, tokenizer = load_finetuned(best)
    labels = list(model.spec.labels or [])
    require(BENIGN_LABEL in labels, f"the training data has no {BENIGN_LABEL!r} rows")
    benign = labels.index(BENIGN_LABEL)

    def offensive_scores(path: Path) -> tuple[list[float], list[bool]]:
        data = read_labelled(path)
        probs = predict_labels(model, tokenizer, list(data.texts))
        return (1 - probs[:, benign]).tolist(), [label != BENIGN_LABEL for label in data.row_labels]

    val_scores, val_positive = offensive_scores(paths["val"])
    threshold, val_report = calibrate_threshold(val_scores, val_positive, max_fpr=args.max_fpr)
    threshold = min(max(threshold, 1e-6), 1.0)
    block = ModelConfig.load(best / CONFIG_FILE).block_size
    spec = ModerationSpec(threshold=threshold, text_style=args.text_style, chunk_chars=int(block * CHARS_PER_TOKEN),
                          calibration={"rule": f"best validation F1 flagging at most {args.max_fpr:g} of benign rows",
                                       "validation": val_report})
    spec.save(best)
    test_scores, test_positive = offensive_scores(paths["test"])
    test_report = flag_report(test_scores, test_positive, threshold)
    summary["moderation"] = {"threshold": threshold, "validation": val_report, "test": test_report,
                             "sources": json.loads((args.out / "data" / "sources.json").read_text())}
    (args.out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.quiet:
        say(f"moderator: threshold {threshold:.3f} (validation F1 {val_report['f1']:.3f} at false-positive rate "
            f"{val_report['fpr']:.3f}); test precision {test_report['precision']:.3f}, recall "
            f"{test_report['recall']:.3f}, F1 {test_report['f1']:.3f}, ROC-AUC {test_report['roc_auc']:.3f}")
    return summary
