"""Greedy decoding speed: gptkit's sampler beside Hugging Face `generate`, with the same weights.

For each model shape and batch size, both sides decode the same random prompts greedily to exactly
--new-tokens tokens per row (gptkit with ignore_eos, Hugging Face with min_new_tokens), in one
process, interleaved round by round; the figure is the median over rounds. Tokens/s counts new
tokens x batch over the wall time of the whole generate call (prompt prefill included, model
construction excluded). Both sides' token ids are compared as a sanity check.

Decoding one token reads every weight once, so memory bandwidth sets a ceiling: the script
measures read bandwidth by reading fp32 tensors, and reports bound = bandwidth / weight bytes per
step (x batch, since a batch shares one read of the weights) and the fraction of it each side
reaches. Two bandwidths: of a 1 GB tensor (DRAM: the issue's definition of the bound), and of a
tensor as large as the weights, re-read as a decode step re-reads them. On CPUs whose last-level
cache holds much of the weights (480 MB of L3 shared with other machines' tenants on the reference
machine, against GPT-2-small's 498 MB), the second is higher, and it moves from run to run with
how much of the cache the neighbours leave; both fractions are printed.

On a busy machine, two torch threads can wait on each other for whole scheduler time slices
(100x slower steps on small models); --threads 1 then gives steadier, comparable figures.

    python benchmarks/decode_throughput.py                              # gpt2 and tiny, batch 1 and 8
    python benchmarks/decode_throughput.py --shapes tiny --batch-sizes 1 --new-tokens 128 --repeats 5
    python benchmarks/decode_throughput.py --shapes gpt2 --no-hf --bf16     # float32 beside bfloat16
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a plain script from anywhere: gptkit and _common
from _common import interleaved_medians, print_machine_info, print_table  # noqa: E402

from gptkit.config import ModelConfig  # noqa: E402
from gptkit.data.prepare import bundled_corpus_path  # noqa: E402
from gptkit.inference.generate import generate
from gptkit.inference.sampling import SamplingParams
from gptkit.interop.hf import hf_gpt2_activation  # noqa: E402
from gptkit.models.gpt import GPT  # noqa: E402
from gptkit.tokenizer import SPECIAL_TOKENS, Tokenizer  # noqa: E402


BF16 = "gptkit, bfloat16"


# --- the two models, one set of weights ---------------------------------------------------------------

def to_hf_gpt2(model: GPT):
    """A `transformers.GPT2LMHeadModel` holding exactly `model`'s weights (GPT-2 family configs only)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    assert c.position == "learned" and c.norm == "layernorm" and c.mlp == "gelu" and c.bias and c.tie_embeddings, \
        "only GPT-2-family models map onto GPT2LMHeadModel"
    hf_config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                           n_head=c.n_head, n_inner=c.intermediate_size, activation_function=hf_gpt2_activation(c),
                           layer_norm_epsilon=c.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                           tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(hf_config).eval()
    missing, unexpected = hf.load_state_dict(hf_gpt2_state_dict(model), strict=False)
    # The output head is tied to wte; older transformers also keep a causal-mask buffer per layer.
    assert not unexpected and all(k == "lm_head.weight" or k.endswith(".attn.bias") for k in missing), \
        (missing, unexpected)
    return hf


def hf_gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """gptkit names -> Hugging Face GPT-2 names. HF's GPT-2 uses Conv1D, whose weight is (in, out):
    the transpose of nn.Linear's (out, in)."""
    sd = {"transformer.wte.weight": model.tok_emb.weight, "transformer.wpe.weight": model.pos_emb.weight,
          "transformer.ln_f.weight": model.norm_f.weight, "transformer.ln_f.bias": model.norm_f.bias}
    for i, block in enumerate(model.blocks):
        pre = f"transformer.h.{i}."
        for ours, theirs in [(block.norm1, "ln_1"), (block.norm2, "ln_2")]:
            sd[pre + theirs + ".weight"], sd[pre + theirs + ".bias"] = ours.weight, ours.bias
        for ours, theirs in [(block.attn.qkv, "attn.c_attn"), (block.attn.proj, "attn.c_proj"),
                             (block.mlp.fc, "mlp.c_fc"), (block.mlp.proj, "mlp.c_proj")]:
            sd[pre + theirs + ".weight"] = ours.weight.t().contiguous()
            sd[pre + theirs + ".bias"] = ours.bias
    return {k: v.detach().clone() for k, v in sd.items()}


def make_tokenizer(vocab_size: int) -> Tokenizer:
    """A character tokenizer on the bundled corpus, padded with made-up tokens up to `vocab_size`, so that
    every id the model can emit decodes to text (gptkit's sampler decodes as it goes; this is its cost)."""
    char = Tokenizer.train_char([bundled_corpus_path("tiny_shakespeare").read_text()])
    if vocab_size <= char.vocab_size:
        return char
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    vocab = {token: i for token, i in char.hf.get_vocab(with_added_tokens=False).items()}
    for i in range(vocab_size - len(vocab) - len(SPECIAL_TOKENS)):
        vocab[f"w{i}_"] = len(vocab)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    hf.add_special_tokens(SPECIAL_TOKENS)
    return Tokenizer(hf)


# --- measurements -------------------------------------------------------------------------------------

