"""Prometheus metrics for `gptkit serve`, in the text exposition format (no dependency).

Counters and histograms are updated from the server's event loop only (one thread), so they need
no locks; the engine's own counters (`EngineStats`) and gauges are read when /metrics is scraped.

Names (all prefixed gptkit_):
    requests_total{endpoint,status}        HTTP requests by route and status code
    prompt_tokens_total                    prompt tokens of finished requests (usage.prompt_tokens)
    generation_tokens_total                generated tokens of finished requests (usage.completion_tokens)
    requests_waiting, running_rows         engine queue depth and rows in the running batch (gauges)
    max_batch_rows                         the engine's batch size (gauge)
    engine_requests_total{outcome}         submitted, finished, rejected, cancelled, timed_out
    engine_decode_steps_total, engine_batch_rows_total   (their ratio is the mean batch size)
    engine_prompt_tokens_total, engine_generated_tokens_total   tokens prefilled / sampled by the engine
    engine_speculative_draft_tokens_total, engine_speculative_accepted_tokens_total   speculation's drafts
    time_to_first_token_seconds            submission to first sampled token, per request
    queue_time_seconds                     submission to admission into the batch, per request
    inter_token_latency_seconds            per request: mean time between a sample's tokens after the first
    e2e_request_latency_seconds            request received to response complete (generation endpoints)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
               0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        if not self.values and not self.label_names:
            yield f"{self.name} 0"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += value
        self.count += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        cumulative = 0
        for bound, count in zip((*self.buckets, math.inf), self.counts):
            cumulative += count
            yield f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}'
        yield f"{self.name}_sum {_number(self.sum)}"
        yield f"{self.name}_count {self.count}"


def _gauge(name: str, help: str, value: float) -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]


class Metrics:
    """The server's metrics; `render(engine)` gives the /metrics body."""

    def __init__(self, prefix: str = "gptkit") -> None:
        self.prefix = prefix
        p = prefix + "_"
        self.requests = Counter(p + "requests_total", "HTTP requests by endpoint and status code.",
                                ("endpoint", "status"))
        self.prompt_tokens = Counter(p + "prompt_tokens_total", "Prompt tokens of completed requests.")
        self.generation_tokens = Counter(p + "generation_tokens_total", "Generated tokens of completed requests.")
        self.ttft = Histogram(p + "time_to_first_token_seconds",
                              "Time from submission to the first generated token.", LATENCY_BUCKETS)
        self.queue_time = Histogram(p + "queue_time_seconds",
                                    "Time from submission to admission into the running batch.", LATENCY_BUCKETS)
        self.itl = Histogram(p + "inter_token_latency_seconds",
                             "Mean time between two generated tokens of a sample, one observation per request.",
                             ITL_BUCKETS)
        self.e2e = Histogram(p + "e2e_request_latency_seconds",
                             "Time from receiving a generation request to its last byte.", LATENCY_BUCKETS)

    def observe_request(self, handles: Sequence[Any], *, prompt_tokens: int, completion_tokens: int,
                        e2e: float) -> None:
        """Record one finished generation request and its engine handles (`RequestHandle`)."""
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.e2e.observe(e2e)
        for handle in handles:
            stats = handle.stats
            if stats.admitted is not None:
                self.queue_time.observe(stats.admitted - stats.submitted)
            if stats.first_token is not None:
                self.ttft.observe(stats.first_token - stats.submitted)
            per_row = stats.completion_tokens / max(handle.n, 1)
            if stats.first_token is not None and stats.finished is not None and per_row > 1:
                self.itl.observe((stats.finished - stats.first_token) / (per_row - 1))

    def render(self, engine: Any = None) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.prompt_tokens, self.generation_tokens):
            lines += metric.render()
        if engine is not None:
            p = self.prefix + "_"
            lines += _gauge(p + "requests_waiting", "Requests waiting for room in the batch.", engine.queue_depth)
            lines += _gauge(p + "running_rows", "Rows (samples) in the running batch.", engine.running_rows)
            lines += _gauge(p + "max_batch_rows", "Rows the engine decodes together at most.",
                            engine.config.max_batch)
            s = engine.stats
            outcome = Counter(p + "engine_requests_total", "Engine requests by outcome.", ("outcome",))
            for name in ("submitted", "finished", "rejected", "cancelled", "timed_out"):
                outcome.inc(getattr(s, f"requests_{name}"), name)
            lines += outcome.render()
            for name, value, help in (
                    ("engine_decode_steps_total", s.decode_steps, "Decode steps run by the engine."),
                    ("engine_batch_rows_total", s.batch_rows_sum,
                     "Sum over decode steps of the rows decoded (divide by decode steps: mean batch size)."),
                    ("engine_prompt_tokens_total", s.prompt_tokens, "Prompt tokens prefilled by the engine."),
                    ("engine_generated_tokens_total", s.generated_tokens, "Tokens sampled by the engine."),
                    ("engine_speculative_draft_tokens_total", engine.speculation[0],
                     "Draft tokens fed by prompt-lookup speculation (--speculative-tokens)."),
                    ("engine_speculative_accepted_tokens_total", engine.speculation[1],
                     "Draft tokens the model accepted (divide by drafts: the acceptance rate).")):
                counter = Counter(p + name, help)
                counter.inc(value)
                lines += counter.render()
        for histogram in (self.ttft, self.queue_time, self.itl, self.e2e):
            lines += histogram.render()
        return "\n".join(lines) + "\n"
