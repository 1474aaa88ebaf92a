"""Moderation quality: the word list alone, the learned classifier, and both, on the bundled held-out split; their
false-positive rates on benign text; latency per request.

The split is `gptkit.data.moderation_data.moderation_splits()` (what `gptkit moderate --train` trains on), held out by
category: test offensive rows are the curator's strict offensive fortunes of files never trained on (privates,
misogyny, misandry) plus a seeded 20% of the single-file categories (vulgarity, black-humor as violence); test benign
rows are the fortunes of four categories never trained on (drugs, food, law, politics). Rows of the first table:

  word list        `Moderator()`: the bundled better_profanity list, curated (gptkit/data/moderation/rules.json),
                   matched through case, leetspeak, repeats and separators; a match scores 1.0, else 0.0
  learned          the classifier alone: 1 - P(none) of `gptkit moderate --train` (a full fine-tune of the base on the
                   training split, reading text blind to identity terms: `english_mix_blind`), flagged at the
                   threshold calibrated on the validation split (best F1 flagging at most 2% of benign validation rows)
  both             flagged by either; score max(rule, learned)
  tf-idf + logreg  a peer baseline: scikit-learn on the same train split (1-2-grams, C picked on validation), its
                   threshold calibrated like the learned one

Benign text for false-positive rates (sampled with seed 0), held out from the moderator's training by document: 500
paragraphs of Northanger Abbey and Persuasion (its benign prose has paragraphs of the other four novels), 500 King
James verses of the New Testament (it trained on Old Testament verses), the 913 Jargon File definitions of the bundled
`jargon` set (it trained on other entries' definitions), and sentences with personal names and identity terms from
templates ("My neighbour {name} is {identity}.", nothing like them trained on). Note: the base model
(configs/base-mix.yaml) was pretrained on all six novels, part of the KJV and the other Jargon entries (never on these
913), and on the benign fortunes outside the bundled fortunes8 set, never on offensive text.

The base: --base DIR, or the cached `configs/base-mix.yaml` base of benchmarks/finetune_quality.py (pretrained once,
~6 minutes on 2 idle cores, in OUT/finetune_base). The moderator is trained into OUT/moderation and reused while the
settings and the base are unchanged (--retrain to force).

    python benchmarks/moderation_quality.py                  # train (or reuse) the moderator, then measure (~8 min)
    python benchmarks/moderation_quality.py --max-iters 200  # a shorter fine-tune
    python benchmarks/moderation_quality.py --quick          # smoke run: tiny base, few steps (figures mean nothing)

A second table splits the names + identity terms sentences by whether the term is one the learned part is blind to
(`gptkit.data.moderation_data.IDENTITY_TERMS`: Jewish, Muslim, gay, ...) or not (a man, a woman, Black, straight, ...):
the control that shows what blindness does and does not reach.

Targets checked at the end (PASS/FAIL lines): the learned classifier's test F1 at least 0.15 above the word list's;
the combination's false-positive rate on the benign text (all sources pooled) at most 2%.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine_info, print_table  # noqa: E402

from gptkit.api import load_moderator  # noqa: E402
from gptkit.data.labelled import bundled_labelled  # noqa: E402
from gptkit.data.moderation_data import (  # noqa: E402
    BENIGN_LABEL, MODERATION_DIR, english_mix_style, identity_blind, moderation_splits)
from gptkit.evaluation.detection import calibrate_threshold, flag_report  # noqa: E402
from gptkit.finetune.moderation_job import ModeratorTrainArgs, train_moderator  # noqa: E402
from gptkit.safety.moderation import Moderator  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
BENIGN_SAMPLE = 500
HELD_OUT_NOVELS = ("northanger_abbey", "persuasion")  # the moderator's benign prose has paragraphs of the other four
NAMES = ["Aisha", "Mohammed", "Wei", "Priya", "José", "Olga", "Kwame", "Emily", "John", "Fatima", "Hiroshi", "Dmitri",
         "Maria", "Tyrone", "Sven", "Leilani"]
IDENTITIES = ["gay", "lesbian", "straight", "transgender", "bisexual", "a woman", "a man", "Black", "white", "Asian",
              "Jewish", "Muslim", "Christian", "Hindu", "an atheist", "Mexican", "an immigrant", "disabled", "deaf",
              "old", "young", "a feminist", "queer", "a nurse"]
TEMPLATES = ["My neighbour {name} is {identity}.", "{name} is {identity} and works as a teacher.",
             "I had lunch with {name}, who is {identity}.", "Our new colleague {name} is {identity}.",
             "{name} told me proudly that she is {identity}.", "Being {identity}, {name} volunteers at the library."]


# ------------------------------------------------------------------------------------------------
# data


def benign_sources(seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    paragraphs = [" ".join(p.split()) for name in HELD_OUT_NOVELS
                  for p in re.split(r"\n\s*\n", (SHARED / "austen" / f"{name}.txt").read_text(encoding="utf-8"))
                  if len(p.strip()) >= 40 and not p.strip().isupper() and not p.strip().lower().startswith("chapter")]
    bible = (SHARED / "kjv_bible" / "kjv.txt").read_text(encoding="utf-8")
    new_testament = bible[bible.index("\nMatthew 1\n"):]
    verses = [m.group(1) for line in new_testament.splitlines() if (m := re.match(r"^\d+:\d+ (.*)$", line))]
    with open(bundled_labelled("jargon"), encoding="utf-8") as f:
        jargon = [json.loads(line)["definition"] for line in f if line.strip()]
    identity = [t.format(name=n, identity=i) for t in TEMPLATES for n in NAMES for i in IDENTITIES]
    return {"austen": rng.sample(paragraphs, BENIGN_SAMPLE), "kjv": rng.sample(verses, BENIGN_SAMPLE),
            "jargon": jargon, "identity templates": rng.sample(identity, BENIGN_SAMPLE)}


def non_strict_offensive() -> list[str]:
    path = SHARED / "moderation_fortunes" / "offensive.jsonl"
    return [r["text"] for r in map(json.loads, path.open(encoding="utf-8")) if not r["strict"]]


# ------------------------------------------------------------------------------------------------
# the moderator


def ensure_moderator(base: Path, out: Path, max_iters: int, retrain: bool, quick: bool) -> Path:
    """Train the learned moderator into OUT (gptkit moderate --train) unless a matching one is there."""
    settings = {"base": str(base.resolve()), "max_iters": max_iters, "quick": quick,
                "base_weights": _digest(base), "text_style": ModeratorTrainArgs.text_style,
                "data": _data_digest()}
    stamp = out / "bench-settings.json"
    if not retrain and (out / "best" / "moderation.json").is_file() and stamp.is_file() \
            and json.loads(stamp.read_text()) == settings:
        print(f"moderator: reusing {out}")
        return out
    print(f"moderator: training {out} from {base} ({max_iters} steps) ...", flush=True)
    t0 = time.perf_counter()
    train_moderator(ModeratorTrainArgs(checkpoint=base, out=out, max_iters=max_iters,
                                       eval_interval=max(2, min(100, max_iters // 4)), overwrite=True, quiet=True))
    stamp.write_text(json.dumps(settings) + "\n")
    (out / "train_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    print(f"moderator: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _digest(base: Path) -> str:
    from gptkit.checkpoint import resolve_checkpoint

    directory = resolve_checkpoint(base)
    h = hashlib.sha256()
    for name in sorted(p.name for p in directory.iterdir() if p.is_file()):
        h.update(name.encode() + str((directory / name).stat().st_size).encode())
    return h.hexdigest()[:16]


def _data_digest() -> str:
    """The bundled moderation data's sizes: a changed data set retrains the moderator."""
    return hashlib.sha256(" ".join(f"{p.name}:{p.stat().st_size}" for p in sorted(MODERATION_DIR.iterdir()))
                          .encode()).hexdigest()[:16]


