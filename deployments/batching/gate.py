"""Admission to `@serve.batch` only while the GPU is idle, so a batch forms when it can run.

Ray Serve >= 2.47 (`max_concurrent_batches`) forms the next batch *while the previous one runs*: its loop takes the
first queued request, waits `batch_wait_timeout_s` for company, closes the batch and parks it behind the concurrency
semaphore, then starts forming another. Requests that arrive during a 5-second GPU batch end up in several small
pre-formed batches. On an H100 (FP8, 16 closed-loop clients, max_batch_size 8) the GPU ran batches of 2.8 images on
average. The documented behaviour - when the replica is free, take up to max_batch_size waiting requests - is what
this gate restores.

A "spell" starts when nothing admitted is still in flight: waiting requests (arrival order) and new arrivals are let
into Serve's queue until one batch's worth (the live max_batch_size) is in or `batch_wait_timeout_s` has passed since
the first (Serve's own wait for company, which starts just after); then arrivals wait here until every admitted
request has its answer (or was cancelled). Serve's batching, metrics and set_max_batch_size work as before.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class BatchGate:
    def __init__(
        self,
        capacity: Callable[[], int],
        wait_s: Callable[[], float],
        on_waiting: Callable[[int], None] = lambda n: None,
    ):
        self._capacity = capacity  # live effective max batch size
        self._wait_s = wait_s  # live batch_wait_timeout_s
        self._on_waiting = on_waiting  # metrics: how many wait here
        self._in_flight = 0  # admitted and not answered yet
        self._admitted = 0  # in this spell
        self._spell_start: float | None = None
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold while this request joins a batch and waits for its result."""
        await self._enter()
        try:
            yield
        finally:
            self._leave()

    def _may_admit(self) -> bool:
        """For a new arrival: room in this spell's batch, and the spell still open (or none running)."""
        if self._admitted >= self._capacity():
            return False
        if self._spell_start is None:
            return self._in_flight == 0
        return time.monotonic() - self._spell_start < self._wait_s()

    def _admit(self) -> None:
        if self._spell_start is None:
            self._spell_start = time.monotonic()
        self._admitted += 1
        self._in_flight += 1

    async def _enter(self) -> None:
        if not self._waiters and self._may_admit():
            self._admit()
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._on_waiting(self.waiting)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # admitted, then cancelled before joining: give the place back
                self._leave()
            else:
                self._on_waiting(self.waiting)
            raise

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:  # the batch (and any stragglers' batch) is answered: a new spell may start
            self._spell_start, self._admitted = None, 0
            self._release()

    def _release(self) -> None:
        """A spell starts: everyone already waiting goes in, up to one batch (the wait window is for later arrivals:
        with batch_wait_timeout_s 0 it would otherwise let one request per batch through)."""
        while self._waiters and self._admitted < self._capacity():
            fut = self._waiters.popleft()
            if fut.done():  # cancelled while waiting
                continue
            self._admit()
            fut.set_result(None)
        self._on_waiting(self.waiting)
