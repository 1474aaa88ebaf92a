"""The `gptkit finetune` job: a base checkpoint + a method (`gptkit.adapt`) + a task, trained by the one loop; knows
nothing of the command line.

    gptkit finetune --checkpoint out/pretrain/tiny --task classify --method lora --data sentiment --out out/ft

Tasks: `classify` (a `SequenceClassifier` head; labelled CSV/TSV/JSONL split into stratified
train/val/test, best checkpoint by validation macro-F1, a classification report on the test split),
`sft` (chat/instruction tuning, loss on assistant tokens), `lm` (continued pretraining on text),
`multimodal` (an image encoder + projector on the GPT, early or cross fusion: `gptkit.finetune.multimodal`) and
`embed` (sentence embeddings: contrastive training on text pairs with in-batch negatives, best checkpoint by
validation MRR, retrieval on the validation pairs reported against the base model's own embeddings).
Methods: `full`, `lora`, `adapter`, `adalora`, `freeze` (see `gptkit.adapt.peft.PeftConfig`).

What the job writes is described by `gptkit.finetune.spec` (finetune.json and its loader); the splits
come from `gptkit.finetune.splits`. Knows nothing of the command line: `FinetuneArgs` is a plain
dataclass that the CLI turns into flags.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from gptkit.adapt.adalora import AdaLoRAAllocator, peft_loss_terms
from gptkit.adapt.peft import PeftConfig, apply_peft, trainable_parameters
from gptkit.checkpoint import TOKENIZER_FILE, resolve_checkpoint, save_checkpoint
from gptkit.config import ModelConfig
from gptkit.data.labelled import LabelledData, encode_for_classification, subsample_stratified
from gptkit.data.prepare import resolve_dataset
from gptkit.errors import require
from gptkit.evaluation.classification import classification_report, format_classification_report
from gptkit.data.moderation_data import text_style
from gptkit.data.multimodal import data_modality, multimodal_splits
from gptkit.data.pairs import read_pairs, split_pairs
from gptkit.finetune.multimodal import build_multimodal, load_multimodal, media_shape
from gptkit.finetune.spec import FineTuned, FinetuneSpec, TaskName, load_finetuned, load_language_model, predict_labels
from gptkit.finetune.splits import SplitData, chat_splits, classification_splits
from gptkit.models.gpt import GPT, CausalSelfAttention
from gptkit.models.heads import SentenceEmbedder
from gptkit.tokenizer import Tokenizer
from gptkit.training.loop import TrainConfig, train
from gptkit.models.audio import AudioConfig
from gptkit.models.multimodal import MultimodalConfig
from gptkit.models.projector import ProjectorConfig
from gptkit.models.vision import VisionConfig
from gptkit.training.tasks import (AdversarialConfig, CausalLMTask, ClassificationTask, ContrastiveTask,
                                   MultimodalTask, SFTTask, with_adversarial)
from gptkit.training.tasks.multimodal import answer_classes, answer_scores

# ------------------------------------------------------------------------------------------------
# tasks around the loop


class PeftLoss:
    """A task whose loss also carries the method's own terms (AdaLoRA's orthogonality penalty)."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.task.loss(model, batch) + peft_loss_terms(model)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe_trainable(model: nn.Module) -> str:
    trainable, total = trainable_parameters(model)
    return f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%)"


def build_model(base_gpt: GPT, spec: FinetuneSpec, peft: PeftConfig, seed: int) -> FineTuned:
    """Apply the method to the base and put the task's head on it.

    The new weights (LoRA's A, adapters, the head) are drawn from `seed`, so a run and its resumption
    build the same model before the checkpoint's tensors are loaded into it.
    """
    torch.manual_seed(seed)
    apply_peft(base_gpt, peft)
    model = FineTuned(base_gpt, spec)
    if model.classifier is not None:  # the head is new: always trained
        model.classifier.head.requires_grad_(True)
    return model