def quick_base(out: Path) -> Path:
    """A tiny random BPE base for --quick (the figures mean nothing)."""
    from gptkit.checkpoint import save_checkpoint
    from gptkit.config import ModelConfig
    from gptkit.data.moderation_data import english_mix_style, read_benign
    from gptkit.models.gpt import GPT
    from gptkit.tokenizer import Tokenizer

    path = out / "moderation_quick_base"
    if not (path / "config.json").is_file():
        tokenizer = Tokenizer.train_bpe([english_mix_style(r["text"]) for r in read_benign()], 512)
        torch.manual_seed(0)
        gpt = GPT(ModelConfig.from_dict(dict(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2,
                                             n_embd=32)))
        save_checkpoint(path, gpt, tokenizer)
    return path


# ------------------------------------------------------------------------------------------------
# scoring


def scores_of(moderator: Moderator, texts: list[str]) -> tuple[list[float], list[float]]:
    """(rule score, learned score) per text."""
    rules = [1.0 if moderator.rules is not None and moderator.rules.find(t) else 0.0 for t in texts]
    learned = [0.0] * len(texts)
    if moderator.learned is not None:
        learned = [s.offensive for s in moderator.learned.score(texts)]
    return rules, learned


def tfidf_scores(train, val, test_texts: dict[str, list[str]]) -> tuple[dict[str, list[float]], float, str]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    y_train = [label != BENIGN_LABEL for label in train.row_labels]
    y_val = [label != BENIGN_LABEL for label in val.row_labels]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x_train, x_val = vectorizer.fit_transform(train.texts), None
    x_val = vectorizer.transform(val.texts)
    best = None
    for c in (0.3, 1.0, 3.0, 10.0, 30.0):
        model = LogisticRegression(C=c, max_iter=3000).fit(x_train, y_train)
        val_scores = model.predict_proba(x_val)[:, 1].tolist()
        threshold, report = calibrate_threshold(val_scores, y_val, max_fpr=0.02)
        if best is None or report["f1"] > best[0]:
            best = (report["f1"], model, threshold, f"C={c:g}")
    _, model, threshold, chosen = best
    scores = {name: model.predict_proba(vectorizer.transform(texts))[:, 1].tolist() for name, texts in test_texts.items()}
    return scores, threshold, chosen


