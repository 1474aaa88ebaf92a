"""The continuous-batching engine: requests join and leave a running batch, and each gets what it would alone."""

import asyncio
import time

import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.inference.generate import generate
from gptkit.inference.sampling import SamplingParams
from gptkit.models.gpt import GPT
from gptkit.serve.engine import Engine, EngineConfig, QueueFull, RequestTimeout
from gptkit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(shakespeare_text) -> Tokenizer:
    return Tokenizer.train_char([shakespeare_text[:20000]])


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tok) -> GPT:
    torch.manual_seed(0)
    extra = {} if request.param == "gpt2" else dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                                                   n_kv_head=1, tie_embeddings=False)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32, **extra)).eval()


def requests() -> list[tuple[str, SamplingParams]]:
    """A mix: greedy and seeded sampling, n > 1, penalties, logprobs, different lengths and prompts."""
    return [
        ("ROMEO:", SamplingParams(max_tokens=20, temperature=0)),
        ("To be or not", SamplingParams(max_tokens=30, temperature=0.8, seed=5, n=2)),
        ("A", SamplingParams(max_tokens=5, temperature=1.0, seed=7, logprobs=3)),
        ("JULIET: O Romeo, Romeo", SamplingParams(max_tokens=40, temperature=0.9, seed=3, n=3,
                                                  frequency_penalty=1.0, presence_penalty=0.5)),
        ("First Citizen:", SamplingParams(max_tokens=12, temperature=0, repetition_penalty=1.3)),
    ]


def assert_same(alone, got) -> None:
    assert [c.token_ids for c in alone] == [c.token_ids for c in got]
    assert [c.text for c in alone] == [c.text for c in got]
    assert [c.finish_reason for c in alone] == [c.finish_reason for c in got]


@pytest.mark.parametrize("max_batch", [3, 5, 16])
def test_every_request_gets_what_it_gets_alone(model, tok, max_batch):
    """With room for all, or for only some (the n=3 request needs 3 rows): the same completions as the one-shot sampler."""
    cases = requests()
    alone = [generate(model, tok, [prompt], params) for prompt, params in cases]
    with Engine(model, tok, EngineConfig(max_batch=max_batch)) as engine:
        handles = [engine.submit(prompt, params) for prompt, params in cases]
        results = [h.result() for h in handles]
    for a, r in zip(alone, results):
        assert_same(a, r)
    for a, r in zip(alone[2], results[2]):  # logprobs too
        assert [lp.token_id for lp in a.logprobs] == [lp.token_id for lp in r.logprobs]
        assert [lp.logprob for lp in a.logprobs] == pytest.approx([lp.logprob for lp in r.logprobs], abs=1e-5)


def test_requests_join_a_running_batch_and_short_ones_leave_early(model, tok):
    """A long request is running; short ones submitted later finish first, while it is still going."""
    long = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)
    short = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    with Engine(model, tok, EngineConfig(max_batch=4)) as engine:
        slow = engine.submit("ROMEO:", long)
        while slow.stats.first_token is None:
            time.sleep(0.001)
        quick = [engine.submit(p, short) for p in ("A", "B", "C")]
        for q in quick:
            q.result()
        assert all(q.stats.finished < time.perf_counter() for q in quick)
        assert slow.stats.finished is None or all(q.stats.finished <= slow.stats.finished for q in quick)
        slow_result = slow.result()
        # more rows than one: some steps decoded several requests together
        assert engine.stats.batch_rows_sum > engine.stats.decode_steps
    assert_same(generate(model, tok, ["ROMEO:"], long), slow_result)


def test_waiting_requests_are_admitted_as_rows_free_up(model, tok):
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    with Engine(model, tok, EngineConfig(max_batch=2)) as engine:
        handles = [engine.submit(str(i), params) for i in range(7)]
        results = [h.result() for h in handles]
        assert engine.stats.requests_finished == 7
        # never more than max_batch rows in one step
        assert engine.stats.batch_rows_sum <= 2 * engine.stats.decode_steps
    for i, r in enumerate(results):
        assert_same(generate(model, tok, [str(i)], params), r)


def test_async_consumers_stream_the_same_text(model, tok):
    params = SamplingParams(max_tokens=25, temperature=0.7, seed=11)
    expected = generate(model, tok, ["KING:"], params)[0].text

    async def consume(engine: Engine) -> str:
        handle = engine.submit("KING:", params, loop=asyncio.get_running_loop())
        pieces = [event.text async for event in handle]
        return "".join(pieces)

    async def main() -> list[str]:
        with Engine(model, tok) as engine:
            return await asyncio.gather(*(consume(engine) for _ in range(6)))

    assert asyncio.run(main()) == [expected] * 6


