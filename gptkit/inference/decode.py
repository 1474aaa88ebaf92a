"""The one decode batch (admit · step · compact) that `generate()` and the serving engine both drive.

Rows are completions being generated. `DecodeBatch` holds their device state: one KV cache of `max_rows`
rows, each row's next token and position, and output-token counts for penalties. Running rows always sit
in rows 0..A-1 of the cache:

- `admit(rows)` prefills the new rows' prompts (the n samples of one prompt share one prefill) in a cache
  of their own, copies each prompt's keys and values into its rows at the end of the batch, and samples
  their first token;
- `step()` feeds every running row its last token at its own position (the cache is slot-per-position,
  see `gptkit.models.gpt.KVCache`) and samples the next;
- `compact()` drops finished rows: each freed row below the line takes a running row from above it, so
  a finish costs a copy of the rows that move, not of the batch.

`admit` and `step` return (row, new text) for every row that got a token: the caller turns them into
events (`gptkit.inference.generate`) or hands them to requests (`gptkit.serve.engine`). The decode batch
knows nothing of requests, queues or threads.

Context length: a prompt of block_size tokens or more is an error; otherwise max_tokens is clamped
so that prompt + output fits, and a completion cut short that way ends with finish_reason "length".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from gptkit.errors import require
from gptkit.inference.sampling import (MAX_SEED, SamplingParams, TokenLogprob, apply_penalties, sample_next,
                                       token_logprobs)
from gptkit.inference.prefix_cache import PrefixCache
from gptkit.inference.speculative import Speculation, accepted, propose, speculable
from gptkit.inference.text import IncrementalText
from gptkit.models.gpt import GPT, KVCache
from gptkit.tokenizer import Tokenizer

FinishReason = Literal["stop", "length", "content_filter"]
Prompt = str | Sequence[int]


@dataclass
class Completion:
    """One sample for one prompt."""

    prompt_index: int
    sample_index: int
    text: str
    """Generated text, cut before any stop string (or a span `SamplingParams.guard` flagged: finish_reason
    "content_filter"); stop tokens such as EOS are not included."""
    token_ids: list[int]
    """Every sampled token, including a final stop token and the tokens that spelt a stop string."""
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None
    """One entry per element of `token_ids`, when `SamplingParams.logprobs` is set."""
    num_prompt_tokens: int


def prefill(model: GPT, prompts: Sequence[Sequence[int]], cache: KVCache,
            embeds: Sequence[torch.Tensor | None] | None = None,
            starts: Sequence[int] | None = None) -> torch.Tensor:
    """Write the prompts into cache rows 0..P-1 and return the logits at each prompt's last token (P, V).

    Prompts are right-padded into one (P, T) batch, so row i's tokens sit at positions 0..L_i-1 and
    padding lands in slots beyond L_i, which attention never reads and decoding overwrites. `embeds`:
    per prompt, ready input embeddings (L_i, n_embd) to use instead of its tokens' (a multimodal prompt,
    whose media tokens early fusion has put in place), or None. `starts`: per prompt, how many of its first
    tokens already have their keys and values in the cache row (a prefix-cache hit); only the rest is computed,
    at positions starts[i]..L_i-1.
    """
    device = cache.k[0].device
    if starts is not None and any(starts):
        require(embeds is None or all(e is None for e in embeds), "a prompt with embeddings has no cached prefix")
        suffixes = [list(p[s:]) for p, s in zip(prompts, starts)]
        longest = max(len(p) for p in suffixes)
        idx = torch.tensor([[*p, *[0] * (longest - len(p))] for p in suffixes], dtype=torch.long, device=device)
        positions = torch.tensor(starts, device=device)[:, None] + torch.arange(longest, device=device)
        hidden = model.hidden_states(idx, input_pos=positions, kv_cache=cache)
        last = hidden[torch.arange(len(prompts), device=device),
                      torch.tensor([len(p) - 1 for p in suffixes], device=device)]
        return model.lm_head(last)
    longest = max(len(p) for p in prompts)
    idx = torch.tensor([[*p, *[0] * (longest - len(p))] for p in prompts], dtype=torch.long, device=device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    positions = torch.arange(idx.shape[1], device=device)
    if embeds is None or all(e is None for e in embeds):
        hidden = model.hidden_states(idx, input_pos=positions, kv_cache=cache)
    else:
        x = model.tok_emb(idx)
        for i, e in enumerate(embeds):
            if e is not None:
                require(e.shape == (len(prompts[i]), x.shape[-1]),
                        f"prompt {i}: embeddings {tuple(e.shape)} do not match its {len(prompts[i])} tokens")
                x[i, :len(prompts[i])] = e.to(x.dtype)
        hidden = model.hidden_states(inputs_embeds=x, input_pos=positions, kv_cache=cache)
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


@dataclass(eq=False)
class Row:
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
    owner: object = None
    """Whoever drives the batch may tag a row (the serving engine: the request it belongs to)."""
    prompt_embeds: torch.Tensor | None = None
    """(len(prompt), n_embd) input embeddings to prefill instead of the prompt's tokens' (a multimodal
    prompt with its media tokens in place); the prompt's ids then only count positions."""

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
        self.finish_reason = "content_filter" if self.text.filtered else "stop" if self.text.stopped else reason

    def completion(self) -> Completion:
        assert self.finish_reason is not None
        return Completion(self.prompt_index, self.sample_index, self.text.text, self.token_ids,
                          self.finish_reason, self.logprobs, len(self.prompt))


