"""Fine-tuning quality on the bundled sentiment set: gptkit's methods beside a TF-IDF baseline.

Every row is scored on the same test split: the 4,000 bundled movie-review sentences
(`bundled_labelled("sentiment")`) cut by `gptkit.finetune.classification_splits(..., val_fraction=0.1,
test_fraction=0.1, seed=0)`, the split `gptkit finetune --data sentiment` makes (3,200 train / 400
validation / 400 test, both labels balanced). Nothing is tuned on the test split: every choice
(TF-IDF's C, the checkpoint each fine-tuning run keeps, the hyperparameters below) was made on the
validation split.

Rows:
  tf-idf + logreg       scikit-learn TfidfVectorizer + LogisticRegression, fit on train, C and the n-gram
                        range picked by validation macro-F1 from a small grid
  full, lora, adapter,  `gptkit.finetune.job.run_finetune` on the base checkpoint (settings per method in
  adalora, freeze       METHOD_SETTINGS below; a classification head is always trained and counted)
  zero-shot / 8-shot    `gptkit.prompting.PromptClassifier` on the base (no training), with and without
                        "Calibrate Before Use" calibration
  5% labels /           `run_finetune(self_train=True, labelled_fraction=0.05)`: a full fine-tune on 160
  + self-training       labelled rows, then pseudo-labels for the confident part of the other 3,040
                        training rows, and a second fine-tune on both (tf-idf on the same 160 rows for scale)

The base model. Without --base the script pretrains one with `gptkit pretrain --config
configs/base-mix.yaml` (the bundled `english_mix` corpus, 8.7 MB: Austen, fortune cookies, the Jargon
File and the King James Bible, lower-cased and punctuation-spaced like the review sentences; 4 layers x
192, BPE 4,096, 2,000 steps: ~6 minutes on 2 cores) and caches it in OUT/finetune_base, reused while the
recipe file and the corpus are unchanged. Any other base: --base DIR (e.g. out/pretrain/tiny, the Shakespeare-only default).

    python benchmarks/finetune_quality.py                          # everything (~25 min + pretraining once)
    python benchmarks/finetune_quality.py --quick                  # smoke run: tiny base, few steps (~1 min)
    python benchmarks/finetune_quality.py --seeds 1                # one fine-tuning run per method (~9 min)
    python benchmarks/finetune_quality.py --methods tfidf,full,lora --base out/pretrain/tiny
    python benchmarks/finetune_quality.py --max-iters 200          # every fine-tuning run capped at 200 steps

Quality targets checked at the end (PASS/FAIL lines):
  - LoRA within 2 points (test accuracy) of full fine-tuning, with < 2% of the parameters trainable
  - fine-tuned gptkit >= the TF-IDF baseline on test accuracy (the gptkit method is the one with the best
    validation macro-F1 among the fine-tuning rows, so the comparison does not pick on test)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, print_machine_info, print_table  # noqa: E402

from gptkit.data.labelled import LabelledData, subsample_stratified  # noqa: E402
from gptkit.finetune.job import FinetuneArgs, run_finetune
from gptkit.finetune.splits import SplitData, classification_splits
from gptkit.adapt.peft import PeftConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BASE_RECIPE = REPO / "configs" / "base-mix.yaml"
SPLIT = dict(val_fraction=0.1, test_fraction=0.1, seed=0)  # gptkit finetune's defaults
FINETUNE_METHODS = ("full", "lora", "adapter", "adalora", "freeze")
ALL_ROWS = ("tfidf", *FINETUNE_METHODS, "prompt", "selftrain")

# Fine-tuning settings per method, chosen on the validation split (test figures: README, Benchmarks).
# Keys: `peft` -> PeftConfig fields, `train` -> TrainConfig fields, and the FinetuneArgs fields `pooling` /
# `max_length`. The rest is `gptkit finetune`'s default: AdamW, batch 16, 20 warmup steps, cosine decay to
# lr/10, gradient clipping 1.0, no weight decay; the checkpoint kept is the one with the best validation
# macro-F1. One learning rate covers the method's parameters and the new classification head, which is why
# LoRA's stays at 3e-3 (1e-2 made the head diverge) and LoRA scales its updates with alpha/rank instead.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "full": dict(peft=dict(method="full"), pooling="last",
                 train=dict(learning_rate=1e-3, max_iters=1000, eval_interval=50)),
    "lora": dict(peft=dict(method="lora", rank=4, alpha=8.0, targets=["q", "v", "o", "mlp"]), pooling="mean",
                 train=dict(learning_rate=3e-3, max_iters=1500, eval_interval=100)),
    "adapter": dict(peft=dict(method="adapter", adapter_size=16), pooling="mean",
                    train=dict(learning_rate=3e-3, max_iters=1000, eval_interval=100)),
    "adalora": dict(peft=dict(method="adalora", init_rank=6, target_rank=4, alpha=8.0, targets=["q", "v", "o", "mlp"]),
                    pooling="mean", train=dict(learning_rate=3e-3, max_iters=1000, eval_interval=100)),
    "freeze": dict(peft=dict(method="freeze", train_top_blocks=1, train_norms=True), pooling="mean",
                   train=dict(learning_rate=1e-3, max_iters=600, eval_interval=50)),
}
COMMON_TRAIN = dict(batch_size=16, warmup_iters=20, weight_decay=0.0)
MODEL_DROPOUT = 0.1  # --model-dropout for every fine-tune: +2.5 points of validation accuracy for full (GPT-1 used 0.1)
ADALORA_SCHEDULE = (0.1, 0.2)  # AdaLoRA: tinit and tfinal as shares of the steps (prune in between)
SELF_TRAIN = dict(method="full", labelled_fraction=0.05, confidence=0.9, max_iters=300)

# Prompting: the corpus and the reviews are lower-case, so is the prompt.
PROMPT_TEMPLATE = dict(template="{text}\nin short , it was {label}",
                       label_words={"-1": " bad", "1": " good"})
SHOTS = 8
SHOT_MAX_CHARS = 80  # a 128-token context holds 8 short shots and the query; longer ones would be cut off


# ------------------------------------------------------------------------------------------------
# the base model


def recipe_digest(recipe: Path, overrides: list[str]) -> str:
    """The recipe, the overrides, the preset it builds on and the bundled corpus it trains on: a change to any
    retrains the base."""
    import yaml

    from gptkit.config import PRESETS
    from gptkit.data.prepare import bundled_corpora, bundled_corpus_path

    settings = yaml.safe_load(recipe.read_text())
    digest = hashlib.sha256(recipe.read_bytes() + json.dumps(overrides).encode())
    digest.update(json.dumps(PRESETS.get(settings.get("preset", "tiny"), {}), sort_keys=True).encode())
    data = settings.get("data")
    if data in bundled_corpora():
        digest.update(bundled_corpus_path(data).read_bytes())
    return digest.hexdigest()


def ensure_base(out: Path, quick: bool) -> Path:
    """Pretrain the base with `gptkit pretrain --config configs/base-mix.yaml` unless a matching one is cached."""
    overrides = ["--max-iters", "40", "--eval-interval", "20", "--model.n-layer", "2"] if quick else []
    run_dir = out / ("finetune_base_quick" if quick else "finetune_base")
    stamp = run_dir / "recipe.sha256"
    digest = recipe_digest(BASE_RECIPE, overrides)
    if (run_dir / "best").is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        print(f"base: reusing {run_dir} (pretrained with {BASE_RECIPE.relative_to(REPO)})")
        return run_dir
    command = [sys.executable, "-m", "gptkit", "pretrain", "--config", str(BASE_RECIPE), "--out", str(run_dir),
               "--overwrite", "--sample-tokens", "0", *overrides]
    print("base: pretraining:", " ".join(command[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    stamp.write_text(digest + "\n")
    (run_dir / "pretrain_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    print(f"base: pretrained in {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir


# ------------------------------------------------------------------------------------------------
# rows


@dataclasses.dataclass
class Row:
    method: str
    accuracy: float
    macro_f1: float
    trainable: int | None
    total: int | None
    seconds: float
    val_macro_f1: float | None = None
    note: str = ""

    def cells(self) -> list[Any]:
        pct = f"{100 * self.trainable / self.total:.2f}%" if self.trainable is not None and self.total else "-"
        return [self.method, f"{100 * self.accuracy:.2f}", f"{100 * self.macro_f1:.2f}",
                f"{self.trainable:,}" if self.trainable is not None else "-", pct, f"{self.seconds:.0f}", self.note]


def tfidf_row(train: LabelledData, val: LabelledData, test: LabelledData, name: str = "tf-idf + logreg") -> Row:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    t0 = time.perf_counter()
    best: tuple[float, Any, Any, str] | None = None
    for ngrams in ((1, 1), (1, 2)):
        vectorizer = TfidfVectorizer(ngram_range=ngrams, sublinear_tf=True)
        x_train, x_val = vectorizer.fit_transform(train.texts), None
        x_val = vectorizer.transform(val.texts)
        for c in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0):
            model = LogisticRegression(C=c, max_iter=5000).fit(x_train, train.label_ids)
            f1 = f1_score(val.label_ids, model.predict(x_val), average="macro")
            if best is None or f1 > best[0]:
                best = (f1, vectorizer, model, f"{ngrams[1]}-grams, C={c:g}")
    assert best is not None
    val_f1, vectorizer, model, chosen = best
    predicted = model.predict(vectorizer.transform(test.texts))
    params = model.coef_.size + model.intercept_.size
    return Row(name, accuracy_score(test.label_ids, predicted), f1_score(test.label_ids, predicted, average="macro"),
               params, params, time.perf_counter() - t0, val_f1, chosen)


def finetune_args(method: str, base: Path, out: Path, max_iters: int | None, quick: bool) -> FinetuneArgs:
    settings = copy.deepcopy(METHOD_SETTINGS[method])
    args = FinetuneArgs(checkpoint=base, data="sentiment", out=out, task="classify",
                        peft=PeftConfig(**settings["peft"]), pooling=settings.get("pooling", "last"),
                        max_length=settings.get("max_length"), model_dropout=MODEL_DROPOUT,
                        val_fraction=SPLIT["val_fraction"],
                        test_fraction=SPLIT["test_fraction"], split_seed=SPLIT["seed"], overwrite=True, quiet=True)
    train = {**COMMON_TRAIN, **settings["train"]}
    if max_iters is not None:
        train["max_iters"] = max_iters
    if quick:
        train.update(max_iters=20, eval_interval=10, warmup_iters=2)
    if method == "adalora":
        total = train["max_iters"]
        args.peft.tinit, args.peft.tfinal = (int(share * total) for share in ADALORA_SCHEDULE)
        args.peft.delta_t = max(1, min(args.peft.delta_t, total // 10))
    args.train = dataclasses.replace(args.train, **train)
    return args


def finetune_row(method: str, base: Path, out: Path, max_iters: int | None, quick: bool, seeds: list[int]) -> Row:
    """One fine-tuning method, trained once per seed (head init and batch order); medians over the seeds."""
    runs, seconds = [], []
    for seed in seeds:
        args = finetune_args(method, base, out / method / f"seed{seed}", max_iters, quick)
        args.train = dataclasses.replace(args.train, seed=seed)
        t0 = time.perf_counter()
        runs.append(run_finetune(args)["run"])
        seconds.append(time.perf_counter() - t0)
    accuracies = [r["test"]["accuracy"] for r in runs]
    note = f"lr {args.train.learning_rate:g}, {args.train.max_iters} steps, {args.pooling} pooling" + (
        f", {describe_peft(args.peft)}" if method != "full" else "")
    if len(seeds) > 1:
        note += "; acc by seed " + "/".join(f"{100 * a:.1f}" for a in accuracies)
    return Row(method, median([r["test"]["accuracy"] for r in runs]), median([r["test"]["macro avg"]["f1"] for r in runs]),
               runs[0]["trainable_parameters"], runs[0]["total_parameters"], median(seconds),
               median([r["best_val_macro_f1"] for r in runs]), note)


def describe_peft(peft: PeftConfig) -> str:
    if peft.method == "lora":
        return f"rank {peft.rank}, alpha {peft.alpha:g}, on {'+'.join(peft.targets)}"
    if peft.method == "adalora":
        return f"rank {peft.init_rank}->{peft.target_rank}, on {'+'.join(peft.targets)}"
    if peft.method == "adapter":
        return f"bottleneck {peft.adapter_size}"
    if peft.method == "freeze":
        return f"top {peft.train_top_blocks} block(s){' + norms' if peft.train_norms else ''}"
    return ""


def prompt_rows(base: Path, splits: SplitData, quick: bool) -> list[Row]:
    from gptkit.api import LLM
    from gptkit.prompting.classify import PromptClassifier, PromptTemplate, choose_examples

    llm = LLM.load(base)
    template = PromptTemplate(**PROMPT_TEMPLATE)
    short = splits.train.subset(i for i, t in enumerate(splits.train.texts) if len(t) <= SHOT_MAX_CHARS)
    shots = choose_examples(short, k=SHOTS, seed=0)
    test = splits.test.subset(range(0, len(splits.test), 10)) if quick else splits.test  # quick: every 10th row
    total = llm.model.num_parameters()
    rows = []
    for name, chosen in (("zero-shot", []), (f"{SHOTS}-shot", shots)):
        for calibrate in (False, True):
            classifier = PromptClassifier(llm, list(splits.train.labels), template, shots=chosen, calibrate=calibrate)
            t0 = time.perf_counter()
            report = classifier.evaluate(test)
            rows.append(Row(f"{name}{' calibrated' if calibrate else ''}", report["accuracy"],
                            report["macro avg"]["f1"], 0, total, time.perf_counter() - t0,
                            note="words " + "/".join(w.strip() for w in template.label_words.values())))
    return rows


def self_train_rows(base: Path, splits: SplitData, out: Path, max_iters: int | None, quick: bool) -> list[Row]:
    method = SELF_TRAIN["method"]
    args = finetune_args(method, base, out / "selftrain", max_iters, quick)
    args.self_train, args.labelled_fraction, args.confidence = True, SELF_TRAIN["labelled_fraction"], SELF_TRAIN["confidence"]
    if max_iters is None and not quick:
        args.train = dataclasses.replace(args.train, max_iters=SELF_TRAIN["max_iters"])
    t0 = time.perf_counter()
    summary = run_finetune(args)
    seconds = time.perf_counter() - t0
    few, _ = subsample_stratified(splits.train, args.labelled_fraction, seed=args.split_seed)
    pct = f"{args.labelled_fraction:.0%}"
    rows = []
    for key, name in (("baseline", f"{method}, {pct} labels"), ("self_trained", f"{method}, {pct} labels + self-training")):
        run = summary[key]
        note = f"{run['train_rows']:,} train rows, {run['steps']} steps"
        if key == "self_trained":
            note += (f" ({summary['pseudo_labelled']:,} pseudo-labels, "
                     f"{100 * summary['pseudo_label_accuracy']:.1f}% right)")
        rows.append(Row(name, run["test"]["accuracy"], run["test"]["macro avg"]["f1"], run["trainable_parameters"],
                        run["total_parameters"], seconds if key == "self_trained" else float("nan"),
                        run["best_val_macro_f1"], note))
    rows[0].seconds = rows[1].seconds  # one job trains both; the time is the whole job's
    rows.append(tfidf_row(few, splits.val, splits.test, f"tf-idf + logreg, {pct} labels"))
    return rows


# ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="base checkpoint or run directory (default: pretrain one with "
                                                   "configs/base-mix.yaml, cached in OUT/finetune_base)")
    parser.add_argument("--methods", default=",".join(ALL_ROWS),
                        help=f"comma-separated rows to run, from {', '.join(ALL_ROWS)}")
    parser.add_argument("--max-iters", type=int, help="cap every fine-tuning run at this many steps "
                                                      "(default: each method's own, see METHOD_SETTINGS)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a 40-step 2-layer base, 20-step fine-tunes")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="where the base and the runs go")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per method (training seeds 0..N-1); "
                                                             "the table shows medians")
    opts = parser.parse_args()
    chosen = opts.methods.split(",")
    unknown = sorted(set(chosen) - set(ALL_ROWS))
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; choose from {', '.join(ALL_ROWS)}")

    print_machine_info()
    splits = classification_splits("sentiment", text_column="text", label_column="label",
                                   val_fraction=SPLIT["val_fraction"], test_fraction=SPLIT["test_fraction"],
                                   seed=SPLIT["seed"])
    print(f"data: bundled sentiment, {len(splits.train):,} train / {len(splits.val):,} val / "
          f"{len(splits.test):,} test rows (classification_splits, seed {SPLIT['seed']})")
    needs_base = any(m in chosen for m in (*FINETUNE_METHODS, "prompt", "selftrain"))
    base = opts.base if opts.base is not None or not needs_base else ensure_base(opts.out, opts.quick)
    if base is not None:
        print(f"base: {base}")
    runs = opts.out / ("finetune_quality_quick" if opts.quick else "finetune_quality")
    seeds = list(range(1 if opts.quick else opts.seeds))
    started = time.perf_counter()
    rows: list[Row] = []
    for name in ALL_ROWS:
        if name not in chosen:
            continue
        print(f"running {name} ...", flush=True)
        if name == "tfidf":
            rows.append(tfidf_row(splits.train, splits.val, splits.test))
        elif name in FINETUNE_METHODS:
            rows.append(finetune_row(name, base, runs, opts.max_iters, opts.quick, seeds))
        elif name == "prompt":
            rows += prompt_rows(base, splits, opts.quick)
        elif name == "selftrain":
            rows += self_train_rows(base, splits, runs, opts.max_iters, opts.quick)
        print(f"  {rows[-1].method}: test accuracy {100 * rows[-1].accuracy:.2f}, "
              f"macro-F1 {100 * rows[-1].macro_f1:.2f} ({rows[-1].seconds:.0f} s)", flush=True)

    print(f"\ntest split: {len(splits.test)} sentences; base {base}; total {time.perf_counter() - started:.0f} s\n")
    print_table([r.cells() for r in rows],
                ["method", "test acc %", "macro-F1 %", "trainable params", "% of total", "wall s", "notes"])
    print()
    if opts.quick:
        print("(--quick: a 40-step base and 20-step fine-tunes, a smoke run; the figures mean nothing)")
    checks(rows)


def checks(rows: list[Row]) -> None:
    by_name = {r.method: r for r in rows}
    full, lora, tfidf = by_name.get("full"), by_name.get("lora"), by_name.get("tf-idf + logreg")
    if full and lora and lora.trainable is not None and lora.total:
        gap = 100 * (full.accuracy - lora.accuracy)
        share = 100 * lora.trainable / lora.total
        ok = gap <= 2.0 and share < 2.0
        print(f"{'PASS' if ok else 'FAIL'}: LoRA within 2 points of full fine-tuning with <2% of parameters "
              f"trainable (LoRA {100 * lora.accuracy:.2f} vs full {100 * full.accuracy:.2f}: {gap:.2f} points "
              f"behind; {share:.2f}% trainable)")
    else:
        print("SKIP: LoRA vs full fine-tuning (run both: --methods full,lora)")
    tuned = [r for r in rows if r.method in FINETUNE_METHODS]
    if tfidf and tuned:
        pick = max(tuned, key=lambda r: r.val_macro_f1 or 0.0)
        ok = pick.accuracy >= tfidf.accuracy
        print(f"{'PASS' if ok else 'FAIL'}: fine-tuned gptkit >= TF-IDF baseline on sentiment ({pick.method}, "
              f"chosen by validation macro-F1 {100 * (pick.val_macro_f1 or 0):.2f}: test accuracy "
              f"{100 * pick.accuracy:.2f} vs {100 * tfidf.accuracy:.2f}, macro-F1 {100 * pick.macro_f1:.2f} vs "
              f"{100 * tfidf.macro_f1:.2f})")
    else:
        print("SKIP: fine-tuned gptkit vs TF-IDF (run tfidf and at least one fine-tuning method)")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
