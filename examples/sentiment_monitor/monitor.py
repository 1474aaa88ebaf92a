"""Sentiment monitor: reads a stream of timestamped texts, scores each with a gptkit classifier, aggregates counts and
negative share per time bucket and topic, and raises one alert per negative swing; knows nothing of how the
classifier was trained or how the dashboard is drawn (stream_dashboard.py).

    python examples/sentiment_monitor/monitor.py --checkpoint out/ft/sentiment --input stream.jsonl \\
        --out-jsonl out/monitor.jsonl --dashboard out/dashboard.html

From Python:

    from gptkit import LLM
    items = read_stream("stream.jsonl")                       # list[Item], errors name the file and line
    report = monitor(items, llm_scorer(LLM.load("out/ft/sentiment")), MonitorConfig(bucket_seconds=3600))
    report.alerts                                             # list[Alert]: bucket, topic, share, z, examples
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

# beside this file (Python puts a script's folder on the path)
from stream_dashboard import screenshot, write_dashboard
from synthetic_stream import read_truth

from gptkit import GptkitError

ALL = "all"
"""The series of every item, whatever its topic (topics get a series each beside it)."""
STREAM_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv")
Scorer = Callable[[list[str]], list[float]]
"""Texts -> P(negative) of each, in [0, 1]."""


# ------------------------------------------------------------------------------------------------
# input


@dataclass(frozen=True)
class Item:
    """One row of the stream."""

    time: datetime  # timezone-aware (UTC when the row gave no offset)
    text: str
    topic: str | None = None
    where: str = ""  # "file:line", for messages


def parse_time(value: Any) -> datetime:
    """ISO-8601 (`2024-05-01T13:05:00Z`, a date, an offset) or unix seconds (a number or a numeric string); a time
    without an offset is read as UTC. Raises ValueError (TypeError for a boolean) otherwise."""
    if isinstance(value, bool):  # bool is an int to Python, never a time to a user
        raise TypeError("a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("not finite")
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("not a string or number")
    text = value.strip()
    if re.fullmatch(r"[+-]?\d+(\.\d+)?", text):
        return datetime.fromtimestamp(float(text), tz=timezone.utc)
    parsed = datetime.fromisoformat(text)  # Python 3.11 reads "Z", offsets, dates, fractional seconds
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _item_from_row(row: Any, where: str) -> Item:
    """A parsed JSON object or CSV row as an Item; GptkitError naming `where` when it is not one."""
    if not isinstance(row, dict):
        raise GptkitError(f"{where}: expected a JSON object with \"time\" and \"text\", got {type(row).__name__}")
    missing = [k for k in ("time", "text") if k not in row or row[k] is None]
    if missing:
        raise GptkitError(f"{where}: missing {' and '.join(repr(k) for k in missing)} (a row needs \"time\" and "
                          "\"text\", optionally \"topic\")")
    try:
        when = parse_time(row["time"])
    except (ValueError, TypeError, OverflowError, OSError) as e:
        raise GptkitError(f"{where}: malformed timestamp {row['time']!r} ({e}): give ISO-8601 such as "
                          "2024-05-01T13:05:00Z, or unix seconds") from None
    text = row["text"]
    if not isinstance(text, str):
        raise GptkitError(f"{where}: \"text\" is a {type(text).__name__} ({json.dumps(text)[:60]}), not a string")
    if not text.strip():
        raise GptkitError(f"{where}: \"text\" is empty")
    topic = row.get("topic")
    if topic is not None and not isinstance(topic, (str, int)) or isinstance(topic, bool):
        raise GptkitError(f"{where}: \"topic\" is a {type(topic).__name__}, not a string")
    topic = str(topic).strip() if topic is not None and str(topic).strip() else None
    return Item(when, text, topic, where)


def _rows(lines: Iterable[tuple[int, str]], fmt: str, name: str,
          header: list[str] | None = None) -> Iterator[tuple[Any, str]]:
    """(row, "name:line") for each non-blank line; a JSON syntax error is a row of its own (raised later)."""
    for number, line in lines:
        if not line.strip():
            continue
        where = f"{name}:{number}"
        if fmt == "jsonl":
            try:
                yield json.loads(line), where
            except json.JSONDecodeError as e:
                yield GptkitError(f"{where}: not valid JSON ({e.msg}, column {e.colno})"), where
        else:
            assert header is not None
            values = next(csv.reader([line]))
            if len(values) < 2:
                yield GptkitError(f"{where}: expected the columns {','.join(header)}, got {len(values)}"), where
                continue
            yield dict(zip(header, values)), where


def _csv_header(line: str, name: str) -> list[str]:
    header = [h.strip().lower() for h in next(csv.reader([line]))]
    if "time" not in header or "text" not in header:
        raise GptkitError(f"{name}:1: a CSV stream needs a header with time,text[,topic]; got {line.strip()!r}")
    return header


def _format_of(name: str, first_line: str) -> str:
    if name.endswith(".csv"):
        return "csv"
    if any(name.endswith(s) for s in (".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "jsonl" if first_line.lstrip().startswith("{") else "csv"  # stdin or an unknown suffix: sniff


def parse_lines(lines: Sequence[str], name: str, *, skip_bad: bool = False, first_line: int = 1,
                header: list[str] | None = None, warn: Callable[[str], None] | None = None) -> list[Item]:
    """Items of a stream's lines (JSON lines, or CSV with a header unless `header` is given); a bad row raises
    GptkitError naming `name:line`, or with skip_bad is passed to `warn` and dropped."""
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    numbered = list(enumerate(lines, start=first_line))
    first = next((line for _, line in numbered if line.strip()), "")
    fmt = "csv" if header is not None else _format_of(name, first)
    if fmt == "csv" and header is None:
        while numbered and not numbered[0][1].strip():
            numbered.pop(0)
        if not numbered:
            return []
        header = _csv_header(numbered.pop(0)[1], name)
    items = []
    for row, where in _rows(numbered, fmt, name, header):
        try:
            if isinstance(row, GptkitError):
                raise row
            items.append(_item_from_row(row, where))
        except GptkitError as e:
            if not skip_bad:
                raise
            warn(f"{e} (skipped)")
    return items


def read_stream(source: str | Path | IO[str], *, skip_bad: bool = False,
                warn: Callable[[str], None] | None = None) -> list[Item]:
    """Every item of a file (`.jsonl` / `.csv`, or sniffed), of "-" (standard input) or of an open text file, in
    time order. An empty stream is an error; so is a bad row, naming its line, unless skip_bad."""
    if isinstance(source, (str, Path)) and str(source) == "-":
        name, text = "<stdin>", sys.stdin.read()
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise GptkitError(f"{path}: no such file (for a directory of files use --watch {path})")
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise GptkitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    else:
        name, text = getattr(source, "name", "<stream>"), source.read()
    items = parse_lines(text.splitlines(), name, skip_bad=skip_bad, warn=warn)
    if not items:
        raise GptkitError(f"{name}: the stream is empty: no rows to monitor (expected JSON lines such as "
                          '{"time": "2024-05-01T13:05:00Z", "text": "...", "topic": "billing"} or a CSV with a '
                          "time,text[,topic] header)")
    return sorted(items, key=lambda item: item.time)


@dataclass
class DirectoryWatcher:
    """New complete lines of the stream files in a directory, polled: files that appear and lines appended to
    files already read. A line counts once it ends with a newline, so a half-written row is read when finished."""

    directory: Path
    skip_bad: bool = False
    warn: Callable[[str], None] | None = None
    _offsets: dict[Path, int] = field(default_factory=dict)
    _lines: dict[Path, int] = field(default_factory=dict)
    _headers: dict[Path, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not Path(self.directory).is_dir():
            raise GptkitError(f"{self.directory}: not a directory (--watch takes a directory of "
                              f"{', '.join(STREAM_SUFFIXES)} files)")

    def poll(self) -> list[Item]:
        """The items added since the last poll."""
        items: list[Item] = []
        for path in sorted(p for p in Path(self.directory).iterdir() if p.suffix in STREAM_SUFFIXES and p.is_file()):
            with path.open("rb") as f:
                f.seek(self._offsets.get(path, 0))
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1
            if end == 0:
                continue
            self._offsets[path] = self._offsets.get(path, 0) + end
            lines = chunk[:end].decode("utf-8", errors="replace").splitlines()
            first = self._lines.get(path, 0) + 1
            self._lines[path] = first - 1 + len(lines)
            if path.suffix == ".csv" and path not in self._headers:
                self._headers[path] = _csv_header(lines[0], str(path))
                lines, first = lines[1:], first + 1
            items += parse_lines(lines, str(path), skip_bad=self.skip_bad, first_line=first,
                                 header=self._headers.get(path), warn=self.warn)
        return items

    def follow(self, *, poll_seconds: float = 1.0, idle_seconds: float = 10.0) -> Iterator[list[Item]]:
        """Batches of new items until nothing new came for idle_seconds (or the caller stops: Ctrl-C)."""
        last_new = time.monotonic()
        while True:
            batch = self.poll()
            if batch:
                last_new = time.monotonic()
                yield sorted(batch, key=lambda item: item.time)
            elif time.monotonic() - last_new >= idle_seconds:
                return
            time.sleep(poll_seconds)


# ------------------------------------------------------------------------------------------------
# scoring


def llm_scorer(llm: Any, *, negative_label: str | None = None, batch_size: int = 256,
               transform: Callable[[str], str] | None = None) -> Scorer:
    """P(negative) of texts from a gptkit classification checkpoint (`LLM.load(path)`), `batch_size` texts per
    `llm.classify` call. negative_label: the head's label for negative (default: "negative", "neg", "-1" or "0",
    whichever it has). transform: applied to each text before classifying (e.g. str.lower)."""
    import torch  # only for inference_mode: classify builds no autograd graph then

    with torch.inference_mode():
        labels = list(llm.classify(["probe"])[0].probs)
    label = negative_label or next((x for x in ("negative", "neg", "-1", "0") if x in labels), None)
    if label not in labels:
        raise GptkitError(f"the classifier's labels are {labels}: pass --negative-label with the one meaning "
                          "negative" if label is None else f"--negative-label {label!r} is not one of {labels}")

    def score(texts: list[str]) -> list[float]:
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                out += [p.probs[label] for p in llm.classify([transform(t) for t in chunk] if transform else chunk)]
        return out

    return score


# ------------------------------------------------------------------------------------------------
# aggregation and the alert rule


@dataclass(frozen=True)
class AlertRule:
    """When a bucket's negative share is a swing. z: alert when (share - baseline) / spread reaches it: a robust
    rolling z-score, the baseline being the median share of the previous `window` buckets with at least min_count
    items, the spread the larger of their scaled MAD and the bucket's binomial standard error at the baseline share
    (None: off); threshold: alert
    when the share reaches it (None: off); combine: "any" (either rule) or "all" (both). One alert per swing: a
    swing ends after `cooldown` eligible buckets in a row that do not fire."""

    window: int = 24
    z: float | None = 3.0
    threshold: float | None = None
    combine: str = "any"
    min_count: int = 10
    min_baseline: int = 6  # eligible buckets needed in the window before z is defined
    min_std: float = 0.02  # floor of the spread: a flat history must not turn noise into a huge z
    cooldown: int = 2

    def __post_init__(self) -> None:
        if self.z is None and self.threshold is None:
            raise GptkitError("the alert rule needs --z or --threshold (or both)")
        if self.combine not in ("any", "all"):
            raise GptkitError(f"combine must be 'any' or 'all', not {self.combine!r}")
        if self.window < 2 or self.min_count < 1 or self.cooldown < 1 or not 2 <= self.min_baseline <= self.window:
            raise GptkitError("the alert rule needs window >= 2, min_count >= 1, cooldown >= 1 and "
                              "2 <= min_baseline <= window")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise GptkitError(f"threshold is a negative share in (0, 1], not {self.threshold}")


@dataclass(frozen=True)
class MonitorConfig:
    bucket_seconds: int = 3600
    rule: AlertRule = field(default_factory=AlertRule)
    topics: bool = True  # a series per topic besides ALL
    examples: int = 3  # example texts per alert (the most negative of its bucket)

    def __post_init__(self) -> None:
        if self.bucket_seconds < 1:
            raise GptkitError(f"the bucket must be at least one second, not {self.bucket_seconds}")


@dataclass
class Bucket:
    """One time bucket of one series (ALL or a topic)."""

    topic: str
    start: datetime
    end: datetime
    count: int = 0
    negative: int = 0
    sum_p_negative: float = 0.0
    z: float | None = None
    baseline: float | None = None  # mean negative share of the window
    fired: bool = False
    alert: bool = False  # the first bucket of a swing

    @property
    def negative_share(self) -> float | None:
        return self.negative / self.count if self.count else None

    @property
    def mean_sentiment(self) -> float | None:
        """Mean of P(positive) - P(negative), in [-1, 1]."""
        return 1 - 2 * self.sum_p_negative / self.count if self.count else None

    def record(self) -> dict[str, Any]:
        share, sentiment = self.negative_share, self.mean_sentiment
        return {"type": "bucket", "topic": self.topic, "start": _iso(self.start), "end": _iso(self.end),
                "count": self.count, "negative": self.negative,
                "negative_share": None if share is None else round(share, 4),
                "mean_sentiment": None if sentiment is None else round(sentiment, 4),
                "z": None if self.z is None else round(self.z, 3),
                "baseline_share": None if self.baseline is None else round(self.baseline, 4), "fired": self.fired}


@dataclass(frozen=True)
class Alert:
    topic: str
    start: datetime  # the bucket where the swing began
    end: datetime
    count: int
    negative_share: float
    z: float | None
    baseline_share: float | None
    rule: str  # which rule(s) fired: "z", "threshold" or "z+threshold"
    examples: list[dict[str, Any]]

    def record(self) -> dict[str, Any]:
        return {"type": "alert", "topic": self.topic, "start": _iso(self.start), "end": _iso(self.end),
                "count": self.count, "negative_share": round(self.negative_share, 4),
                "z": None if self.z is None else round(self.z, 3),
                "baseline_share": None if self.baseline_share is None else round(self.baseline_share, 4),
                "rule": self.rule, "examples": self.examples}


@dataclass
class Report:
    config: MonitorConfig
    buckets: dict[str, list[Bucket]]  # topic (ALL first) -> buckets in time order, empty ones included
    alerts: list[Alert]
    items: int
    scores: list[float]  # P(negative) of each item, in the items' time order

    def records(self) -> list[dict[str, Any]]:
        """Every bucket summary and alert as JSON-ready dicts, in time order (an alert after its bucket)."""
        rows = [b.record() for series in self.buckets.values() for b in series]
        rows += [a.record() for a in self.alerts]
        return sorted(rows, key=lambda r: (r["start"], r["type"] == "alert", r["topic"] != ALL, r["topic"]))

    def write_jsonl(self, path: str | Path | IO[str]) -> None:
        write_jsonl(self.records(), path)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def bucket_start(t: datetime, seconds: int) -> datetime:
    return datetime.fromtimestamp(math.floor(t.timestamp() / seconds) * seconds, tz=timezone.utc)


def aggregate(items: Sequence[Item], scores: Sequence[float], config: MonitorConfig) -> dict[str, list[Bucket]]:
    """Per series (ALL, then each topic in name order): one Bucket per bucket_seconds from the first item's bucket to
    the last's, empty buckets included (so the rolling window counts time, not rows)."""
    if not items:
        return {}
    size = config.bucket_seconds
    first = bucket_start(min(i.time for i in items), size).timestamp()
    last = bucket_start(max(i.time for i in items), size).timestamp()
    n_buckets = int((last - first) // size) + 1
    topics = sorted({i.topic for i in items if i.topic is not None}) if config.topics else []
    series: dict[str, list[Bucket]] = {}
    for topic in [ALL, *topics]:
        series[topic] = [Bucket(topic, datetime.fromtimestamp(first + k * size, tz=timezone.utc),
                                datetime.fromtimestamp(first + (k + 1) * size, tz=timezone.utc))
                         for k in range(n_buckets)]
    for item, p in zip(items, scores):
        k = int((item.time.timestamp() - first) // size)
        for topic in (ALL, item.topic) if item.topic in series else (ALL,):
            b = series[topic][k]
            b.count += 1
            b.negative += p >= 0.5
            b.sum_p_negative += p
    return series


def apply_rule(buckets: Sequence[Bucket], rule: AlertRule) -> list[int]:
    """Fill each bucket's z, baseline and fired; return the indices where a swing begins (one per swing)."""
    starts, quiet, in_swing = [], 0, False
    for k, b in enumerate(buckets):
        share = b.negative_share
        history = [h.negative_share for h in buckets[max(0, k - rule.window):k] if h.count >= rule.min_count]
        if len(history) >= rule.min_baseline:
            # Median and MAD rather than mean and std: the window may hold an earlier swing, which would lift the
            # baseline and widen the spread until the next swing looked normal (1.4826 MAD = std for a normal).
            mean = statistics.median(history)  # type: ignore[type-var]
            spread = 1.4826 * statistics.median(abs(h - mean) for h in history)  # type: ignore[operator]
            # A bucket of few texts is noisier than the window's typical one: its binomial standard error at the
            # baseline share is the least spread to expect (so a quiet night does not alert on noise).
            noise = math.sqrt(mean * (1 - mean) / b.count) if b.count else 0.0
            b.baseline = mean
            b.z = None if share is None else (share - mean) / max(spread, noise, rule.min_std)
        if b.count < rule.min_count or share is None:
            continue  # too few items to judge: neither fires nor ends a swing
        hits = [rule.z is not None and b.z is not None and b.z >= rule.z,
                rule.threshold is not None and share >= rule.threshold]
        active = [h for h, on in zip(hits, (rule.z is not None, rule.threshold is not None)) if on]
        b.fired = all(active) if rule.combine == "all" else any(active)
        if b.fired:
            quiet = 0
            if not in_swing:
                in_swing, b.alert = True, True
                starts.append(k)
        elif in_swing:
            quiet += 1
            if quiet >= rule.cooldown:
                in_swing, quiet = False, 0
    return starts


def _alert(bucket: Bucket, rule: AlertRule, items: Sequence[Item], scores: Sequence[float],
           n_examples: int) -> Alert:
    fired = [name for name, on in (("z", rule.z is not None and bucket.z is not None and bucket.z >= rule.z),
                                   ("threshold", rule.threshold is not None
                                    and (bucket.negative_share or 0) >= rule.threshold)) if on]
    inside = [(p, it) for it, p in zip(items, scores) if bucket.start <= it.time < bucket.end
              and (bucket.topic == ALL or it.topic == bucket.topic)]
    inside.sort(key=lambda pair: -pair[0])
    examples: list[dict[str, Any]] = []
    for p, it in inside:
        if len(examples) < n_examples and all(e["text"] != it.text for e in examples):  # a repeated text once
            examples.append({"time": _iso(it.time), "topic": it.topic, "text": it.text, "p_negative": round(p, 4)})
    return Alert(bucket.topic, bucket.start, bucket.end, bucket.count, bucket.negative_share or 0.0, bucket.z,
                 bucket.baseline, "+".join(fired), examples)


def monitor(items: Sequence[Item], classifier: Scorer | None, config: MonitorConfig | None = None, *,
            scores: Sequence[float] | None = None) -> Report:
    """Score the items (or take `scores`, P(negative) per item), aggregate them and apply the alert rule."""
    config = config or MonitorConfig()
    if not items:
        raise GptkitError("the stream is empty: no items to monitor")
    items = sorted(items, key=lambda item: item.time)
    if scores is None:
        if classifier is None:
            raise GptkitError("pass a classifier (texts -> P(negative)) or the scores")
        scores = list(classifier([item.text for item in items]))
    if len(scores) != len(items):
        raise GptkitError(f"{len(scores)} scores for {len(items)} items")
    if not all(isinstance(p, (int, float)) and 0.0 <= p <= 1.0 for p in scores):
        raise GptkitError("scores must be probabilities in [0, 1]")
    series = aggregate(items, scores, config)
    alerts = []
    for buckets in series.values():
        for k in apply_rule(buckets, config.rule):
            alerts.append(_alert(buckets[k], config.rule, items, scores, config.examples))
    alerts.sort(key=lambda a: (a.start, a.topic != ALL, a.topic))
    return Report(config, series, alerts, len(items), list(scores))


class Monitor:
    """`monitor` fed in batches (a watched directory): `feed` returns the records of buckets that have closed
    (the newest item's bucket is still open) and of the alerts they raised, each once. Items that arrive for a
    closed bucket count in `finish()`'s report, but an alert already emitted is not taken back."""

    def __init__(self, classifier: Scorer, config: MonitorConfig | None = None) -> None:
        self.classifier, self.config = classifier, config or MonitorConfig()
        self.items: list[Item] = []
        self.scores: list[float] = []
        self._emitted: set[tuple[str, str, str]] = set()

    def feed(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        if not items:
            return []
        self.scores += list(self.classifier([item.text for item in items]))
        self.items += list(items)
        open_from = bucket_start(max(item.time for item in self.items), self.config.bucket_seconds)
        return self._new_records(lambda r: r["end"] <= _iso(open_from))

    def finish(self) -> tuple[Report, list[dict[str, Any]]]:
        """The report on everything fed, and the records not yet emitted."""
        report = self.report()
        return report, self._new_records(lambda r: True, report)

    def report(self) -> Report:
        order = sorted(range(len(self.items)), key=lambda i: self.items[i].time)
        return monitor([self.items[i] for i in order], self.classifier, self.config,
                       scores=[self.scores[i] for i in order])

    def _new_records(self, closed: Callable[[dict[str, Any]], bool], report: Report | None = None) -> list[dict]:
        report = report or self.report()
        out = []
        for record in report.records():
            key = (record["type"], record["topic"], record["start"])
            if key not in self._emitted and closed(record):
                self._emitted.add(key)
                out.append(record)
        return out


def write_jsonl(records: Iterable[dict[str, Any]], path: str | Path | IO[str]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if isinstance(path, (str, Path)) and str(path) == "-":
        sys.stdout.write(text)
    elif isinstance(path, (str, Path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    else:
        path.write(text)


# ------------------------------------------------------------------------------------------------
# the command line


def parse_duration(text: str) -> int:
    """"90s", "15m", "1h", "1d" or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30m, 1h or 1d")
    return int(float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Monitor timestamped texts for negative sentiment swings.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="a .jsonl or .csv stream file, or - for standard input")
    src.add_argument("--watch", type=Path, help="a directory to poll for new files and appended lines")
    p.add_argument("--checkpoint", required=True, help="a gptkit classification checkpoint (gptkit finetune "
                                                       "--task classify)")
    p.add_argument("--negative-label", help="the classifier's label meaning negative (default: found)")
    p.add_argument("--lowercase", action="store_true", help="lower-case texts before classifying (for a classifier "
                                                            "trained on lower-case text)")
    p.add_argument("--bucket", type=parse_duration, default=3600, help="bucket size: 15m, 1h, 1d (default 1h)")
    p.add_argument("--window", type=int, default=24, help="buckets in the z-score baseline (default 24)")
    p.add_argument("--z", type=float, default=3.0, help="z-score that fires an alert (default 3; 0 turns it off)")
    p.add_argument("--threshold", type=float, help="negative share that fires an alert (default: off)")
    p.add_argument("--combine", choices=("any", "all"), default="any", help="with both rules: either or both fire")
    p.add_argument("--min-count", type=int, default=10, help="items a bucket needs to be judged (default 10)")
    p.add_argument("--cooldown", type=int, default=2, help="quiet buckets that end a swing (default 2)")
    p.add_argument("--no-topics", action="store_true", help="only the series of all items")
    p.add_argument("--skip-bad", action="store_true", help="warn about bad rows (naming the line) and skip them")
    p.add_argument("--out-jsonl", default="-", help="bucket summaries and alerts as JSON lines (default: stdout)")
    p.add_argument("--dashboard", type=Path, help="write the dashboard HTML page here")
    p.add_argument("--screenshot", type=Path, help="render the dashboard to this PNG with headless chromium")
    p.add_argument("--truth", type=Path, help="a synthetic stream's truth file (synthetic_stream.py): the dashboard "
                                              "marks the injected bursts")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="--watch: seconds between polls")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="--watch: stop after this long with nothing new")
    p.add_argument("--batch-size", type=int, default=256, help="texts per classify call")
    return p


def config_from(args: argparse.Namespace) -> MonitorConfig:
    rule = AlertRule(window=args.window, z=args.z or None, threshold=args.threshold, combine=args.combine,
                     min_count=args.min_count, min_baseline=min(6, args.window), cooldown=args.cooldown)
    return MonitorConfig(bucket_seconds=args.bucket, rule=rule, topics=not args.no_topics)


def _say_alert(record: dict[str, Any]) -> None:
    z = "" if record["z"] is None else f", z {record['z']:+.1f}"
    print(f"ALERT {record['start']} topic={record['topic']}: negative share {record['negative_share']:.0%} of "
          f"{record['count']}{z}", file=sys.stderr)


def run(args: argparse.Namespace) -> Report:
    from gptkit import LLM

    config = config_from(args)
    if args.screenshot is not None and args.dashboard is None:
        raise GptkitError("--screenshot renders the dashboard: pass --dashboard PATH too")
    watcher = DirectoryWatcher(args.watch, skip_bad=args.skip_bad) if args.watch is not None else None
    items = read_stream(args.input, skip_bad=args.skip_bad) if watcher is None else []
    scorer = llm_scorer(LLM.load(args.checkpoint), negative_label=args.negative_label, batch_size=args.batch_size,
                        transform=str.lower if args.lowercase else None)
    out = sys.stdout if args.out_jsonl == "-" else None
    if out is None:
        Path(args.out_jsonl).parent.mkdir(parents=True, exist_ok=True)
        out = open(args.out_jsonl, "w", encoding="utf-8")  # noqa: SIM115 (closed below; watch mode appends live)
    try:
        stream = Monitor(scorer, config)
        batches = watcher.follow(poll_seconds=args.poll_seconds, idle_seconds=args.idle_seconds) if watcher \
            else iter([items])
        try:
            for batch in batches:
                records = stream.feed(batch)
                _emit(records, out)
        except KeyboardInterrupt:
            print("stopped (Ctrl-C): reporting what was read", file=sys.stderr)
        if not stream.items:
            raise GptkitError(f"{args.watch}: the stream is empty: no rows arrived in {args.idle_seconds:g} s "
                              f"(files ending {', '.join(STREAM_SUFFIXES)})")
        report, rest = stream.finish()
        _emit(rest, out)
    finally:
        if out is not sys.stdout:
            out.close()
    if args.dashboard is not None:
        write_dashboard(report, args.dashboard, truth=read_truth(args.truth) if args.truth else ())
        print(f"dashboard: {args.dashboard}", file=sys.stderr)
        if args.screenshot is not None:
            screenshot(args.dashboard, args.screenshot)
            print(f"screenshot: {args.screenshot}", file=sys.stderr)
    print(f"{report.items} items, {len(report.buckets[ALL])} buckets, {len(report.alerts)} alerts", file=sys.stderr)
    return report


def _emit(records: list[dict[str, Any]], out: IO[str]) -> None:
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        if record["type"] == "alert":
            _say_alert(record)
    out.flush()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except GptkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
