"""Synthetic streams for the sentiment monitor: real labelled texts on a timeline with injected negative bursts
(the ground truth written beside the stream), and the scoring of a monitor's alerts against that truth; knows
nothing of classifiers.

    python examples/sentiment_monitor/synthetic_stream.py --out out/stream.jsonl --seed 0
    # -> out/stream.jsonl (time, text, topic, label) and out/stream.truth.json (the bursts)

The texts are data/vader_movie_heldout.jsonl (see data/PROVENANCE.md): movie-review snippets that are not among
the bundled `sentiment` sentences a `gptkit finetune --data sentiment` classifier trains on.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from gptkit import GptkitError

HERE = Path(__file__).resolve().parent
HELDOUT = HERE / "data" / "vader_movie_heldout.jsonl"


@dataclass(frozen=True)
class StreamSpec:
    """A stream of `days` with about `rate_per_hour` texts an hour (a daily cycle: quieter at night), a negative
    share of base_share, and `bursts` bursts of 1-3 hours at burst_share (some on one topic only)."""

    days: float = 3.0
    rate_per_hour: float = 100.0
    base_share: float = 0.4
    bursts: int = 4
    burst_share: float = 0.8
    burst_hours: tuple[float, float] = (1.0, 3.0)
    topics: tuple[str, ...] = ("billing", "delivery", "app")
    topic_burst_fraction: float = 0.5  # of the bursts, the share confined to one topic
    warmup_hours: float = 24.0  # no burst before this: the z-score needs a baseline
    gap_hours: float = 6.0  # at least this between bursts
    start: str = "2024-05-01T00:00:00Z"
    seed: int = 0


@dataclass(frozen=True)
class Burst:
    start: datetime
    end: datetime
    topic: str | None  # None: every topic
    share: float

    def record(self) -> dict[str, Any]:
        return {"start": _iso(self.start), "end": _iso(self.end), "topic": self.topic, "share": self.share}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Burst:
        return cls(_parse(r["start"]), _parse(r["end"]), r["topic"], float(r["share"]))


@dataclass
class Stream:
    rows: list[dict[str, Any]]  # {"time", "text", "topic", "label"} in time order
    bursts: list[Burst]
    spec: StreamSpec = field(default_factory=StreamSpec)

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """The stream as JSON lines at `path`, its truth at PATH.truth.json (beside it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows), encoding="utf-8")
        truth = truth_path(path)
        truth.write_text(json.dumps({"spec": asdict(self.spec), "bursts": [b.record() for b in self.bursts]},
                                    indent=1) + "\n")
        return path, truth


def truth_path(stream: str | Path) -> Path:
    stream = Path(stream)
    return stream.with_name(stream.stem + ".truth.json")


def read_truth(path: str | Path) -> list[Burst]:
    return [Burst.from_record(r) for r in json.loads(Path(path).read_text())["bursts"]]


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def load_texts(path: str | Path = HELDOUT) -> dict[str, list[str]]:
    """label -> texts of a JSON-lines file of {"text", "label": "negative" | "positive"}."""
    texts: dict[str, list[str]] = {"negative": [], "positive": []}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            texts.setdefault(row["label"], []).append(row["text"])
    if not texts["negative"] or not texts["positive"]:
        raise GptkitError(f"{path}: needs rows labelled negative and positive")
    return texts


def plan_bursts(spec: StreamSpec, rng: random.Random) -> list[Burst]:
    start = _parse(spec.start)
    hours = spec.days * 24
    bursts: list[Burst] = []
    for _ in range(1000):  # rejection sampling; the defaults leave plenty of room
        if len(bursts) == spec.bursts:
            break
        length = round(rng.uniform(*spec.burst_hours) * 60) / 60  # whole minutes
        at = math.floor(rng.uniform(spec.warmup_hours, hours - length - 1) * 4) / 4  # on a quarter hour
        if all(at >= (b.end - start).total_seconds() / 3600 + spec.gap_hours or
               at + length + spec.gap_hours <= (b.start - start).total_seconds() / 3600 for b in bursts):
            topic = rng.choice(spec.topics) if spec.topics and len(bursts) < round(
                spec.bursts * spec.topic_burst_fraction) else None
            bursts.append(Burst(start + timedelta(hours=at), start + timedelta(hours=at + length), topic,
                                spec.burst_share))
    if len(bursts) < spec.bursts:
        raise GptkitError(f"{spec.bursts} bursts {spec.gap_hours:g} h apart do not fit in {spec.days:g} days")
    return sorted(bursts, key=lambda b: b.start)


