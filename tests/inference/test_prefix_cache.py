"""Prefix caching (`gptkit.inference.prefix_cache` in the one decode batch): reused keys and values give the tokens a
full prefill gives, one prompt at a time and in mixed batches; block-aligned matching that always leaves a token to
prefill; least-recently-used eviction within the size; the serving engine's setting."""

from __future__ import annotations

import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.inference.decode import DecodeBatch, make_rows
from gptkit.inference.generate import _drive, generate
from gptkit.inference.prefix_cache import PrefixCache
from gptkit.inference.sampling import SamplingParams
from gptkit.models.gpt import GPT
from gptkit.serve.engine import EngineConfig
from gptkit.tokenizer import Tokenizer

SYSTEM = "You are a helpful assistant who answers in one line. " * 3
GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def tokenizer(shakespeare_text) -> Tokenizer:
    return Tokenizer.train_char([shakespeare_text[:20_000] + SYSTEM])


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=64)).eval()


def run(model, tokenizer, prompts, cache, max_rows=8):
    batch = DecodeBatch(model, max_rows, prefix_cache=cache)
    done = [e.completion for e in _drive(batch, make_rows(model, tokenizer, prompts, GREEDY)) if e.completion]
    return [c.token_ids for c in sorted(done, key=lambda c: c.prompt_index)]


def test_reused_prefixes_decode_exactly_as_full_prefills(model, tokenizer):
    prompts = [SYSTEM + f"User: question number {i}?\nAssistant:" for i in range(5)]
    expected = [c.token_ids for c in generate(model, tokenizer, prompts, GREEDY)]
    cache = PrefixCache(max_tokens=4096, block=16)
    one_by_one = [run(model, tokenizer, [p], cache, max_rows=1)[0] for p in prompts]
    assert one_by_one == expected
    stats = cache.stats()
    shared = len(tokenizer.encode(SYSTEM + "User: question number "))
    assert stats["hits"] == 4 and stats["reused_tokens"] == 4 * (shared // 16 * 16)
    # a batch mixing hits, a miss and a prompt that needs its cache to reach past the others' padding
    mixed = prompts[:3] + ["a short one", SYSTEM + "User: something else entirely, and longer than the rest?"]
    assert run(model, tokenizer, mixed, cache) == [c.token_ids for c in generate(model, tokenizer, mixed, GREEDY)]
    assert cache.stats()["hits"] > stats["hits"]


def test_lookup_is_block_aligned_and_leaves_a_token_to_prefill():
    cache = PrefixCache(max_tokens=1000, block=4)
    layer = torch.arange(2 * 12 * 3, dtype=torch.float32).reshape(2, 12, 3)
    cache.insert(list(range(10)), [layer], [layer + 1])  # 10 tokens: blocks of 4 and 8 are stored
    assert cache.lookup(list(range(10)) + [99])[0] == 8
    assert cache.lookup(list(range(8)))[0] == 4  # the whole aligned prompt would leave nothing to prefill
    assert cache.lookup([0, 1, 2, 3, 7, 7])[0] == 4
    length, entry = cache.lookup([0, 1, 2, 3, 4, 5, 6, 7, 50])
    assert length == 8 and torch.equal(entry.keys[0], layer[:, :8]) and torch.equal(entry.values[0], layer[:, :8] + 1)
    assert cache.lookup([5, 1, 2, 3, 4])[0] == 0 and cache.lookup([0, 1, 2])[0] == 0


def test_least_recently_used_prompts_are_evicted_within_the_size():
    cache = PrefixCache(max_tokens=16, block=4)
    kv = [torch.zeros(1, 8, 2)]
    cache.insert([1] * 8, kv, kv)
    cache.insert([2] * 8, kv, kv)
    assert cache.tokens == 16
    cache.lookup([1] * 9)  # touch the first: the second is now the oldest
    cache.insert([3] * 8, kv, kv)
    assert cache.tokens == 16
    assert cache.lookup([1] * 9)[0] == 8 and cache.lookup([2] * 9)[0] == 0 and cache.lookup([3] * 9)[0] == 8
    cache.insert([4] * 40, [torch.zeros(1, 40, 2)], [torch.zeros(1, 40, 2)])  # larger than the whole cache
    assert cache.lookup([4] * 41)[0] == 0 and cache.tokens == 16


def test_an_evicted_prompt_hands_a_shared_prefix_to_another_holder():
    cache = PrefixCache(max_tokens=24, block=4)
    kv = [torch.zeros(1, 12, 2)]
    cache.insert([7] * 4 + [1] * 8, kv, kv)
    cache.insert([7] * 4 + [2] * 8, kv, kv)
    cache.lookup([7] * 4 + [2] * 8 + [0])  # the second is the most recent
    cache.insert([9] * 12, kv, kv)  # evicts the first
    assert cache.lookup([7] * 4 + [5])[0] == 4  # the shared block is still served, by the second


def test_settings_are_checked():
    with pytest.raises(GptkitError, match="block"):
        PrefixCache(block=0)
    with pytest.raises(GptkitError, match="prefix_cache_tokens"):
        EngineConfig(prefix_cache_tokens=-1).validate()
