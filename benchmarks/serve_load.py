"""Load test of `gptkit serve`: streaming clients on loopback, aggregate tokens/s, latency, errors, memory.

Starts `gptkit serve` in a subprocess for each model shape (random weights, made here: nothing is
downloaded), then for each concurrency level runs that many client tasks (asyncio + httpx), each
streaming /v1/completions requests one after another until the level's request count is done.
Every request asks for exactly --max-tokens tokens (ignore_eos) at temperature 0.8 with its own seed.

Per level it prints: aggregate output tokens/s (all tokens / wall time of the level), time to first
token and inter-token latency (p50 and p99 over all requests / gaps), errors, and the server's RSS
after the level. A final "soak" runs --soak-requests requests at the highest concurrency and checks
0 errors and RSS flat within ±10% (after the first level warmed the allocator up).

    python benchmarks/serve_load.py                                  # tiny and gpt2 shapes
    python benchmarks/serve_load.py --shapes tiny --levels 1,8 --requests 64 --soak-requests 0

Targets (issue): 8 concurrent streams >= 4x the aggregate tokens/s of 1 stream; 0 errors over 1,000
requests; server RSS flat (±10%) across the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _common import print_machine_info, print_table  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(shape: str, directory: Path) -> Path:
    """A random-weight checkpoint of `shape` with a tokenizer that covers its vocabulary."""
    import torch

    from gptkit.checkpoint import save_checkpoint
    from gptkit.config import ModelConfig
    from gptkit.data.prepare import bundled_corpus_path
    from gptkit.data.tokenizers import load_tokenizer_preset
    from gptkit.models.gpt import GPT
    from gptkit.tokenizer import Tokenizer

    if shape == "gpt2":
        tokenizer = load_tokenizer_preset("gpt2")
        config = ModelConfig.from_preset("gpt2")
    else:
        tokenizer = Tokenizer.train_bpe([bundled_corpus_path().read_text()], 2048)
        config = ModelConfig.from_preset(shape, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    return save_checkpoint(directory / shape, GPT(config), tokenizer)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Level:
    concurrency: int
    tokens: int = 0
    errors: int = 0
    requests: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    wall: float = 0.0
    rss: float = 0.0


async def one_request(client, url: str, body: dict, level: Level) -> None:
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                level.errors += 1
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if not chunk.get("choices"):
                    continue
                now = time.perf_counter()
                if last is None:
                    level.ttft.append(now - start)
                else:
                    level.itl.append(now - last)
                last = now
                level.tokens += 1  # the server sends one chunk per generated token
    except Exception:  # a dropped connection is an error of the run, not of this script
        level.errors += 1
    finally:
        level.requests += 1


async def run_level(base: str, concurrency: int, requests: int, args) -> Level:
    import httpx

    level = Level(concurrency)
    counter = iter(range(requests))

    async def worker(client) -> None:
        for i in counter:
            body = {"model": "bench", "prompt": "The quick brown fox", "max_tokens": args.max_tokens,
                    "temperature": 0.8, "seed": i, "stream": True, "ignore_eos": True}
            await one_request(client, f"{base}/v1/completions", body, level)

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        level.wall = time.perf_counter() - start
    return level


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"gptkit serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit("gptkit serve did not become ready")


def bench_shape(shape: str, args, workdir: Path) -> list[list]:
    checkpoint = make_checkpoint(shape, workdir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    levels = [int(x) for x in args.levels.split(",")]
    command = [sys.executable, "-m", "gptkit", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
               "--model-name", "bench", "--max-batch", str(max(levels)), "--max-queue", "1024"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_ready(base, proc)
        asyncio.run(run_level(base, 1, 2, args))  # warm-up
        results = []
        for concurrency in levels:
            requests = max(args.requests, concurrency)
            level = asyncio.run(run_level(base, concurrency, requests, args))
            level.rss = rss_mb(proc.pid)
            results.append(level)
        soak = None
        if args.soak_requests:
            rss_before = rss_mb(proc.pid)
            soak = asyncio.run(run_level(base, max(levels), args.soak_requests, args))
            soak.rss = rss_mb(proc.pid)
        single = results[0].tokens / results[0].wall if results and results[0].concurrency == 1 else None
        for level in results:
            rate = level.tokens / level.wall
            rows.append([shape, level.concurrency, level.requests, rate,
                         f"{rate / single:.2f}x" if single else "", 1000 * percentile(level.ttft, 50),
                         1000 * percentile(level.ttft, 99), 1000 * percentile(level.itl, 50),
                         1000 * percentile(level.itl, 99), level.errors, f"{level.rss:.0f}"])
        by_level = {lv.concurrency: lv.tokens / lv.wall for lv in results}
        if 1 in by_level and 8 in by_level:
            ratio = by_level[8] / by_level[1]
            print(f"{shape}: 8 streams / 1 stream = {ratio:.2f}x  [{'PASS' if ratio >= 4 else 'FAIL'}: target >= 4x]")
        if soak is not None:
            drift = soak.rss / rss_before - 1
            print(f"{shape}: soak {soak.requests} requests at {soak.concurrency} streams: {soak.errors} errors, "
                  f"RSS {rss_before:.0f} -> {soak.rss:.0f} MB ({drift:+.1%})  "
                  f"[{'PASS' if soak.errors == 0 and abs(drift) <= 0.10 else 'FAIL'}: 0 errors, RSS within ±10%]")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,gpt2", help="model presets, comma-separated")
    parser.add_argument("--levels", default="1,4,8,16,32", help="concurrent streams, comma-separated")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (at least its concurrency)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--soak-requests", type=int, default=1000,
                        help="requests of the final soak at the highest level (0 to skip)")
    args = parser.parse_args()
    print_machine_info()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            rows += bench_shape(shape, args, Path(tmp))
    print()
    print_table(rows, ["shape", "streams", "requests", "tok/s", "vs 1", "TTFT p50 ms", "TTFT p99 ms",
                       "ITL p50 ms", "ITL p99 ms", "errors", "RSS MB"])
    print("tok/s: output tokens of all requests / wall time of the level; TTFT: request sent -> first token; "
          "ITL: gap between tokens of one stream; RSS: the server's resident memory after the level.")


if __name__ == "__main__":
    main()
