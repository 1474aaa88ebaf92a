"""The Python API, on a checkpoint saved to disk and loaded back."""

import math

import pytest
import torch

from gptkit import LLM, SamplingParams, generate
from gptkit.checkpoint import save_checkpoint
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.inference.scoring import encode_pair
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. hello world, how are you today?"


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    tok = Tokenizer.train_bpe([TEXT * 4], vocab_size=300)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32,
                            tie_embeddings=False))
    with torch.no_grad():  # spread the logits so that greedy decoding has no near-ties
        torch.nn.init.normal_(model.tok_emb.weight, std=1.0)
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    directory = tmp_path_factory.mktemp("ckpt") / "final"
    save_checkpoint(directory, model, tok)
    return LLM.load(directory)


def test_single_prompt_gives_n_texts_and_a_list_gives_one_list_per_prompt(llm):
    one = llm.generate("hello", max_tokens=5, n=2, seed=3)
    assert isinstance(one, list) and len(one) == 2 and all(isinstance(t, str) for t in one)
    many = llm.generate(["hello", "the"], max_tokens=5, n=2, seed=3)
    assert len(many) == 2 and all(len(texts) == 2 for texts in many)
    assert many[0] == one  # same seed, same text, whatever else is in the batch
    assert llm.generate(["hello"], max_tokens=5, temperature=0) == [llm.generate("hello", max_tokens=5, temperature=0)]


def test_api_equals_the_generation_module(llm):
    params = SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, seed=11, repetition_penalty=1.3)
    expected = generate(llm.model, llm.tokenizer, ["the quick"], params)[0]
    got = llm.generate_completions("the quick", max_tokens=8, temperature=0.7, top_p=0.9, seed=11,
                                   repetition_penalty=1.3)
    assert len(got) == 1
    assert got[0].token_ids == expected.token_ids and got[0].text == expected.text
    assert llm.generate("the quick", max_tokens=8, temperature=0.7, top_p=0.9, seed=11,
                        repetition_penalty=1.3) == [expected.text]


