"""The one scoring path: log-probabilities of given tokens under the model, from one forward pass per batch.

`score_tokens` is the mechanism (per token, with the top alternatives; `prompt_logprobs` is the server's
`echo` + `logprobs` view of it); `loglikelihood` sums it over a continuation (what `LLM.loglikelihood`, lm-evaluation-
harness and prompting's label scoring use); `encode_pair` tokenises a (context, continuation) pair the
way the harness does. Knows nothing of sampling, requests or labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from gptkit.errors import require
from gptkit.inference.decode import evaluating
from gptkit.inference.sampling import TokenLogprob
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer

SCORE_BATCH_TOKENS = 8192  # padded tokens per forward pass, when the caller does not fix the batch
HEAD_ELEMENTS = 1 << 22  # logits computed at once by the output head: ~16 MB of float32


def score_tokens(model: GPT, sequences: Sequence[Sequence[int]], first: Sequence[int] | None = None, *,
                 top: int = 0, batch_tokens: int | None = SCORE_BATCH_TOKENS) -> list[list[TokenLogprob]]:
    """Per sequence, a `TokenLogprob` for each token from position `first[i]` on (default 1): its
    log-probability given the tokens before it, and the `top` likeliest tokens at that position.

    Sequences are right-padded into batches of at most `batch_tokens` padded tokens (None: all in one
    batch); causal attention keeps every real position blind to the padding after it. The output head
    runs only where a scored token is predicted, in chunks, so a long sequence on a large vocabulary
    does not hold every logit at once.
    """
    first = [1] * len(sequences) if first is None else list(first)
    require(len(first) == len(sequences), f"got {len(first)} start positions for {len(sequences)} sequences")
    block = model.config.block_size
    for ids, start in zip(sequences, first):
        require(len(ids) <= block + 1, f"a sequence of {len(ids)} tokens does not fit the model's context of {block}")
        require(1 <= start <= len(ids), f"scoring starts at position {start} of a {len(ids)}-token sequence")
    results: list[list[TokenLogprob]] = []
    start = 0
    while start < len(sequences):
        end = start + 1
        longest = len(sequences[start]) - 1
        while end < len(sequences) and (batch_tokens is None or
                                        (end - start + 1) * max(longest, len(sequences[end]) - 1) <= batch_tokens):
            longest = max(longest, len(sequences[end]) - 1)
            end += 1
        results += _score_batch(model, sequences[start:end], first[start:end], top)
        start = end
    return results


def _score_batch(model: GPT, sequences: Sequence[Sequence[int]], first: Sequence[int],
                 top: int) -> list[list[TokenLogprob]]:
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    inputs = [list(ids[:-1]) for ids in sequences]  # token t is predicted from the positions before it
    targets = [list(ids[start:]) for ids, start in zip(sequences, first)]
    if not any(targets):
        return [[] for _ in sequences]
    longest = max(1, max(len(r) for r in inputs))
    idx = torch.tensor([r + [0] * (longest - len(r)) for r in inputs], dtype=torch.long, device=device)
    with evaluating(model):
        hidden = model.hidden_states(idx)
        # Only the positions that predict a scored token: the last len(target) inputs of each row.
        wanted = torch.cat([hidden[i, len(r) - len(t):len(r)] for i, (r, t) in enumerate(zip(inputs, targets))])
        flat_targets = torch.tensor([t for ts in targets for t in ts], dtype=torch.long, device=device)
        chosen: list[float] = []
        tops: list[list[tuple[int, float]]] = []
        chunk = max(1, HEAD_ELEMENTS // vocab)
        for lo in range(0, len(flat_targets), chunk):
            logprobs = F.log_softmax(model.lm_head(wanted[lo:lo + chunk]).float(), dim=-1)
            chosen += logprobs.gather(1, flat_targets[lo:lo + chunk, None]).squeeze(1).tolist()
            if top > 0:
                values, indices = logprobs.topk(min(top, vocab), dim=-1)
                tops += [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
            else:
                tops += [[] for _ in range(len(logprobs))]
    out, at = [], 0
    for ts in targets:
        out.append([TokenLogprob(t, chosen[at + j], tops[at + j]) for j, t in enumerate(ts)])
        at += len(ts)
    return out


def prompt_logprobs(model: GPT, prompts: Sequence[Sequence[int]], top: int,
                    batch_tokens: int = SCORE_BATCH_TOKENS) -> list[list[TokenLogprob | None]]:
    """Per prompt, each token's `TokenLogprob` given the tokens before it, with the `top` likeliest there;
    None for the first token, which has no context (what OpenAI's `echo` with `logprobs` reports)."""
    scored = score_tokens(model, prompts, top=top, batch_tokens=batch_tokens)
    return [[None, *tokens] for tokens in scored]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), tokenised as lm-evaluation-harness does.

    Trailing spaces of the context move to the continuation, and the continuation's tokens are those
    of context + continuation beyond the context's own, so a merge across the boundary is scored as the
    model would see it.
    """
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    if whole[:len(context_ids)] != context_ids:  # the boundary merged into a context token
        return context_ids, tokenizer.encode(continuation)
    return context_ids, whole[len(context_ids):]


def loglikelihood(model: GPT, tokenizer: Tokenizer, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                  batch_size: int = 16) -> list[tuple[float, bool]]:
    """(summed log-probability, is_greedy) of each (context ids, continuation ids), `batch_size` pairs
    per forward pass. `is_greedy`: every continuation token was the model's argmax. An empty context
    conditions on BOS; when a pair exceeds the context window, the oldest context tokens are dropped."""
    require(isinstance(batch_size, int) and batch_size >= 1, f"batch_size must be an integer >= 1, got {batch_size!r}")
    block = model.config.block_size
    sequences, first = [], []
    for context, continuation in pairs:
        require(len(continuation) <= block,
                f"continuation is {len(continuation)} tokens but the model's context length is {block}")
        if not context:
            require(tokenizer.bos_id is not None, "cannot score without context: the tokenizer has no BOS")
            context = [tokenizer.bos_id]  # type: ignore[list-item]
        whole = [*context, *continuation][-(block + 1):]
        sequences.append(whole)
        first.append(len(whole) - len(continuation))
    results: list[tuple[float, bool]] = []
    for lo in range(0, len(sequences), batch_size):
        scored = score_tokens(model, sequences[lo:lo + batch_size], first[lo:lo + batch_size], top=1,
                              batch_tokens=None)
        # A token is greedy when nothing is likelier: its log-probability equals the top one (ties count).
        results += [(sum(t.logprob for t in tokens), all(t.logprob >= t.top[0][1] for t in tokens))
                    for tokens in scored]
    return results