def read_probe(nbytes: int) -> tuple[Callable[[], Any], int]:
    """A call that reads an `nbytes` fp32 tensor over and over (about 1 GB in all), and the bytes it reads.

    Each read is a dot product of the tensor with itself: as fast as a matrix-vector product over the
    same bytes, while torch's `sum` is a little slower (its careful summation order costs speed).
    """
    x = torch.ones(nbytes // 4)
    times = max(1, 10**9 // nbytes)

    def probe() -> None:
        for _ in range(times):
            torch.dot(x, x)
    return probe, times * x.numel() * 4


def read_bandwidth(nbytes: int, repeats: int = 7) -> float:
    probe, nbytes = read_probe(nbytes)
    return nbytes / interleaved_medians({"read": probe}, repeats)["read"].median


def weight_bytes(model: GPT) -> int:
    """Bytes of weights one decode step reads: every parameter once (a tied embedding once)."""
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def run_shape(shape: str, batch_sizes: list[int], args) -> list[list]:
    vocab = args.tiny_vocab if shape == "tiny" else None
    config = ModelConfig.from_preset(shape, **({"vocab_size": vocab} if vocab else {}))
    if args.prompt_len + args.new_tokens > config.block_size:
        sys.exit(f"{shape}: prompt + new tokens ({args.prompt_len} + {args.new_tokens}) exceed the context "
                 f"length {config.block_size}; lower --new-tokens")
    torch.manual_seed(0)
    model = GPT(config).eval()
    tokenizer = make_tokenizer(config.vocab_size)
    hf = to_hf_gpt2(model) if not args.no_hf else None
    bf16 = copy.deepcopy(model).to(torch.bfloat16) if args.bf16 else None
    per_step = weight_bytes(model)
    # Decoding re-reads the same weights every step, so what bounds it is the speed of re-reading that
    # many bytes: DRAM speed when they are far larger than the last-level cache, more when a good
    # part of them stays in it (GPT-2-small's 498 MB against a server CPU's few hundred MB of L3).
    # It is timed in the same rounds as the samplers, so that both see the same neighbours.
    read, read_bytes = read_probe(per_step)
    print(f"\n{shape}: {model.num_parameters() / 1e6:.1f}M parameters, vocab {config.vocab_size}, "
          f"{per_step / 1e6:.0f} MB of weights read per decode step")

    rows = []
    for batch in batch_sizes:
        gen = torch.Generator().manual_seed(batch)
        # Ids of plain tokens only (not special tokens), so both sides see exactly the same prompts.
        prompts = torch.randint(0, min(config.vocab_size, 300), (batch, args.prompt_len), generator=gen)

        def ours(new_tokens: int = args.new_tokens, model: GPT = model) -> list[list[int]]:
            params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
            return [c.token_ids for c in generate(model, tokenizer, prompts.tolist(), params)]

        def theirs(new_tokens: int = args.new_tokens) -> list[list[int]]:
            with torch.inference_mode():
                out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  pad_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id)
            return out[:, args.prompt_len:].tolist()

        sides = {"gptkit": ours} if hf is None else {"gptkit": ours, "HF transformers": theirs}
        if bf16 is not None:
            sides[BF16] = lambda new_tokens=args.new_tokens: ours(new_tokens, bf16)
        for fn in sides.values():  # warm up allocators and lazy initialisation, outside the clock
            fn(4)
        agree = "-"
        if hf is not None:
            agree = "yes" if ours() == theirs() else "NO"
        times = interleaved_medians({**sides, "read": read}, args.repeats, warmup=0)
        bandwidth = read_bytes / times.pop("read").median
        print(f"batch {batch}: re-reading {per_step / 1e6:.0f} MB ran at {bandwidth / 1e9:.1f} GB/s")
        # A batch shares one read of the weights per step, so its bound is batch x the one-row bound.
        for name, t in times.items():
            step_bytes = per_step // 2 if name == BF16 else per_step  # bfloat16 weights: half the bytes to read
            bound, dram_bound = bandwidth / step_bytes * batch, args.dram_bandwidth / step_bytes * batch
            tokens = args.new_tokens * batch
            rate = tokens / t.median
            rows.append([shape, batch, name, rate, f"{tokens / max(t.wall):.0f}-{tokens / min(t.wall):.0f}",
                         1000 * t.median / args.new_tokens, dram_bound, bound,
                         f"{100 * rate / dram_bound:.0f}% / {100 * rate / bound:.0f}%",
                         t.cpu_use, agree])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="gpt2,tiny", help="comma-separated ModelConfig presets (GPT-2 family)")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--tiny-vocab", type=int, default=339, help="vocab of the tiny shape (a char tokenizer's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice); 1 is steadier on a busy machine")
    parser.add_argument("--no-hf", action="store_true", help="time gptkit alone")
    parser.add_argument("--bf16", action="store_true",
                        help="also time gptkit with bfloat16 weights, activations and KV cache "
                             "(LLM.load(dtype='bfloat16'), --dtype bfloat16); its bounds count half the bytes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print_machine_info()
    args.dram_bandwidth = read_bandwidth(10**9)
    print(f"memory read bandwidth (reading a 1 GB fp32 tensor, median of 7): {args.dram_bandwidth / 1e9:.1f} GB/s")
    rows = []
    for shape in args.shapes.split(","):
        rows += run_shape(shape, [int(b) for b in args.batch_sizes.split(",")], args)
    print(f"\nprompt {args.prompt_len} tokens, {args.new_tokens} new tokens per row, greedy, fp32 unless named, "
          f"median of {args.repeats} interleaved rounds")
    print_table(rows, ["shape", "batch", "sampler", "tok/s", "range", "ms/step", "1 GB bound", "re-read bound",
                       "of bounds", "cores used", "same tokens"])
    print("1 GB bound: 1 GB read bandwidth / weight bytes x batch; re-read bound: the same with the bandwidth of "
          "re-reading a tensor as large as the weights (what a decode step does), timed in the same rounds.\n"
          f"cores used: CPU seconds per wall second, median; below the thread count ({torch.get_num_threads()}) "
          "means other processes took the cores and the figures are pessimistic.")


if __name__ == "__main__":
    main()
