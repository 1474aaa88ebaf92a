"""The sentiment monitor's dashboard: one offline HTML page (matplotlib charts inlined as base64 PNG data URLs, a
table of alerts) drawn from a monitor Report, and a screenshot of it by headless chromium; knows nothing of how the
items were read or scored.
"""

from __future__ import annotations

import base64
import html
import io
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import timezone
from pathlib import Path
from typing import Any

from gptkit import GptkitError

ALL = "all"  # the series of every item (monitor.ALL)
NEGATIVE, REST, ALERT = "#c0392b", "#9fb3c8", "#e74c3c"


def _figure_png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _axes_style(ax: Any, title: str) -> None:
    import matplotlib.dates as mdates  # heavy; only when drawing

    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d %H:%M", tz=timezone.utc))


def charts(report: Any, truth: Sequence[Any] = ()) -> dict[str, str]:
    """The three charts as PNG data URLs: volume, negative share with the alerts, negative share per topic.
    truth: known bursts (objects with start, end, topic), drawn as hatched spans: for synthetic streams."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    import matplotlib.pyplot as plt

    everything = report.buckets[ALL]
    width = report.config.bucket_seconds / 86400  # bar width in matplotlib's date unit (days)
    starts = [b.start for b in everything]
    out = {}

    fig, ax = plt.subplots(figsize=(12.4, 2.4))
    negative = [b.negative for b in everything]
    rest = [b.count - b.negative for b in everything]
    ax.bar(starts, negative, width=width, align="edge", color=NEGATIVE, label="negative")
    ax.bar(starts, rest, width=width, align="edge", bottom=negative, color=REST, label="other")
    ax.set_ylabel("texts")
    ax.legend(loc="upper right", frameon=False, ncol=2, fontsize=9)
    _axes_style(ax, "Volume per bucket")
    out["volume"] = _figure_png(fig)
    plt.close(fig)

    rule = report.config.rule
    fig, ax = plt.subplots(figsize=(12.4, 2.9))
    judged = [b for b in everything if b.count >= rule.min_count]
    ax.plot([b.start for b in judged], [b.negative_share for b in judged], color="#34495e", lw=1.3,
            label="negative share")
    base = [b for b in everything if b.baseline is not None]
    ax.plot([b.start for b in base], [b.baseline for b in base], color="#7f8c8d", lw=1, ls="--",
            label=f"baseline (previous {rule.window})")
    for b in everything:
        if b.fired:
            ax.axvspan(b.start, b.end, color=ALERT, alpha=0.12, lw=0)
    alerts = [a for a in report.alerts if a.topic == ALL]
    ax.scatter([a.start for a in alerts], [a.negative_share for a in alerts], marker="v", s=90, color=ALERT,
               zorder=5, label="alert")
    if rule.threshold is not None:
        ax.axhline(rule.threshold, color=ALERT, lw=0.8, ls=":", label=f"threshold {rule.threshold:g}")
    _truth_spans(ax, [b for b in truth if b.topic is None], "injected burst (every topic)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    ax.legend(loc="upper right", frameon=False, ncol=5, fontsize=9)
    _axes_style(ax, "Negative share, all topics (shaded: buckets that fired)")
    out["share"] = _figure_png(fig)
    plt.close(fig)

    topics = [t for t in report.buckets if t != ALL]
    if topics:
        fig, ax = plt.subplots(figsize=(12.4, 2.9))
        colors = plt.get_cmap("tab10")
        for n, topic in enumerate(topics):
            judged = [b for b in report.buckets[topic] if b.count >= rule.min_count]
            ax.plot([b.start for b in judged], [b.negative_share for b in judged], color=colors(n % 10), lw=1.1,
                    label=topic)
            mine = [a for a in report.alerts if a.topic == topic]
            ax.scatter([a.start for a in mine], [a.negative_share for a in mine], marker="v", s=80,
                       color=colors(n % 10), edgecolor="black", zorder=5)
            _truth_spans(ax, [b for b in truth if b.topic == topic], None, color=colors(n % 10))
        ax.set_ylim(0, 1)
        ax.set_ylabel("share")
        ax.legend(loc="upper right", frameon=False, ncol=min(len(topics), 6), fontsize=9)
        _axes_style(ax, "Negative share per topic (triangles: alerts)")
        out["topics"] = _figure_png(fig)
        plt.close(fig)
    return out


def _truth_spans(ax: Any, bursts: Sequence[Any], label: str | None, color: Any = "#555555") -> None:
    for n, b in enumerate(bursts):
        ax.axvspan(b.start, b.end, ymax=0.08, facecolor="none", edgecolor=color, hatch="////", lw=0,
                   label=label if n == 0 else None)


def _fmt(t: Any) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def _alert_rows(report: Any) -> str:
    if not report.alerts:
        return '<tr><td colspan="7" class="none">No alerts.</td></tr>'
    rows = []
    for a in report.alerts:
        examples = "".join(f"<li><span class=p>{e['p_negative']:.2f}</span> {html.escape(e['text'])}</li>"
                           for e in a.examples)
        z = "–" if a.z is None else f"{a.z:+.1f}"
        baseline = "–" if a.baseline_share is None else f"{a.baseline_share:.0%}"
        rows.append(f"<tr class=alert><td>{_fmt(a.start)}</td><td>{html.escape(a.topic)}</td>"
                    f"<td>{a.negative_share:.0%}</td><td>{baseline}</td><td>{z}</td><td>{a.count}</td>"
                    f"<td><ul>{examples}</ul></td></tr>")
    return "\n".join(rows)


def _topic_rows(report: Any) -> str:
    rows = []
    for topic, buckets in report.buckets.items():
        count = sum(b.count for b in buckets)
        negative = sum(b.negative for b in buckets)
        sentiment = sum(b.count * b.mean_sentiment for b in buckets if b.count) / count if count else 0.0
        alerts = sum(a.topic == topic for a in report.alerts)
        rows.append(f"<tr><td>{html.escape(topic)}</td><td>{count}</td><td>{negative / count:.0%}</td>"
                    f"<td>{sentiment:+.2f}</td><td>{alerts}</td></tr>")
    return "\n".join(rows)


def dashboard_html(report: Any, title: str = "Sentiment monitor", truth: Sequence[Any] = ()) -> str:
    """The page as one string: no external scripts, styles, fonts or images."""
    images = charts(report, truth)
    everything = report.buckets[ALL]
    rule = report.config.rule
    rules = [f"z ≥ {rule.z:g} over the previous {rule.window} buckets"] if rule.z is not None else []
    rules += [f"share ≥ {rule.threshold:g}"] if rule.threshold is not None else []
    rule_text = (" or " if rule.combine == "any" else " and ").join(rules) + \
        f"; buckets with ≥ {rule.min_count} texts; a swing ends after {rule.cooldown} quiet buckets"
    minutes = report.config.bucket_seconds / 60
    bucket = f"{minutes / 60:g} h" if minutes >= 60 else f"{minutes:g} min"
    figures = "".join(f'<figure><img id="chart-{name}" alt="{name} chart" src="{src}"></figure>'
                      for name, src in images.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }} .sub {{ color: #666; font-size: 13px; margin-bottom: 14px; }}
.cards {{ display: flex; gap: 12px; margin-bottom: 10px; }}
.card {{ background: #f4f6f8; border-radius: 6px; padding: 8px 14px; min-width: 120px; }}
.card b {{ display: block; font-size: 20px; }} .card span {{ color: #666; font-size: 12px; }}
.card.hot b {{ color: {ALERT}; }}
figure {{ margin: 0 0 6px; }} img {{ max-width: 100%; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; margin-bottom: 16px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 5px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f4f6f8; }} tr.alert td:first-child {{ border-left: 3px solid {ALERT}; white-space: nowrap; }}
ul {{ margin: 0; padding-left: 16px; }} .p {{ color: {NEGATIVE}; font-variant-numeric: tabular-nums; }}
.none {{ color: #666; }} h2 {{ font-size: 16px; margin: 14px 0 6px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="sub">{_fmt(everything[0].start)} – {_fmt(everything[-1].end)} UTC · {bucket} buckets · alert when
{html.escape(rule_text)}</div>
<div class="cards">
<div class="card"><b>{report.items:,}</b><span>texts</span></div>
<div class="card"><b>{len(everything)}</b><span>buckets</span></div>
<div class="card"><b>{sum(b.negative for b in everything) / max(report.items, 1):.0%}</b><span>negative</span></div>
<div class="card"><b>{len(report.buckets) - 1}</b><span>topics</span></div>
<div class="card hot"><b>{len(report.alerts)}</b><span>alerts</span></div>
</div>
{figures}
<h2>Alerts</h2>
<table id="alerts"><thead><tr><th>bucket (UTC)</th><th>topic</th><th>negative</th><th>baseline</th><th>z</th>
<th>texts</th><th>most negative texts (P(negative))</th></tr></thead>
<tbody>
{_alert_rows(report)}
</tbody></table>
<h2>Topics</h2>
<table id="topics"><thead><tr><th>topic</th><th>texts</th><th>negative</th><th>mean sentiment</th><th>alerts</th>
</tr></thead><tbody>
{_topic_rows(report)}
</tbody></table>
</body></html>
"""


def write_dashboard(report: Any, path: str | Path, title: str = "Sentiment monitor", *,
                    truth: Sequence[Any] = ()) -> Path:
    """The dashboard page at `path`; truth: known bursts to mark on the charts (synthetic streams)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dashboard_html(report, title, truth), encoding="utf-8")
    return path


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def screenshot(page: str | Path, png: str | Path, *, size: tuple[int, int] = (1280, 1600),
               timeout: float = 90.0) -> Path:
    """Render an HTML file to a PNG with headless chromium (offline: no network, sync or updates)."""
    browser = find_chromium()
    if browser is None:
        raise GptkitError("--screenshot needs chromium (apt-get install chromium); the dashboard itself was written")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
                   f"--window-size={size[0]},{size[1]}", Path(page).resolve().as_uri()]
        try:
            result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GptkitError(f"chromium took over {timeout:g} s to render {page}") from None
    if not png.is_file():
        raise GptkitError(f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr.strip()[-300:]}")
    return png
