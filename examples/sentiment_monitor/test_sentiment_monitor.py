"""Tests of the sentiment monitor example: the alert rule on given scores (exactly), a tiny real classifier end to
end, the JSON lines, bad input, standard input, a watched directory, and the dashboard in headless chromium."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from monitor import ALL, AlertRule, DirectoryWatcher, Item, MonitorConfig, llm_scorer, main, monitor, read_stream
from stream_dashboard import find_chromium, write_dashboard
from synthetic_stream import Burst, StreamSpec, evaluate_alerts, make_stream, read_truth

from gptkit import LLM, GptkitError

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
POSITIVE = ["good", "great", "lovely", "superb", "fine", "happy"]
NEGATIVE = ["bad", "awful", "poor", "ugly", "dull", "sad"]
FILLER = ["the", "film", "was", "a", "plot", "story", "of", "and", "actor", "scene", "very", "quite"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def review(rng: random.Random, negative: bool) -> str:
    words = rng.sample(FILLER, 5)
    words.insert(rng.randrange(6), rng.choice(NEGATIVE if negative else POSITIVE))
    return " ".join(words)


def gptkit(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gptkit", *args], check=False, capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)
    assert proc.returncode == 0, f"gptkit {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A tiny classification checkpoint, trained as a user would: `gptkit pretrain` a few steps on the reviews,
    then `gptkit finetune --task classify` on them (one sentiment word per sentence: easy, so it must learn it)."""
    work = tmp_path_factory.mktemp("classifier")
    rng = random.Random(0)
    rows = [(review(rng, i % 2 == 1), "negative" if i % 2 else "positive") for i in range(400)]
    (work / "reviews.txt").write_text("\n".join(t for t, _ in rows) * 3 + "\n")
    (work / "reviews.csv").write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    gptkit("pretrain", "--data", "reviews.txt", "--tokenizer", "bpe", "--vocab-size", "300", "--out", "base",
           "--max-iters", "20", "--eval-interval", "20", "--model.n-layer", "1", "--model.n-head", "2",
           "--model.n-embd", "32", "--model.block-size", "32", "--batch-size", "4", "--sample-tokens", "0",
           cwd=work)
    gptkit("finetune", "--checkpoint", "base", "--task", "classify", "--method", "full", "--data", "reviews.csv",
           "--out", "clf", "--max-iters", "100", "--eval-interval", "50", "--learning-rate", "3e-3",
           "--warmup-iters", "5", "--quiet", cwd=work)
    return work / "clf"


