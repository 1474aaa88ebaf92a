"""The continuous-batching engine: a queue of requests driving the one decode batch, many requests per step; knows
nothing of HTTP.

    engine = Engine(model, tokenizer, EngineConfig(max_batch=16))
    with engine:                                       # starts (and later stops) its worker thread
        handle = engine.submit("Once upon a time", SamplingParams(max_tokens=50, n=2))
        for event in handle:                           # text as it is generated, then completions
            ...
        engine.generate(["A", "B"], SamplingParams(max_tokens=20))   # -> [Completion, Completion]
    # from asyncio code: handle = engine.submit(..., loop=asyncio.get_running_loop()); async for event in handle

One worker thread owns the model. Between two decode steps it
  1. drops requests that were cancelled or ran out of time, and rows that finished,
  2. admits waiting requests while the batch has room (a request with n samples takes n rows),
     running one prefill for all newly admitted prompts together,
  3. runs one decode step for every running row and hands each row's new text to its request
     (to async requests in one batch per event loop at the end of the step, so the server's loop
     wakes once per step; a stream that fell behind gets its pending tokens merged into one event).
So a request joins the running batch as soon as there is room and leaves it the step it finishes:
no request waits for a slower neighbour, and a long generation does not hold up short ones. A prompt
may come with its input embeddings (`submit(..., prompt_embeds=)`: a chat with an image or audio clip,
its media tokens in place): only its prefill reads them, so it decodes in the same batch as text prompts.

The rows themselves are decoded by `gptkit.inference.decode.DecodeBatch`, the same admit · step ·
compact batch that `generate()` drives for the CLI and the Python API: every row keeps its own sampling
parameters, stop strings and random generator, so a seeded request gives the same text whatever else
shares its batch, up to float rounding in batched matrix products. This module owns only what a server
adds on top: the queue, admission by room and prefill budget, deadlines, cancellation and delivery.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import torch

from gptkit.errors import GptkitError, require
from gptkit.inference.decode import Completion, DecodeBatch, Prompt, Row, make_rows
from gptkit.inference.generate import GenerationEvent
from gptkit.inference.prefix_cache import PrefixCache
from gptkit.inference.sampling import SamplingParams
from gptkit.inference.speculative import Speculation
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer


@dataclass
class EngineConfig:
    max_batch: int = 16
    """Rows (sequences) decoded together at most; a request with n samples takes n rows."""
    max_queue: int = 256
    """Requests waiting for room at most; beyond it `submit` raises `QueueFull` (HTTP 429)."""
    request_timeout: float | None = 600.0
    """Seconds from submission after which an unfinished request is stopped with `RequestTimeout`."""
    max_prefill_tokens: int = 4096
    """Prompt tokens prefilled at most between two decode steps, so new arrivals cannot stall the
    running rows for long (a single longer prompt is still admitted on its own)."""
    prefix_cache_tokens: int = 4096
    """Prompt tokens whose keys and values are kept for reuse (`gptkit.inference.prefix_cache`): a request
    whose prompt shares a prefix with a recent one (a system prompt, few-shot examples) prefills only the rest.
    0 turns it off. Memory, as used: 2 x layers x width x 4 bytes a token (GPT-2-small: 74 KB; 4096 tokens: 300 MB)."""

    speculative_tokens: int = 0
    """Prompt-lookup speculative decoding (`gptkit.inference.speculative`): draft tokens per step at most, copied
    from each row's own text, in steps where every running row is greedy; the text is unchanged. 0: off."""
    threads: int | None = None
    """Torch threads of the worker thread (None: what it inherits). `gptkit serve` sets it and keeps every other
    thread of the process at one (model loading, the scoring thread): a second thread running parallel torch ops
    makes a second OpenMP team, and with more OpenMP threads than cores libgomp stops its threads spinning
    between parallel regions, so each of a decode step's hundreds of short regions waits for a wake-up
    (measured: GPT-2-small int8 decode at 50 tokens/s in the worker thread against 95 in the main thread)."""

    def validate(self) -> None:
        require(self.max_batch >= 1, f"max_batch must be >= 1, got {self.max_batch}")
        require(self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}")
        require(self.speculative_tokens >= 0, f"speculative_tokens must be >= 0, got {self.speculative_tokens}")
        require(self.max_queue >= 0, f"max_queue must be >= 0, got {self.max_queue}")
        require(self.request_timeout is None or self.request_timeout > 0, "request_timeout must be positive")
        require(self.max_prefill_tokens >= 1, "max_prefill_tokens must be >= 1")
        require(self.prefix_cache_tokens >= 0, "prefix_cache_tokens must be >= 0")


