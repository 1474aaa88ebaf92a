"""Generation for callers that hold a model: `generate` (all completions), `stream` (one prompt's text) and
`generate_iter` (the events), each driving the one decode batch (`gptkit.inference.decode.DecodeBatch`).

The CLI, the Python API and the server's engine all go through `DecodeBatch`; there is no second loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from gptkit.errors import require
from gptkit.inference.decode import Completion, DecodeBatch, Prompt, Row, make_rows
from gptkit.inference.sampling import SamplingParams
from gptkit.inference.speculative import Speculation
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer


@dataclass
class GenerationEvent:
    """New text for completion `index` (in `generate`'s output order); `completion` is set on its last event."""

    index: int
    text: str
    completion: Completion | None = None


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """Accept one prompt (a string or a list of ids) or a list of prompts."""
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # type: ignore[list-item]
    return prompts  # type: ignore[return-value]


def generate_iter(model: GPT, tokenizer: Tokenizer, prompts: Prompt | Sequence[Prompt],
                  params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                  prompt_embeds: Sequence[torch.Tensor | None] | None = None,
                  speculation: Speculation | None = None) -> Iterator[GenerationEvent]:
    """Events of the decoding loop: new text of a completion, and a last event carrying its `Completion`.

    prompts: strings or lists of token ids (of different lengths); params: shared, or one per prompt.
    Completion indices run over prompts, then samples: prompt i's sample j is i * n + j when n is shared.
    prompt_embeds: per prompt, ready input embeddings (a multimodal prompt) or None.
    speculation: prompt-lookup drafts for greedy rows (`gptkit.inference.speculative`); the text is the same.
    Invalid parameters and over-long prompts raise here, before the first event.
    """
    rows = make_rows(model, tokenizer, _as_prompt_list(prompts), params or SamplingParams(), prompt_embeds)
    return _drive(DecodeBatch(model, max_rows=max(len(rows), 1), speculation=speculation), rows)


def _drive(batch: DecodeBatch, rows: list[Row]) -> Iterator[GenerationEvent]:
    """Admit every row at once, then step until all have finished (dropping each as it does)."""
    if not rows:
        return
    taken = batch.admit(rows)
    while True:
        for row, piece in taken:
            if piece or row.finish_reason is not None:
                yield GenerationEvent(row.index, piece, row.completion() if row.finish_reason else None)
        batch.compact()
        if not batch.rows:
            return
        taken = batch.step()


def generate(model: GPT, tokenizer: Tokenizer, prompts: Prompt | Sequence[Prompt],
             params: SamplingParams | Sequence[SamplingParams] | None = None, *,
             prompt_embeds: Sequence[torch.Tensor | None] | None = None,
             speculation: Speculation | None = None) -> list[Completion]:
    """Complete every prompt `n` times in one batch; completions come ordered by prompt, then sample."""
    events = generate_iter(model, tokenizer, prompts, params, prompt_embeds=prompt_embeds, speculation=speculation)
    done = [e.completion for e in events if e.completion is not None]
    return sorted(done, key=lambda c: (c.prompt_index, c.sample_index))


def stream(model: GPT, tokenizer: Tokenizer, prompt: Prompt, params: SamplingParams | None = None, *,
           prompt_embeds: torch.Tensor | None = None, speculation: Speculation | None = None) -> Iterator[str]:
    """Text pieces of one completion as they are generated; joined, they equal `generate`'s text.

    Errors in the parameters or the prompt raise here, before the first piece.
    """
    params = params or SamplingParams()
    require(params.n == 1, f"stream() produces one completion, got n={params.n}; use generate() for several")
    events = generate_iter(model, tokenizer, [prompt], params, prompt_embeds=[prompt_embeds], speculation=speculation)
    return (event.text for event in events if event.text)
