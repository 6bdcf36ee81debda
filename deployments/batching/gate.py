"""Admission to `@serve.batch`, one shape at a time and only while the GPU is idle, so a batch forms when it can run
and holds requests of one shape.

Ray Serve >= 2.47 (`max_concurrent_batches`) forms the next batch *while the previous one runs*: its loop takes the
first queued request, waits `batch_wait_timeout_s` for company, closes the batch and parks it behind the concurrency
semaphore, then starts forming another. Requests that arrive during a 5-second GPU batch end up in several small
pre-formed batches (an H100, 16 closed-loop clients, max_batch_size 8: batches of 2.8 on average). And a batch that
admits whatever waits, whatever its size, splits by shape afterwards: 5 aspect ratios under 24 clients ran batches
of 2.5.

So requests wait here, in one FIFO queue per batch key (task, shape, steps, strength, adapters). A "spell" starts
when nothing admitted is still in flight: the key whose oldest request has waited longest goes next (FIFO across
keys by their head, so a rare shape waits at most for the keys queued before it), `plan(key, queued)` says how many of
its requests the batch takes (deployments/batching/efficiency.py; it also sets Serve's max_batch_size to that, so
Serve closes the batch the moment they are in), and those are let into Serve's queue. Later arrivals of the same key
may join while the spell has room and `batch_wait_timeout_s` has not passed since it started; everyone else waits
until every admitted request's GPU work is over (or it was cancelled).

"Over" is the moment the pipeline call returns, not the moment the answers are delivered: the batch handler calls
`Place.release()` for its requests as soon as the GPU thread hands the images back, so the next spell is admitted
while the previous batch's results are still being returned and serialized (the GPU's idle gap between batches is
then a few event-loop hops; `/info` batching.gpu_idle_gaps_while_waiting measures it).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass


class Place:
    """A request's place in the running spell, given back once: by `release()` when its batch's GPU work is over,
    else when the request ends (answered, failed or cancelled)."""

    def __init__(self, gate: BatchGate | None):
        self._gate = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._leave()


@dataclass
class _Spell:
    key: Hashable
    size: int  # how many this batch takes
    started: float
    admitted: int = 0


class BatchGate:
    def __init__(
        self,
        plan: Callable[[Hashable, int], int],
        wait_s: Callable[[], float],
        on_waiting: Callable[[int], None] = lambda n: None,
    ):
        self._plan = plan  # (key, requests of that key waiting) -> batch size; called when its spell starts
        self._wait_s = wait_s  # live batch_wait_timeout_s: how long a spell takes late arrivals of its key
        self._on_waiting = on_waiting  # metrics: how many wait here
        self._in_flight = 0  # admitted and not answered yet
        self._spell: _Spell | None = None
        self._queues: dict[Hashable, deque[tuple[float, asyncio.Future]]] = {}

    @property
    def waiting(self) -> int:
        return sum(not f.done() for q in self._queues.values() for _, f in q)

    def waiting_by_key(self) -> dict[Hashable, int]:
        return {k: n for k, q in self._queues.items() if (n := sum(not f.done() for _, f in q))}

    @asynccontextmanager
    async def slot(self, key: Hashable) -> AsyncIterator[Place]:
        """Hold while this request joins a batch of its key and waits for its result; the place it yields may be
        released earlier, when the batch's GPU work is over."""
        await self._enter(key)
        place = Place(self)
        try:
            yield place
        finally:
            place.release()

    def _may_join(self, key: Hashable) -> bool:
        """For a new arrival: the running spell is its key's, has room, and is still open."""
        s = self._spell
        if s is None or s.key != key or s.admitted >= s.size or self._queues.get(key):
            return False
        return time.monotonic() - s.started < self._wait_s()

    def _admit(self) -> None:
        self._spell.admitted += 1
        self._in_flight += 1

    async def _enter(self, key: Hashable) -> None:
        if self._spell is None and self._in_flight == 0 and not self.waiting:  # idle: this request starts a spell
            self._start(key, 1)
            self._admit()
            return
        if self._may_join(key):
            self._admit()
            return
        fut = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, deque()).append((time.monotonic(), fut))
        self._on_waiting(self.waiting)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # admitted, then cancelled before joining: give the place back
                self._leave()
            else:
                self._on_waiting(self.waiting)
            raise

    def _start(self, key: Hashable, queued: int) -> None:
        self._spell = _Spell(key, max(1, self._plan(key, queued)), time.monotonic())

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:  # the batch (and any stragglers' batch) is answered: a new spell may start
            self._spell = None
            self._release()

    def _next_key(self) -> Hashable | None:
        """The key whose oldest live request has waited longest (cancelled ones are dropped on the way)."""
        for key in list(self._queues):
            q = self._queues[key]
            while q and q[0][1].done():
                q.popleft()
            if not q:
                del self._queues[key]
        if not self._queues:
            return None
        return min(self._queues, key=lambda k: self._queues[k][0][0])

    def _release(self) -> None:
        """A spell starts for the next key: its waiting requests go in, FIFO, up to the planned batch (the wait
        window is for later arrivals: with batch_wait_timeout_s 0 it would otherwise let one request per batch in)."""
        key = self._next_key()
        if key is not None:
            q = self._queues[key]
            self._start(key, sum(not f.done() for _, f in q))
            while q and self._spell.admitted < self._spell.size:
                _, fut = q.popleft()
                if fut.done():  # cancelled while waiting
                    continue
                self._admit()
                fut.set_result(None)
            if not q:
                del self._queues[key]
        self._on_waiting(self.waiting)
