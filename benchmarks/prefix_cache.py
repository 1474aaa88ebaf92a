"""Prefix caching in `gptkit serve`: time to first token when 8 clients share a 200-token system prompt, with the cache
on (the default) and off (--prefix-cache-tokens 0), two servers of the same random-weight model measured in turns.

Each wave sends 8 concurrent streaming /v1/completions requests whose prompts are the same 200-token "system
prompt" (a passage of the bundled corpus) followed by a question of their own (so only the system prompt is
shared), for --max-tokens tokens each. Both servers first answer one request with the system prompt (a running
server has seen it before); then waves alternate between them, --rounds each. Printed: time to first token
(median and p90 over all requests), the end-to-end time of a wave, and the cache-on / cache-off ratios.

    python benchmarks/prefix_cache.py                       # GPT-2-small shape, ~2 min on 2 cores
    python benchmarks/prefix_cache.py --shape tiny --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _common import print_machine_info, print_table  # noqa: E402
from serve_load import free_port, make_checkpoint, percentile, wait_ready  # noqa: E402

from gptkit.data.prepare import bundled_corpus_path  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402


def system_prompt(tokenizer: Tokenizer, tokens: int) -> str:
    text = bundled_corpus_path("tiny_shakespeare").read_text()[5000:20000]
    return tokenizer.decode(tokenizer.encode(text)[:tokens])


async def request(client, base: str, prompt: str, max_tokens: int) -> tuple[float, float]:
    """(time to first token, total time) of one streamed completion."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    start, first = time.perf_counter(), None
    async with client.stream("POST", f"{base}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"{base}: HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                if first is None and json.loads(line[5:]).get("choices"):
                    first = time.perf_counter() - start
    return first or float("nan"), time.perf_counter() - start


async def wave(base: str, prompts: list[str], max_tokens: int) -> tuple[list[float], float]:
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=len(prompts) + 2)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(request(client, base, p, max_tokens) for p in prompts))
        return [r[0] for r in results], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="gpt2", choices=("gpt2", "tiny"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--system-tokens", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print_machine_info()
    with tempfile.TemporaryDirectory() as work:
        checkpoint = make_checkpoint(args.shape, Path(work))
        tokenizer = Tokenizer.from_file(checkpoint / "tokenizer.json")
        system = system_prompt(tokenizer, args.system_tokens)
        servers, processes = {}, []
        for name, size in (("prefix cache off", "0"), ("prefix cache on", "4096")):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "gptkit", "serve", "--checkpoint", str(checkpoint),
                                     "--port", str(port), "--model-name", "bench", "--log-level", "warning",
                                     "--max-batch", str(args.clients), "--prefix-cache-tokens", size])
            processes.append(proc)
            servers[name] = f"http://127.0.0.1:{port}"
            wait_ready(servers[name], proc)
        try:
            ttft: dict[str, list[float]] = {name: [] for name in servers}
            walls: dict[str, list[float]] = {name: [] for name in servers}
            for name, base in servers.items():  # each has seen the system prompt once, as a running server has
                asyncio.run(wave(base, [system + "\nQuestion 0: who speaks first?\nAnswer:"], args.max_tokens))
            for r in range(args.rounds):
                for name, base in servers.items():
                    prompts = [system + f"\nQuestion {r}.{c}: what does the speaker want?\nAnswer:"
                               for c in range(args.clients)]
                    firsts, wall = asyncio.run(wave(base, prompts, args.max_tokens))
                    ttft[name] += firsts
                    walls[name].append(wall)
        finally:
            for proc in processes:
                proc.terminate()
                proc.wait(timeout=30)
    prompt_tokens = len(tokenizer.encode(system + "\nQuestion 0.0: what does the speaker want?\nAnswer:"))
    print(f"\n{args.shape}: {args.clients} concurrent clients, prompts of {prompt_tokens} tokens sharing the first "
          f"{args.system_tokens}, {args.max_tokens} new tokens each, {args.rounds} waves per server")
    off = statistics.median(ttft["prefix cache off"])
    rows = []
    for name in servers:
        median = statistics.median(ttft[name])
        rows.append([name, 1000 * median, 1000 * percentile(ttft[name], 90), 1000 * statistics.median(walls[name]),
                     f"{off / median:.2f}x"])
    print_table(rows, ["server", "TTFT median ms", "TTFT p90 ms", "wave ms (median)", "TTFT speed-up"])


if __name__ == "__main__":
    main()