class QueueFull(GptkitError):
    """The engine's queue is full: try again later (back-pressure)."""


class RequestTimeout(GptkitError):
    """A request ran longer than `EngineConfig.request_timeout`."""


class EngineStopped(GptkitError):
    """The engine stopped before the request finished."""


@dataclass
class RequestStats:
    submitted: float
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Outbox:
    """What the engine thread hands to async requests during one step, delivered at the step's end with
    one `call_soon_threadsafe` per event loop: one wake-up of the server's loop per step, not one per token."""

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, object]]] = {}

    def put(self, handle: RequestHandle, loop: asyncio.AbstractEventLoop, item: object) -> None:
        self._items.setdefault(loop, []).append((handle, item))

    def flush(self) -> None:
        items, self._items = self._items, {}
        for loop, batch in items.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the caller's event loop has closed: nobody is listening any more
                for handle, _ in batch:
                    handle.cancelled = True


def _deliver(batch: list[tuple[RequestHandle, object]]) -> None:
    for handle, item in batch:
        handle._events.put_nowait(item)


def coalesce(events: list[GenerationEvent]) -> list[GenerationEvent]:
    """Merge the events of each completion index into one (texts joined, the last completion kept),
    in order of each index's first event: a consumer that fell behind catches up in one message."""
    merged: dict[int, GenerationEvent] = {}
    for event in events:
        if event.index in merged:
            earlier = merged[event.index]
            merged[event.index] = GenerationEvent(event.index, earlier.text + event.text,
                                                  event.completion or earlier.completion)
        else:
            merged[event.index] = event
    return list(merged.values())


class RequestHandle:
    """One submitted request: iterate it (sync or async) for its `GenerationEvent`s, or `result()`.

    Events carry text pieces of completion `index` (0..n-1) and, last for each index, its `Completion`.
    An async consumer gets everything that arrived since its last event at once, merged per index
    (`coalesce`): one token per event while it keeps up, several when it lags. An error (timeout,
    engine stopped) is raised from the iteration.
    """

    _DONE = object()

    def __init__(self, request_id: int, rows: list[Row], loop: asyncio.AbstractEventLoop | None,
                 deadline: float | None, outbox: _Outbox) -> None:
        self.id, self.rows, self.deadline = request_id, rows, deadline
        self.n = len(rows)
        self.stats = RequestStats(submitted=time.perf_counter(), prompt_tokens=len(rows[0].prompt))
        self.completions: list[Completion | None] = [None] * self.n
        self.error: BaseException | None = None
        self.cancelled = False
        self._loop, self._outbox = loop, outbox
        self._events: queue.Queue | asyncio.Queue = asyncio.Queue() if loop is not None else queue.Queue()

    # --- called by the engine thread ---
    def _put(self, item: object) -> None:
        if self._loop is not None:  # delivered on the caller's event loop when the step ends
            self._outbox.put(self, self._loop, item)
        else:
            self._events.put_nowait(item)

    def _emit(self, event: GenerationEvent) -> None:
        if event.completion is not None:
            self.completions[event.index] = event.completion
        self._put(event)

    def _finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.stats.finished = time.perf_counter()
        self._put(self._DONE)

    # --- called by the client ---
    def cancel(self) -> None:
        """Stop generating for this request (e.g. its client disconnected); its rows leave the batch."""
        self.cancelled = True

    def __iter__(self) -> Iterator[GenerationEvent]:
        require(self._loop is None, "this request was submitted with an event loop: use `async for`")
        while True:
            item = self._events.get()  # type: ignore[call-arg]
            if item is self._DONE:
                break
            yield item  # type: ignore[misc]
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        require(self._loop is not None, "this request was submitted without an event loop: iterate it with `for`")
        events: asyncio.Queue = self._events  # type: ignore[assignment]
        done = False
        while not done:
            items = [await events.get()]
            while not events.empty():
                items.append(events.get_nowait())
            if items[-1] is self._DONE:
                items.pop()
                done = True
            for event in coalesce(items):
                yield event
        if self.error is not None:
            raise self.error

    def result(self) -> list[Completion]:
        """Block until done (sync handles); the completions in sample order."""
        for _ in self:
            pass
        return [c for c in self.completions if c is not None]


