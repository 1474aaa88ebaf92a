"""Sentiment monitor (examples/sentiment_monitor): how well its alerts find injected negative bursts.

Streams come from `examples/sentiment_monitor/synthetic_stream.py`: 3 days of real movie-review snippets (the held-out
VADER rows the classifier never trained on, with their human labels), ~100 texts an hour on a daily cycle, three
topics, a base negative share of 40% and four bursts of 1-3 hours at 80% (two of them on one topic only), one stream
per seed. Every stream is monitored with 1-hour buckets and each alert rule, and the alerts are scored against the
bursts (`evaluate_alerts`): precision (alerts that overlap a burst their series can see), recall (bursts with such an
alert) and the mean delay of the first one, in buckets and in minutes from the burst's start to the end of the
alert's bucket. Figures pool the alerts and bursts of all seeds.

Scorers (the P(negative) the monitor reads):
  classifier          a full fine-tune of the benchmark base on the bundled `sentiment` set (finetune_quality.py's
                      settings for `full`), on the raw snippets
  classifier, styled  the same on the snippets rewritten as the base corpus is written (lower case, punctuation set
                      off: gptkit.data.moderation_data.english_mix_style)
  oracle              the human labels (1 or 0): the upper bound of any classifier
  shuffled            the classifier's scores permuted within the stream: the same score distribution, no timing
  constant            0.4 for every text: nothing is ever negative (the floor)

The base is benchmarks/finetune_quality.py's (`ensure_base(OUT, quick=False)`, cached in OUT/finetune_base; it
pretrains there if missing, ~6 min); --quick uses its quick base (40 steps) and a 300-step fine-tune instead.

    python benchmarks/sentiment_monitor.py                 # 5 seeds (~3 min once the base and classifier exist)
    python benchmarks/sentiment_monitor.py --quick         # small base, short fine-tune (~3 min on 2 cores)
    python benchmarks/sentiment_monitor.py --classifier out/ft/sentiment --seeds 10
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sentiment_monitor"
sys.path.insert(0, str(EXAMPLE))
from _common import print_machine_info, print_table
from finetune_quality import ensure_base, finetune_args
from monitor import AlertRule, Item, MonitorConfig, llm_scorer, monitor, parse_time
from synthetic_stream import HELDOUT, StreamSpec, evaluate_alerts, load_texts, make_stream

from gptkit import LLM
from gptkit.data.moderation_data import english_mix_style
from gptkit.finetune.job import run_finetune

RULES = {
    "z >= 3 (default)": AlertRule(z=3.0),
    "z >= 2.5": AlertRule(z=2.5),
    "share >= 0.6": AlertRule(z=None, threshold=0.6),
    "share >= 0.7": AlertRule(z=None, threshold=0.7),
}
SPEC = StreamSpec(days=3, rate_per_hour=100, base_share=0.4, bursts=4, burst_share=0.8)  # synthetic_stream.py's defaults


def ensure_classifier(base: Path, out: Path, quick: bool) -> Path:
    """`full` fine-tune of `base` on the bundled sentiment set, cached while the base and the settings hold."""
    args = finetune_args("full", base, out, 300 if quick else None, quick=False)
    stamp = out / "settings.sha256"
    recipe = base / "recipe.sha256"  # ensure_base's stamp: a retrained base retrains the classifier
    digest = hashlib.sha256(json.dumps([str(base.resolve()), recipe.read_text() if recipe.is_file() else "",
                                        repr(args.train), repr(args.peft)]).encode()).hexdigest()
    if (out / "best").is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        print(f"classifier: reusing {out}")
        return out
    print(f"classifier: fine-tuning {base} on the bundled sentiment set ({args.train.max_iters} steps)", flush=True)
    t0 = time.perf_counter()
    summary = run_finetune(args)["run"]
    stamp.write_text(digest + "\n")
    print(f"classifier: {time.perf_counter() - t0:.0f} s, test accuracy {summary['test']['accuracy']:.3f} "
          "(bundled sentiment test split)", flush=True)
    return out


def accuracy(scores: dict[str, float], texts: dict[str, list[str]]) -> float:
    right = sum(scores[t] >= 0.5 for t in texts["negative"]) + sum(scores[t] < 0.5 for t in texts["positive"])
    return right / (len(texts["negative"]) + len(texts["positive"]))


def pooled(results: list[Any]) -> dict[str, Any]:
    alerts = sum(r.alerts for r in results)
    true = sum(r.true_alerts for r in results)
    bursts = sum(r.bursts for r in results)
    detected = sum(r.detected for r in results)
    delay_b = [r.delay_buckets * r.detected for r in results if r.detected]
    delay_m = [r.delay_minutes * r.detected for r in results if r.detected]
    return {"precision": true / alerts if alerts else None, "recall": detected / bursts,
            "delay_buckets": sum(delay_b) / detected if detected else None,
            "delay_minutes": sum(delay_m) / detected if detected else None,
            "alerts_per_stream": alerts / len(results), "false_per_stream": (alerts - true) / len(results)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--quick", action="store_true", help="the quick base and a 300-step fine-tune")
    p.add_argument("--base", type=Path, help="fine-tune this base instead of finetune_quality.py's")
    p.add_argument("--classifier", type=Path, help="use this classification checkpoint (no fine-tuning)")
    p.add_argument("--seeds", type=int, default=5)
    opts = p.parse_args()
    print_machine_info()
    started = time.perf_counter()
    if opts.classifier is None:
        base = opts.base or ensure_base(opts.out, quick=opts.quick)
        name = "sentiment_monitor_classifier" + ("_quick" if opts.quick else "")
        opts.classifier = ensure_classifier(base, opts.out / name, opts.quick)
    llm = LLM.load(opts.classifier)
    texts = load_texts(HELDOUT)
    pool = sorted(set(texts["negative"] + texts["positive"]))
    # Every stream draws its texts from this pool, so each is classified once here and looked up per stream
    # (the classifier is deterministic: the same scores as classifying every stream row).
    t0 = time.perf_counter()
    raw = dict(zip(pool, llm_scorer(llm)(pool)))
    seconds = time.perf_counter() - t0
    styled = dict(zip(pool, llm_scorer(llm, transform=english_mix_style)(pool)))
    lowered = dict(zip(pool, llm_scorer(llm, transform=str.lower)(pool)))
    print(f"\nclassifier {opts.classifier}: {len(pool):,} held-out snippets in {seconds:.1f} s "
          f"({len(pool) / seconds:.0f} texts/s); accuracy on their human labels: raw {accuracy(raw, texts):.3f}, "
          f"lower-cased {accuracy(lowered, texts):.3f}, styled as the corpus {accuracy(styled, texts):.3f}")

    results: dict[tuple[str, str], list[Any]] = {}
    streams = []
    for seed in range(opts.seeds):
        stream = make_stream(dataclasses.replace(SPEC, seed=seed), texts)
        streams.append(stream)
        items = [Item(parse_time(r["time"]), r["text"], r.get("topic")) for r in stream.rows]
        rng = random.Random(seed)
        classifier = [raw[r["text"]] for r in stream.rows]
        shuffled = classifier[:]
        rng.shuffle(shuffled)
        scorers = {"classifier": classifier, "classifier, styled": [styled[r["text"]] for r in stream.rows],
                   "oracle (human labels)": [float(r["label"] == "negative") for r in stream.rows],
                   "shuffled scores": shuffled, "constant 0.4": [0.4] * len(items)}
        for scorer, scores in scorers.items():
            for rule_name, rule in RULES.items():
                report = monitor(items, None, MonitorConfig(bucket_seconds=3600, rule=rule), scores=scores)
                results.setdefault((scorer, rule_name), []).append(evaluate_alerts(report.alerts, stream.bursts, 3600))
    n_rows = sum(len(s.rows) for s in streams)
    n_bursts = sum(len(s.bursts) for s in streams)
    print(f"{opts.seeds} streams (seeds 0-{opts.seeds - 1}): {n_rows:,} texts, {n_bursts} bursts "
          f"({sum(b.topic is not None for s in streams for b in s.bursts)} on one topic); 1 h buckets, "
          f"series: all + {len(SPEC.topics)} topics\n")
    rows = []
    for (scorer, rule_name), res in results.items():
        r = pooled(res)
        fmt = (lambda x, spec: "-" if x is None else format(x, spec))
        rows.append([scorer, rule_name, fmt(r["precision"], ".2f"), fmt(r["recall"], ".2f"),
                     fmt(r["delay_buckets"], ".2f"), fmt(r["delay_minutes"], ".0f"), f"{r['alerts_per_stream']:.1f}",
                     f"{r['false_per_stream']:.1f}"])
    print_table(rows, ["scores", "rule", "precision", "recall", "delay (buckets)", "delay (min)", "alerts/stream",
                       "false/stream"])
    print(f"\ntotal {time.perf_counter() - started:.0f} s")

if __name__ == "__main__":
    main()
