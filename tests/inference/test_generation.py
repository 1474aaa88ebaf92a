"""The sampler: each piece is checked against an independent computation (a plain full forward
pass, a loop over a small vocabulary), never against recorded outputs."""

import math

import pytest
import torch

from gptkit.checkpoint import load_model, save_checkpoint
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.inference.decode import evaluating, use_decode_layout
from gptkit.inference.generate import generate, stream
from gptkit.inference.sampling import SamplingParams, apply_penalties, filter_top_k, filter_top_p, sample_next
from gptkit.inference.text import IncrementalText
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. hello world, how are you today?"
FAMILIES = {
    "gpt2": dict(position="learned", norm="layernorm", mlp="gelu", bias=True),
    "llama": dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=1),
}


@pytest.fixture(scope="module")
def char_tok() -> Tokenizer:
    return Tokenizer.train_char([TEXT])


@pytest.fixture(scope="module")
def bpe_tok() -> Tokenizer:
    return Tokenizer.train_bpe([TEXT * 4], vocab_size=300)


def tiny_model(tok: Tokenizer, family: str = "gpt2", *, outputs: range | None = None, block_size: int = 48) -> GPT:
    """A random model with peaked output logits, so greedy decoding has no near-ties.

    Output rows outside `outputs` are zeroed: those tokens get logit 0 while the others spread
    widely, so greedy decoding picks from `outputs` (e.g. plain characters rather than raw bytes).
    """
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                         tie_embeddings=False, **FAMILIES[family])
    model = GPT(config).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.tok_emb.weight, std=1.0)
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)
        if outputs is not None:
            keep = torch.zeros(tok.vocab_size, dtype=torch.bool)
            keep[outputs.start:outputs.stop] = True
            model.lm_head.weight[~keep] = 0
    return model


def chars(tok: Tokenizer) -> range:
    """Ids of plain characters: the character tokenizer puts them first, before bytes and special tokens."""
    return range(len(set(TEXT)))


