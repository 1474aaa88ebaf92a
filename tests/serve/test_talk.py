"""`gptkit chat` and `gptkit complete` against a local checkpoint: the same text as the sampler gives."""

import pytest
import torch

from gptkit.checkpoint import save_checkpoint
from gptkit.config import ModelConfig
from gptkit.chat_format import chat_stop_token_ids, render_chat
from gptkit.inference.generate import generate
from gptkit.inference.sampling import SamplingParams
from gptkit.models.gpt import GPT
from gptkit.chat_format import resolve_chat_template
from gptkit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, shakespeare_text):
    tokenizer = Tokenizer.train_char([shakespeare_text[:20000]])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32))
    return save_checkpoint(tmp_path_factory.mktemp("talk") / "ckpt", model, tokenizer), model.eval(), tokenizer


def test_complete_prints_the_greedy_continuation(checkpoint, run_cli):
    path, model, tokenizer = checkpoint
    result = run_cli("complete", "--checkpoint", str(path), "--prompt", "ROMEO:", "--max-tokens", "12",
                     "--temperature", "0")
    expected = generate(model, tokenizer, ["ROMEO:"], SamplingParams(max_tokens=12, temperature=0))[0].text
    assert result.stdout == expected + "\n"


def test_chat_keeps_the_history_and_resets(checkpoint, run_cli):
    path, model, tokenizer = checkpoint
    lines = ["Good morrow", "And thou?", "/reset", "Good morrow", "/exit", "never read"]
    result = run_cli("chat", "--checkpoint", str(path), "--max-tokens", "8", "--temperature", "0",
                     input="\n".join(lines) + "\n")
    replies = result.stdout.split("\n")[:3]
    template = resolve_chat_template(tokenizer)
    assert template == "tokens"  # gptkit tokenizers reserve the role tokens

    def reply(messages):
        ids = render_chat(messages, tokenizer, add_generation_prompt=True, template=template).ids
        params = SamplingParams(max_tokens=8, temperature=0, stop_token_ids=chat_stop_token_ids(tokenizer, template))
        return generate(model, tokenizer, [ids], params)[0].text

    first = reply([{"role": "user", "content": "Good morrow"}])
    second = reply([{"role": "user", "content": "Good morrow"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "And thou?"}])
    assert replies == [first, second, first]  # after /reset the history is gone


def test_chat_needs_a_checkpoint_or_a_url(checkpoint, run_cli):
    result = run_cli("chat", check=False, input="")
    assert result.returncode == 2 and "--checkpoint" in result.stderr and "Traceback" not in result.stderr