def test_a_lagging_async_consumer_gets_pending_tokens_merged(model, tok):
    """A consumer that sleeps between events finds several tokens waiting: fewer events, same text,
    one completion per sample, each completion's event last for its index."""
    params = SamplingParams(max_tokens=30, temperature=0.9, seed=2, n=2, ignore_eos=True)
    expected = [c.text for c in generate(model, tok, ["KING:"], params)]

    async def consume(engine: Engine, lag: float) -> tuple[list[str], int, list[int]]:
        handle = engine.submit("KING:", params, loop=asyncio.get_running_loop())
        texts, events, finished = ["", ""], 0, []
        async for event in handle:
            assert event.index not in finished  # nothing after a sample's completion
            texts[event.index] += event.text
            events += 1
            if event.completion is not None:
                assert event.completion.text == texts[event.index]
                finished.append(event.index)
            await asyncio.sleep(lag)
        return texts, events, sorted(finished)

    async def main():
        with Engine(model, tok) as engine:
            return await consume(engine, 0.0), await consume(engine, 0.05)

    (prompt_texts, eager_events, eager_done), (lag_texts, lag_events, lag_done) = asyncio.run(main())
    assert prompt_texts == lag_texts == expected and eager_done == lag_done == [0, 1]
    assert lag_events < eager_events


def test_coalesce_merges_per_index_in_first_seen_order():
    from gptkit.inference.decode import Completion
    from gptkit.inference.generate import GenerationEvent
    from gptkit.serve.engine import coalesce

    done = Completion(prompt_index=0, sample_index=1, text="abc", token_ids=[1, 2, 3], finish_reason="length",
                      logprobs=None, num_prompt_tokens=1)
    events = [GenerationEvent(1, "a"), GenerationEvent(0, "x"), GenerationEvent(1, "b"),
              GenerationEvent(1, "c", done), GenerationEvent(0, "y")]
    merged = coalesce(events)
    assert [(e.index, e.text, e.completion) for e in merged] == [(1, "abc", done), (0, "xy", None)]


def test_cancelled_request_leaves_the_batch(model, tok):
    params = SamplingParams(max_tokens=120, temperature=0, ignore_eos=True)
    with Engine(model, tok, EngineConfig(max_batch=2)) as engine:
        handle = engine.submit("ROMEO:", params)
        events = iter(handle)
        next(events)
        handle.cancel()
        rest = list(events)  # the iteration ends without an error
        assert len(rest) < 120 and engine.stats.requests_cancelled == 1
        deadline = time.time() + 5
        while engine.running_rows and time.time() < deadline:
            time.sleep(0.005)
        assert engine.running_rows == 0
        # and the engine goes on serving others
        assert engine.submit("A", SamplingParams(max_tokens=2, temperature=0)).result()


def test_full_queue_pushes_back(model, tok):
    with Engine(model, tok, EngineConfig(max_batch=1, max_queue=1)) as engine:
        busy = engine.submit("A", SamplingParams(max_tokens=120, temperature=0, ignore_eos=True))
        while busy.stats.admitted is None:
            time.sleep(0.001)
        waiting = engine.submit("B", SamplingParams(max_tokens=2, temperature=0))
        with pytest.raises(QueueFull, match="busy"):
            engine.submit("C", SamplingParams(max_tokens=2, temperature=0))
        assert engine.stats.requests_rejected == 1
        busy.cancel()
        assert waiting.result()


def test_request_timeout(model, tok):
    with Engine(model, tok, EngineConfig(max_batch=1, request_timeout=0.005)) as engine:
        handle = engine.submit("A", SamplingParams(max_tokens=127, temperature=0, ignore_eos=True))
        with pytest.raises(RequestTimeout):
            handle.result()
        assert engine.stats.requests_timed_out == 1


def test_bad_requests_fail_at_submission(model, tok):
    with Engine(model, tok, EngineConfig(max_batch=2)) as engine:
        with pytest.raises(GptkitError, match="context length"):
            engine.submit("x" * 200, SamplingParams(max_tokens=2))
        with pytest.raises(GptkitError, match="n=3 exceeds"):
            engine.submit("x", SamplingParams(max_tokens=2, n=3))
        with pytest.raises(GptkitError, match="temperature"):
            engine.submit("x", SamplingParams(max_tokens=2, temperature=-1))
    with pytest.raises(GptkitError, match="max_batch"):
        Engine(model, tok, EngineConfig(max_batch=0))
    with pytest.raises(GptkitError, match="threads must be"):
        Engine(model, tok, EngineConfig(threads=0))


def test_the_worker_thread_runs_on_its_configured_threads(model, tok):
    """The worker sets its own torch threads (a per-thread setting), leaving the caller's as they were."""
    mine = torch.get_num_threads()
    seen = []
    original = Engine._decode

    def spying(self):
        seen.append(torch.get_num_threads())
        return original(self)

    with Engine(model, tok, EngineConfig(max_batch=1, threads=1)) as engine:
        engine._decode = spying.__get__(engine)  # the worker's own view of its threads
        engine.generate(["A"], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == mine


def test_stopping_the_engine_fails_unfinished_requests(model, tok):
    engine = Engine(model, tok, EngineConfig(max_batch=1)).start()
    handle = engine.submit("A", SamplingParams(max_tokens=127, temperature=0, ignore_eos=True))
    queued = engine.submit("B", SamplingParams(max_tokens=127, temperature=0, ignore_eos=True))
    engine.stop()
    for h in (handle, queued):
        with pytest.raises(GptkitError, match="stopped"):
            h.result()
