"""The one sampler: every way of generating text (CLI, Python API, server) goes through this file.

Layers, from the bottom up, each usable on its own:

1. `SamplingParams`: what the user asked for, validated once.
2. Pure tensor functions over a batch of logits (B, V): `apply_penalties`, `filter_top_k`,
   `filter_top_p`, `sample_next`. Each row may have its own parameters (a list of
   `SamplingParams`), which is what a continuous-batching server needs.
3. Model steps over a ragged batch sharing one `KVCache`: `prefill` and `decode_step`. Both only
   run the output head on the positions whose logits are needed: on a 50k vocabulary the head
   costs as much as several layers, and a prompt needs it at one position, not all of them.
4. `IncrementalText`: token ids to text, with stop strings found even when they are split across
   tokens, and a hold-back so that streamed text never shows half a stop string.
5. One decoding loop, `generate_iter`, yielding text events; `generate` collects them into
   `Completion`s and `stream` yields the text pieces of one prompt. There is no second loop.

Context length: a prompt of block_size tokens or more is an error; otherwise max_tokens is clamped
so that prompt + output fits, and a completion cut short that way ends with finish_reason "length".
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.errors import require
from gptkit.model import GPT, KVCache
from gptkit.tokenizer import StreamDecoder, Tokenizer

MAX_LOGPROBS = 20  # as in OpenAI's API
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed accepts
FinishReason = Literal["stop", "length"]


# --- 1. parameters ------------------------------------------------------------------------------------

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


# --- results -----------------------------------------------------------------------------------------

@dataclass
class TokenLogprob:
    """One generated token with its log-probability under the model (before temperature, penalties and
    filtering, as vLLM and OpenAI report it) and the `top` most likely alternatives, best first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Completion:
    """One sample for one prompt."""

    prompt_index: int
    sample_index: int
    text: str
    """Generated text, cut before any stop string; stop tokens such as EOS are not included."""
    token_ids: list[int]
    """Every sampled token, including a final stop token and the tokens that spelt a stop string."""
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None
    """One entry per element of `token_ids`, when `SamplingParams.logprobs` is set."""
    num_prompt_tokens: int


@dataclass
class GenerationEvent:
    """New text for completion `index` (in `generate`'s output order); `completion` is set on its last event."""

    index: int
    text: str
    completion: Completion | None = None


# --- 2. logit processing: pure functions on a batch (B, V) -------------------------------------------

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


# --- 3. model steps over a ragged batch ---------------------------------------------------------------