def hourly(hours: int, per_hour: int, shares: dict[int, float], *, topic_of=lambda i: None,
           rng_seed: int = 0) -> tuple[list[Item], list[float]]:
    """`per_hour` items each hour, spread evenly; in hour h round(share * per_hour) of them negative (score 0.9, the
    rest 0.1), share = shares.get(h, 0.4). Deterministic counts, so the rule's numbers can be worked by hand."""
    rng = random.Random(rng_seed)
    items, scores = [], []
    for h in range(hours):
        negatives = round(shares.get(h, 0.4) * per_hour)
        flags = [True] * negatives + [False] * (per_hour - negatives)
        rng.shuffle(flags)
        for k, negative in enumerate(flags):
            when = T0 + timedelta(hours=h, seconds=k * 3600 // per_hour)
            items.append(Item(when, review(rng, negative), topic_of(k)))
            scores.append(0.9 if negative else 0.1)
    return items, scores


# ------------------------------------------------------------------------------------------------
# the alert rule, on given scores


def test_robust_z_score_alerts_once_per_swing_with_the_numbers_worked_by_hand():
    items, scores = hourly(48, 30, {30: 0.8, 31: 0.8, 32: 0.4, 33: 0.8, 40: 0.8})
    report = monitor(items, None, MonitorConfig(rule=AlertRule(window=24, z=3.0, cooldown=2)), scores=scores)
    alerts = [a for a in report.alerts if a.topic == ALL]
    # hours 30-33 are one swing (hour 32 alone is not the two quiet buckets that end it); hour 40 is another
    assert [a.start for a in alerts] == [T0 + timedelta(hours=30), T0 + timedelta(hours=40)]
    first = alerts[0]
    # baseline: the median of 24 buckets at 0.4; MAD 0, so the spread is the binomial error sqrt(.4 * .6 / 30)
    assert first.baseline_share == pytest.approx(0.4)
    assert first.z == pytest.approx((0.8 - 0.4) / math.sqrt(0.4 * 0.6 / 30))
    assert first.negative_share == pytest.approx(0.8) and first.count == 30 and first.rule == "z"
    assert len(first.examples) == 3 and all(e["p_negative"] == 0.9 for e in first.examples)
    buckets = report.buckets[ALL]
    assert [k for k, b in enumerate(buckets) if b.fired] == [30, 31, 33, 40]
    assert all(b.z is None for b in buckets[:6]) and buckets[6].z is not None  # min_baseline=6 buckets of history
    assert sum(b.count for b in buckets) == len(items) == 48 * 30


def test_threshold_rule_min_count_and_combine():
    items, scores = hourly(30, 20, {3: 0.75, 20: 0.75})
    few, few_scores = hourly(1, 5, {0: 1.0}, rng_seed=1)  # 5 texts, all negative, in hour 25: below min_count
    few = [Item(i.time + timedelta(hours=25), i.text) for i in few]
    rule = AlertRule(z=None, threshold=0.7, min_count=10)
    report = monitor(items + few, None, MonitorConfig(rule=rule), scores=scores + few_scores)
    assert [a.start.hour for a in report.alerts] == [3, 20]
    assert report.alerts[0].rule == "threshold" and report.alerts[0].z is None  # hour 3: no baseline yet
    assert report.buckets[ALL][25].count == 25 and not report.buckets[ALL][25].fired
    both = monitor(items, None, MonitorConfig(rule=AlertRule(z=3.0, threshold=0.7, combine="all")), scores=scores)
    assert [a.start.hour for a in both.alerts] == [20]  # hour 3 passes the threshold but has no z
    assert both.alerts[0].rule == "z+threshold"


def test_a_burst_on_one_topic_alerts_on_that_topic():
    topics = ["app", "billing", "delivery", "returns", "web"]  # five, so one topic's swing barely moves ALL
    items, scores = hourly(40, 60, {}, topic_of=lambda k: topics[k % 5])
    for i, item in enumerate(items):  # hour 30: every delivery text negative
        if item.time.hour == 6 and item.time.day == 2 and item.topic == "delivery":
            scores[i] = 0.95
    report = monitor(items, None, MonitorConfig(), scores=scores)
    assert [(a.topic, a.start) for a in report.alerts] == [("delivery", T0 + timedelta(hours=30))]
    assert set(report.buckets) == {ALL, *topics}
    burst = Burst(T0 + timedelta(hours=30), T0 + timedelta(hours=31), "delivery", 1.0)
    detection = evaluate_alerts(report.alerts, [burst], 3600)
    assert (detection.precision, detection.recall, detection.delay_buckets, detection.delay_minutes) == (1, 1, 0, 60)
    # an alert on another topic is a false one; an alert on ALL sees every burst
    other = evaluate_alerts([report.alerts[0].__class__(**{**report.alerts[0].__dict__, "topic": "app"})], [burst],
                            3600)
    assert other.precision == 0 and other.recall == 0


def test_bucket_summaries_as_json_lines(tmp_path):
    items, scores = hourly(30, 20, {26: 0.9})
    report = monitor(items, None, MonitorConfig(bucket_seconds=1800), scores=scores)
    path = tmp_path / "out.jsonl"
    report.write_jsonl(path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    buckets = [r for r in records if r["type"] == "bucket"]
    alerts = [r for r in records if r["type"] == "alert"]
    assert len(buckets) == 60 and sum(r["count"] for r in buckets) == len(items)
    assert buckets[0]["start"] == "2024-05-01T00:00:00Z" and buckets[0]["end"] == "2024-05-01T00:30:00Z"
    assert [r["start"] for r in alerts] == ["2024-05-02T02:00:00Z"]
    assert alerts[0]["negative_share"] == 0.9 and alerts[0]["examples"][0]["text"]
    share = sum(r["negative"] for r in buckets) / len(items)
    assert share == pytest.approx(sum(s >= 0.5 for s in scores) / len(items))
    # mean sentiment is the mean of P(positive) - P(negative)
    first = [1 - 2 * p for i, p in zip(items, scores) if i.time < T0 + timedelta(minutes=30)]
    assert buckets[0]["mean_sentiment"] == pytest.approx(sum(first) / len(first), abs=1e-4)
    assert buckets[0]["count"] == len(first)


# ------------------------------------------------------------------------------------------------
# input


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reads_iso_unix_seconds_csv_and_sorts(tmp_path):
    rows = [{"time": "2024-05-01T10:30:00+02:00", "text": "b", "topic": "app"}, {"time": 1714550400, "text": "a"},
            {"time": "1714554000.5", "text": "d"}, {"time": "2024-05-01T09:00:00Z", "text": "c"}]
    items = read_stream(write_rows(tmp_path / "s.jsonl", rows))
    assert [i.text for i in items] == ["a", "b", "c", "d"]
    assert items[0].time == datetime(2024, 5, 1, 8, tzinfo=timezone.utc)  # 1714550400 is 08:00 UTC
    assert items[1].time == datetime(2024, 5, 1, 8, 30, tzinfo=timezone.utc) and items[1].topic == "app"
    assert items[3].time == datetime(2024, 5, 1, 9, 0, 0, 500000, tzinfo=timezone.utc)
    (tmp_path / "s.csv").write_text('time,text,topic\n2024-05-01T09:00:00Z,"hello, world",billing\n'
                                    "2024-05-01T08:00:00,second,\n")
    items = read_stream(tmp_path / "s.csv")
    assert [(i.text, i.topic) for i in items] == [("second", None), ("hello, world", "billing")]


def test_bad_input_is_named(tmp_path, capsys):
    good = {"time": "2024-05-01T09:00:00Z", "text": "fine"}
    path = write_rows(tmp_path / "bad.jsonl", [good, good, {"time": "yesterday", "text": "x"}, good])
    with pytest.raises(GptkitError, match=r"bad\.jsonl:3: malformed timestamp 'yesterday'"):
        read_stream(path)
    warnings: list[str] = []
    assert len(read_stream(path, skip_bad=True, warn=warnings.append)) == 3
    assert len(warnings) == 1 and "bad.jsonl:3" in warnings[0]
    nontext = write_rows(tmp_path / "nontext.jsonl", [good, {"time": 1714550400, "text": {"body": "hi"}}])
    with pytest.raises(GptkitError, match=r"nontext\.jsonl:2: \"text\" is a dict"):
        read_stream(nontext)
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(GptkitError, match=r"broken\.jsonl:2: not valid JSON"):
        read_stream(tmp_path / "broken.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(GptkitError, match="the stream is empty"):
        read_stream(tmp_path / "empty.jsonl")
    (tmp_path / "bad.csv").write_text("time,text\n2024-05-01T09:00:00Z,ok\n2024-13-45T09:00:00Z,no\n")
    with pytest.raises(GptkitError, match=r"bad\.csv:3: malformed timestamp '2024-13-45T09:00:00Z'"):
        read_stream(tmp_path / "bad.csv")
    # the command line: one line on stderr, exit status 2, before any model is loaded
    for name, expected in (("bad.jsonl", "bad.jsonl:3: malformed timestamp"), ("empty.jsonl", "stream is empty"),
                           ("nontext.jsonl", "nontext.jsonl:2")):
        code = main(["--checkpoint", str(tmp_path / "no-model"), "--input", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_watcher_reads_new_files_and_only_finished_lines(tmp_path):
    watcher = DirectoryWatcher(tmp_path)
    assert watcher.poll() == []
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"time": 1714550400, "text": "one"}) + "\n" + '{"time": 1714550401, "te')
    assert [i.text for i in watcher.poll()] == ["one"]
    with a.open("a") as f:
        f.write('xt": "two"}\n')
    (tmp_path / "b.csv").write_text("time,text\n1714550402,three\n")
    (tmp_path / "notes.txt").write_text("not a stream\n")
    got = watcher.poll()
    assert sorted(i.text for i in got) == ["three", "two"]
    assert {i.where for i in got} == {f"{a}:2", f"{tmp_path / 'b.csv'}:2"}
    with (tmp_path / "b.csv").open("a") as f:
        f.write("not-a-time,four\n")
    with pytest.raises(GptkitError, match=r"b\.csv:3: malformed timestamp"):
        watcher.poll()


# ------------------------------------------------------------------------------------------------
# a real classifier, the script, the dashboard


def burst_stream(path: Path, *, hours: int = 36, per_hour: int = 24, burst: tuple[int, int] = (28, 30),
                 seed: int = 0) -> tuple[list[dict], Burst]:
    """Review sentences, 20% negative except 90% in the burst hours."""
    rng = random.Random(seed)
    rows = []
    for h in range(hours):
        share = 0.9 if burst[0] <= h < burst[1] else 0.2
        for k in range(per_hour):
            rows.append({"time": (T0 + timedelta(hours=h, minutes=60 * k // per_hour)).isoformat(),
                         "text": review(rng, rng.random() < share), "topic": ["web", "phone"][k % 2]})
    write_rows(path, rows)
    return rows, Burst(T0 + timedelta(hours=burst[0]), T0 + timedelta(hours=burst[1]), None, 0.9)


def test_the_classifier_finds_the_burst(classifier, tmp_path):
    llm = LLM.load(classifier)
    scorer = llm_scorer(llm)
    assert scorer(["the film was awful and dull", "a lovely superb story"])[0] > 0.5
    rows, burst = burst_stream(tmp_path / "s.jsonl")
    items = read_stream(tmp_path / "s.jsonl")
    report = monitor(items, scorer, MonitorConfig())
    truth = [r["text"] for r in rows]
    predicted = [p >= 0.5 for p in report.scores]
    negative = [any(w in t.split() for w in NEGATIVE) for t in truth]
    assert sum(p == n for p, n in zip(predicted, negative)) / len(rows) >= 0.9  # the tiny model did learn
    detection = evaluate_alerts(report.alerts, [burst], 3600)
    assert detection.recall == 1 and detection.precision == 1 and detection.delay_buckets == 0
    with pytest.raises(GptkitError, match="not one of"):
        llm_scorer(llm, negative_label="bad")


def test_script_writes_jsonl_and_a_dashboard_the_browser_shows(classifier, tmp_path):
    rows, _ = burst_stream(tmp_path / "s.jsonl")
    shot = tmp_path / "dash.png" if find_chromium() else None
    command = [sys.executable, str(HERE / "monitor.py"), "--checkpoint", str(classifier), "--input",
               str(tmp_path / "s.jsonl"), "--out-jsonl", str(tmp_path / "out.jsonl"), "--dashboard",
               str(tmp_path / "dash.html"), *(["--screenshot", str(shot)] if shot else [])]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    alerts = [r for r in records if r["type"] == "alert"]
    assert sum(r["count"] for r in records if r["type"] == "bucket" and r["topic"] == ALL) == len(rows)
    assert "2024-05-02T04:00:00Z" in [a["start"] for a in alerts if a["topic"] == ALL]
    assert "ALERT 2024-05-02T04:00:00Z topic=all" in proc.stderr
    if shot is None:
        pytest.skip("chromium is not installed: the dashboard was written but not checked in a browser")
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_in_browser(tmp_path / "dash.html", expect_alert="2024-05-02 04:00")


def check_in_browser(page: Path, expect_alert: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = find_chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={page.parent / 'profile'}",
                 "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    try:
        driver.get(page.as_uri())
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == 3 and all(w > 500 for w in widths), widths
        rows = driver.find_elements(By.CSS_SELECTOR, "#alerts tbody tr.alert")
        assert any(expect_alert in r.text and "all" in r.text for r in rows), [r.text for r in rows]
        assert driver.execute_script("return document.querySelectorAll('script, link[href], [src^=http]').length") == 0
    finally:
        driver.quit()


def test_standard_input(classifier, tmp_path):
    rows, _ = burst_stream(tmp_path / "s.jsonl", hours=30, burst=(26, 28))
    proc = subprocess.run([sys.executable, str(HERE / "monitor.py"), "--checkpoint", str(classifier), "--input", "-",
                           "--no-topics"], check=False, input=(tmp_path / "s.jsonl").read_text(),
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {r["topic"] for r in records} == {ALL}
    assert sum(r["count"] for r in records if r["type"] == "bucket") == len(rows)
    assert [r["start"] for r in records if r["type"] == "alert"] == ["2024-05-02T02:00:00Z"]
    empty = subprocess.run([sys.executable, str(HERE / "monitor.py"), "--checkpoint", str(classifier), "--input", "-"],
                           check=False, input="", capture_output=True, text=True, env=ENV, timeout=300)
    assert empty.returncode == 2 and "<stdin>: the stream is empty" in empty.stderr


def test_watched_directory_streams_alerts_as_buckets_close(classifier, tmp_path):
    rows, _ = burst_stream(tmp_path / "all.jsonl", hours=30, burst=(26, 28))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    out = tmp_path / "live.jsonl"
    proc = subprocess.Popen([sys.executable, str(HERE / "monitor.py"), "--checkpoint", str(classifier), "--watch",
                             str(inbox), "--poll-seconds", "0.2", "--idle-seconds", "4", "--out-jsonl", str(out),
                             "--no-topics"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        lines = [json.dumps(r) + "\n" for r in rows]
        half = 24 * 27  # the first 27 hours: the burst's first bucket closes when hour 28 arrives
        (inbox / "part1.jsonl").write_text("".join(lines[:half]))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 26):
            time.sleep(0.2)
        before = out.read_text()
        # hours 0-25 have closed; hour 26, the burst's first, is still open (its end has not been seen)
        assert before.count('"type": "bucket"') == 26 and '"type": "alert"' not in before, before[-500:]
        with (inbox / "part1.jsonl").open("a") as f:
            f.writelines(lines[half:half + 24])
        (inbox / "part2.jsonl").write_text("".join(lines[half + 24:]))
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(r["count"] for r in records if r["type"] == "bucket") == len(rows)
    assert [r["start"] for r in records if r["type"] == "alert"] == ["2024-05-02T02:00:00Z"]
    assert len({(r["type"], r["start"]) for r in records}) == len(records)  # each bucket and alert once


def test_dashboard_of_given_scores_escapes_texts(tmp_path):
    items, scores = hourly(30, 20, {26: 0.9})
    items = [Item(i.time, "<script>alert(1)</script> " + i.text, i.topic) for i in items]
    report = monitor(items, None, MonitorConfig(), scores=scores)
    page = write_dashboard(report, tmp_path / "d.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count('src="data:image/png;base64,') == 2  # volume and share; no topics, no topic chart


def test_synthetic_stream_injects_the_bursts_it_records(tmp_path):
    stream = make_stream(StreamSpec(days=3, rate_per_hour=200, bursts=3, seed=3))
    path, truth = stream.write(tmp_path / "s.jsonl")
    assert read_truth(truth) == stream.bursts and len(stream.bursts) == 3
    assert any(b.topic is None for b in stream.bursts) and any(b.topic is not None for b in stream.bursts)
    items = read_stream(path)
    assert len(items) == len(stream.rows) and all(r["text"] for r in stream.rows)

    def inside(row: dict) -> bool:
        when = datetime.fromisoformat(row["time"])
        return any(b.start <= when < b.end and b.topic in (None, row["topic"]) for b in stream.bursts)

    burst_rows = [r for r in stream.rows if inside(r)]
    other = [r for r in stream.rows if not inside(r)]
    share = (lambda rows: sum(r["label"] == "negative" for r in rows) / len(rows))
    assert share(burst_rows) == pytest.approx(0.8, abs=0.06) and share(other) == pytest.approx(0.4, abs=0.03)
    assert min(b.start for b in stream.bursts) >= T0 + timedelta(hours=24)  # after a day of baseline