def set_dropout(gpt: GPT, p: float) -> None:
    """Train with dropout p on embeddings, attention weights and residual branches, whatever the base used.

    Pretraining on plenty of text needs none; fine-tuning on a few thousand rows overfits without it
    (GPT-1 fine-tuned with 0.1). Inference is unaffected: dropout is off in eval mode.
    """
    gpt.config.dropout = p
    for module in gpt.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        elif isinstance(module, CausalSelfAttention):
            module.dropout = p


def hooks_for(model: FineTuned, peft: PeftConfig, total_steps: int) -> list[Any]:
    return [AdaLoRAAllocator(model.gpt, total_steps)] if peft.method == "adalora" else []


# ------------------------------------------------------------------------------------------------
# the job


def finetune_train_defaults() -> TrainConfig:
    # Fine-tuning starts from trained weights: fewer, gentler steps than pretraining, and frequent
    # validation so the best checkpoint is caught before over-fitting a small labelled set.
    return TrainConfig(max_iters=300, batch_size=16, learning_rate=1e-3, warmup_iters=20, eval_interval=50,
                       weight_decay=0.0)


@dataclass
class FinetuneArgs:
    """Fine-tune a checkpoint (classification head, chat/instruction tuning, more LM, images/audio, sentence embeddings)
    with full, LoRA, adapters, AdaLoRA or freeze."""

    checkpoint: Path
    """The base: a checkpoint or run directory (its best checkpoint)."""
    data: str
    """classify: a CSV/TSV/JSONL file with text and label columns, or a bundled set (sentiment, fortunes8).
    sft: a JSONL file of {"messages": [...]} or {"prompt", "response"} rows, or a bundled set (chatterbot, jargon).
    lm: text files/directories/.jsonl (prepared with the base's tokenizer into OUT/data).
    multimodal: mnist (bundled digits), moving-mnist (clips of a drifting digit; answer: its direction) or a
    JSONL file of {"image" | "audio" | "video": path, "prompt": ..., "answer": ...} (the field sets the modality).
    embed: a JSONL file of {"query": ..., "positive": ...} pairs (or question/answer, term/definition, anchor/positive,
    text_a/text_b; or chat rows: each user turn and the reply), or a bundled set (jargon: a question naming a term ->
    its definition; chatterbot: question -> answer)."""
    out: Path = Path("out/finetune")
    """Run directory: best/ and last/ checkpoints, logs, report.json."""
    config: Path | None = None
    """YAML recipe whose keys are these flags' names (training and method keys at the top level, or
    under train: and peft:). Precedence: defaults < recipe < flags."""
    task: TaskName = "classify"
    # The method's and the loop's settings; the CLI gives them flags without a prefix (--method, --max-iters).
    peft: PeftConfig = field(default_factory=PeftConfig)
    train: TrainConfig = field(default_factory=finetune_train_defaults)
    adv: AdversarialConfig = field(default_factory=AdversarialConfig)
    """Adversarial training on the input embeddings (--adversarial fgm|pgd|freelb, --adv-epsilon, ...):
    classify, sft and lm."""
    text_column: str = "text"
    """classify: the column (CSV/TSV header or JSON key) holding the text."""
    label_column: str = "label"
    """classify: the column holding the label."""
    pooling: Literal["last", "mean"] | None = None
    """classify: which hidden states feed the head: the last token's (the default), or the mean over tokens.
    embed: which pooled state is the embedding (default: mean)."""
    max_length: int | None = None
    """classify and embed: tokens kept per text (default: the model's context length)."""
    temperature: float = 0.05
    """embed: temperature of the contrastive loss's cosine logits (SimCSE's 0.05)."""
    text_style: Literal["raw", "english_mix"] = "raw"
    """embed: how texts are written before tokenising, in training and whenever the model embeds (recorded in the
    checkpoint): as given (raw), or as the bundled base corpus is (english_mix: lower case, punctuation spaced)."""
    lm_weight: float = 0.0
    """classify: weight of an auxiliary language-modelling loss on the training texts (GPT-1 used 0.5); 0 turns it off."""
    model_dropout: float | None = None
    """Dropout in the model while fine-tuning (embeddings, attention, residual branches); default: the base's own.
    (--dropout is LoRA's dropout on its input.)"""
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    """classify: share of rows held out for testing (sft and lm have no test split)."""
    val_data: str | None = None
    """classify: a labelled file to validate on, instead of splitting --val-fraction off --data."""
    test_data: str | None = None
    """classify: a labelled file to test on, instead of splitting --test-fraction off --data."""
    split_seed: int = 0
    """Seed of the train/val/test split (kept apart from --seed, so runs with other seeds share one split)."""
    chat_template: Literal["tokens", "plain"] = "tokens"
    """sft: role-token template (gptkit tokenizers) or plain text "User: ...\\nAssistant: ..." (any tokenizer)."""
    fusion: Literal["early", "cross", "late"] = "early"
    """multimodal: media tokens in the input sequence (early), gated cross-attention between the blocks (cross),
    or text and media encoded apart and joined at a classification head over the distinct answers (late)."""
    vision: Literal["cnn", "vit", "pretrained"] = "cnn"
    """multimodal: the image encoder: a small CNN or a ViT of 7x7-pixel patches (trained from scratch), or a
    pretrained tower read from --vision-tower."""
    vision_tower: Path | None = None
    """multimodal, --vision pretrained: a local directory holding a transformers CLIP/SigLIP vision model (or a
    timm ViT); its image size and width are the tower's. Never downloaded."""
    image_size: int = 28
    """multimodal: images are resized to this square size."""
    image_channels: Literal[1, 3] = 1
    """multimodal: 1 (grey) or 3 (RGB)."""
    frames: int = 4
    """multimodal, video: frames sampled from each clip."""
    clip_seconds: float = 2.0
    """multimodal, audio: every clip is padded with silence or cut to this length."""
    media_reduction: Literal["none", "pool", "shuffle"] = "none"
    """multimodal: merge the encoder's tokens in blocks of --media-factor (per side for images) before the
    projector: fewer media tokens in the context."""
    media_factor: int = 2
    freeze_lm: bool = False
    """multimodal: keep the language model's weights; train the encoder, the projector (and the cross-attention)."""
    freeze_encoder: bool = False
    """multimodal: keep the image or audio encoder's weights (a pretrained tower, say); train the rest."""
    self_train: bool = False
    """classify: keep only --labelled-fraction of the training labels, train, pseudo-label the rest with
    confidence >= --confidence, retrain on both; reports both runs on the same test split."""
    labelled_fraction: float = 0.05
    confidence: float = 0.9
    merge: bool = False
    """lm/sft with lora or adalora: also write OUT/merged, a standalone checkpoint with the update folded in."""
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    """No progress bar."""


