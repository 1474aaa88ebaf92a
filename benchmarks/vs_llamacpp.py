"""gptkit beside llama.cpp on the same CPU and the same model, interleaved round by round, medians of --repeats:
decode tokens/s at batch 1 and of 8 sequences, prefill tokens/s, and the aggregate tokens/s of the two servers under
1 and 8 concurrent streams over HTTP; for float32, 8-bit (gptkit int8 against llama.cpp Q8_0) and 4-bit (gptkit
int4, groups of 32, against Q4_0). Every row prints gptkit / llama.cpp.

llama.cpp is built from a pinned source package once into a cache directory: `pip download` of the
llama-cpp-python sdist (LLAMA_CPP_PYTHON, which vendors llama.cpp's source), then cmake Release with native CPU
flags (GGML_NATIVE), targets TOOLS. `--llama-cpp DIR` takes an existing build's bin/ instead. If it cannot be
fetched or built, its rows are skipped with the reason; gptkit's are still measured.

The models: random weights of the GPT-2-small shape (GPT-2's tokenizer) and of the `tiny` preset (a BPE tokenizer
trained here), exported to GGUF by gptkit's own exporter (`gptkit convert --to-gguf`; f32 and q8_0; Q4_0 by
llama.cpp's llama-quantize from the f32 file), so both sides run exactly the same weights. For GPT-2-small,
llama.cpp's own converter (convert_hf_to_gguf.py, on gptkit's Hugging Face export) is run as a cross-check: one
line says whether its tensors equal gptkit's export. llama.cpp's side: `llama-bench -p 0 -n N` (decode),
`-p 128 -n 0` (prefill), `llama-batched-bench -npp 16 -ntg N -npl 8` (8 sequences), with -t = torch's thread
count; gptkit's: greedy `generate` (ignore_eos) of N tokens after 16-token prompts (1 or 8 of them, prefill
included), and the prefill of a 128-token prompt (one generated token), with the same threads. Serving: `gptkit
serve [--quantize]` and `llama-server -np 8` side by side on the same weights, 1 and 8 concurrent clients each
sending two non-streamed /v1/completions of 64 greedy tokens (ignore_eos); completion tokens/s from `usage`.

    python benchmarks/vs_llamacpp.py                       # ~10 min the first time (the build), ~15 min after
    python benchmarks/vs_llamacpp.py --llama-cpp /path/to/llama.cpp/build/bin --shapes gpt2
    python benchmarks/vs_llamacpp.py --no-amx              # llama.cpp without AMX (see NO_AMX)
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _common import print_machine_info, print_table  # noqa: E402
from serve_load import make_checkpoint  # noqa: E402

from gptkit.adapt.quantize import QuantizeConfig, quantize_model  # noqa: E402
from gptkit.api import LLM  # noqa: E402
from gptkit.inference.generate import generate  # noqa: E402
from gptkit.inference.sampling import SamplingParams  # noqa: E402
from gptkit.interop.gguf import export_gguf  # noqa: E402

LLAMA_CPP_PYTHON = "0.3.36"
"""The llama-cpp-python release whose vendored llama.cpp is built (its sdist holds the source)."""
TOOLS = ("llama-bench", "llama-batched-bench", "llama-simple", "llama-server", "llama-quantize")


NO_AMX = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AVX512=ON",
          "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
          "-DGGML_AMX_BF16=OFF"]
"""--no-amx: AVX-512 (VNNI, BF16) without AMX tiles. On the reference VM the native build's AMX int8 path crashes
in Q8_0 prompt processing (SIGILL/SIGSEGV) though the CPU lists AMX."""


def build_llama_cpp(cache: Path, no_amx: bool = False) -> tuple[Path | None, str]:
    """(bin directory, "") of a llama.cpp build in `cache`, built if missing; (None, why) when it cannot be."""
    flavour = "build-no-amx" if no_amx else "build"
    bin_dir = cache / f"llama-cpp-python-{LLAMA_CPP_PYTHON}" / flavour / "bin"
    if all((bin_dir / tool).is_file() for tool in TOOLS):
        return bin_dir, ""
    if shutil.which("cmake") is None:
        return None, "cmake is not installed"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"llama.cpp: fetching llama-cpp-python=={LLAMA_CPP_PYTHON} (source) and building it in {cache} ...",
          flush=True)
    fetch = subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                            "--no-binary", ":all:", "--no-deps", "-d", str(cache)], capture_output=True, text=True)
    archives = sorted(cache.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"))
    if fetch.returncode != 0 or not archives:
        return None, f"pip download failed: {fetch.stderr.strip().splitlines()[-1:] or fetch.returncode}"
    target = cache / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"
    if not (target / "CMakeLists.txt").is_file():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            with tarfile.open(archives[0]) as archive:
                archive.extractall(tmp, filter="data")
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(next(Path(tmp).glob("*/vendor/llama.cpp"))), str(target))
    flags = NO_AMX if no_amx else ["-DGGML_NATIVE=ON"]
    steps = [["cmake", "-S", str(target), "-B", str(target / flavour), "-DCMAKE_BUILD_TYPE=Release", *flags,
              "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF"],
             ["cmake", "--build", str(target / flavour), "-j", str(torch.get_num_threads()), "--target",
              *TOOLS]]
    for step in steps:
        run = subprocess.run(step, capture_output=True, text=True)
        if run.returncode != 0:
            return None, f"{' '.join(step[:2])} failed: {run.stderr.strip()[-300:]}"
    return bin_dir, ""


def llama_bench(bin_dir: Path, model: Path, prompt: int, new: int, threads: int) -> float:
    """llama-bench's tokens/s for one test (prompt processing when new == 0, generation otherwise)."""
    run = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(model), "-p", str(prompt), "-n", str(new), "-t",
                          str(threads), "-r", "1", "-o", "json"], capture_output=True, text=True, timeout=1200)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or [""])[-1][:120]
        raise RuntimeError(f"llama-bench exited {run.returncode}" + (f" ({last})" if last else "")
                           + (" (a crash: segmentation fault)" if run.returncode in (-11, 139) else ""))
    return float(json.loads(run.stdout)[0]["avg_ts"])