def prompt_ids(model: GPT, tokenizer: Tokenizer, prompt: Prompt) -> list[int]:
    """A prompt's token ids, checked against the vocabulary and the context length."""
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


def make_rows(model: GPT, tokenizer: Tokenizer, prompts: Sequence[Prompt],
              params: SamplingParams | Sequence[SamplingParams],
              prompt_embeds: Sequence[torch.Tensor | None] | None = None) -> list[Row]:
    """One row per completion (prompt i's n samples adjacent, sharing one prompt list); validates
    the parameters and the prompts, so that errors raise before anything runs."""
    per_prompt = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    require(len(per_prompt) == len(prompts), f"got {len(per_prompt)} SamplingParams for {len(prompts)} prompts")
    require(prompt_embeds is None or len(prompt_embeds) == len(prompts),
            f"got {len(prompt_embeds or [])} prompt embeddings for {len(prompts)} prompts")
    device = next(model.parameters()).device
    rows: list[Row] = []
    for prompt_index, (prompt, p) in enumerate(zip(prompts, per_prompt)):
        p.validate()
        ids = prompt_ids(model, tokenizer, prompt)
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
            embeds = prompt_embeds[prompt_index] if prompt_embeds is not None else None
            rows.append(Row(len(rows), prompt_index, j, ids, p, max_new, frozenset(stop_ids), generator,
                             IncrementalText(tokenizer, p.stop, p.guard),
                             logprobs=[] if p.logprobs is not None else None, prompt_embeds=embeds))
    return rows


