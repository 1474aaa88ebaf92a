"""Prompt-lookup speculative decoding (`gptkit.inference.speculative`): how often the drafts are accepted, what a
verifying step costs, and the speed-up, beside plain greedy decoding in the same run.

1. Acceptance and speed-up on a trained model (default: the `configs/base-mix.yaml` base of finetune_quality.py),
   float32 and int8: greedy continuations of 24 prompts cut from its held-out split (--new-tokens each, batch 1,
   ignore_eos), with speculation off and with --speculative-tokens drafts; interleaved, medians of --repeats.
   Checked: the token ids are identical with and without (the benchmark stops if not). Reported: accepted share
   of drafted tokens, tokens per decode step, tokens/s of each and the ratio.
   Workloads: "held-out text" (the prompts as they are) and "quoting" (each prompt given twice, the second copy
   cut short: an answer that repeats its context, as retrieval-grounded replies do). The control is "foreign
   drafts": the same decoding with each row's latest n-gram looked up in another prompt's text (a shuffled
   pairing) instead of its own, which shows how much of the acceptance comes from the row's own text.
2. The cost of verifying: one decode step of 1 and of k + 1 tokens per row on GPT-2-small-shaped random weights
   (float32 and int8), the ratio that a step's accepted drafts must beat.

    python benchmarks/speculative.py                 # ~3 min on 2 cores once the base exists
    python benchmarks/speculative.py --checkpoint DIR --speculative-tokens 6
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _common import interleaved_medians, print_machine_info, print_table  # noqa: E402
from quantization import held_out_prompts  # noqa: E402

from gptkit.adapt.quantize import QuantizeConfig, quantize_model  # noqa: E402
from gptkit.api import LLM  # noqa: E402
from gptkit.config import ModelConfig  # noqa: E402
import gptkit.inference.decode as decode_module  # noqa: E402
from gptkit.inference.decode import DecodeBatch, make_rows, use_decode_layout  # noqa: E402
from gptkit.inference.generate import _drive  # noqa: E402
from gptkit.inference.sampling import SamplingParams  # noqa: E402
from gptkit.inference.speculative import Speculation, propose  # noqa: E402
from gptkit.models.gpt import GPT, KVCache  # noqa: E402


def decode(model, tokenizer, prompts, new: int, spec: Speculation | None) -> tuple[list[list[int]], DecodeBatch]:
    """Greedy continuations of each prompt alone (batch 1), with one DecodeBatch whose counters add up."""
    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    outputs, total = [], DecodeBatch(model, 1, speculation=spec)
    for prompt in prompts:
        rows = make_rows(model, tokenizer, [prompt], params)
        batch = DecodeBatch(model, 1, speculation=spec)
        outputs += [e.completion.token_ids for e in _drive(batch, rows) if e.completion is not None]
        for name in ("steps", "speculative_steps", "drafted", "accepted"):
            setattr(total, name, getattr(total, name) + getattr(batch, name))
    return outputs, total


class ForeignDrafts:
    """The control: while active, the decode batch looks drafts up in another prompt's text, not the row's own."""

    def __init__(self, prompts: list[list[int]], seed: int = 0) -> None:
        shuffled = random.Random(seed).sample(prompts, len(prompts))
        self.others = [(tuple(p), list(q)) for p, q in zip(prompts, shuffled)]

    def propose(self, context, spec, limit):
        for prompt, other in self.others:
            if tuple(context[:len(prompt)]) == prompt:  # the row's latest n-gram, looked up in the other text only
                return propose(other + list(context[-spec.max_ngram:]), spec, limit)
        return []

    def __enter__(self):
        decode_module.propose = self.propose  # the name DecodeBatch calls
        return self

    def __exit__(self, *exc):
        decode_module.propose = propose


def acceptance_rows(llm: LLM, args) -> list[list]:
    texts = held_out_prompts(llm, n=24, length=32)
    workloads = {"held-out text": texts,
                 "quoting": [t + t[:len(t) // 2] for t in texts]}  # the answer repeats its context
    spec = Speculation(tokens=args.speculative_tokens)
    models = {"float32": llm.model,
              "int8": quantize_model(copy.deepcopy(llm.model), QuantizeConfig("int8"))}
    rows = []
    for model_name, model in models.items():
        for workload, prompts in workloads.items():
            plain, base = decode(model, llm.tokenizer, prompts, args.new_tokens, None)
            fast, batch = decode(model, llm.tokenizer, prompts, args.new_tokens, spec)
            if fast != plain:
                raise SystemExit(f"{model_name}/{workload}: speculative tokens differ from plain greedy decoding")
            with ForeignDrafts(prompts):
                foreign, control = decode(model, llm.tokenizer, prompts, args.new_tokens, spec)
            assert foreign == plain
            times = interleaved_medians({
                "plain": lambda m=model, p=prompts: decode(m, llm.tokenizer, p, args.new_tokens, None),
                "speculative": lambda m=model, p=prompts: decode(m, llm.tokenizer, p, args.new_tokens, spec),
            }, args.repeats)
            tokens = sum(map(len, plain))
            plain_rate, fast_rate = tokens / times["plain"].median, tokens / times["speculative"].median
            share = lambda b: f"{100 * b.accepted / max(b.drafted, 1):.0f}%"  # noqa: E731
            rows.append([model_name, workload, share(batch), share(control), f"{tokens / batch.steps:.2f}",
                         f"{tokens / control.steps:.2f}", plain_rate, fast_rate, f"{fast_rate / plain_rate:.2f}x"])
    return rows


def verify_cost_rows(k: int, repeats: int) -> list[list]:
    """ms of one decode step feeding 1 and k + 1 tokens per row, GPT-2-small shape, batch 1."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset("gpt2")
    base = GPT(config).eval()
    rows = []
    for name, model in (("float32", base), ("int8", quantize_model(copy.deepcopy(base), QuantizeConfig("int8")))):
        use_decode_layout(model)
        cache = KVCache.allocate(config, 1, 256)

        def step(width: int, model=model, cache=cache) -> None:
            ids = torch.randint(0, 1000, (1, width))
            with torch.inference_mode():
                model(ids, input_pos=torch.arange(100, 100 + width)[None], kv_cache=cache)

        for width in (1, k + 1):  # warm-up
            step(width)
        times = interleaved_medians({w: (lambda w=w: step(w)) for w in (1, k + 1)}, repeats * 5)
        one, wide = times[1].median, times[k + 1].median
        rows.append(["gpt2", name, 1000 * one, 1000 * wide, f"{wide / one:.2f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: the base-mix base, "
                                                        "pretrained once into --out)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--speculative-tokens", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_machine_info()
    if args.checkpoint is None:
        from finetune_quality import ensure_base

        args.checkpoint = ensure_base(args.out, quick=False)
    llm = LLM.load(args.checkpoint)
    start = time.perf_counter()
    rows = acceptance_rows(llm, args)
    print(f"\nacceptance: {args.checkpoint} ({llm.model.num_parameters() / 1e6:.1f}M parameters), "
          f"{args.speculative_tokens} draft tokens a step, batch 1, {args.new_tokens} greedy tokens per prompt; "
          "tokens identical with and without speculation")
    print_table(rows, ["weights", "workload", "drafts accepted", "control: foreign drafts", "tokens/step",
                       "control tokens/step", "plain tok/s", "speculative tok/s", "speed-up"])
    print(f"\nverifying: one decode step of 1 and {args.speculative_tokens + 1} tokens (batch 1)")
    print_table(verify_cost_rows(args.speculative_tokens, args.repeats),
                ["shape", "weights", "1 token ms", f"{args.speculative_tokens + 1} tokens ms", "cost"])
    print(f"\n{time.perf_counter() - start:.0f} s. Speed-up on another model ~ its tokens/step / the cost of its "
          f"verifying step; medians of {args.repeats} interleaved rounds.")


if __name__ == "__main__":
    main()