def llama_batched_bench(bin_dir: Path, model: Path, sequences: int, new: int, threads: int) -> float:
    """llama-batched-bench's generation tokens/s of `sequences` parallel 16-token prompts, `new` tokens each (one
    retry: on the reference VM it once exited 0 without printing its results)."""
    for _ in range(2):
        speed = _batched_bench_once(bin_dir, model, sequences, new, threads)
        if isinstance(speed, float):
            return speed
    raise RuntimeError(speed)


def _batched_bench_once(bin_dir: Path, model: Path, sequences: int, new: int, threads: int) -> float | str:
    run = subprocess.run([str(bin_dir / "llama-batched-bench"), "-m", str(model), "-c", str(sequences * (16 + new)),
                          "-npp", "16", "-ntg", str(new), "-npl", str(sequences), "-t", str(threads),
                          "--output-format", "jsonl"], capture_output=True, text=True, timeout=1200)
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{") and "speed_tg" in line]
    if run.returncode != 0 or not results:
        last = (run.stderr.strip().splitlines() or [""])[-1][:120]
        return f"llama-batched-bench exited {run.returncode} without results" + (f" ({last})" if last else "")
    return float(results[-1]["speed_tg"])


def llama_quantize(bin_dir: Path | None, source: Path, target: Path, kind: str) -> tuple[Path | None, str]:
    """(`source` re-quantized to `kind` by llama.cpp's own llama-quantize, "") or (None, why not)."""
    if bin_dir is None or not (bin_dir / "llama-quantize").is_file():
        return None, "no llama-quantize"
    run = subprocess.run([str(bin_dir / "llama-quantize"), str(source), str(target), kind],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0 or not target.is_file():
        return None, f"llama-quantize {kind} exited {run.returncode}"
    return target, ""


def gptkit_decode(llm: LLM, new: int, sequences: int = 1) -> float:
    """Greedy tokens/s of `sequences` 16-token prompts decoded together to `new` tokens each (prefill included)."""
    prompts = [[100 + 7 * j + i for i in range(16)] for j in range(sequences)]
    start = time.perf_counter()
    generate(llm.model, llm.tokenizer, prompts, SamplingParams(max_tokens=new, temperature=0, ignore_eos=True))
    return sequences * new / (time.perf_counter() - start)


def gptkit_prefill(llm: LLM, length: int = 128) -> float:
    prompt = [100 + i % 200 for i in range(length)]
    start = time.perf_counter()
    generate(llm.model, llm.tokenizer, [prompt], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    return length / (time.perf_counter() - start)


async def _load(base: str, model: str, streams: int, requests: int, max_tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds) of `requests` non-streamed completions sent by `streams` concurrent clients."""
    import asyncio

    import httpx

    counter = iter(range(requests))
    tokens = 0

    async def client_loop(client) -> None:
        nonlocal tokens
        for i in counter:
            body = {"model": model, "prompt": f"Once upon a time {i}", "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True}
            response = await client.post(f"{base}/v1/completions", json=body)
            response.raise_for_status()
            tokens += int(response.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=streams + 2)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(streams)))
        return tokens, time.perf_counter() - start


def _wait(base: str, proc: subprocess.Popen, timeout: float = 120) -> bool:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


PRECISIONS = {  # name -> (gptkit's --quantize, llama.cpp's weights: "f32"/"q8_0" from gptkit's exporter, else
    "float32": (None, "f32"),   # re-quantized from f32 by llama-quantize)
    "8-bit (int8 / Q8_0)": ("int8", "q8_0"),
    "4-bit (int4 g32 / Q4_0)": ("int4", "Q4_0"),
}


def converter_cross_check(checkpoint: Path, work: Path, bin_dir: Path | None) -> str:
    """llama.cpp's own converter (convert_hf_to_gguf.py of the same source) on gptkit's Hugging Face export of
    `checkpoint`, against gptkit's GGUF export: same tensors, same values? One line saying what was found."""
    import numpy as np
    from gguf import GGUFReader

    from gptkit.interop.hf import export_hf

    script = bin_dir.parent.parent / "convert_hf_to_gguf.py" if bin_dir is not None else None
    if script is None or not script.is_file():
        return "converter cross-check skipped: no convert_hf_to_gguf.py beside the llama.cpp build"
    hf_dir = export_hf(checkpoint, work / f"{checkpoint.name}-hf", overwrite=True)
    theirs_path = work / f"{checkpoint.name}-converter-f32.gguf"
    run = subprocess.run([sys.executable, str(script), str(hf_dir), "--outfile", str(theirs_path), "--outtype", "f32"],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or [""])[-1][:160]
        return f"converter cross-check: llama.cpp's converter failed ({last})"
    ours_path = export_gguf(checkpoint, work / f"{checkpoint.name}-crosscheck-f32.gguf", overwrite=True)

    def tensors(path: Path) -> dict[str, np.ndarray]:
        return {t.name: np.asarray(t.data) for t in GGUFReader(str(path)).tensors}

    ours, theirs = tensors(ours_path), tensors(theirs_path)
    only = sorted(set(ours) ^ set(theirs))
    common = sorted(set(ours) & set(theirs))
    worst = max((float(np.abs(ours[n].astype(np.float64) - theirs[n].astype(np.float64)).max())
                 for n in common if ours[n].shape == theirs[n].shape), default=float("nan"))
    shapes = [n for n in common if ours[n].shape != theirs[n].shape]
    verdict = "identical" if not only and not shapes and worst == 0 else "DIFFERENT"
    return (f"converter cross-check: llama.cpp's convert_hf_to_gguf.py and gptkit's exporter wrote {len(common)} "
            f"common tensors, max |difference| {worst:g}; {len(shapes)} of other shapes; only in one: "
            f"{', '.join(only[:4]) or 'none'} -> {verdict}")


def make_ggufs(shape: str, checkpoint: Path, work: Path, bin_dir: Path | None) -> dict[str, tuple[Path | None, str]]:
    """llama.cpp's weights for each precision: (path, "") or (None, why there are none)."""
    ggufs: dict[str, tuple[Path | None, str]] = {}
    for name, (_, kind) in PRECISIONS.items():
        if kind in ("f32", "q8_0"):
            ggufs[name] = (export_gguf(checkpoint, work / f"{shape}-{kind}.gguf", outtype=kind), "")
        else:
            ggufs[name] = llama_quantize(bin_dir, ggufs["float32"][0], work / f"{shape}-{kind}.gguf", kind)
    return ggufs


def bench_serving(shape: str, precision: str, checkpoint: Path, gguf_path: Path | None, bin_dir: Path | None,
                  why: str, args) -> list[list]:
    """Aggregate tokens/s of `gptkit serve` and `llama-server` (the same weights) under 1 and 8 streams."""
    import asyncio

    from serve_load import free_port

    threads = str(torch.get_num_threads())
    block = LLM.load(checkpoint).model.config.block_size
    max_tokens = min(64, block - 16)
    quantize = PRECISIONS[precision][0]
    servers: dict[str, tuple[str, subprocess.Popen]] = {}
    port = free_port()
    servers["gptkit"] = (f"http://127.0.0.1:{port}", subprocess.Popen(
        [sys.executable, "-m", "gptkit", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
         "--model-name", "bench", "--log-level", "warning", "--max-batch", "8",
         *(["--quantize", quantize] if quantize else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    server_binary = bin_dir / "llama-server" if bin_dir is not None else None
    if server_binary is not None and server_binary.is_file() and gguf_path is not None:
        port = free_port()
        servers["llama.cpp"] = (f"http://127.0.0.1:{port}", subprocess.Popen(
            [str(server_binary), "-m", str(gguf_path), "--port", str(port), "-t", threads, "-np", "8", "-c",
             str(8 * block), "--no-webui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    else:
        why = why or (f"{bin_dir} has no llama-server" if gguf_path is not None else "no weights for llama.cpp")
    rates: dict[tuple[str, int], list[float]] = {}
    try:
        ready = {name: _wait(base, proc) for name, (base, proc) in servers.items()}
        for _ in range(args.repeats):
            for streams in (1, 8):
                for name, (base, _) in servers.items():
                    if ready[name]:
                        tokens, seconds = asyncio.run(_load(base, "bench", streams, 2 * streams, max_tokens))
                        rates.setdefault((name, streams), []).append(tokens / seconds)
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    rows = []
    for streams in (1, 8):
        mine = rates.get(("gptkit", streams))
        theirs = rates.get(("llama.cpp", streams))
        name = f"serving over HTTP, {streams} stream{'s' if streams > 1 else ''}, {precision} (aggregate)"
        if not mine:
            rows.append([shape, name, "gptkit serve did not start", "-", "-"])
        elif theirs:
            rows.append([shape, name, statistics.median(mine), statistics.median(theirs),
                         f"{statistics.median(mine) / statistics.median(theirs):.2f}"])
        else:
            reason = why or ("llama-server did not start" if "llama.cpp" in servers else "no llama-server")
            rows.append([shape, name, statistics.median(mine), f"skipped: {reason}", "-"])
    return rows


def bench_shape(shape: str, work: Path, bin_dir: Path | None, why: str, args) -> list[list]:
    checkpoint = make_checkpoint(shape, work)
    float_llm = LLM.load(checkpoint)
    llms = {name: float_llm if mode is None else
            LLM(quantize_model(copy.deepcopy(float_llm.model), QuantizeConfig(mode)), float_llm.tokenizer)
            for name, (mode, _) in PRECISIONS.items()}
    ggufs = make_ggufs(shape, checkpoint, work, bin_dir)
    if shape == "gpt2":  # the converter recognises GPT-2's own tokenizer, not one trained here
        print(converter_cross_check(checkpoint, work, bin_dir), flush=True)
    threads = torch.get_num_threads()
    block = float_llm.model.config.block_size
    new, length = min(args.new_tokens, block - 17), min(128, block - 1)  # what fits the context
    tests = {}  # row -> (gptkit's call, llama.cpp's call or the reason there is none)
    for precision, llm in llms.items():
        gguf, no_gguf = ggufs[precision]
        reason = "" if gguf is not None and bin_dir is not None else (no_gguf or why)

        def theirs(call, reason=reason):
            return reason or call

        tests[f"decode {new} tokens, batch 1, {precision}"] = (
            lambda llm=llm: gptkit_decode(llm, new),
            theirs(lambda gguf=gguf: llama_bench(bin_dir, gguf, 0, new, threads)))
        tests[f"decode {new} tokens, 8 sequences, {precision}"] = (
            lambda llm=llm: gptkit_decode(llm, new, 8),
            theirs(lambda gguf=gguf: llama_batched_bench(bin_dir, gguf, 8, new, threads)))
        tests[f"prefill {length} tokens, {precision}"] = (
            lambda llm=llm: gptkit_prefill(llm, length),
            theirs(lambda gguf=gguf: llama_bench(bin_dir, gguf, length, 0, threads)))
    for ours, _ in tests.values():  # warm-up
        ours()
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in tests}
    failed: dict[str, str] = {name: theirs for name, (_, theirs) in tests.items() if isinstance(theirs, str)}
    for _ in range(args.repeats):  # interleaved: every row, both sides, each round
        for name, (ours, theirs) in tests.items():
            results[name][0].append(ours())
            if name not in failed:
                try:
                    results[name][1].append(theirs())
                except RuntimeError as e:  # that row only: the others still compare
                    failed[name] = str(e)
    rows = []
    if not args.skip_serving:
        for precision in PRECISIONS:
            rows += bench_serving(shape, precision, checkpoint, ggufs[precision][0], bin_dir, why, args)
    for name, (ours, theirs) in results.items():
        mine = statistics.median(ours)
        if name in failed:
            rows.append([shape, name, mine, f"skipped: {failed[name]}", "-"])
        else:
            peer = statistics.median(theirs)
            rows.append([shape, name, mine, peer, f"{mine / peer:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-cpp", type=Path, help="an existing llama.cpp build's bin/ (with llama-bench)")
    parser.add_argument("--cache", type=Path, default=Path("out/llama.cpp"), help="where llama.cpp is built once")
    parser.add_argument("--no-amx", action="store_true", help="build llama.cpp with AVX-512 but without AMX")
    parser.add_argument("--skip-serving", action="store_true", help="leave out the HTTP rows (gptkit serve beside "
                                                                    "llama-server)")
    parser.add_argument("--shapes", default="gpt2,tiny")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_machine_info()
    if args.llama_cpp is not None:
        missing = [tool for tool in TOOLS if not (args.llama_cpp / tool).is_file()]
        bin_dir, why = (args.llama_cpp, "") if not missing else (None, f"{args.llama_cpp} has no {missing[0]}")
    else:
        bin_dir, why = build_llama_cpp(args.cache, args.no_amx)
    print(f"llama.cpp: {bin_dir or 'none: ' + why}; threads {torch.get_num_threads()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for shape in args.shapes.split(","):
            rows += bench_shape(shape, Path(work), bin_dir, why, args)
    print_table(rows, ["shape", "row", "gptkit tokens/s", "llama.cpp tokens/s", "gptkit / llama.cpp"])


if __name__ == "__main__":
    main()
