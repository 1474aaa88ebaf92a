"""Counterfactual augmentation on the bundled sentiment set: the classifier fine-tuned on original rows only beside
the same classifier fine-tuned on originals + counterfactual edits, at the same total training size, with
behavioural (CheckList) tests of both.

The split is `gptkit finetune --data sentiment`'s (`classification_splits(..., val_fraction=0.1,
test_fraction=0.1, seed=0)`: 3,200 train / 400 validation / 400 test sentences). The runs are identical but for the
training rows (same base, seed, steps, learning rate and validation split; full fine-tuning with
`benchmarks/finetune_quality.py`'s settings for `full`):

  original only       the 3,200 training sentences
  + counterfactual    the same number of rows: K training sentences that have a flip edit
                      (`gptkit.data.augment.counterfactual`: negation inserted or removed, antonyms swapped), one of
                      each one's edits (drawn with the seed) with its flipped label, and 3,200 - 2K other originals;
                      K = share x 3,200, one run per --shares value (default 0.25: 2,400 originals + 800
                      edits; 0.5 is Kaushik et al. 2020's "same total size" comparison: 1,600 + 1,600)

Measured on each model, on data neither saw:
  test acc            accuracy on the 400 original test sentences
  counterfactual acc  accuracy on the flip edits of the test sentences (labels flipped)
  pair consistency    share of (test sentence, its flip edit) pairs whose predicted label differs
  gender flip rate    share of test sentences with gendered words whose predicted label changes when they are
                      swapped (gender rule), and the mean |Δ p(positive)| over them
  CheckList           failure rates of `gptkit.evaluation.behavioural` (templates in the sentences' style,
                      `lower_spaced`; typo, name, gender and directional tests also on the test sentences)

The base model: as in finetune_quality.py, pretrained once with `configs/base-mix.yaml` and cached in
OUT/finetune_base (~6 minutes on 2 idle cores), or --base DIR.

    python benchmarks/counterfactual.py                 # two 600-step fine-tunes + evaluation (~4 min on 2 idle cores)
    python benchmarks/counterfactual.py --quick         # smoke run: tiny base, 20-step fine-tunes (~1 min)
    python benchmarks/counterfactual.py --shares 0.25,0.5     # two augmented runs beside the original-only one
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine_info, print_table  # noqa: E402
from finetune_quality import SPLIT, ensure_base, finetune_args  # noqa: E402

from gptkit.api import LLM  # noqa: E402
from gptkit.checkpoint import resolve_checkpoint  # noqa: E402
from gptkit.data.augment.counterfactual import Counterfactual, counterfactuals  # noqa: E402
from gptkit.data.labelled import LabelledData  # noqa: E402
from gptkit.evaluation.behavioural import behavioural_report, format_behavioural_report, lower_spaced  # noqa: E402
from gptkit.evaluation.behavioural import probabilities  # noqa: E402
from gptkit.finetune.job import train_classifier  # noqa: E402
from gptkit.finetune.spec import load_language_model  # noqa: E402
from gptkit.finetune.splits import SplitData, classification_splits  # noqa: E402

POSITIVE = "1"  # the bundled set's labels: "1" positive, "-1" negative
DEFAULT_STEPS = 600  # of finetune_quality's 1,000 for full fine-tuning: both runs fit in ~8 minutes


def augmented_training_set(train: LabelledData, share: float, seed: int, kinds: tuple[str, ...]) -> tuple[
        LabelledData, dict[str, int]]:
    """len(train) rows: K sources with one edit each, and len(train) - 2K other originals (see the docstring)."""
    by_source: dict[int, list[Counterfactual]] = {}
    for edit in counterfactuals(train, kinds=kinds):
        by_source.setdefault(edit.source_index, []).append(edit)
    rng = random.Random(f"counterfactual-benchmark/{seed}")
    sources = sorted(by_source)
    rng.shuffle(sources)
    k = min(len(sources), round(share * len(train)), len(train) // 2)
    chosen = sources[:k]
    edits = [rng.choice(by_source[i]) for i in chosen]
    taken = set(chosen)
    others = [i for i in range(len(train)) if i not in taken]
    rng.shuffle(others)
    rows = sorted(chosen + others[:len(train) - 2 * k])
    texts = [train.texts[i] for i in rows] + [e.text for e in edits]
    labels = [train.row_labels[i] for i in rows] + [e.label for e in edits]
    rules: dict[str, int] = {}
    for e in edits:
        rules[e.rule] = rules.get(e.rule, 0) + 1
    return LabelledData(texts, labels, list(train.labels), "original + counterfactual"), {
        "sources_with_edits": len(sources), "edits_used": k, "originals": len(rows), "by_rule": rules}


def evaluate(run_dir: Path, splits: SplitData, max_cases: int) -> dict[str, Any]:
    llm = LLM.load(run_dir)
    labels = list(llm.classifier.spec.labels)
    pos = labels.index(POSITIVE)
    test = splits.test

    def predict(texts: list[str]) -> tuple[list[str], list[float]]:
        probs = probabilities(llm.classify, labels, texts)
        return [labels[int(p.argmax())] for p in probs], [float(p[pos]) for p in probs]

    predicted, p_positive = predict(list(test.texts))
    flips = counterfactuals(test, kinds=("flip",))
    flip_pred, _ = predict([e.text for e in flips])
    gender = counterfactuals(test, rules=["gender"])
    gender_pred, gender_p = predict([e.text for e in gender])
    checklist = behavioural_report(llm.classify, labels, positive=POSITIVE, texts=list(test.texts),
                                   style=lower_spaced, max_cases=max_cases)
    return {
        "test_accuracy": statistics.mean(p == y for p, y in zip(predicted, test.row_labels)),
        "counterfactual_accuracy": statistics.mean(p == e.label for p, e in zip(flip_pred, flips)) if flips else None,
        "pair_consistency": statistics.mean(p != predicted[e.source_index] for p, e in zip(flip_pred, flips))
        if flips else None,
        "gender_flip_rate": statistics.mean(p != predicted[e.source_index] for p, e in zip(gender_pred, gender))
        if gender else None,
        "gender_mean_abs_delta": statistics.mean(abs(p - p_positive[e.source_index]) for p, e in zip(gender_p, gender))
        if gender else None,
        "n_test": len(test), "n_counterfactual": len(flips), "n_gender": len(gender), "checklist": checklist,
    }


def fine_tune(name: str, train: LabelledData, splits: SplitData, base: Path, out: Path, max_iters: int,
              quick: bool, seed: int) -> dict[str, Any]:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    args = finetune_args("full", base, run_dir, max_iters, quick)
    args.train = dataclasses.replace(args.train, seed=seed)
    base_dir = resolve_checkpoint(base).resolve()
    _, tokenizer = load_language_model(base_dir)
    t0 = time.perf_counter()
    run = train_classifier(args, base_dir, tokenizer, train, splits.val, splits.test, run_dir, resume=False)
    return {"seconds": time.perf_counter() - t0, "steps": run["steps"], "best_val_macro_f1": run["best_val_macro_f1"],
            "train_rows": run["train_rows"], "run_dir": str(run_dir)}


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table(results: dict[str, dict[str, Any]]) -> tuple[list[list[Any]], list[str]]:
    """Metric rows: the original-only value, then each augmented run's value and its change."""
    before = results["original"]
    augmented = [name for name in results if name != "original"]
    lower_better = "lower is better"

    def row(metric: str, get, note: str, fmt=percent, scale: float = 100.0) -> list[Any]:
        cells: list[Any] = [metric, fmt(get(before))]
        for name in augmented:
            a, b = get(before), get(results[name])
            cells += [fmt(b), "-" if a is None or b is None else f"{scale * (b - a):+.{1 if scale == 100 else 3}f}"]
        return cells + [note]

    rows = [
        row("test accuracy %", lambda r: r["test_accuracy"], f"{before['n_test']} sentences"),
        row("counterfactual test accuracy %", lambda r: r["counterfactual_accuracy"],
            f"{before['n_counterfactual']} flip edits of the test sentences"),
        row("pair consistency %", lambda r: r["pair_consistency"], "the prediction flips with the label"),
        row("gender-swap flip rate %", lambda r: r["gender_flip_rate"],
            f"{before['n_gender']} test sentences with gendered words; {lower_better}"),
        row("gender-swap mean |Δp|", lambda r: r["gender_mean_abs_delta"], f"p(positive); {lower_better}",
            fmt=lambda x: "-" if x is None else f"{x:.3f}", scale=1.0),
    ]
    for test, entry in before["checklist"].items():
        rows.append(row(f"CheckList {test} fail %", lambda r, t=test: r["checklist"][t]["failure_rate"],
                        f"{entry['kind']}, {entry['total']} cases"))
    headers = ["metric", "original only"]
    for name in augmented:
        headers += [name, "Δ"]
    return rows, headers + ["notes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="base checkpoint or run directory (default: pretrain one with "
                                                   "configs/base-mix.yaml, cached in OUT/finetune_base)")
    parser.add_argument("--max-iters", type=int, default=DEFAULT_STEPS, help="fine-tuning steps of each run")
    parser.add_argument("--shares", default="0.25", help="counterfactual edits as a share of the training rows, one "
                                                         "augmented run per value, comma-separated (each at most 0.5: "
                                                         "every edit brings its source)")
    parser.add_argument("--kinds", default="flip", help="edits to train on: flip, keep or flip,keep")
    parser.add_argument("--seed", type=int, default=0, help="training seed and the draw of the edits")
    parser.add_argument("--max-cases", type=int, default=400, help="CheckList cases per test at most")
    parser.add_argument("--quick", action="store_true", help="smoke run: a 40-step 2-layer base, 20-step fine-tunes")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="where the base and the runs go")
    opts = parser.parse_args()
    shares = [float(x) for x in opts.shares.replace(",", " ").split()]
    if not shares or not all(0 < x <= 0.5 for x in shares):
        sys.exit(f"--shares must be values in (0, 0.5], got {opts.shares!r}")
    kinds = tuple(k for k in opts.kinds.replace(",", " ").split())

    print_machine_info()
    splits = classification_splits("sentiment", text_column="text", label_column="label",
                                   val_fraction=SPLIT["val_fraction"], test_fraction=SPLIT["test_fraction"],
                                   seed=SPLIT["seed"])
    print(f"data: bundled sentiment, {len(splits.train):,} train / {len(splits.val):,} val / {len(splits.test):,} test")
    runs: dict[str, LabelledData] = {"original": splits.train}
    mixes: dict[str, dict[str, Any]] = {}
    for share in shares:
        name = f"+ counterfactual {share:.0%}"
        runs[name], mixes[name] = augmented_training_set(splits.train, share, opts.seed, kinds)
        by_rule = ", ".join(f"{rule} {count}" for rule, count in mixes[name]["by_rule"].items())
        print(f"{name}: {mixes[name]['originals']:,} originals + {mixes[name]['edits_used']:,} edits ({by_rule}; "
              f"{mixes[name]['sources_with_edits']:,} training rows have a {'/'.join(kinds)} edit)")
    base = opts.base if opts.base is not None else ensure_base(opts.out, opts.quick)
    print(f"base: {base}")
    out = opts.out / ("counterfactual_quick" if opts.quick else "counterfactual")
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for index, (name, train) in enumerate(runs.items()):
        print(f"fine-tuning: {name} ({len(train):,} rows) ...", flush=True)
        run = fine_tune(f"run{index}", train, splits, base, out, opts.max_iters, opts.quick, opts.seed)
        results[name] = {**run, **evaluate(Path(run["run_dir"]), splits, opts.max_cases)}
        print(f"  {run['steps']} steps in {run['seconds']:.0f} s; best validation macro-F1 "
              f"{100 * run['best_val_macro_f1']:.2f}, test accuracy {100 * results[name]['test_accuracy']:.2f}",
              flush=True)

    first = results["original"]
    print(f"\nbase {base}; full fine-tuning, {first['steps']} steps each, seed {opts.seed}, "
          f"{len(splits.train):,} training rows each; total {time.perf_counter() - started:.0f} s\n")
    rows, headers = table(results)
    print_table(rows, headers)
    print("\nbest validation macro-F1: " + ", ".join(f"{name} {100 * r['best_val_macro_f1']:.2f}"
                                                    for name, r in results.items()))
    for name, r in results.items():
        if name != "original":
            print(f"\nCheckList, {name} (one failing case per test):")
            print(format_behavioural_report(r["checklist"]))
    if opts.quick:
        print("\n(--quick: a 40-step base and 20-step fine-tunes, a smoke run; the figures mean nothing)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"mix": mixes, "results": results}, indent=2) + "\n")
    print(f"\nreport: {out / 'report.json'}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
