"""Weight-only quantization (`gptkit.adapt.quantize`): what int8 and int4 cost in quality and buy in decode speed,
beside float32 in the same run.

Quality, on a trained checkpoint (default: the `configs/base-mix.yaml` base of finetune_quality.py): perplexity and
bits per byte on its held-out split (`LLM.evaluate`, what `gptkit eval` prints) for float32, int8 and int4 (groups
of 32 and of 128), and greedy agreement: 24 prompts from the held-out text, 48 greedy tokens each; the share of
tokens equal to float32's at the same position and the share of completions identical to the end.
Targets (issue 14): int8 within 0.5% of float32's perplexity, int4 within 5%. Then the same base with an outlier
activation channel (OUTLIER_SCALE; the same function in float): what rounding activations to int8 costs there,
against int8-weight-only, with the plain base as the control.

Speed, on random weights of the GPT-2-small shape and the `tiny` preset: greedy decode tokens/s at batch 1 and 8
(a 16-token prompt, --new-tokens new ones, ignore_eos), float32 / int8 / int4 interleaved round by round, medians
of --repeats; with the weight bytes each step reads and the bound that re-reading them at the measured bandwidth
sets (as decode_throughput.py).

    python benchmarks/quantization.py                      # ~3-5 min on 2 cores once the base exists
    python benchmarks/quantization.py --skip-speed --checkpoint DIR
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _common import interleaved_medians, print_machine_info, print_table  # noqa: E402
from decode_throughput import make_tokenizer, read_probe  # noqa: E402

from gptkit.adapt import quantize  # noqa: E402
from gptkit.adapt.quantize import QuantizeConfig, quantize_model, quantized_bytes  # noqa: E402
from gptkit.api import LLM  # noqa: E402
from gptkit.checkpoint import recorded_data_dir  # noqa: E402
from gptkit.config import ModelConfig  # noqa: E402
from gptkit.evaluation.lm import evaluation_tokens  # noqa: E402
from gptkit.inference.generate import generate  # noqa: E402
from gptkit.inference.sampling import SamplingParams  # noqa: E402
from gptkit.models.gpt import GPT  # noqa: E402

VARIANTS = {"float32": None, "int8": QuantizeConfig("int8"), "int8-weight-only": QuantizeConfig("int8-weight-only"),
            "int4 (g32)": QuantizeConfig("int4", 32), "int4 (g128)": QuantizeConfig("int4", 128)}
TARGETS = {"int8": 0.5, "int8, int8 activations": 0.5, "int8-weight-only": 0.5, "int4 (g32)": 5.0,
           "int4 (g128)": 5.0}
OUTLIER_SCALE = 40.0
"""The outlier rows: channel 5 of every norm's output times this, the next matmul's input column divided by it (the
same function in float), as GPT-2's LayerNorm gains make outlier activation channels."""
INT8_EVERYWHERE = "int8, int8 activations"
"""A quality-only row: int8 with every matrix through oneDNN (activation rows rounded to int8), as GPT-2-small's
are; the base's matrices are below ONEDNN_MIN_SIDE, so its plain int8 row is weight-only."""


@contextlib.contextmanager
def onednn_everywhere(on: bool) -> Iterator[None]:
    old = quantize.ONEDNN_MIN_SIDE
    quantize.ONEDNN_MIN_SIDE = 1 if on else old
    try:
        yield
    finally:
        quantize.ONEDNN_MIN_SIDE = old


def quantized_copy(model: GPT, config: QuantizeConfig | None) -> GPT:
    return model if config is None else quantize_model(copy.deepcopy(model), config)  # type: ignore[return-value]


def quality(checkpoint: Path) -> None:
    base = LLM.load(checkpoint)
    data_dir = base.path
    texts = held_out_prompts(base)
    print(f"\nquality: {checkpoint} ({base.model.num_parameters() / 1e6:.1f}M parameters)")
    rows, reference = [], None
    float_tokens: list[list[int]] = []
    variants = dict(VARIANTS)
    if quantize._onednn_int8():
        variants = {**{k: v for k, v in variants.items() if not k.startswith("int4")}, INT8_EVERYWHERE: VARIANTS["int8"],
                    **{k: v for k, v in variants.items() if k.startswith("int4")}}
    for name, config in variants.items():
        llm = LLM(quantized_copy(base.model, config), base.tokenizer, path=data_dir)
        with onednn_everywhere(name == INT8_EVERYWHERE):
            metrics = llm.evaluate()
            params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
            tokens = [c.token_ids for c in generate(llm.model, llm.tokenizer, texts, params)]
        if reference is None:
            reference, float_tokens = metrics, tokens
        same = sum(a == b for x, y in zip(tokens, float_tokens) for a, b in zip(x, y)) / sum(map(len, float_tokens))
        whole = sum(x == y for x, y in zip(tokens, float_tokens)) / len(tokens)
        change = 100 * (metrics["perplexity"] / reference["perplexity"] - 1)
        target = TARGETS.get(name)
        verdict = "-" if target is None else ("met" if change <= target else "NOT met")
        rows.append([name, metrics["perplexity"], f"{change:+.2f}%", metrics["bits_per_byte"], f"{100 * same:.1f}%",
                     f"{100 * whole:.0f}%", quantized_bytes(llm.model) / 1e6,
                     f"<= {target}%: {verdict}" if target is not None else "-"])
    print_table(rows, ["weights", "perplexity", "vs float32", "bits/byte", "greedy tokens equal",
                       "completions equal", "weight MB", "target"])


