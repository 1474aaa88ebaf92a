"""The sampler: `SamplingParams` and pure functions over a batch of logits (B, V); knows nothing of models or text.

Each row may have its own parameters (a list of `SamplingParams`), which is what a continuous-batching
server needs: `apply_penalties`, `filter_top_k`, `filter_top_p`, `sample_next` (a draw per row from its own
generator), and `token_logprobs` (the chosen token's log-probability and the top alternatives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gptkit.errors import require
from gptkit.inference.text import TextGuard

MAX_LOGPROBS = 20  # as in OpenAI's API
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed accepts


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. Field names and meanings follow OpenAI's and vLLM's APIs."""

    max_tokens: int = 256
    """New tokens at most. Clamped so that prompt + output fits the context (finish_reason "length")."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (always the most likely token)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens; None means no limit."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p."""
    repetition_penalty: float = 1.0
    """CTRL-style: the logit of a token already in the prompt or output is divided by this when
    positive and multiplied when negative, so values > 1 discourage repeats."""
    presence_penalty: float = 0.0
    """OpenAI-style, in [-2, 2]: subtracted from the logit of every token already in the output."""
    frequency_penalty: float = 0.0
    """OpenAI-style, in [-2, 2]: subtracted once per earlier occurrence of the token in the output."""
    seed: int | None = None
    """Seed of this request's own random generator: the same seed gives the same text whatever else
    is in the batch. Sample j of n uses seed + j."""
    n: int = 1
    """Completions per prompt."""
    stop: list[str] | str | None = field(default_factory=list)
    """Stop strings; the text is cut right before the first one (which is not included)."""
    logprobs: int | None = None
    """Report the chosen token's log-probability and this many top alternatives per token (0..20)."""
    stop_token_ids: list[int] | None = None
    """Token ids that end generation (not part of the text); None means the tokenizer's EOS."""
    ignore_eos: bool = False
    """Keep going past the tokenizer's EOS token (for benchmarks: always produce max_tokens)."""
    guard: TextGuard | None = None
    """Checks the text as it is generated (output moderation, e.g. `gptkit.safety.moderation.Moderator`): a span
    it flags ends the completion where the span starts, with finish_reason "content_filter"; a stream shows only
    text it has cleared. Not an OpenAI field (the server sets it from its --moderation)."""

    def __post_init__(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> None:
        """Raise `gptkit.errors.GptkitError` naming the first invalid field."""
        _require_int(self.max_tokens, "max_tokens", minimum=1)
        _require_real(self.temperature, "temperature", "[0, inf)", 0.0, math.inf, "0 means greedy")
        if self.top_k is not None:
            _require_int(self.top_k, "top_k", minimum=1, hint="or None for no limit")
        _require_real(self.top_p, "top_p", "(0, 1]", 0.0, 1.0, "1 disables nucleus sampling", open_low=True)
        _require_real(self.repetition_penalty, "repetition_penalty", "(0, inf)", 0.0, math.inf, "1 disables it",
                      open_low=True)
        _require_real(self.presence_penalty, "presence_penalty", "[-2, 2]", -2.0, 2.0, "0 disables it")
        _require_real(self.frequency_penalty, "frequency_penalty", "[-2, 2]", -2.0, 2.0, "0 disables it")
        if self.seed is not None:
            _require_int(self.seed, "seed", minimum=0, maximum=MAX_SEED)
        _require_int(self.n, "n", minimum=1)
        require(isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
                f"stop must be a string or a list of non-empty strings, got {self.stop!r}")
        if self.logprobs is not None:
            _require_int(self.logprobs, "logprobs", minimum=0)
            require(self.logprobs <= MAX_LOGPROBS, f"logprobs must be at most {MAX_LOGPROBS}, got {self.logprobs}")
        if self.stop_token_ids is not None:
            require(isinstance(self.stop_token_ids, (list, tuple))
                    and all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
                    f"stop_token_ids must be a list of token ids, got {self.stop_token_ids!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


def _require_int(value, name: str, *, minimum: int, maximum: int | None = None, hint: str = "") -> None:
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= minimum
          and (maximum is None or value <= maximum))
    bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    require(ok, f"{name} must be an integer {bound}{' ' + hint if hint else ''}, got {value!r}")


def _require_real(value, name: str, interval: str, low: float, high: float, hint: str, *,
                  open_low: bool = False) -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (low < value if open_low else low <= value) and value <= high)
    require(ok, f"{name} must be a finite number in {interval} ({hint}), got {value!r}")