class DecodeBatch:
    """Device-side state of the rows being decoded together (see the module docstring).

    max_rows: rows at most (`generate`: all its rows; the engine: its batch). min_len: the cache's first
    allocation is at least this long; it grows by doubling when an admitted row needs more, up to the
    model's context.
    """

    def __init__(self, model: GPT, max_rows: int, *, min_len: int = 0, prefix_cache: PrefixCache | None = None,
                 speculation: Speculation | None = None) -> None:
        require(max_rows >= 1, f"a decode batch needs room for at least one row, got {max_rows}")
        if speculation is not None:
            speculation.validate()
        self.model, self.max_rows, self.min_len = model, max_rows, min_len
        self.prefix_cache = prefix_cache
        """Keys and values of recent prompts (`gptkit.inference.prefix_cache`): a prompt sharing a block-aligned
        prefix with one of them prefills only the rest. None: every prompt is prefilled whole."""
        self.speculation = speculation
        """Prompt-lookup drafts (`gptkit.inference.speculative`), used in steps where every row is greedy;
        None: one token per row and step."""
        self.steps = self.speculative_steps = self.drafted = self.accepted = 0
        """Counters: decode steps, those that fed drafts, draft tokens fed, draft tokens the model accepted."""
        self.rows: list[Row] = []
        self.modules = list(model.modules())  # for `evaluating`, once per call
        use_decode_layout(model)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache: KVCache | None = None
        self.tokens = torch.zeros(max_rows, dtype=torch.long, device=self.device)  # each row's last token
        self.positions = torch.zeros(max_rows, dtype=torch.long, device=self.device)  # where it goes
        self.counts: torch.Tensor | None = None  # (max_rows, V) output-token counts, for penalties
        self.seen: torch.Tensor | None = None  # (max_rows, V) token seen in the prompt or output

    @property
    def free_rows(self) -> int:
        return self.max_rows - len(self.rows)

    def admit(self, rows: Sequence[Row]) -> list[tuple[Row, str]]:
        """Prefill `rows` into the batch and sample their first token; (row, new text) for each."""
        if not rows:
            return []
        require(len(rows) <= self.free_rows, f"{len(rows)} rows do not fit: {self.free_rows} of "
                                             f"{self.max_rows} are free")
        with evaluating(self.model, self.modules):
            cache = self._ensure_cache(max(len(r.prompt) + r.max_new for r in rows))
            # Samples of one prompt are adjacent and share its token list: one prefill per distinct prompt.
            which: list[int] = []  # row i's prompt, as an index into `prompts`
            prompts: list[list[int]] = []
            embeds: list[torch.Tensor | None] = []
            for i, row in enumerate(rows):
                if i == 0 or row.prompt is not rows[i - 1].prompt:
                    prompts.append(row.prompt)
                    embeds.append(row.prompt_embeds)
                which.append(len(prompts) - 1)
            # A cache of their own, so the running rows' cache is never touched by a prefill.
            starts, scratch = self._scratch_cache(prompts, embeds)
            logits = prefill(self.model, prompts, scratch, embeds, starts)
            if self.prefix_cache is not None:
                for j, prompt in enumerate(prompts):
                    if embeds[j] is None:
                        self.prefix_cache.insert(prompt, [k[j] for k in scratch.k], [v[j] for v in scratch.v])
            start = len(self.rows)
            for offset, (row, p) in enumerate(zip(rows, which)):
                slot, length = start + offset, len(row.prompt)
                for dst, src in zip((*cache.k, *cache.v), (*scratch.k, *scratch.v)):
                    dst[slot, :, :length] = src[p, :, :length]
            slots = slice(start, start + len(rows))
            self.positions[slots] = torch.tensor([len(r.prompt) for r in rows], device=self.device)
            self.rows.extend(rows)
            if any(r.params.uses_penalties for r in rows):
                self._init_penalty_rows(start, rows)
            return self._sample(logits[torch.tensor(which, device=self.device)], start)

    def step(self) -> list[tuple[Row, str]]:
        """One decode step for every row in the batch, then sampling; (row, new text) for each."""
        if not self.rows:
            return []
        assert self.cache is not None
        self.steps += 1
        n = len(self.rows)
        if self.speculation is not None and all(speculable(r.params) for r in self.rows):
            drafts = self._drafts()
            if any(drafts):
                return self._speculative_step(drafts)
        with evaluating(self.model, self.modules):
            logits = decode_step(self.model, self.tokens[:n], self.positions[:n], self.cache.rows(slice(0, n)))
            self.positions[:n] += 1
            return self._sample(logits, 0)

    def _drafts(self) -> list[list[int]]:
        """Each row's draft, short enough that its tokens and the padding of the longest stay in the cache and
        within the row's max_tokens."""
        assert self.cache is not None and self.speculation is not None
        # The token fed next goes to slot len(prompt) + len(output) - 1 (host-side: no device sync).
        room = self.cache.max_len - 1 - max(len(r.prompt) + len(r.token_ids) - 1 for r in self.rows)
        return [propose(r.prompt + r.token_ids, self.speculation, min(room, r.max_new - len(r.token_ids) - 1))
                for r in self.rows]

    def _speculative_step(self, drafts: list[list[int]]) -> list[tuple[Row, str]]:
        """Feed every row its last token and its draft at once; each row takes the drafts the model agrees with,
        then the model's own next token (see `gptkit.inference.speculative`)."""
        assert self.cache is not None
        n, width = len(self.rows), 1 + max(len(d) for d in drafts)
        fed = torch.zeros(n, width, dtype=torch.long, device=self.device)  # short drafts padded: beyond the row
        fed[:, 0] = self.tokens[:n]
        for j, draft in enumerate(drafts):
            if draft:
                fed[j, 1:1 + len(draft)] = torch.tensor(draft, device=self.device)
        positions = self.positions[:n, None] + torch.arange(width, device=self.device)
        with evaluating(self.model, self.modules):
            hidden = self.model.hidden_states(fed, input_pos=positions, kv_cache=self.cache.rows(slice(0, n)))
            choices = self.model.lm_head(hidden).argmax(-1).tolist()  # the step's one device-to-host copy
        self.speculative_steps += 1
        out, last, advanced = [], [], []
        for row, draft, chosen in zip(self.rows, drafts, choices):
            keep = chosen[:accepted(draft, chosen) + 1]
            self.drafted += len(draft)
            self.accepted += len(keep) - 1
            text, taken = [], 0
            for token in keep:
                text.append(row.accept(token, None))
                taken += 1
                if row.finish_reason is not None:
                    break
            last.append(keep[taken - 1])
            advanced.append(taken)
            out.append((row, "".join(text)))
        self.tokens[:n] = torch.tensor(last, device=self.device)
        self.positions[:n] += torch.tensor(advanced, device=self.device)
        return out

    def compact(self, keep: Sequence[int] | None = None) -> None:
        """Keep only rows `keep` (ascending indices into `rows`; default: the unfinished ones)."""
        if keep is None:
            keep = [i for i, r in enumerate(self.rows) if r.finish_reason is None]
        n = len(keep)
        if n == len(self.rows):
            return
        kept = set(keep)
        holes = [i for i in range(n) if i not in kept]
        movers = [i for i in keep if i >= n]
        if holes:
            dst = torch.tensor(holes, device=self.device)
            src = torch.tensor(movers, device=self.device)
            cache = (*self.cache.k, *self.cache.v) if self.cache is not None else ()
            with torch.inference_mode():
                for t in (*cache, self.tokens, self.positions, self.counts, self.seen):
                    if t is not None:
                        t[dst] = t[src]
        rows = list(self.rows)
        for hole, mover in zip(holes, movers):
            rows[hole] = rows[mover]
        self.rows = rows[:n]

    def _scratch_cache(self, prompts: list[list[int]],
                       embeds: list[torch.Tensor | None]) -> tuple[list[int], KVCache]:
        """The prefill's own cache, with each prompt's cached prefix (if any) copied in; and the prefix lengths."""
        config = self.model.config
        starts, hits = [0] * len(prompts), [None] * len(prompts)
        if self.prefix_cache is not None:
            for j, prompt in enumerate(prompts):
                if embeds[j] is None:
                    starts[j], hits[j] = self.prefix_cache.lookup(prompt)  # type: ignore[assignment]
        # Padded suffixes write past their prompt's end: the cache must reach the furthest such slot.
        longest_suffix = max(len(p) - s for p, s in zip(prompts, starts))
        length = max(max(len(p) for p in prompts), max(starts) + longest_suffix)
        if length > config.block_size:  # padding would run off the context: prefill these prompts whole
            starts, hits, length = [0] * len(prompts), [None] * len(prompts), max(len(p) for p in prompts)
        scratch = KVCache.allocate(config, len(prompts), length, device=self.device, dtype=self.dtype)
        for j, hit in enumerate(hits):
            if hit is not None:
                for dst, src in zip((*scratch.k, *scratch.v), (*hit.keys, *hit.values)):
                    dst[j, :, :starts[j]] = src[:, :starts[j]]
        return starts, scratch

    def _ensure_cache(self, length: int) -> KVCache:
        """The cache, at least `length` positions long (grown by doubling, capped at the context)."""
        block = self.model.config.block_size
        if self.cache is None or self.cache.max_len < length:
            current = self.cache.max_len if self.cache is not None else 0
            new_len = min(block, max(length, 2 * current, self.min_len))
            grown = KVCache.allocate(self.model.config, self.max_rows, new_len, device=self.device, dtype=self.dtype)
            if self.cache is not None:
                for new, old in zip((*grown.k, *grown.v), (*self.cache.k, *self.cache.v)):
                    new[:, :, :current] = old
            self.cache = grown
        return self.cache

    def _init_penalty_rows(self, start: int, rows: Sequence[Row]) -> None:
        if self.counts is None:
            V = self.model.config.vocab_size
            self.counts = torch.zeros(self.max_rows, V, dtype=torch.int32, device=self.device)
            self.seen = torch.zeros(self.max_rows, V, dtype=torch.bool, device=self.device)
        assert self.seen is not None
        for offset, row in enumerate(rows):
            self.counts[start + offset].zero_()
            self.seen[start + offset].zero_()
            self.seen[start + offset, row.prompt] = True

    def _sample(self, logits: torch.Tensor, start: int) -> list[tuple[Row, str]]:
        """Choose the next token of rows start.. from their raw `logits` and let each row take it."""
        rows = self.rows[start:]
        end = start + len(rows)
        params = [r.params for r in rows]
        raw = logits.float()
        penalised = self.counts is not None and any(p.uses_penalties for p in params)
        chosen_from = apply_penalties(raw, self.counts[start:end], params, self.seen[start:end]) if penalised else raw
        tokens = sample_next(chosen_from, params, [r.generator for r in rows])
        if penalised:
            self.counts[torch.arange(start, end, device=tokens.device), tokens] += 1
        self.tokens[start:end] = tokens
        token_ids = tokens.tolist()  # the step's one device-to-host copy
        # Logprobs are the model's own distribution: the raw logits, before penalties and filters.
        logprobs = token_logprobs(raw, tokens, token_ids, [p.logprobs for p in params])
        return [(row, row.accept(token, logprob)) for row, token, logprob in zip(rows, token_ids, logprobs)]
