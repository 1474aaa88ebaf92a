"""Prompt-lookup speculation (`gptkit.inference.speculative`) in the one decode batch: greedy text equal to plain
one-token steps (the model's own choices are the reference, recomputed here), drafts actually accepted, and the
steps where it must stay out of the way."""

import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.inference.decode import DecodeBatch, make_rows
from gptkit.inference.generate import _drive, generate
from gptkit.inference.sampling import SamplingParams
from gptkit.inference.speculative import Speculation, accepted, propose
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer

TEXT = "the cat sat on the mat. the dog sat on the log. the cat sat on the log."


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_char([TEXT])


def looping_model(tok: Tokenizer, family: str) -> GPT:
    """A random model with peaked logits: greedy decoding falls into a cycle within a few dozen tokens, so its
    text repeats itself, which is where prompt lookup proposes drafts the model accepts."""
    torch.manual_seed(3)
    extra = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=1) if family == "llama" else {}
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32,
                            tie_embeddings=False, **extra)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.tok_emb.weight, std=1.0)
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    return model


def run(model, tok, prompts, params, speculation):
    rows = make_rows(model, tok, prompts, params)
    batch = DecodeBatch(model, len(rows), speculation=speculation)
    done = [e.completion for e in _drive(batch, rows) if e.completion is not None]
    return sorted(done, key=lambda c: c.prompt_index), batch


def test_propose_copies_what_followed_the_latest_match():
    spec = Speculation(tokens=3, max_ngram=2, min_ngram=1)
    #            0  1  2  3  4  5  6  7  8
    context = [5, 6, 7, 8, 5, 6, 9, 5, 6]  # suffix (5, 6) last seen at 4: 9 followed, then 5, 6
    assert propose(context, spec, limit=10) == [9, 5, 6]
    assert propose(context, spec, limit=1) == [9]
    assert propose([1, 2, 3, 4], spec, limit=5) == []  # nothing recurs
    assert propose([1, 2, 3, 2], spec, limit=5) == [3, 2]  # the 1-gram (2) is the longest that recurs
    assert propose([1, 2, 3, 2], Speculation(min_ngram=2), limit=5) == []
    assert accepted([4, 5, 6], [4, 5, 7, 8]) == 2 and accepted([], [1]) == 0 and accepted([1], [2, 3]) == 0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_speculative_greedy_text_is_the_plain_greedy_text(tok, family):
    model = looping_model(tok, family)
    prompts = ["the cat sat", "on the mat. the dog", "t"]  # ragged: rows sit at different positions
    params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    plain, base = run(model, tok, prompts, params, None)
    fast, batch = run(model, tok, prompts, params, Speculation(tokens=4))
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    assert [c.text for c in fast] == [c.text for c in plain]
    assert [c.finish_reason for c in fast] == ["length"] * 3
    # the drafts were used, and paid: fewer steps for the same tokens
    assert batch.speculative_steps > 0 and batch.accepted > 0
    assert batch.steps < base.steps
    assert 0 < batch.accepted <= batch.drafted


def test_stop_strings_and_max_tokens_cut_inside_an_accepted_draft(tok):
    model = looping_model(tok, "gpt2")
    plain = generate(model, tok, ["the cat sat"], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))[0]
    stop = plain.text[30:32]  # a string the text reaches late, where the drafts run
    for params in (SamplingParams(max_tokens=50, temperature=0, stop=[stop]),
                   SamplingParams(max_tokens=37, temperature=0, ignore_eos=True)):
        expected = generate(model, tok, ["the cat sat"], params)[0]
        got = generate(model, tok, ["the cat sat"], params, speculation=Speculation(tokens=6))[0]
        assert (got.text, got.token_ids, got.finish_reason) == (expected.text, expected.token_ids,
                                                                 expected.finish_reason)
    assert len(got.token_ids) == 37


def test_a_sampled_row_in_the_batch_turns_speculation_off(tok):
    model = looping_model(tok, "gpt2")
    params = [SamplingParams(max_tokens=30, temperature=0, ignore_eos=True),
              SamplingParams(max_tokens=30, temperature=0.8, seed=1, ignore_eos=True)]
    rows = make_rows(model, tok, ["the cat", "the dog"], params)
    batch = DecodeBatch(model, len(rows), speculation=Speculation())
    list(_drive(batch, rows))
    assert batch.steps > 0 and batch.speculative_steps == 0


def test_bad_speculation_settings_are_refused(tok):
    model = looping_model(tok, "gpt2")
    for bad, message in ((Speculation(tokens=0), "speculative tokens"), (Speculation(min_ngram=4), "min_ngram"),
                         (Speculation(window=2), "window")):
        with pytest.raises(GptkitError, match=message):
            DecodeBatch(model, 1, speculation=bad)


def test_the_api_the_engine_and_the_cli_take_speculative_tokens(tok, tmp_path, run_cli):
    from gptkit.api import LLM
    from gptkit.checkpoint import save_checkpoint
    from gptkit.serve.engine import Engine, EngineConfig
    from gptkit.serve.metrics import Metrics

    model = looping_model(tok, "gpt2")
    llm = LLM(model, tok)
    plain = llm.generate("the cat sat", max_tokens=40, temperature=0, ignore_eos=True)
    assert llm.generate("the cat sat", max_tokens=40, temperature=0, ignore_eos=True, speculative_tokens=4) == plain
    assert "".join(llm.stream("the cat sat", max_tokens=40, temperature=0, ignore_eos=True,
                              speculative_tokens=4)) == plain[0]
    with pytest.raises(GptkitError, match="speculative_tokens must be"):
        llm.generate("the cat sat", max_tokens=4, temperature=0, speculative_tokens=-1)
    with Engine(model, tok, EngineConfig(max_batch=2, speculative_tokens=4)) as engine:
        served = engine.generate(["the cat sat"], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
        drafted, accepted = engine.speculation
        assert served[0].text == plain[0] and 0 < accepted <= drafted
        scraped = Metrics().render(engine)
        assert f"gptkit_engine_speculative_accepted_tokens_total {accepted}" in scraped
        assert f"gptkit_engine_speculative_draft_tokens_total {drafted}" in scraped
    with pytest.raises(GptkitError, match="speculative_tokens must be"):
        EngineConfig(speculative_tokens=-2).validate()
    checkpoint = save_checkpoint(tmp_path / "looping", model, tok)
    out = run_cli("generate", "--checkpoint", str(checkpoint), "--prompt", "the cat sat", "--max-tokens", "40",
                  "--temperature", "0", "--speculative-tokens", "4", "--no-stream")
    assert out.stdout.strip().startswith(("the cat sat" + plain[0]).strip()[:30])