def _check_out(args: FinetuneArgs) -> None:
    existing = [p for p in (args.out / "last", args.out / "best") if p.exists()]
    if args.resume:
        require(existing, f"nothing to resume: {args.out} has no last/ checkpoint (drop --resume)")
    else:
        require(not existing or args.overwrite, f"{args.out} already holds a run; pass --resume to continue it, "
                                                "--overwrite to start afresh, or choose another --out")


def _validate(args: FinetuneArgs) -> None:
    args.peft.validate()
    args.train.validate()
    args.adv.validate(compile=args.train.compile)
    require(args.task in ("classify", "sft", "lm", "multimodal", "embed"),
            f"--task must be classify, sft, lm, multimodal or embed, got {args.task!r}")
    require(not args.adv.enabled or args.task not in ("multimodal", "embed"),
            "--adversarial applies to --task classify, sft and lm (multimodal embeddings bypass the token embedding)")
    require(math.isfinite(args.temperature) and args.temperature > 0,
            f"--temperature must be a positive number, got {args.temperature}")
    require(args.task != "embed" or args.train.batch_size >= 2,
            "--task embed needs --batch-size of at least 2 (the other rows of a batch are the negatives)")
    require(not args.freeze_lm or (args.task == "multimodal" and args.peft.method == "full"),
            "--freeze-lm applies to --task multimodal with --method full (it keeps every weight of the language "
            "model; --method lora instead trains low-rank updates on it)")
    require(0 < args.labelled_fraction < 1, f"--labelled-fraction must be in (0, 1), got {args.labelled_fraction}")
    require(0 < args.confidence <= 1, f"--confidence must be in (0, 1], got {args.confidence}")
    require(math.isfinite(args.lm_weight) and args.lm_weight >= 0,
            f"--lm-weight must be a finite number >= 0, got {args.lm_weight}")
    require(not args.lm_weight or args.task == "classify", "--lm-weight applies to --task classify only")
    require(args.model_dropout is None or 0.0 <= args.model_dropout < 1.0,
            f"--model-dropout must be in [0, 1), got {args.model_dropout}")
    require(not args.self_train or args.task == "classify", "--self-train applies to --task classify only")
    require(not args.merge or args.task not in ("classify", "embed"),
            f"--merge writes a language model; it does not apply to --task {args.task} (its checkpoint already loads "
            "as one piece)")
    require(not args.merge or args.peft.method != "adapter",
            "--merge: adapters cannot be merged into the weights (they are nonlinear)")