def prefill(model: GPT, prompts: Sequence[Sequence[int]], cache: KVCache) -> torch.Tensor:
    """Write the prompts into cache rows 0..P-1 and return the logits at each prompt's last token (P, V).

    Prompts are right-padded into one (P, T) batch, so row i's tokens sit at positions 0..L_i-1 and
    padding lands in slots beyond L_i, which attention never reads and decoding overwrites.
    """
    device = cache.k[0].device
    longest = max(len(p) for p in prompts)
    idx = torch.tensor([[*p, *[0] * (longest - len(p))] for p in prompts], dtype=torch.long, device=device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    hidden = model.hidden_states(idx, input_pos=torch.arange(idx.shape[1], device=device), kv_cache=cache)
    last = hidden[torch.arange(len(prompts), device=device), lengths - 1]
    return model.lm_head(last)


def decode_step(model: GPT, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Feed one token per row (B,) at its own position (B,); return the next-token logits (B, V)."""
    hidden = model.hidden_states(tokens.unsqueeze(1), input_pos=positions.unsqueeze(1), kv_cache=cache)
    return model.lm_head(hidden[:, -1])


def use_decode_layout(model: nn.Module) -> None:
    """Store every linear weight of a CPU model transposed in memory, (in, out) row-major.

    The values and shapes do not change (each weight becomes a transposed view of an (in, out)
    tensor), only which way the bytes run. A decode step multiplies a few rows by every weight, and
    CPU matmul kernels do that markedly faster against an (in, out) matrix than against the
    (out, in) one nn.Linear keeps: GPT-2-small's block weights at 8 rows went from 33 to 27 ms per
    step, its 154 MB head from 19 to 9.5 ms, and a single row is no
    slower. Training wants the usual layout back: `gptkit.checkpoint.use_standard_layout` undoes
    this, and the training loop and checkpoint writer call it. Done once per model; later calls
    find nothing to change.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.device.type == "cpu" and module.weight.is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()


@contextlib.contextmanager
def evaluating(model: GPT, modules: Sequence[nn.Module] | None = None) -> Iterator[None]:
    """Eval mode (no dropout) and inference mode, restoring the caller's mode afterwards.

    Used around each compute step rather than the whole generator, so the caller's code between
    two streamed pieces never runs in inference mode by accident. Switching modes walks every module
    twice (for a small model, a third of a decode step), so it is skipped when no module is training.
    Even finding that out walks the module tree; a caller that enters once per step can pass
    `modules`, the list of `model.modules()`, made once.
    """
    was_training = model.training
    switch = any(m.training for m in (model.modules() if modules is None else modules))
    if switch:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if switch:
            model.train(was_training)


# --- 4. text: incremental decoding and stop strings ---------------------------------------------------

class IncrementalText:
    """The text of a growing list of tokens, cut before the first stop string.

    Stop strings are matched on text, not tokens, so one split across tokens, or starting in the
    middle of a token, is still found. `take()` returns the text that is safe to show: it holds
    back a tail that could still become a stop string (e.g. "Hel" while "Hello" is a stop string).
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.decoder = StreamDecoder(tokenizer, skip_special_tokens=True)
        self.stop = list(stop)
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.text = ""
        self.stopped = False  # a stop string was found; text ends right before it
        self.shown = 0  # characters of `text` already returned by take()

    def push(self, token_id: int) -> None:
        self._append(self.decoder.push(token_id))

    def flush(self) -> None:
        """Add whatever the decoder still holds back (an incomplete character at the very end)."""
        if not self.stopped:
            self._append(self.decoder.flush())

    def _append(self, piece: str) -> None:
        if self.stopped or not piece:
            return
        # A new match must end inside the new piece, so only the last longest_stop-1 old characters
        # need searching again.
        start = max(0, len(self.text) - self.longest_stop + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        for n in range(min(len(self.text), self.longest_stop - 1), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def take(self, *, final: bool = False) -> str:
        """Text not returned before; with final=True (or after a stop), everything that is left."""
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        piece = self.text[self.shown:max(end, self.shown)]
        self.shown += len(piece)
        return piece


# --- 5. the decoding loop -----------------------------------------------------------------------------

@dataclass(eq=False)
class _Row:
    """Host-side state of one completion while it is being generated."""

    index: int
    prompt_index: int
    sample_index: int
    prompt: list[int]
    params: SamplingParams
    max_new: int
    stop_ids: frozenset[int]
    generator: torch.Generator | None
    text: IncrementalText
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None

    def accept(self, token: int, logprob: TokenLogprob | None) -> str:
        """Record a sampled token; return the text that became safe to show."""
        self.token_ids.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        if token in self.stop_ids:
            self._finish("stop")
        else:
            self.text.push(token)
            if self.text.stopped:
                self._finish("stop")
            elif len(self.token_ids) >= self.max_new:
                self._finish("length")
        return self.text.take(final=self.finish_reason is not None)

    def _finish(self, reason: FinishReason) -> None:
        self.text.flush()
        self.finish_reason = "stop" if self.text.stopped else reason

    def completion(self) -> Completion:
        assert self.finish_reason is not None
        return Completion(self.prompt_index, self.sample_index, self.text.text, self.token_ids,
                          self.finish_reason, self.logprobs, len(self.prompt))


class _Batch:
    """Device-side state of the rows still decoding: KV cache, next positions, token counts.

    Finished rows are dropped (the cache is compacted), so each step costs only what is still running.
    After construction and after each `advance`, `token_ids` and `logprobs` hold every row's next
    token: the model step and the choice of token share one `evaluating` block.
    """

    def __init__(self, model: GPT, rows: list[_Row]) -> None:
        self.model, self.rows = model, rows
        self.modules = list(model.modules())  # for `evaluating`, once per step
        use_decode_layout(model)
        param = next(model.parameters())
        device, V = param.device, model.config.vocab_size
        max_len = max(len(r.prompt) + r.max_new for r in rows)
        with evaluating(model, self.modules):
            # The n samples of a prompt share one prefill: run each distinct prompt once, then copy
            # its cache rows (rows of one prompt are adjacent).
            starts = [i for i, r in enumerate(rows) if i == 0 or r.prompt_index != rows[i - 1].prompt_index]
            repeats = torch.tensor([b - a for a, b in zip(starts, starts[1:] + [len(rows)])], device=device)
            cache = KVCache.allocate(model.config, len(starts), max_len, device=device, dtype=param.dtype)
            logits = prefill(model, [rows[i].prompt for i in starts], cache)
            if len(starts) < len(rows):
                cache = KVCache([k.repeat_interleave(repeats, 0) for k in cache.k],
                                [v.repeat_interleave(repeats, 0) for v in cache.v])
                logits = logits.repeat_interleave(repeats, 0)
            self.cache, self.logits = cache, logits
            self.positions = torch.tensor([len(r.prompt) for r in rows], device=device)
            self.counts = self.seen = None
            if any(r.params.uses_penalties for r in rows):
                self.counts = torch.zeros(len(rows), V, dtype=torch.int32, device=device)
                self.seen = torch.zeros(len(rows), V, dtype=torch.bool, device=device)
                for i, r in enumerate(rows):
                    self.seen[i, r.prompt] = True
            self._sample()

    def _sample(self) -> None:
        """Choose the next token of every row from the current logits (inside `evaluating`)."""
        params = [r.params for r in self.rows]
        logits = self.logits.float()
        if self.counts is not None:
            logits = apply_penalties(logits, self.counts, params, self.seen)
        tokens = sample_next(logits, params, [r.generator for r in self.rows])
        if self.counts is not None:
            self.counts[torch.arange(len(self.rows), device=tokens.device), tokens] += 1
        self.tokens = tokens
        self.token_ids: list[int] = tokens.tolist()  # the step's one device-to-host copy
        self.logprobs = self._logprobs(tokens)

    def _logprobs(self, tokens: torch.Tensor) -> list[TokenLogprob | None]:
        return token_logprobs(self.logits, tokens, self.token_ids, [r.params.logprobs for r in self.rows])

    def advance(self) -> bool:
        """Drop finished rows, run one decode step for the rest and sample; False when none are left."""
        keep = [i for i, r in enumerate(self.rows) if r.finish_reason is None]
        if not keep:
            return False
        with evaluating(self.model, self.modules):
            if len(keep) < len(self.rows):
                index = torch.tensor(keep, device=self.positions.device)
                self.rows = [self.rows[i] for i in keep]
                self.cache = self.cache.rows(index)
                self.tokens, self.positions = self.tokens[index], self.positions[index]
                if self.counts is not None:
                    self.counts, self.seen = self.counts[index], self.seen[index]
            self.logits = decode_step(self.model, self.tokens, self.positions, self.cache)
            self.positions = self.positions + 1
            self._sample()
        return True


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


Prompt = str | Sequence[int]


def _prompt_ids(model: GPT, tokenizer: Tokenizer, prompt: Prompt) -> list[int]:
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:  # nothing to condition on: start a fresh document, as the model saw in training
        start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        require(start is not None, "the prompt is empty and the tokenizer has no BOS/EOS token to start from")
        ids = [start]
    V, block = model.config.vocab_size, model.config.block_size
    bad = [t for t in ids if not 0 <= t < V]
    require(not bad, f"prompt has token ids outside the vocabulary [0, {V}): {bad[:5]}")
    require(len(ids) < block,
            f"prompt is {len(ids)} tokens but the model's context length is {block}: shorten the prompt "
            f"to at most {block - 1} tokens to leave room for output")
    return ids


def _make_rows(model: GPT, tokenizer: Tokenizer, prompts: Sequence[Prompt],
               params: SamplingParams | Sequence[SamplingParams]) -> list[_Row]:
    per_prompt = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    require(len(per_prompt) == len(prompts), f"got {len(per_prompt)} SamplingParams for {len(prompts)} prompts")
    device = next(model.parameters()).device
    rows: list[_Row] = []
    for prompt_index, (prompt, p) in enumerate(zip(prompts, per_prompt)):
        p.validate()
        ids = _prompt_ids(model, tokenizer, prompt)
        # Documented clamp rather than an error: prompt + output must fit the context window.
        max_new = min(p.max_tokens, model.config.block_size - len(ids))
        stop_ids = set(p.stop_token_ids if p.stop_token_ids is not None else [tokenizer.eos_id])
        stop_ids.discard(None)
        if p.ignore_eos:
            stop_ids.discard(tokenizer.eos_id)
        for j in range(p.n):
            generator = None
            if p.seed is not None:
                generator = torch.Generator(device=device)
                generator.manual_seed((p.seed + j) % (MAX_SEED + 1))  # sample j of a seed near the top wraps
            rows.append(_Row(len(rows), prompt_index, j, ids, p, max_new, frozenset(stop_ids), generator,
                             IncrementalText(tokenizer, p.stop), logprobs=[] if p.logprobs is not None else None))
    return rows


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """Accept one prompt (a string or a list of ids) or a list of prompts."""
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # type: ignore[list-item]
    return prompts  # type: ignore[return-value]


def generate_iter(model: GPT, tokenizer: Tokenizer, prompts: Prompt | Sequence[Prompt],
                  params: SamplingParams | Sequence[SamplingParams] | None = None) -> Iterator[GenerationEvent]:
    """Events of the decoding loop: new text of a completion, and a last event carrying its `Completion`.

    prompts: strings or lists of token ids (of different lengths); params: shared, or one per prompt.
    Completion indices run over prompts, then samples: prompt i's sample j is i * n + j when n is shared.
    Invalid parameters and over-long prompts raise here, before the first event.
    """
    rows = _make_rows(model, tokenizer, _as_prompt_list(prompts), params or SamplingParams())
    return _decode(model, rows)


def _decode(model: GPT, rows: list[_Row]) -> Iterator[GenerationEvent]:
    """The one decoding loop: prefill all prompts, then one step for every unfinished row at a time."""
    if not rows:
        return
    batch = _Batch(model, rows)
    while True:
        for row, token, logprob in zip(batch.rows, batch.token_ids, batch.logprobs):
            piece = row.accept(token, logprob)
            if piece or row.finish_reason is not None:
                yield GenerationEvent(row.index, piece, row.completion() if row.finish_reason else None)
        if not batch.advance():
            return


def generate(model: GPT, tokenizer: Tokenizer, prompts: Prompt | Sequence[Prompt],
             params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[Completion]:
    """Complete every prompt `n` times in one batch; completions come ordered by prompt, then sample."""
    done = [e.completion for e in generate_iter(model, tokenizer, prompts, params) if e.completion is not None]
    return sorted(done, key=lambda c: (c.prompt_index, c.sample_index))


def stream(model: GPT, tokenizer: Tokenizer, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
    """Text pieces of one completion as they are generated; joined, they equal `generate`'s text.

    Errors in the parameters or the prompt raise here, before the first piece.
    """
    params = params or SamplingParams()
    require(params.n == 1, f"stream() produces one completion, got n={params.n}; use generate() for several")
    events = generate_iter(model, tokenizer, [prompt], params)
    return (event.text for event in events if event.text)