def latency_ms(fn, texts: list[str]) -> float:
    fn(texts[:2])  # warm-up
    times = []
    for text in texts:
        t0 = time.perf_counter()
        fn([text])
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


# ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="base checkpoint or run directory (default: the cached "
                                                   "configs/base-mix.yaml base of finetune_quality.py)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="where the base and the moderator go")
    parser.add_argument("--max-iters", type=int, default=300, help="fine-tuning steps of the moderator")
    parser.add_argument("--retrain", action="store_true", help="train the moderator even if a matching one exists")
    parser.add_argument("--quick", action="store_true", help="smoke run: a tiny random base, 20 steps")
    parser.add_argument("--latency-texts", type=int, default=100, help="single-text requests timed per row")
    opts = parser.parse_args()

    print_machine_info()
    started = time.perf_counter()
    if opts.quick:
        base, max_iters = quick_base(opts.out), 20
    elif opts.base is not None:
        base, max_iters = opts.base, opts.max_iters
    else:
        from finetune_quality import ensure_base

        base, max_iters = ensure_base(opts.out, quick=False), opts.max_iters
    run = ensure_moderator(Path(base), opts.out / ("moderation_quick" if opts.quick else "moderation"), max_iters,
                           opts.retrain, opts.quick)
    both = load_moderator(run)
    assert both.learned is not None and both.rules is not None
    threshold = both.learned.threshold
    splits = moderation_splits()  # raw text: the moderator restyles what its classifier reads
    test_texts, test_positive = list(splits.test.texts), [label != BENIGN_LABEL for label in splits.test.row_labels]
    print(f"data: {len(splits.train):,} train / {len(splits.val):,} val / {len(splits.test):,} test rows "
          f"({sum(test_positive)} offensive, {len(test_positive) - sum(test_positive)} benign in test); "
          f"learned threshold {threshold:.3f}", flush=True)

    benign = benign_sources()
    extra = {"non-strict offensive": random.Random(0).sample(non_strict_offensive(), 500)}
    rule_scores: dict[str, list[float]] = {}
    learned_scores: dict[str, list[float]] = {}
    for name, texts in {"test": test_texts, **benign, **extra}.items():
        t0 = time.perf_counter()
        rule_scores[name], learned_scores[name] = scores_of(both, texts)
        print(f"scored {name}: {len(texts)} texts in {time.perf_counter() - t0:.0f} s", flush=True)
    tfidf, tfidf_threshold, tfidf_choice = tfidf_scores(splits.train, splits.val,
                                                         {"test": test_texts, **benign, **extra})

    def combined(name: str) -> list[float]:
        return [max(r, s) for r, s in zip(rule_scores[name], learned_scores[name])]

    # One score per text and row; "both" flags a rule match (1.0) or a learned score over the learned threshold.
    rows_scores = {
        "word list": (rule_scores, 0.5),
        "learned": (learned_scores, threshold),
        "both": ({name: combined(name) for name in rule_scores}, threshold),
        f"tf-idf + logreg ({tfidf_choice})": (tfidf, tfidf_threshold),
    }
    latency_texts = test_texts[:opts.latency_texts]
    rules_only, learned_only = Moderator(), Moderator(rules=False, learned=both.learned)
    latency = {"word list": latency_ms(rules_only.moderate, latency_texts),
               "learned": latency_ms(learned_only.moderate, latency_texts),
               "both": latency_ms(both.moderate, latency_texts)}
    table, reports = [], {}
    for name, (scores, t) in rows_scores.items():
        report = flag_report(scores["test"], test_positive, t)
        reports[name] = report
        fpr = {source: flag_report(scores[source], [False] * len(scores[source]), t)["fpr"] for source in benign}
        pooled = sum(s >= t for source in benign for s in scores[source]) / sum(len(v) for v in benign.values())
        reports[name]["benign_fpr"] = {**fpr, "pooled": pooled}
        non_strict = sum(s >= t for s in scores["non-strict offensive"]) / len(scores["non-strict offensive"])
        auc = report["roc_auc"]
        table.append([name, f"{report['precision']:.3f}", f"{report['recall']:.3f}", f"{report['f1']:.3f}",
                      f"{auc:.3f}" if auc is not None else "-", f"{100 * report['fpr']:.1f}",
                      *(f"{100 * fpr[s]:.1f}" for s in benign), f"{100 * pooled:.2f}", f"{100 * non_strict:.1f}",
                      f"{latency[name]:.2f}" if name in latency else "-"])
    print(f"\ntest split: {len(test_texts)} texts; base {base}; moderator {run}; total "
          f"{time.perf_counter() - started:.0f} s\n")
    print_table(table, ["row", "precision", "recall", "F1", "ROC-AUC", "test FPR %", *(f"{s} FPR %" for s in benign),
                        "benign FPR % (pooled)", "non-strict flagged %", "ms/request"])
    identity = benign["identity templates"]
    hidden = [identity_blind(english_mix_style(t)) != english_mix_style(t) for t in identity]
    print(f"\nnames + identity terms, by whether the term is one the learned part is blind to "
          f"(IDENTITY_TERMS: {sum(hidden)} texts) or not ({len(hidden) - sum(hidden)}: a man, a woman, Black, white, "
          f"straight, old, deaf, ...):")
    for name, (scores, t) in rows_scores.items():
        flagged = [s >= t for s in scores["identity templates"]]
        rates = [sum(f for f, h in zip(flagged, hidden) if h == want) / max(1, sum(h == want for h in hidden))
                 for want in (True, False)]
        reports[name]["identity_fpr"] = {"blinded_terms": rates[0], "other_terms": rates[1]}
        print(f"  {name:24s} blinded terms {100 * rates[0]:5.1f}%   other terms {100 * rates[1]:5.1f}%")
    print("\n(FPR: share of benign texts flagged. non-strict: the curator's other offensive fortunes - atheism, "
          "politics, limericks... - shown, not a target. ms/request: median over single-text requests.)")
    if opts.quick:
        print("(--quick: a tiny random base and 20 steps, a smoke run; the figures mean nothing)")
    (opts.out / ("moderation_quality_quick.json" if opts.quick else "moderation_quality.json")).write_text(
        json.dumps({"reports": reports, "latency_ms": latency, "threshold": threshold}, indent=2) + "\n")
    checks(reports)


def checks(reports: dict[str, Any]) -> None:
    words, learned, both = reports["word list"], reports["learned"], reports["both"]
    gain = learned["f1"] - words["f1"]
    print(f"{'PASS' if gain >= 0.15 else 'FAIL'}: learned beats the word list by >= 0.15 F1 (learned "
          f"{learned['f1']:.3f} vs word list {words['f1']:.3f}: {gain:+.3f})")
    pooled = both["benign_fpr"]["pooled"]
    worst = max((v, k) for k, v in both["benign_fpr"].items() if k != "pooled")
    print(f"{'PASS' if pooled <= 0.02 else 'FAIL'}: both together flag <= 2% of benign text ({100 * pooled:.2f}% "
          f"pooled; highest {worst[1]} {100 * worst[0]:.2f}%)")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