def with_outlier_channel(model: GPT, channel: int = 5, scale: float = OUTLIER_SCALE) -> GPT:
    outlier = copy.deepcopy(model)
    with torch.no_grad():
        for block in outlier.blocks:
            for norm, linear in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc)):
                norm.weight[channel] *= scale
                if norm.bias is not None:
                    norm.bias[channel] *= scale
                linear.weight[:, channel] /= scale
    return outlier


def outlier_quality(checkpoint: Path) -> None:
    """Perplexity of the base and of its outlier-channel twin: float32, int8 with int8 activations everywhere, and
    int8-weight-only. The plain base is the control."""
    base = LLM.load(checkpoint)
    rows = []
    for name, model in (("the base", base.model), (f"a {OUTLIER_SCALE:g}x outlier channel", with_outlier_channel(
            base.model))):
        reference = LLM(model, base.tokenizer, path=base.path).evaluate()["perplexity"]
        row = [name, reference]
        for mode, everywhere in (("int8", True), ("int8-weight-only", False)):
            with onednn_everywhere(everywhere):
                ppl = LLM(quantized_copy(model, QuantizeConfig(mode)), base.tokenizer, path=base.path).evaluate()
            row.append(f"{100 * (ppl['perplexity'] / reference - 1):+.2f}%")
        rows.append(row)
    print(f"\noutlier channels: {checkpoint}, perplexity change against each model's own float32")
    print_table(rows, ["model", "float32 perplexity", "int8, int8 activations", "int8-weight-only"])


def held_out_prompts(llm: LLM, n: int = 24, length: int = 24) -> list[list[int]]:
    """`n` prompts of `length` tokens cut from the checkpoint's held-out split (as `evaluate` reads it)."""
    tokens, _ = evaluation_tokens(recorded_data_dir(llm.path), llm.tokenizer, "val")  # type: ignore[arg-type]
    step = max(1, (len(tokens) - length) // n)
    return [tokens[i * step:i * step + length].tolist() for i in range(n)]


def speed(shapes: list[str], batches: list[int], new_tokens: int, repeats: int) -> None:
    rows = []
    for shape in shapes:
        config = ModelConfig.from_preset(shape)
        torch.manual_seed(0)
        model = GPT(config).eval()
        tokenizer = make_tokenizer(config.vocab_size)
        models = {name: quantized_copy(model, cfg) for name, cfg in VARIANTS.items()}
        float_bytes = quantized_bytes(model)
        read, read_bytes = read_probe(float_bytes)
        print(f"\n{shape}: {model.num_parameters() / 1e6:.1f}M parameters, "
              + ", ".join(f"{name} {quantized_bytes(m) / 1e6:.0f} MB" for name, m in models.items()))
        for batch in batches:
            prompts = torch.randint(0, min(config.vocab_size, 300), (batch, 16),
                                    generator=torch.Generator().manual_seed(batch)).tolist()

            def run(m: GPT, tokens: int = new_tokens) -> None:
                generate(m, tokenizer, prompts, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True))

            sides = {name: (lambda m=m: run(m)) for name, m in models.items()}
            for m in models.values():
                run(m, 4)  # warm-up
            times = interleaved_medians({**sides, "read": read}, repeats, warmup=0)
            bandwidth = read_bytes / times.pop("read").median
            base_rate = new_tokens * batch / times["float32"].median
            for name, t in times.items():
                rate = new_tokens * batch / t.median
                bound = bandwidth / quantized_bytes(models[name]) * batch
                rows.append([shape, batch, name, rate, f"{rate / base_rate:.2f}x", bound,
                             f"{100 * rate / bound:.0f}%", f"{bandwidth / 1e9:.1f}"])
    print_table(rows, ["shape", "batch", "weights", "tokens/s", "vs float32", "re-read bound tok/s",
                       "of bound", "GB/s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint for the quality rows (default: the "
                                                         "cached configs/base-mix.yaml base)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--shapes", default="gpt2,tiny")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    print_machine_info()
    if not args.skip_quality:
        if args.checkpoint is None:
            from finetune_quality import ensure_base  # pretrains the shared base only when it is not cached

            args.checkpoint = ensure_base(args.out, quick=False)
        quality(args.checkpoint)
        if quantize._onednn_int8():
            outlier_quality(args.checkpoint)
    if not args.skip_speed:
        speed(args.shapes.split(","), [int(b) for b in args.batch_sizes.split(",")], args.new_tokens, args.repeats)


if __name__ == "__main__":
    main()