@dataclass
class EngineStats:
    """Counters for /metrics; read without locking (plain ints, updated by the engine thread)."""

    requests_submitted: int = 0
    requests_finished: int = 0
    requests_rejected: int = 0
    requests_cancelled: int = 0
    requests_timed_out: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    batch_rows_sum: int = 0
    """Sum over decode steps of the rows in the batch: divided by decode_steps, the mean batch size."""


class Engine:
    """Continuous batching over one model (see the module docstring)."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, config: EngineConfig | None = None) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.config = config or EngineConfig()
        self.config.validate()
        self.stats = EngineStats()
        self._waiting: deque[RequestHandle] = deque()
        self._lock = threading.Condition()
        self._ids = itertools.count()
        self._outbox = _Outbox()
        prefix = PrefixCache(self.config.prefix_cache_tokens) if self.config.prefix_cache_tokens else None
        speculation = Speculation(tokens=self.config.speculative_tokens) if self.config.speculative_tokens else None
        self._batch = DecodeBatch(model, self.config.max_batch, min_len=128, prefix_cache=prefix,
                                  speculation=speculation)  # the running rows
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="gptkit-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the worker; unfinished requests end with `EngineStopped`."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running (False before `start`, after `stop`, or after a failure)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running_rows(self) -> int:
        return len(self._batch.rows)

    @property
    def speculation(self) -> tuple[int, int]:
        """Draft tokens fed and accepted so far by prompt-lookup speculation (0, 0 when it is off)."""
        return self._batch.drafted, self._batch.accepted

    # --- requests ---------------------------------------------------------------------------------
    def submit(self, prompt: Prompt, params: SamplingParams | None = None, *,
               loop: asyncio.AbstractEventLoop | None = None,
               prompt_embeds: torch.Tensor | None = None) -> RequestHandle:
        """Queue one prompt (text or token ids) for `params.n` completions; returns at once.

        Invalid parameters and over-long prompts raise `GptkitError` here; a full queue raises `QueueFull`.
        Pass the running event loop to consume the handle with `async for`. prompt_embeds: the prompt's
        ready input embeddings (len(prompt), n_embd), e.g. a multimodal prompt with its media tokens in place
        (`gptkit.api.LLM.fuse_media`); it is prefilled from them and then decodes in the batch like any other.
        """
        params = params or SamplingParams()
        rows = make_rows(self.model, self.tokenizer, [prompt], params,
                         None if prompt_embeds is None else [prompt_embeds])
        require(len(rows) <= self.config.max_batch,
                f"n={len(rows)} exceeds the engine's batch of {self.config.max_batch} rows")
        timeout = self.config.request_timeout
        with self._lock:
            if len(self._waiting) >= self.config.max_queue:
                self.stats.requests_rejected += 1
                raise QueueFull(f"the server is busy: {len(self._waiting)} requests are waiting "
                                f"(limit {self.config.max_queue}); retry later")
            handle = RequestHandle(next(self._ids), rows, loop, None if timeout is None else time.perf_counter() + timeout,
                                   self._outbox)
            for row in rows:
                row.owner = handle
            self._waiting.append(handle)
            self.stats.requests_submitted += 1
            self._lock.notify_all()
        return handle

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None
                 ) -> list[Completion]:
        """Submit every prompt, wait for all; completions ordered by prompt, then sample (like `generate`)."""
        per_prompt = [params or SamplingParams()] * len(prompts) if not isinstance(params, Sequence) else params
        handles = [self.submit(p, q) for p, q in zip(prompts, per_prompt)]
        out = []
        for i, handle in enumerate(handles):
            for c in handle.result():
                c.prompt_index = i
                out.append(c)
        return out

    # --- the worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        try:
            while True:
                with self._lock:
                    while not self._stopping and not self._waiting and not self._batch.rows:
                        self._lock.wait()
                    if self._stopping:
                        break
                self._drop_finished_and_expired()
                if self._admit():
                    # Rows can finish at their first token (max_tokens=1, or EOS at once): drop them
                    # before the decode step, which would otherwise give them a second token.
                    self._drop_finished_and_expired()
                if self._batch.rows:
                    self._decode()
                self._outbox.flush()
        except BaseException as e:  # a bug or an out-of-memory: fail every request rather than hang them
            self._fail_all(e if isinstance(e, GptkitError) else GptkitError(f"engine failure: {e!r}"))
            raise
        finally:
            self._outbox.flush()
        self._fail_all(EngineStopped("the engine stopped before this request finished"))

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for handle in {id(row.owner): row.owner for row in self._batch.rows}.values():
            handle._finish(error)  # type: ignore[attr-defined]
        for handle in waiting:
            handle._finish(error)
        self._batch.compact([])
        self._outbox.flush()

    def _drop_finished_and_expired(self) -> None:
        now = time.perf_counter()
        with self._lock:
            for handle in list(self._waiting):
                if handle.cancelled or (handle.deadline is not None and now > handle.deadline):
                    self._waiting.remove(handle)
                    self._end(handle, now)
        # A request whose rows all finished (its handle already finished) is not ended again.
        handles: list[RequestHandle] = [row.owner for row in self._batch.rows]  # type: ignore[misc]
        ended = {id(h): h for h in handles if h.stats.finished is None
                 and (h.cancelled or (h.deadline is not None and now > h.deadline))}
        for handle in ended.values():
            self._end(handle, now)
        self._batch.compact([i for i, (row, h) in enumerate(zip(self._batch.rows, handles))
                             if row.finish_reason is None and id(h) not in ended])

    def _end(self, handle: RequestHandle, now: float) -> None:
        if handle.cancelled:
            self.stats.requests_cancelled += 1
            handle._finish()
        else:
            self.stats.requests_timed_out += 1
            handle._finish(RequestTimeout(f"the request did not finish within {self.config.request_timeout} s"))

    def _admit(self) -> bool:
        """Move waiting requests into the batch while there is room, and prefill them together; True if any."""
        admitted: list[RequestHandle] = []
        rows_free = self._batch.free_rows
        budget = self.config.max_prefill_tokens
        with self._lock:
            while self._waiting and len(self._waiting[0].rows) <= rows_free:
                prompt_len = len(self._waiting[0].rows[0].prompt)
                if admitted and prompt_len > budget:
                    break
                handle = self._waiting.popleft()
                admitted.append(handle)
                rows_free -= handle.n
                budget -= prompt_len
        if not admitted:
            return False
        now = time.perf_counter()
        for handle in admitted:
            handle.stats.admitted = now
        taken = self._batch.admit([row for handle in admitted for row in handle.rows])
        self.stats.prompt_tokens += sum(len(handle.rows[0].prompt) for handle in admitted)
        self._hand_out(taken)
        return True

    def _decode(self) -> None:
        """One decode step for every running row."""
        self.stats.decode_steps += 1
        self.stats.batch_rows_sum += len(self._batch.rows)
        self._hand_out(self._batch.step())

    def _hand_out(self, taken: list[tuple[Row, str]]) -> None:
        """Give each row's new text to its request; finish a request when its last row finishes."""
        now = time.perf_counter()
        touched: dict[int, RequestHandle] = {}
        for row, piece in taken:
            handle: RequestHandle = row.owner  # type: ignore[assignment]
            touched[id(handle)] = handle
            if handle.stats.first_token is None:
                handle.stats.first_token = now
            handle.stats.completion_tokens += 1
            self.stats.generated_tokens += 1
            done = row.finish_reason is not None
            if piece or done:
                handle._emit(GenerationEvent(row.sample_index, piece, row.completion() if done else None))
        # After every row's event: a request's end comes after the last event of each of its samples.
        for handle in touched.values():
            if all(r.finish_reason is not None for r in handle.rows):
                self.stats.requests_finished += 1
                handle._finish()