def test_stream_joins_to_generate(llm):
    kwargs = dict(max_tokens=12, temperature=0.9, seed=4, ignore_eos=True)
    text = llm.generate("hello", **kwargs)[0]
    stop = text[len(text) // 2:len(text) // 2 + 2] or "x"
    assert "".join(llm.stream("hello", stop=stop, **kwargs)) == llm.generate("hello", stop=stop, **kwargs)[0]


def test_unknown_or_invalid_options_are_clear_errors(llm):
    with pytest.raises(GptkitError, match="unknown sampling option"):
        llm.generate("hi", temprature=0.5)
    with pytest.raises(GptkitError, match="top_p"):
        llm.generate("hi", top_p=0)
    with pytest.raises(GptkitError, match="n=2"):
        llm.stream("hi", n=2)  # raises at the call, before any text


def _reference_logprob(llm: LLM, context: list[int], continuation: list[int]) -> float:
    """Sum over a plain full forward pass, one log-softmax per position."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(llm.model(ids)[0], dim=-1)
    return sum(logprobs[len(context) - 1 + i, t].item() for i, t in enumerate(continuation))


def test_loglikelihood_is_the_summed_logprob_of_the_continuation(llm):
    tok = llm.tokenizer
    context, continuation = "the quick brown", " fox jumps"
    ctx_ids = tok.encode(context)
    cont_ids = tok.encode(context + continuation)[len(ctx_ids):]
    assert tok.encode(context + continuation)[:len(ctx_ids)] == ctx_ids
    got = llm.loglikelihood(context, continuation)
    assert math.isclose(got, _reference_logprob(llm, ctx_ids, cont_ids), abs_tol=1e-4)
    assert got < 0
    assert llm.loglikelihood(context, "") == 0.0


def test_score_conditions_on_bos(llm):
    tok = llm.tokenizer
    text = "hello world"
    assert math.isclose(llm.score(text), _reference_logprob(llm, [tok.bos_id], tok.encode(text)), abs_tol=1e-4)


def test_loglikelihood_drops_the_oldest_context_when_too_long(llm):
    tok = llm.tokenizer
    context = tok.encode(TEXT * 3)
    continuation = tok.encode(" dog")
    assert len(context) + len(continuation) > llm.model.config.block_size
    inputs = (context + continuation)[:-1][-llm.model.config.block_size:]  # the last block_size inputs
    with torch.no_grad():
        logprobs = torch.log_softmax(llm.model(torch.tensor([inputs]))[0, -len(continuation):], dim=-1)
    expected = sum(logprobs[i, t].item() for i, t in enumerate(continuation))
    assert math.isclose(llm.loglikelihood_ids(context, continuation), expected, abs_tol=1e-4)


def test_load_accepts_a_run_directory(llm, tmp_path):
    save_checkpoint(tmp_path / "run" / "best", llm.model, llm.tokenizer)
    again = LLM.load(tmp_path / "run")
    assert again.generate("the", max_tokens=4, temperature=0) == llm.generate("the", max_tokens=4, temperature=0)


def test_loglikelihood_batch_matches_single_pairs_and_reports_greediness(llm):
    tok = llm.tokenizer
    requests = [("the quick", " brown fox"), ("hello", " world, how are"), ("", "a"), ("x", "")]
    results = llm.loglikelihood_batch(requests, batch_size=3)
    for (context, continuation), (logprob, is_greedy) in zip(requests, results):
        assert math.isclose(logprob, llm.loglikelihood(context, continuation), abs_tol=1e-4)
        if not continuation:
            assert (logprob, is_greedy) == (0.0, True)
            continue
        ctx, cont = encode_pair(tok, context, continuation)
        ctx = ctx or [tok.bos_id]
        with torch.no_grad():
            logits = llm.model(torch.tensor([ctx + cont]))[0, len(ctx) - 1:-1]
        assert is_greedy == (logits.argmax(-1).tolist() == cont)
    # the model's own greedy continuation is greedy
    greedy = llm.generate_completions("the quick", max_tokens=3, temperature=0, ignore_eos=True)[0].token_ids
    assert llm.loglikelihood_ids_batch([(tok.encode("the quick"), greedy)])[0][1]


def test_trailing_context_space_moves_to_the_continuation(llm):
    assert llm.loglikelihood("the quick ", "brown") == pytest.approx(llm.loglikelihood("the quick", " brown"))


def test_bfloat16_load_casts_everything_and_stays_close_to_float32(llm, tmp_path):
    save_checkpoint(tmp_path / "ckpt", llm.model, llm.tokenizer)
    half = LLM.load(tmp_path / "ckpt", dtype="bfloat16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    ids = torch.tensor([llm.tokenizer.encode("the quick brown fox")])
    with torch.no_grad():
        full_logits, half_logits = llm.model(ids), half.model(ids)
    assert half_logits.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: close to float32, and not the same numbers.
    torch.testing.assert_close(half_logits.float(), full_logits, atol=0.15, rtol=0.05)
    assert not torch.equal(half_logits.float(), full_logits)
    completion = generate(half.model, half.tokenizer, "the", SamplingParams(max_tokens=6, temperature=0,
                                                                            ignore_eos=True, logprobs=0))[0]
    assert len(completion.token_ids) == 6 and all(math.isfinite(lp.logprob) for lp in completion.logprobs)
    assert half.generate("the", max_tokens=6, temperature=0, ignore_eos=True) == [completion.text]
    assert math.isclose(half.loglikelihood("the quick", " brown fox"), llm.loglikelihood("the quick", " brown fox"),
                        rel_tol=0.05)


def test_unknown_dtype_is_a_clear_error(llm, tmp_path):
    save_checkpoint(tmp_path / "ckpt", llm.model, llm.tokenizer)
    with pytest.raises(GptkitError, match="dtype must be one of float32, bfloat16, float16, got 'int8'"):
        LLM.load(tmp_path / "ckpt", dtype="int8")


# --- chat, evaluation, the shared scoring path and the decode batch ----------------------------------------

def test_chat_renders_through_the_chat_format_and_stops_at_the_end_of_turn(llm):
    from gptkit.chat_format import chat_stop_token_ids, render_chat

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    ids = render_chat(messages, llm.tokenizer, add_generation_prompt=True).ids
    stop_ids = chat_stop_token_ids(llm.tokenizer, "tokens")
    expected = generate(llm.model, llm.tokenizer, [ids], SamplingParams(max_tokens=12, temperature=0,
                                                                        stop_token_ids=stop_ids))[0].text
    assert llm.chat(messages, max_tokens=12, temperature=0) == expected
    assert "".join(llm.chat_stream(messages, max_tokens=12, temperature=0)) == expected
    # a different conversation gives the model other tokens to condition on
    other = render_chat([{"role": "user", "content": "the lazy dog"}], llm.tokenizer, add_generation_prompt=True).ids
    assert other != ids
    with pytest.raises(GptkitError, match="chat template"):
        llm.chat(messages, chat_template="jinja")


def test_evaluate_a_text_file_equals_the_evaluation_module(llm, tmp_path):
    from gptkit.evaluation.lm import evaluate_tokens

    text_file = tmp_path / "val.txt"
    text_file.write_text(TEXT * 3)
    got = llm.evaluate(text_file, batch_size=2)
    tokens = llm.tokenizer.encode(TEXT * 3)
    import numpy as np

    expected = evaluate_tokens(llm.model, np.asarray(tokens), len((TEXT * 3).encode()), block_size=32, batch_size=2,
                               device=torch.device("cpu"))
    assert got["loss"] == pytest.approx(expected["val_loss"]) and got["tokens"] == len(tokens) - 1
    assert got["bits_per_byte"] == pytest.approx(expected["val_bpb"])
    with pytest.raises(GptkitError, match="does not record its training data"):
        llm.evaluate()  # saved by save_checkpoint, not by training: no train_config.json
    with pytest.raises(GptkitError, match="does not exist"):
        llm.evaluate(tmp_path / "missing.txt")


def test_prompt_logprobs_and_loglikelihood_are_one_scoring_path_and_match_a_full_forward_pass(llm):
    from gptkit.inference.scoring import prompt_logprobs, score_tokens

    ids = llm.tokenizer.encode("the quick brown fox jumps")
    with torch.no_grad():  # the control: one plain forward pass, no batching or position picking
        full = torch.log_softmax(llm.model(torch.tensor([ids]))[0].float(), dim=-1)
    manual = [float(full[i - 1, t]) for i, t in enumerate(ids) if i > 0]
    echoed = prompt_logprobs(llm.model, [ids, ids[:3]], top=2)
    assert echoed[0][0] is None and [t.logprob for t in echoed[0][1:]] == pytest.approx(manual, abs=1e-5)
    assert [t.logprob for t in echoed[1][1:]] == pytest.approx(manual[:2], abs=1e-5)  # padding changes nothing
    assert all(len(t.top) == 2 and t.top[0][1] >= t.logprob - 1e-6 for t in echoed[0][1:])
    summed = llm.loglikelihood_ids(ids[:2], ids[2:])
    assert summed == pytest.approx(sum(manual[1:]), abs=1e-4)
    tail = score_tokens(llm.model, [ids], [2])[0]
    assert [t.token_id for t in tail] == ids[2:]


def test_the_decode_batch_admits_rows_while_others_run_and_each_matches_generating_alone(llm):
    from gptkit.inference.decode import DecodeBatch, make_rows

    params = SamplingParams(max_tokens=6, temperature=0.8, seed=5, ignore_eos=True)
    alone = [generate(llm.model, llm.tokenizer, [p], params)[0].text for p in ("hello", "the lazy")]
    batch = DecodeBatch(llm.model, max_rows=2)
    first = make_rows(llm.model, llm.tokenizer, ["hello"], params)
    second = make_rows(llm.model, llm.tokenizer, ["the lazy"], params)
    texts = {id(first[0]): "", id(second[0]): ""}

    def take(pieces):
        for row, piece in pieces:
            texts[id(row)] += piece

    take(batch.admit(first))
    take(batch.step())
    take(batch.step())
    take(batch.admit(second))  # joins a batch that is two tokens ahead
    assert batch.free_rows == 0
    with pytest.raises(GptkitError, match="do not fit"):
        batch.admit(make_rows(llm.model, llm.tokenizer, ["x"], params))
    while batch.rows:
        take(batch.step())
        batch.compact()
    assert [texts[id(first[0])], texts[id(second[0])]] == alone
    assert first[0].finish_reason == second[0].finish_reason == "length"