def make_stream(spec: StreamSpec | None = None, texts: dict[str, list[str]] | None = None) -> Stream:
    """Arrivals of a Poisson process whose rate follows the day (half the mean at 04:00, 1.5x at 16:00), each with
    a uniform topic and a label drawn at the share of its time and topic; texts drawn from `texts` by label."""
    spec = spec or StreamSpec()
    texts = texts or load_texts()
    rng = random.Random(spec.seed)
    bursts = plan_bursts(spec, rng)
    start = _parse(spec.start)
    rows, t, end = [], 0.0, spec.days * 24
    peak = spec.rate_per_hour * 1.5
    while True:
        t += rng.expovariate(peak)  # thinning: candidate arrivals at the peak rate, kept with rate(t) / peak
        if t >= end:
            break
        rate = spec.rate_per_hour * (1 + 0.5 * math.sin(2 * math.pi * (t % 24 - 10) / 24))
        if rng.random() > rate / peak:
            continue
        when = start + timedelta(hours=t)
        topic = rng.choice(spec.topics) if spec.topics else None
        share = spec.base_share
        for b in bursts:
            if b.start <= when < b.end and (b.topic is None or b.topic == topic):
                share = b.share
        label = "negative" if rng.random() < share else "positive"
        row = {"time": _iso(when.replace(microsecond=0)), "text": rng.choice(texts[label]), "label": label}
        if topic is not None:
            row["topic"] = topic
        rows.append(row)
    return Stream(rows, bursts, spec)


# ------------------------------------------------------------------------------------------------
# scoring alerts against the truth


@dataclass(frozen=True)
class Detection:
    precision: float | None  # None when there were no alerts
    recall: float
    delay_buckets: float | None  # mean over detected bursts; None when none was
    delay_minutes: float | None
    alerts: int
    true_alerts: int
    bursts: int
    detected: int


def _matches(alert: Any, burst: Burst, bucket_seconds: int, grace_buckets: int) -> bool:
    """An alert counts for a burst when its bucket overlaps the burst (or the grace buckets after it: a bucket
    closes after the burst's last minute) and its series can see the burst: ALL sees every burst, a topic its own
    bursts and the bursts on every topic."""
    late = burst.end + timedelta(seconds=grace_buckets * bucket_seconds)
    overlaps = alert.start < late and alert.end > burst.start
    return overlaps and (alert.topic == "all" or burst.topic is None or alert.topic == burst.topic)


def evaluate_alerts(alerts: list[Any], bursts: list[Burst], bucket_seconds: int, *,
                    grace_buckets: int = 1) -> Detection:
    """Precision (alerts that match a burst), recall (bursts with a matching alert) and the mean delay of the first
    matching alert: in buckets (0: the bucket where the burst began) and in minutes from the burst's start to the
    end of the alert's bucket (when a live monitor could raise it)."""
    true_alerts = sum(any(_matches(a, b, bucket_seconds, grace_buckets) for b in bursts) for a in alerts)
    delays_b, delays_m = [], []
    for b in bursts:
        mine = sorted((a for a in alerts if _matches(a, b, bucket_seconds, grace_buckets)), key=lambda a: a.start)
        if mine:
            first = mine[0]
            began = math.floor(b.start.timestamp() / bucket_seconds)
            delays_b.append(max(0, math.floor(first.start.timestamp() / bucket_seconds) - began))
            delays_m.append(max(0.0, (first.end - b.start).total_seconds() / 60))
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return Detection(true_alerts / len(alerts) if alerts else None, len(delays_b) / len(bursts) if bursts else 1.0,
                     mean(delays_b), mean(delays_m), len(alerts), true_alerts, len(bursts), len(delays_b))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a synthetic stream with injected negative bursts (and its truth).")
    p.add_argument("--out", type=Path, default=Path("out/stream.jsonl"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=100.0, help="mean texts per hour")
    p.add_argument("--base-share", type=float, default=0.4)
    p.add_argument("--burst-share", type=float, default=0.8)
    p.add_argument("--bursts", type=int, default=4)
    p.add_argument("--texts", type=Path, default=HELDOUT, help="JSON lines of {text, label: negative|positive}")
    args = p.parse_args(argv)
    spec = StreamSpec(days=args.days, rate_per_hour=args.rate, base_share=args.base_share,
                      burst_share=args.burst_share, bursts=args.bursts, seed=args.seed)
    try:
        stream = make_stream(spec, load_texts(args.texts))
    except GptkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path, truth = stream.write(args.out)
    print(f"{len(stream.rows)} rows -> {path}; {len(stream.bursts)} bursts -> {truth}")
    for b in stream.bursts:
        print(f"  burst {_iso(b.start)} .. {_iso(b.end)} topic={b.topic or 'every'} share={b.share:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
