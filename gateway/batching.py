"""Dynamic batching: live requests for a backend that arrive together run as one call.

Opt-in per backend (``batching: {max_batch_size: 64, max_delay_us: 500}``), for either kind, as
Triton's dynamic batcher: a request waits at most ``max_delay_us`` for others to join it; the rows
of those that did are concatenated along the batch axis, run in one call, and split back, so each
request gets exactly its own rows. The gateway asks a backend for every output on every call, so
requests that want different outputs never make a call compute something else. A call the model
fails (``InferenceFailed``: a token id past its vocabulary in one request) runs again request by
request, so only the one that broke it fails; a call that fails otherwise (the backend away, a
timeout) fails the requests of its batch and no others; a request whose caller gave up is left
out of a batch not yet run, and its rows of one already running are dropped. Shadow calls are not
batched here (``gateway.shadow`` batches the teacher's its own way). With ``padding``
(``batching.pad``), requests whose shapes differ along the model's dynamic axes join too, padded
(``gateway.padding``).

At most ``max_in_flight`` batches run at once (the backend's capacity: its threads, or what a
Triton is trusted with): while they all run, requests keep joining the next batch instead of
queueing behind them as small ones, and it leaves the moment a call returns. So batches grow
with load by themselves, as Triton's dynamic batcher forms a batch when an instance is free.

The waiting requests are the backend's queue (``gateway.overload``): one that the batches ahead,
at the measured call time, would keep waiting past its budget is shed at once, and one still
waiting when its budget runs out is shed then; the time each waited goes to ``observe_wait``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gateway.backends.base import batch_rows
from gateway.errors import DeadlineExceeded, InferenceFailed, ModelRejectedInput
from gateway.overload import CallTime, Shed, shed_for_wait
from gateway.padding import Padding

Tensors = Mapping[str, np.ndarray]


@dataclass
class _Waiting:
    inputs: Tensors
    rows: int
    answer: asyncio.Future[dict[str, np.ndarray]]
    queued_at: float
    give_up: asyncio.TimerHandle | None = None  # sheds it if it is still waiting then
    started: bool = False  # taken into a batch (its give-up cancelled)


class Batcher:
    def __init__(
        self,
        run: Callable[[Tensors], Awaitable[dict[str, np.ndarray]]],
        max_batch_size: int,
        max_delay_seconds: float,
        observe: Callable[[int], None] = lambda rows: None,
        max_in_flight: int | None = None,
        retry_after_seconds: int = 1,
        observe_wait: Callable[[float], None] = lambda seconds: None,
        padding: Padding | None = None,
        observe_padding: Callable[[int, int], None] = lambda added, elements: None,
    ) -> None:
        """``run`` makes one call with a batch; ``observe`` hears each call's rows;
        ``max_in_flight`` bounds the calls running at once (None: no bound); ``observe_wait``
        hears how long each request waited for its batch to start; ``padding`` lets requests of
        different lengths join, and ``observe_padding`` hears each padded call's padding and
        input elements."""
        self._padding = padding
        self._observe_padding = observe_padding
        self._run = run
        self._retry_after = retry_after_seconds
        self._observe_wait = observe_wait
        self.call_time = CallTime()
        self._max_in_flight = max_in_flight or 2**31
        self._max_rows = max_batch_size
        self._delay = max_delay_seconds
        self._observe = observe
        self._waiting: list[_Waiting] = []
        self._waiting_rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task[None]] = set()  # running batches, kept from the collector

    async def infer(
        self, inputs: Tensors, budget: float = math.inf, left: float = math.inf
    ) -> dict[str, np.ndarray]:
        """The request's rows of a batch's answer: ``Shed`` when its batch cannot start within
        ``budget`` seconds; ``DeadlineExceeded`` when its batch started but did not answer
        within ``left`` (what is left of its deadline)."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(inputs, batch_rows(inputs), loop.create_future(), time.perf_counter())
        refusal = shed_for_wait(self.expected_wait(waiting.rows), budget, self._retry_after)
        if refusal is not None:
            raise refusal
        if budget != math.inf:  # even with room now: a later flush may leave it behind
            waiting.give_up = loop.call_later(budget, self._shed, waiting, budget)
        self._waiting.append(waiting)
        self._waiting_rows += waiting.rows
        if self._waiting_rows >= self._max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._delay, self._flush)
        try:
            async with asyncio.timeout(left):
                return await waiting.answer
        except TimeoutError as exc:
            if waiting.give_up is not None:
                waiting.give_up.cancel()
            if not waiting.started:
                raise Shed("deadline", "the request's deadline passed before its batch started",
                           self._retry_after) from exc  # fmt: skip
            raise DeadlineExceeded(f"the request's deadline passed while its batch ran "
                                   f"({left * 1000:.0f} ms)") from exc  # fmt: skip

    def _flush(self) -> None:
        """Starts batches while the backend has room; the rest wait for a call to return."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting = [w for w in self._waiting if not w.answer.done()]  # callers still there
        while waiting and len(self._calls) < self._max_in_flight:
            batch, waiting = _take_batch(waiting, self._max_rows, self._padding)
            for w in batch:  # taken now: no give-up may shed it before its call starts
                w.started = True
                if w.give_up is not None:
                    w.give_up.cancel()
            call = asyncio.create_task(self._call(batch))
            self._calls.add(call)
            call.add_done_callback(self._returned)
        self._waiting, self._waiting_rows = waiting, sum(w.rows for w in waiting)

    def expected_wait(self, rows: int = 1) -> float:
        """How long ``rows`` arriving now would wait for their batch to start."""
        if len(self._calls) < self._max_in_flight:
            return 0.0  # they leave within max_delay
        ahead = math.ceil((self._waiting_rows + rows) / self._max_rows)
        return self.call_time.expected_wait(ahead, self._max_in_flight)

    def _shed(self, waiting: _Waiting, budget: float) -> None:
        if not waiting.answer.done():
            waiting.answer.set_exception(Shed("queue_timeout", f"waited {budget * 1000:.0f} ms "
                                              "for a batch, the most a request waits",
                                              self._retry_after))  # fmt: skip

    def _returned(self, call: asyncio.Task[None]) -> None:
        self._calls.discard(call)
        if self._waiting:  # they waited for this room: no reason to wait longer
            self._flush()

    async def _call(self, batch: list[_Waiting]) -> None:
        padded = None
        if self._padding is not None:
            padded = self._padding.pad([w.inputs for w in batch])
            inputs: Tensors = padded.inputs
            if padded.padding_elements or len(batch) > 1:
                self._observe_padding(padded.padding_elements, padded.elements)
        else:
            inputs = batch[0].inputs if len(batch) == 1 else {
                name: np.concatenate([w.inputs[name] for w in batch]) for name in batch[0].inputs
            }  # fmt: skip
        self._observe(sum(w.rows for w in batch))
        started = time.perf_counter()
        for w in batch:
            self._observe_wait(started - w.queued_at)
        try:
            outputs = await self._run(inputs)
        except Exception as exc:
            if isinstance(exc, InferenceFailed | ModelRejectedInput) and len(batch) > 1:
                # The model failed on someone's values (a token id past its vocabulary): each
                # runs alone, so only the request that broke it fails.
                await asyncio.gather(*(_alone_call(self._run, w) for w in batch))
                return
            for w in batch:
                if not w.answer.done():
                    w.answer.set_exception(exc)
            return
        self.call_time.learn(time.perf_counter() - started)  # from calls that answered
        offset = 0
        for w in batch:
            if not w.answer.done():
                if padded is not None and self._padding is not None:
                    w.answer.set_result(self._padding.cut(outputs, w.inputs, offset, w.rows))
                else:
                    w.answer.set_result({name: rows[offset : offset + w.rows]
                                         for name, rows in outputs.items()})  # fmt: skip
            offset += w.rows


async def _alone_call(run: Callable[[Tensors], Awaitable[dict[str, np.ndarray]]],
                      w: _Waiting) -> None:  # fmt: skip
    """``w`` in a call of its own, answered with its outputs or its error."""
    if w.answer.done():
        return
    try:
        outputs = await run(w.inputs)
    except Exception as exc:
        if not w.answer.done():
            w.answer.set_exception(exc)
        return
    if not w.answer.done():
        w.answer.set_result(outputs)


def _take_batch(
    waiting: list[_Waiting], max_rows: int, padding: Padding | None = None
) -> tuple[list[_Waiting], list[_Waiting]]:
    """The first request, and the next ones that fit beside it (same inputs, same shapes past
    the batch axis, or with ``padding`` the same padding key; within ``max_rows``); the rest, in
    order, for the next call."""
    first, rest = waiting[0], waiting[1:]
    batch, rows, later = [first], first.rows, []
    key = padding.key(first.inputs) if padding is not None else None
    for w in rest:
        fits = (
            stackable(first.inputs, w.inputs) if padding is None else padding.key(w.inputs) == key
        )
        if rows + w.rows <= max_rows and fits:
            batch.append(w)
            rows += w.rows
        else:
            later.append(w)
    return batch, later


def stackable(a: Tensors, b: Tensors) -> bool:
    """Whether two requests' inputs can be concatenated along the batch axis."""
    return a.keys() == b.keys() and all(
        a[name].ndim > 0 and a[name].shape[1:] == b[name].shape[1:]
        and a[name].dtype == b[name].dtype
        for name in a
    )  # fmt: skip