def run_finetune(args: FinetuneArgs) -> dict[str, Any]:
    """The `gptkit finetune` job; returns a summary (also written to OUT/report.json)."""
    _validate(args)
    _check_out(args)
    base_dir = resolve_checkpoint(args.checkpoint).resolve()
    _, tokenizer = load_language_model(base_dir)
    if args.task == "classify":
        splits = classification_splits(args.data, text_column=args.text_column, label_column=args.label_column,
                                       val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                                       seed=args.split_seed, val_data=args.val_data, test_data=args.test_data)
        summary = self_train(args, base_dir, tokenizer, splits) if args.self_train else \
            {"run": train_classifier(args, base_dir, tokenizer, splits.train, splits.val, splits.test, args.out)}
    elif args.task == "multimodal":
        summary = {"run": train_multimodal(args, base_dir, tokenizer)}
    elif args.task == "embed":
        summary = {"run": train_embedder(args, base_dir, tokenizer)}
    else:
        summary = {"run": train_language_model(args, base_dir, tokenizer)}
    (args.out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _spec(args: FinetuneArgs, base_dir: Path, labels: list[str] | None) -> FinetuneSpec:
    pooling = args.pooling or ("mean" if args.task == "embed" else "last")
    return FinetuneSpec(task=args.task, method=args.peft.method, base=str(base_dir), labels=labels,
                        pooling=pooling, max_length=args.max_length,
                        text_style=args.text_style if args.task == "embed" else "raw")


def _train(args: FinetuneArgs, base_dir: Path, tokenizer: Tokenizer, spec: FinetuneSpec, task: Any,
           run_dir: Path, resume: bool) -> tuple[Any, tuple[int, int]]:
    """Train; returns the loop's result and the (trainable, total) parameter counts."""
    if resume:
        saved = FinetuneSpec.load(run_dir / "last")
        require(asdict(saved) == asdict(spec), f"{run_dir / 'last'} was fine-tuned with other settings "
                                               f"({asdict(saved)}); resume with the same flags")
    gpt, _ = load_language_model(base_dir)
    if args.model_dropout is not None:
        set_dropout(gpt, args.model_dropout)
    model = build_model(gpt, spec, args.peft, args.train.seed)
    if not args.quiet:
        say(f"fine-tuning {base_dir} ({args.task}, {args.peft.method}): {describe_trainable(model)}")
    counts = trainable_parameters(model)
    # The method's own loss terms (PeftLoss) go on the outside: counted once, not once per perturbed pass.
    task = PeftLoss(with_adversarial(task, args.adv, args.train.seed))
    result = train(model, task, args.train, tokenizer=tokenizer, run_dir=run_dir, resume=resume,
                   quiet=args.quiet, hooks=hooks_for(model, args.peft, args.train.max_iters),
                   extra_config={"finetune": asdict(spec), "peft": args.peft.to_dict(), "data": args.data,
                                 **({"adversarial": args.adv.to_dict()} if args.adv.enabled else {})})
    return result, counts


def train_classifier(args: FinetuneArgs, base_dir: Path, tokenizer: Tokenizer, train_data: Any, val_data: Any,
                     test_data: Any, run_dir: Path, resume: bool | None = None) -> dict[str, Any]:
    """Train a classifier on `train_data`, keep the best by validation macro-F1, report on `test_data`."""
    spec = _spec(args, base_dir, list(train_data.labels))
    max_length = args.max_length or _base_block_size(base_dir)
    task = ClassificationTask(
        train_rows=encode_for_classification(tokenizer, train_data.texts, max_length),
        train_labels=list(train_data.label_ids),
        val_rows=encode_for_classification(tokenizer, val_data.texts, max_length),
        val_labels=list(val_data.label_ids), labels=list(train_data.labels),
        batch_size=args.train.batch_size, seed=args.train.seed, lm_weight=args.lm_weight)
    result, (trainable, total) = _train(args, base_dir, tokenizer, spec, task, run_dir,
                                        args.resume if resume is None else resume)
    model, _ = load_finetuned(run_dir / "best")
    probs = predict_labels(model, tokenizer, list(test_data.texts))
    report = classification_report(list(test_data.label_ids), probs.argmax(-1).tolist(), list(train_data.labels))
    if not args.quiet:
        say(f"test split ({len(test_data)} rows), best checkpoint {run_dir / 'best'}:")
        say(format_classification_report(report))
    return {"method": args.peft.method, "train_rows": len(train_data), "steps": result.step,
            "best_val_macro_f1": result.best_value, "trainable_parameters": trainable,
            "total_parameters": total, "test": report}


def _base_block_size(base_dir: Path) -> int:
    return ModelConfig.load(base_dir / "config.json").block_size


def self_train(args: FinetuneArgs, base_dir: Path, tokenizer: Tokenizer, splits: SplitData) -> dict[str, Any]:
    """Few labels → classifier → pseudo-labels for the confident part of the pool → retrain on both."""
    few, pool = subsample_stratified(splits.train, args.labelled_fraction, seed=args.split_seed)
    say(f"self-training: {len(few)} labelled rows ({args.labelled_fraction:.0%}), {len(pool)} unlabelled")
    baseline = train_classifier(args, base_dir, tokenizer, few, splits.val, splits.test, args.out / "baseline")
    model, _ = load_finetuned(args.out / "baseline" / "best")
    probs = predict_labels(model, tokenizer, list(pool.texts))
    confidence, predicted = probs.max(-1)
    keep = (confidence >= args.confidence).nonzero().flatten().tolist()
    pseudo = LabelledData([pool.texts[i] for i in keep], [few.labels[int(predicted[i])] for i in keep],
                          list(few.labels), "pseudo-labels")
    correct = sum(pseudo.row_labels[j] == pool.row_labels[i] for j, i in enumerate(keep))
    say(f"pseudo-labelled {len(keep)} of {len(pool)} pool rows with confidence >= {args.confidence} "
        f"({correct / max(len(keep), 1):.1%} of them correct)")
    combined = LabelledData(few.texts + pseudo.texts, few.row_labels + pseudo.row_labels, list(few.labels),
                            "labelled + pseudo-labelled")
    final = train_classifier(args, base_dir, tokenizer, combined, splits.val, splits.test, args.out,
                             resume=False)
    gain = final["test"]["accuracy"] - baseline["test"]["accuracy"]
    say(f"self-training: test accuracy {baseline['test']['accuracy']:.4f} with {len(few)} labels -> "
        f"{final['test']['accuracy']:.4f} with {len(pseudo)} pseudo-labels added ({gain:+.4f})")
    return {"baseline": baseline, "self_trained": final, "pseudo_labelled": len(keep),
            "pseudo_label_accuracy": correct / max(len(keep), 1), "pool": len(pool)}


def train_language_model(args: FinetuneArgs, base_dir: Path, tokenizer: Tokenizer) -> dict[str, Any]:
    block_size = _base_block_size(base_dir)
    if args.task == "sft":
        splits = chat_splits(args.data, tokenizer, val_fraction=args.val_fraction, seed=args.split_seed,
                             template=args.chat_template)
        task: Any = SFTTask(splits.train, splits.val, block_size=block_size, batch_size=args.train.batch_size,
                            pad_id=tokenizer.eos_id or 0, seed=args.train.seed)
    else:
        dataset = resolve_dataset(args.data, args.out / "data", tokenizer=str(base_dir / TOKENIZER_FILE),
                                  vocab_size=tokenizer.vocab_size)
        task = CausalLMTask(dataset, block_size=block_size, batch_size=args.train.batch_size, seed=args.train.seed,
                            eval_iters=args.train.eval_iters)
    spec = _spec(args, base_dir, None)
    result, (trainable, total) = _train(args, base_dir, tokenizer, spec, task, args.out, args.resume)
    summary = {"method": args.peft.method, "steps": result.step, "final": result.final_metrics,
               "best_val_loss": result.best_value, "trainable_parameters": trainable, "total_parameters": total}
    if args.merge:
        model, _ = load_finetuned(args.out / "best", merge=True)
        merged = save_checkpoint(args.out / "merged", model.gpt, tokenizer)
        summary["merged"] = str(merged)
        if not args.quiet:
            say(f"merged checkpoint (standalone, exportable with `gptkit convert --to-hf`): {merged}")
    return summary


def train_embedder(args: FinetuneArgs, base_dir: Path, tokenizer: Tokenizer) -> dict[str, Any]:
    """Contrastive training on text pairs; reports retrieval on the validation pairs, before (the base model's own
    mean-pooled embeddings: the control) and after."""
    spec = _spec(args, base_dir, None)
    train_pairs, val_pairs = split_pairs(read_pairs(args.data, seed=args.split_seed), val_fraction=args.val_fraction,
                                         seed=args.split_seed)
    max_length = args.max_length or _base_block_size(base_dir)
    restyle = text_style(spec.text_style)

    def rows(texts: list[str]) -> list[list[int]]:
        return encode_for_classification(tokenizer, [restyle(t) for t in texts], max_length)

    task = ContrastiveTask(rows(train_pairs.queries), rows(train_pairs.positives), rows(val_pairs.queries),
                           rows(val_pairs.positives), batch_size=args.train.batch_size, temperature=args.temperature,
                           seed=args.train.seed)
    base_gpt, _ = load_language_model(base_dir)
    before = task.evaluate(SentenceEmbedder(base_gpt, spec.pooling), torch.device("cpu"), full=True)  # type: ignore[arg-type]
    if not args.quiet:
        say(f"embedding pairs: {len(train_pairs)} train, {len(val_pairs)} validation ({train_pairs.source}); the base "
            f"model retrieves {before['val_recall_at_1']:.1%} of validation positives at rank 1 (MRR "
            f"{before['val_mrr']:.3f})")
    result, (trainable, total) = _train(args, base_dir, tokenizer, spec, task, args.out, args.resume)
    best, _ = load_finetuned(args.out / "best")
    after = task.evaluate(best.body, torch.device("cpu"), full=True)
    if not args.quiet:
        say(f"validation retrieval, best checkpoint {args.out / 'best'}: recall@1 {after['val_recall_at_1']:.1%}, "
            f"recall@5 {after['val_recall_at_5']:.1%}, MRR {after['val_mrr']:.3f} (base: "
            f"{before['val_recall_at_1']:.1%}, {before['val_recall_at_5']:.1%}, {before['val_mrr']:.3f})")
    return {"method": args.peft.method, "steps": result.step, "train_pairs": len(train_pairs),
            "val_pairs": len(val_pairs), "best_val_mrr": result.best_value, "base": before, "final": after,
            "trainable_parameters": trainable, "total_parameters": total}


def train_multimodal(args: FinetuneArgs, base_dir: Path, tokenizer: Tokenizer) -> dict[str, Any]:
    """An image encoder and a projector on the base GPT (early or cross fusion), trained on image -> answer
    examples; reports test accuracy of greedy answers, and the same with the images zeroed (a blind control)."""
    gpt, _ = load_language_model(base_dir)
    if args.model_dropout is not None:
        set_dropout(gpt, args.model_dropout)
    heads = next(h for h in (gpt.config.n_head, 4, 2, 1) if gpt.config.n_embd % h == 0)
    width = gpt.config.n_embd
    modality = data_modality(args.data)
    if args.vision == "pretrained":
        require(args.vision_tower is not None, "--vision pretrained needs --vision-tower DIR (a local CLIP/SigLIP "
                                               "vision model or timm ViT directory)")
        vision = VisionConfig.from_pretrained(args.vision_tower)
    else:
        vision = VisionConfig(kind=args.vision, image_size=args.image_size, channels=args.image_channels,
                              n_embd=width, n_head=heads, n_layer=1)
    config = MultimodalConfig(fusion=args.fusion, modality=modality, vision=vision,
                              audio=AudioConfig(n_embd=width, n_layer=2, n_head=heads),
                              projector=ProjectorConfig(args.media_reduction, args.media_factor),
                              frames=args.frames if modality == "video" else 1, clip_seconds=args.clip_seconds)
    media_tokens = config.media_tokens if args.fusion == "early" else 0  # cross and late: the text alone
    train_set, val_set, test_set = multimodal_splits(args.data, tokenizer, media_tokens, media_shape(config),
                                                     val_fraction=args.val_fraction,
                                                     test_fraction=args.test_fraction, seed=args.split_seed)
    classes = answer_classes(train_set) if args.fusion == "late" else None
    if classes is not None:  # late fusion: every distinct answer is a class of its head
        config.labels = [tokenizer.decode(list(c)) for c in classes]
    config.validate()
    require(media_tokens < gpt.config.block_size,
            f"one {modality} item becomes {media_tokens} tokens but the model's context length is "
            f"{gpt.config.block_size}: use --media-reduction pool, fewer --frames, or a shorter --clip-seconds")
    torch.manual_seed(args.train.seed)  # the new weights: the same for a run and its resumption
    model = build_multimodal(gpt, config, args.peft)
    if args.vision == "pretrained" and not args.resume:
        model.vision.load_pretrained_weights()
    if args.freeze_lm:  # what stays trainable in the GPT is the cross-attention added to it
        for name, parameter in model.gpt.named_parameters():
            parameter.requires_grad_(".xattn." in name)
    if args.freeze_encoder:
        for parameter in (model.audio if modality == "audio" else model.vision).parameters():
            parameter.requires_grad_(False)
    trainable, total = trainable_parameters(model)
    if not args.quiet:
        encoder = "audio" if modality == "audio" else args.vision
        say(f"multimodal fine-tuning of {base_dir} ({modality}, {args.fusion} fusion, {encoder} encoder, "
            f"{config.media_tokens} tokens per item): {describe_trainable(model)}")
    pad_id = tokenizer.eos_id or 0
    task = MultimodalTask(train_set, val_set, batch_size=args.train.batch_size, pad_id=pad_id, seed=args.train.seed,
                          classes=classes)
    result = train(model, task, args.train, tokenizer=tokenizer, run_dir=args.out, resume=args.resume,
                   quiet=args.quiet, extra_config={"multimodal": config.to_dict(), "data": args.data})
    best, _ = load_multimodal(args.out / "best")
    _, correct = answer_scores(best, test_set, pad_id=pad_id, classes=classes)
    blind = test_set.with_media(np.zeros_like(test_set.media))
    _, blind_correct = answer_scores(best, blind, pad_id=pad_id, classes=classes)
    return {"fusion": args.fusion, "steps": result.step, "best_val_accuracy": result.best_value,
            "test_rows": len(test_set), "test_accuracy": sum(correct) / len(correct),
            "test_accuracy_media_zeroed": sum(blind_correct) / len(blind_correct), "modality": modality,
            "trainable_parameters": trainable, "total_parameters": total}