def naive_greedy(model: GPT, ids: list[int], steps: int) -> list[int]:
    """Argmax over a full forward pass of the whole sequence at every step: no cache, no batching."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(torch.tensor([out]))[0, -1].argmax()))
    return out[len(ids):]


def greedy(**kw) -> SamplingParams:
    return SamplingParams(temperature=0, ignore_eos=True, **kw)


# --- decoding loop ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_batched_ragged_greedy_equals_naive_loop_per_prompt(char_tok, family):
    model = tiny_model(char_tok, family, outputs=chars(char_tok))
    prompts = [char_tok.encode(p) for p in ["the", "hello world, ho", "a", "quick brown fox jumps"]]
    completions = generate(model, char_tok, prompts, greedy(max_tokens=12))
    assert [c.prompt_index for c in completions] == [0, 1, 2, 3]
    for c, prompt in zip(completions, prompts):
        expected = naive_greedy(model, prompt, 12)
        assert c.token_ids == expected
        assert c.text == char_tok.decode(expected, skip_special_tokens=True)
        assert c.finish_reason == "length" and c.num_prompt_tokens == len(prompt)
    # and each prompt alone gives the same as in the batch
    for c, prompt in zip(completions, prompts):
        assert generate(model, char_tok, [prompt], greedy(max_tokens=12))[0].token_ids == c.token_ids


def test_decode_layout_keeps_values_and_outputs_and_saving_restores_it(tmp_path, char_tok):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=char_tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, char_tok.vocab_size, (3, 12))
    with torch.no_grad():
        logits = model(ids)
    use_decode_layout(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.stride() == (1, m.weight.shape[0]) for m in linears)  # (in, out) in memory
    assert model.lm_head.weight is model.tok_emb.weight  # tying survives
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        torch.testing.assert_close(model(ids), logits)
    save_checkpoint(tmp_path / "ckpt", model, char_tok)  # safetensors needs contiguous tensors
    assert all(p.is_contiguous() for p in model.parameters())
    loaded, _ = load_model(tmp_path / "ckpt")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("listed", [False, True])
def test_evaluating_switches_to_eval_and_restores_training_mode(listed):
    model = GPT(ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    modules = list(model.modules()) if listed else None
    for start in ("train", "eval", "one block training"):
        model.train(start == "train")
        if start == "one block training":
            model.blocks[0].train()
        with evaluating(model, modules):
            assert not any(m.training for m in model.modules()) and torch.is_inference_mode_enabled()
        assert model.training == (start == "train")
        assert all(m.training == (start == "train") for m in model.modules() if m is not model.blocks[0])


def test_greedy_is_deterministic_and_n_samples_share_the_prompt(char_tok):
    model = tiny_model(char_tok)
    a = generate(model, char_tok, ["the", "hello"], greedy(max_tokens=8, n=3))
    b = generate(model, char_tok, ["the", "hello"], greedy(max_tokens=8, n=3))
    assert [(c.prompt_index, c.sample_index) for c in a] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert a[0].token_ids == a[2].token_ids == naive_greedy(model, char_tok.encode("the"), 8)
    assert a[3].token_ids == naive_greedy(model, char_tok.encode("hello"), 8)


def test_seeded_sample_is_the_same_alone_or_in_a_batch(char_tok):
    model = tiny_model(char_tok, "llama")
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=123, ignore_eos=True)
    alone = generate(model, char_tok, ["hello"], params)[0]
    others = [SamplingParams(max_tokens=5, temperature=1.0, ignore_eos=True),
              params,
              SamplingParams(max_tokens=20, temperature=0.7, seed=9, ignore_eos=True)]
    batched = generate(model, char_tok, ["the quick brown", "hello", "a"], others)
    assert batched[1].token_ids == alone.token_ids
    assert generate(model, char_tok, ["hello"], params)[0].token_ids == alone.token_ids
    other_seed = SamplingParams(max_tokens=16, temperature=1.0, seed=124, ignore_eos=True)
    assert generate(model, char_tok, ["hello"], other_seed)[0].token_ids != alone.token_ids


def test_sample_j_of_n_uses_seed_plus_j(char_tok):
    model = tiny_model(char_tok)
    many = generate(model, char_tok, ["hello"], SamplingParams(max_tokens=10, seed=5, n=3, ignore_eos=True))
    for j, c in enumerate(many):
        single = generate(model, char_tok, ["hello"], SamplingParams(max_tokens=10, seed=5 + j, ignore_eos=True))[0]
        assert c.token_ids == single.token_ids
    assert len({tuple(c.token_ids) for c in many}) > 1


@pytest.mark.parametrize("repetition, presence, frequency", [(1.8, 0.5, 1.0), (3.0, 0.0, 0.0), (1.0, 0.0, 1.5)])
def test_penalties_in_the_loop_match_a_naive_penalised_loop(char_tok, repetition, presence, frequency):
    model = tiny_model(char_tok, outputs=chars(char_tok))
    params = greedy(max_tokens=10, repetition_penalty=repetition, presence_penalty=presence,
                    frequency_penalty=frequency)
    prompt = char_tok.encode("the quick brown fox")
    out: list[int] = []
    with torch.no_grad():
        for _ in range(10):
            logits = model(torch.tensor([prompt + out]))[0, -1]
            for t in set(prompt + out):  # CTRL penalty on prompt and output
                logits[t] = logits[t] / repetition if logits[t] > 0 else logits[t] * repetition
            for t in set(out):  # OpenAI penalties on the output only
                logits[t] -= presence + frequency * out.count(t)
            out.append(int(logits.argmax()))
    assert generate(model, char_tok, [prompt], params)[0].token_ids == out
    assert out != naive_greedy(model, prompt, 10)  # the penalties did change something


def test_logprobs_are_log_softmax_of_a_full_forward_pass(char_tok):
    model = tiny_model(char_tok)
    prompt = char_tok.encode("the quick")
    c = generate(model, char_tok, [prompt], SamplingParams(max_tokens=6, temperature=0.9, top_k=5, seed=1,
                                                           logprobs=3, ignore_eos=True))[0]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([prompt + c.token_ids]))[0], dim=-1)
    assert len(c.logprobs) == len(c.token_ids) == 6
    for i, (token, entry) in enumerate(zip(c.token_ids, c.logprobs)):
        row = logprobs[len(prompt) - 1 + i]
        assert entry.token_id == token
        assert math.isclose(entry.logprob, row[token].item(), abs_tol=1e-4)
        values, ids = row.topk(3)
        assert [t for t, _ in entry.top] == ids.tolist()
        assert [v for _, v in entry.top] == pytest.approx(values.tolist(), abs=1e-4)
    assert generate(model, char_tok, [prompt], greedy(max_tokens=2))[0].logprobs is None


def test_empty_prompt_starts_from_bos(char_tok):
    model = tiny_model(char_tok)
    a = generate(model, char_tok, [""], greedy(max_tokens=5))[0]
    assert a.token_ids == naive_greedy(model, [char_tok.bos_id], 5)
    assert generate(model, char_tok, [[]], greedy(max_tokens=5))[0].token_ids == a.token_ids


def test_prompt_too_long_is_a_clear_error_and_output_is_clamped(char_tok):
    model = tiny_model(char_tok, block_size=16)
    with pytest.raises(GptkitError, match=r"16 tokens.*context length is 16"):
        generate(model, char_tok, [[3] * 16], greedy(max_tokens=1))
    with pytest.raises(GptkitError, match=r"20 tokens.*context length is 16"):
        stream(model, char_tok, [3] * 20, greedy(max_tokens=1))  # at the call, before any text
    c = generate(model, char_tok, [[3] * 13], greedy(max_tokens=10))[0]
    assert len(c.token_ids) == 3 and c.finish_reason == "length"


def test_stop_token_id_ends_with_stop_and_is_not_in_the_text(char_tok):
    model = tiny_model(char_tok, outputs=chars(char_tok))
    free = generate(model, char_tok, ["hello"], greedy(max_tokens=10))[0].token_ids
    stop_id = free[4]
    first = free.index(stop_id)
    c = generate(model, char_tok, ["hello"], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_id]))[0]
    assert c.finish_reason == "stop"
    assert c.token_ids == free[:first + 1]
    assert c.text == char_tok.decode(free[:first])


# --- stop strings and streaming -----------------------------------------------------------------------

def test_stop_string_split_across_tokens(char_tok):
    model = tiny_model(char_tok, outputs=chars(char_tok))
    free = generate(model, char_tok, ["hello"], greedy(max_tokens=20))[0]
    assert len(free.text) == 20  # one character per token
    stop = free.text[6:9]  # three characters: three tokens
    c = generate(model, char_tok, ["hello"], greedy(max_tokens=20, stop=stop))[0]
    assert c.finish_reason == "stop"
    assert c.text == free.text[:free.text.find(stop)]
    assert stop not in c.text


def test_stop_string_starting_mid_token(bpe_tok):
    first_merge = 6 + 256  # special tokens and bytes come first: let only multi-character tokens out
    model = tiny_model(bpe_tok, outputs=range(first_merge, bpe_tok.vocab_size))
    free = generate(model, bpe_tok, ["the"], greedy(max_tokens=12))[0]
    pieces = [bpe_tok.decode([t]) for t in free.token_ids]
    assert all(len(p) >= 2 for p in pieces)
    start = len(pieces[0]) + 1  # one character into the second token, running into the third
    stop = free.text[start:start + len(pieces[1])]
    c = generate(model, bpe_tok, ["the"], greedy(max_tokens=12, stop=["never appears", stop]))[0]
    assert c.finish_reason == "stop"
    assert c.text == free.text[:free.text.find(stop)]


@pytest.mark.parametrize("stop_at", [3, 7])
def test_stream_pieces_join_to_the_generated_text(char_tok, stop_at):
    model = tiny_model(char_tok, outputs=chars(char_tok))
    params = SamplingParams(max_tokens=20, temperature=0.8, seed=7, ignore_eos=True)
    free = generate(model, char_tok, ["hello"], params)[0].text
    stop = free[stop_at:stop_at + 3]
    params.stop = [stop]
    pieces = list(stream(model, char_tok, "hello", params))
    completion = generate(model, char_tok, ["hello"], params)[0]
    assert "".join(pieces) == completion.text == free[:free.find(stop)]
    assert len(pieces) > 1


def test_incremental_text_holds_back_a_possible_stop_string(char_tok):
    def shown_after_each(text: IncrementalText, chars: str) -> list[str]:
        shown = []
        for ch in chars:
            text.push(char_tok.encode(ch)[0])
            shown.append(text.take())
        return shown

    text = IncrementalText(char_tok, stop=["low", "world"])
    # an "l" or "lo" may start "low" and is held until the next character rules it out; so is "wo"
    assert shown_after_each(text, "hello wo") == ["h", "e", "", "l", "", "lo ", "", ""]
    assert not text.stopped
    assert shown_after_each(text, "r") == [""]
    assert shown_after_each(text, "ld") == ["", ""]
    assert text.stopped and text.text == "hello "
    text = IncrementalText(char_tok, stop=["world"])
    shown_after_each(text, "hello wo")
    assert text.take(final=True) == "wo"
    text = IncrementalText(char_tok, stop=["o w", "lo w"])  # both complete at once: the earlier wins
    shown_after_each(text, "hello w")
    assert text.stopped and text.text == "hel"


def test_a_stop_string_completed_by_the_final_flush_still_stops(char_tok):
    """The decoder holds back an incomplete UTF-8 character; flushing it at the end may complete a stop."""
    byte_c3 = char_tok.token_to_id("<0xC3>")  # a lead byte: never a complete character on its own
    model = tiny_model(char_tok)
    with torch.no_grad():  # a model that always says byte_c3: constant final hidden state, one-hot head
        model.norm_f.weight.zero_()
        model.norm_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[byte_c3] = 1.0
    free = generate(model, char_tok, ["hi"], greedy(max_tokens=3))[0]
    assert free.token_ids == [byte_c3] * 3 and free.finish_reason == "length" and free.text
    stopped = generate(model, char_tok, ["hi"], greedy(max_tokens=3, stop=free.text[-1]))[0]
    assert stopped.finish_reason == "stop" and stopped.text == free.text[:free.text.find(free.text[-1])]


# --- logit processing ---------------------------------------------------------------------------------

def test_top_k_keeps_exactly_k_largest_even_with_ties():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    logits[1, :10] = 5.0  # a tie across the cut
    k = torch.tensor([1, 4, 50])
    out = filter_top_k(logits, k)
    for row in range(3):
        kept = torch.isfinite(out[row])
        assert int(kept.sum()) == k[row]
        assert torch.equal(out[row][kept], logits[row][kept])
        if k[row] < 50:
            assert logits[row][kept].min() >= logits[row][~kept].max()
    assert torch.equal(filter_top_k(logits, None), logits)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.0625, 0.5, 0.125, 0.25, 0.0625])  # sorted: 0.5, 0.25, 0.125, ...
    logits = probs.log().expand(5, 5)
    p = torch.tensor([0.5, 0.6, 0.75, 0.76, 1.0])
    kept = torch.isfinite(filter_top_p(logits, p))
    expected = [{1}, {1, 3}, {1, 3}, {1, 3, 2}, {0, 1, 2, 3, 4}]
    assert [set(torch.nonzero(row).flatten().tolist()) for row in kept] == expected
    # the argmax survives even a tiny p
    assert set(torch.nonzero(torch.isfinite(filter_top_p(logits[:1], 1e-6))[0]).flatten().tolist()) == {1}


def test_penalties_follow_their_definitions():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5, 3.0]])
    counts = torch.tensor([[1, 2, 0, 0, 3, 0]])
    seen = torch.tensor([[False, False, True, True, False, False]])  # in the prompt only
    params = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits, counts, params, seen)
    expected = []
    for t in range(6):
        x = logits[0, t].item()
        if counts[0, t] > 0 or seen[0, t]:
            x = x / 2.0 if x > 0 else x * 2.0
        if counts[0, t] > 0:
            x -= 0.5 + 0.25 * counts[0, t].item()
        expected.append(x)
    torch.testing.assert_close(out[0], torch.tensor(expected))
    neutral = apply_penalties(logits, counts, SamplingParams(), seen)
    torch.testing.assert_close(neutral, logits)


def test_penalties_and_sampling_take_one_params_per_row():
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    counts = torch.tensor([[1, 0, 0], [1, 0, 0]])
    rows = [SamplingParams(frequency_penalty=2.0, temperature=0), SamplingParams(temperature=0)]
    out = apply_penalties(logits, counts, rows)
    assert sample_next(out, rows).tolist() == [1, 0]


def test_sample_next_respects_greedy_top_k_and_generators():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    assert torch.equal(sample_next(logits, SamplingParams(temperature=0)), logits.argmax(-1))
    assert torch.equal(sample_next(logits, SamplingParams(top_k=1)), logits.argmax(-1))
    top3 = logits.topk(3).indices
    for _ in range(20):
        tokens = sample_next(logits, SamplingParams(top_k=3, temperature=2.0))
        assert all(t in top3[i] for i, t in enumerate(tokens.tolist()))
    def draw(seed: int) -> torch.Tensor:
        return sample_next(logits, SamplingParams(), [torch.Generator().manual_seed(seed + i) for i in range(4)])

    assert torch.equal(draw(1), draw(1))


def test_draw_from_follows_the_distribution_and_never_draws_a_zero():
    from gptkit.inference.sampling import draw_from

    probs = torch.tensor([[0.0, 0.1, 0.0, 0.2, 0.7, 0.0]])
    generator = torch.Generator().manual_seed(0)
    draws = draw_from(probs.expand(20000, -1), torch.rand(20000, dtype=torch.float64, generator=generator))
    frequencies = torch.bincount(draws, minlength=6) / 20000
    assert frequencies[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(frequencies, probs[0], atol=0.015, rtol=0)
    # the ends of [0, 1): the first and the last token with any probability
    edges = draw_from(probs.expand(2, -1), torch.tensor([0.0, 1.0 - 2**-53], dtype=torch.float64))
    assert edges.tolist() == [1, 4]
    # unnormalised rows (the sum of float32 softmax is not exactly 1) are scaled by their total
    assert draw_from(torch.tensor([[2.0, 0.0, 2.0]]), torch.tensor([0.6], dtype=torch.float64)).tolist() == [2]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1e-300), SamplingParams(temperature=1e300), SamplingParams(repetition_penalty=1e-300),
    SamplingParams(repetition_penalty=1e300, top_p=0.5), SamplingParams(repetition_penalty=1e-300, temperature=1e-30),
])
def test_extreme_but_valid_parameters_still_sample(params):
    """Found by fuzzing the server: a tiny temperature or penalty overflowed logits into NaN probabilities."""
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 20
    counts = torch.zeros(3, 50, dtype=torch.long)
    counts[:, :25] = 1
    tokens = sample_next(apply_penalties(logits, counts, params), params, torch.Generator().manual_seed(0))
    assert tokens.shape == (3,) and bool(((tokens >= 0) & (tokens < 50)).all())
    if params.temperature < 1e-20:  # (near-)greedy: the draw is one of the best penalised tokens
        penalised = apply_penalties(logits, counts, params)
        best = penalised.gather(1, tokens[:, None]).squeeze(1)
        assert torch.equal(best, penalised.amax(-1))


# --- parameter validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature=float("inf")),
    dict(top_p=0.0), dict(top_p=1.5), dict(top_p=float("nan")), dict(top_k=0), dict(max_tokens=0),
    dict(n=0), dict(repetition_penalty=0.0), dict(repetition_penalty=float("nan")),
    dict(presence_penalty=2.5), dict(frequency_penalty=-3.0), dict(frequency_penalty=float("nan")),
    dict(logprobs=-1), dict(logprobs=21), dict(stop=[""]), dict(max_tokens=2.5), dict(seed=-1), dict(seed=2**64),
])
def test_invalid_parameters_raise(bad):
    with pytest.raises(GptkitError, match=next(iter(bad))):
        SamplingParams(**bad).validate()


def test_parameters_are_revalidated_by_generate(char_tok):
    params = SamplingParams()
    params.temperature = -1.0
    with pytest.raises(GptkitError, match="temperature"):
        generate(tiny_model(char_tok), char_tok, ["hi"], params)


def test_single_stop_string_is_accepted():
    assert SamplingParams(stop="\n").stop == ["\n"]
