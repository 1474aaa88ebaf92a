"""The Python API: load a checkpoint, then generate, stream and score text.

    from gptkit import LLM
    llm = LLM.load("out/pretrain")                        # a run dir (its best checkpoint) or a checkpoint dir
    llm.generate("Once upon a time", max_tokens=50)       # -> ["...one completion..."]
    llm.generate(["A", "B"], n=2, temperature=0.8)        # -> [["A1", "A2"], ["B1", "B2"]]
    for piece in llm.stream("Hello", stop="\\n"):
        print(piece, end="", flush=True)
    llm.loglikelihood("The capital of France is", " Paris")  # summed log-probability

Everything goes through `gptkit.generation`, the same sampler the CLI and the server use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptkit.checkpoint import load_model
from gptkit.errors import require
from gptkit.generation import Completion, SamplingParams, evaluating, generate, stream
from gptkit.model import GPT
from gptkit.tokenizer import Tokenizer

_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


class LLM:
    """A model and its tokenizer, ready for inference."""

    def __init__(self, model: GPT, tokenizer: Tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "LLM":
        """Load a checkpoint directory, or a run directory (its best checkpoint, else its last)."""
        model, tokenizer = load_model(path, device=device)
        return cls(model, tokenizer)

    # --- generation ---------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[str], *, max_tokens: int = 256, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float = 1.0, n: int = 1, stop: str | list[str] | None = None,
                 seed: int | None = None, **options: Any) -> list[str] | list[list[str]]:
        """Generated texts.

        A single string prompt gives a list of its `n` texts; a list of prompts gives one such list
        per prompt (a list of lists, even when n=1). `options` are the other `SamplingParams` fields
        (repetition_penalty, presence_penalty, frequency_penalty, logprobs, stop_token_ids, ignore_eos).
        """
        completions = self.generate_completions(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                                top_p=top_p, n=n, stop=stop, seed=seed, **options)
        if isinstance(prompt, str):
            return [c.text for c in completions]  # type: ignore[union-attr]
        return [[c.text for c in per_prompt] for per_prompt in completions]  # type: ignore[union-attr]

    def generate_completions(self, prompt: str | Sequence[str], *, max_tokens: int = 256, temperature: float = 1.0,
                             top_k: int | None = None, top_p: float = 1.0, n: int = 1,
                             stop: str | list[str] | None = None, seed: int | None = None,
                             **options: Any) -> list[Completion] | list[list[Completion]]:
        """Like `generate`, with full `Completion` objects (token ids, finish_reason, logprobs)."""
        params = _sampling_params(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, n=n,
                                  stop=stop, seed=seed, **options)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        require(all(isinstance(p, str) for p in prompts),
                "prompt must be a string or a list of strings (for token ids, use gptkit.generation.generate)")
        completions = generate(self.model, self.tokenizer, prompts, params)
        grouped: list[list[Completion]] = [[] for _ in prompts]
        for c in completions:
            grouped[c.prompt_index].append(c)
        return grouped[0] if isinstance(prompt, str) else grouped

    def stream(self, prompt: str, *, max_tokens: int = 256, temperature: float = 1.0, top_k: int | None = None,
               top_p: float = 1.0, stop: str | list[str] | None = None, seed: int | None = None,
               **options: Any) -> Iterator[str]:
        """Text pieces of one completion as they are generated (a partial stop string is never shown)."""
        params = _sampling_params(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  stop=stop, seed=seed, **options)
        return stream(self.model, self.tokenizer, prompt, params)

    # --- scoring ------------------------------------------------------------------------------
    def loglikelihood(self, context: str, continuation: str) -> float:
        """Summed log-probability of `continuation` following `context`, from one forward pass.

        Tokenised as lm-evaluation-harness does: the continuation's tokens are those of
        context + continuation beyond the context's own tokens, so a merge across the boundary is
        scored as the model would see it. An empty context conditions on the BOS token. When the
        two exceed the context window, the oldest context tokens are dropped.
        """
        context_ids = self.tokenizer.encode(context)
        whole = self.tokenizer.encode(context + continuation)
        if whole[:len(context_ids)] != context_ids:  # the boundary merged into a context token
            whole = context_ids + self.tokenizer.encode(continuation)
        return self.loglikelihood_ids(context_ids, whole[len(context_ids):])

    def score(self, text: str) -> float:
        """Summed log-probability of the whole text, starting from the BOS token."""
        return self.loglikelihood("", text)

    def loglikelihood_ids(self, context: Sequence[int], continuation: Sequence[int]) -> float:
        """`loglikelihood` on token ids."""
        if not continuation:
            return 0.0
        if not context:
            require(self.tokenizer.bos_id is not None, "cannot score without context: the tokenizer has no BOS token")
            context = [self.tokenizer.bos_id]  # type: ignore[list-item]
        block = self.model.config.block_size
        require(len(continuation) <= block,
                f"continuation is {len(continuation)} tokens but the model's context length is {block}")
        # Token t is predicted from the positions before it; the last token is never an input.
        inputs = [*context, *continuation][:-1][-block:]
        device = next(self.model.parameters()).device
        with evaluating(self.model):
            hidden = self.model.hidden_states(torch.tensor([inputs], device=device))
            # The output head only where a continuation token is predicted.
            logits = self.model.lm_head(hidden[0, -len(continuation):]).float()
            targets = torch.tensor(continuation, device=device)
            return F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum().item()


def _sampling_params(*, stop: str | list[str] | None, **fields: Any) -> SamplingParams:
    unknown = sorted(set(fields) - _SAMPLING_FIELDS)
    require(not unknown, f"unknown sampling option(s) {unknown}; valid options are {sorted(_SAMPLING_FIELDS)}")
    return SamplingParams(stop=stop if stop is not None else [], **fields)