@dataclass
class TokenLogprob:
    """One generated token with its log-probability under the model (before temperature, penalties and
    filtering, as vLLM and OpenAI report it) and the `top` most likely alternatives, best first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def _column(params: SamplingParams | Sequence[SamplingParams], name: str, batch: int,
            like: torch.Tensor) -> torch.Tensor:
    """One parameter as a (B, 1) tensor, from shared params or one SamplingParams per row."""
    if isinstance(params, SamplingParams):
        values = [getattr(params, name)] * batch
    else:
        require(len(params) == batch, f"got {len(params)} SamplingParams for a batch of {batch} rows")
        values = [getattr(p, name) for p in params]
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(1)


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams | Sequence[SamplingParams],
                    seen: torch.Tensor | None = None) -> torch.Tensor:
    """Repetition, presence and frequency penalties; returns new logits (B, V).

    counts: (B, V) how often each token occurs in the output so far (presence and frequency use
    only the output, as OpenAI defines them). seen: optional (B, V) bool of tokens in the prompt;
    the repetition penalty covers prompt and output, as in CTRL and Hugging Face.
    """
    B = logits.shape[0]
    logits = logits.float()
    counts = counts.to(logits.dtype)
    repeated = counts > 0 if seen is None else (counts > 0) | seen
    r = _column(params, "repetition_penalty", B, logits)
    # Sign-aware so that the penalty always lowers the token's probability: a negative logit
    # divided by r > 1 would move towards zero, i.e. up.
    penalised = torch.where(logits > 0, logits / r, logits * r)
    logits = torch.where(repeated, penalised, logits)
    logits = logits - _column(params, "presence_penalty", B, logits) * (counts > 0).to(logits.dtype)
    logits = logits - _column(params, "frequency_penalty", B, logits) * counts
    # An extreme repetition penalty (say 1e-300) can overflow a logit to inf, and inf - inf is NaN
    # in the softmax: keep every logit finite.
    largest = torch.finfo(logits.dtype).max
    return logits.clamp(-largest, largest)


def filter_top_k(logits: torch.Tensor, k: int | torch.Tensor | None) -> torch.Tensor:
    """Set all but the k largest logits of each row to -inf; k is an int or a (B,) tensor (None: keep all).

    Ranks come from a sort, not a threshold, so exactly k survive even when logits tie.
    """
    V = logits.shape[-1]
    if k is None:
        return logits
    k = torch.as_tensor(k, device=logits.device).clamp(max=V).reshape(-1, 1)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(V, device=logits.device)
    sorted_logits = sorted_logits.masked_fill(rank >= k, -math.inf)
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def filter_top_p(logits: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p.

    A token is kept when the probability of the tokens ranked above it is still below p, so the
    most likely token is always kept. p is a float or a (B,) tensor.
    """
    p = torch.as_tensor(p, dtype=torch.float32, device=logits.device).reshape(-1, 1)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    # p = 1 keeps everything, even where rounding pushes the running sum to 1 before the tail.
    sorted_logits = sorted_logits.masked_fill((mass_before >= p) & (p < 1), -math.inf)
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample_next(logits: torch.Tensor, params: SamplingParams | Sequence[SamplingParams],
                generators: torch.Generator | Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
    """Token ids (B,) from logits (B, V) after penalties: temperature, top-k, top-p, then a draw.

    Rows with temperature 0 take the argmax. A row with its own generator draws with it alone, so
    its tokens do not depend on the other rows; rows without one share the global RNG.
    """
    B, V = logits.shape
    rows = [params] * B if isinstance(params, SamplingParams) else list(params)
    require(len(rows) == B, f"got {len(rows)} SamplingParams for a batch of {B} rows")
    if generators is None or isinstance(generators, torch.Generator):
        generators = [generators] * B
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    if all(p.greedy for p in rows):
        return greedy

    temperature = torch.tensor([p.temperature or 1.0 for p in rows], device=logits.device).unsqueeze(1)
    temperature = temperature.clamp_min(torch.finfo(temperature.dtype).tiny)  # 1e-300 is 0 in float32
    # Shifting by the row's maximum first changes no probability but keeps a tiny temperature from
    # overflowing: the best token's logit stays 0 and the others go to -inf at worst, never NaN.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if any(p.top_k is not None and p.top_k < V for p in rows):
        logits = filter_top_k(logits, torch.tensor([p.top_k or V for p in rows], device=logits.device))
    if any(p.top_p < 1 for p in rows):
        logits = filter_top_p(logits, torch.tensor([p.top_p for p in rows], device=logits.device))
    probs = logits.softmax(dim=-1)
    # One uniform number per sampling row, from the row's own generator where it has one (a loop over
    # rows, not the vocabulary), the shared RNG otherwise; greedy rows draw nothing.
    uniform = torch.zeros(B, dtype=torch.float64)
    shared = [i for i, (p, generator) in enumerate(zip(rows, generators)) if generator is None and not p.greedy]
    if shared:
        uniform[shared] = torch.rand(len(shared), dtype=torch.float64)
    for i, (p, generator) in enumerate(zip(rows, generators)):
        if generator is not None and not p.greedy:
            uniform[i] = torch.rand(1, dtype=torch.float64, generator=generator)[0]
    sampled = draw_from(probs, uniform.to(probs.device))
    return torch.where(torch.tensor([p.greedy for p in rows], device=logits.device), greedy, sampled)


def draw_from(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: for each row of probs (B, V), the first token whose cumulative probability
    exceeds uniform (B,) in [0, 1) times the row's total.

    Exact, and about 20x faster on CPU than a `torch.multinomial` per row at GPT-2's 50k vocabulary.
    The cumulative sum is in float64 so that small probabilities are not lost in a large running sum;
    a token of probability 0 (filtered by top-k/top-p) is never drawn.
    """
    cumulative = probs.double().cumsum(dim=-1)
    total = cumulative[:, -1:]
    # u * total can round up to total itself; stay strictly below it, so some token's sum exceeds it.
    target = torch.minimum(uniform.double().unsqueeze(1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, target, right=True).squeeze(1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, token_ids: list[int],
                   wanted: list[int | None]) -> list[TokenLogprob | None]:
    """Each row's chosen token with its log-probability and `wanted[i]` top alternatives (None: not asked)."""
    if all(k is None for k in wanted):
        return [None] * len(wanted)
    # The model's own distribution: the raw logits, before temperature, penalties and filters.
    logprobs = F.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
    top_values, top_ids = logprobs.topk(max(k or 0 for k in wanted), dim=-1)
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    return [None if k is None else TokenLogprob(t, lp, list(zip(ids[:k], vals[:k])))
            for k, t, lp, ids, vals in zip(wanted, token_ids, chosen, top_ids, top_values)]
