"""Admission to `@serve.batch` only while the GPU is idle, so a batch forms when it can run.

Ray Serve >= 2.47 (`max_concurrent_batches`) forms the next batch *while the previous one runs*: its loop takes the
first queued request, waits `batch_wait_timeout_s` for company, closes the batch and parks it behind the concurrency
semaphore, then starts forming another. Requests that arrive during a 5-second GPU batch end up in several small
pre-formed batches instead of one full batch. On an H100 with 16 closed-loop clients and max_batch_size 8 the GPU ran
batches of 2.8 images on average (bench/results/h100-2026-11-25b/, `throughput-gateless`), the documented behaviour
("when a replica is free to evaluate the next batch, take up to max_batch_size") is what this gate restores.

Requests wait here while a batch runs; when it ends, up to one batch's worth (the live max_batch_size) go into Serve's
queue at once, in arrival order, and Serve's own batching (with its wait for stragglers, metrics and
set_max_batch_size) takes it from there.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class BatchGate:
    def __init__(self, capacity: Callable[[], int]):
        self._capacity = capacity  # the live effective max batch size
        self._busy = False
        self._admitted = 0  # let in since the GPU went idle
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    async def enter(self) -> None:
        """Return when this request may join the batch being formed (immediately if the GPU is idle and the batch
        has room)."""
        if not self._busy and not self._waiters and self._admitted < self._capacity():
            self._admitted += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # admitted, then cancelled before joining: free its place
                self._admitted -= 1
                self._release()
            raise

    def batch_started(self) -> None:
        self._busy = True

    def batch_finished(self) -> None:
        self._busy = False
        self._admitted = 0
        self._release()

    def _release(self) -> None:
        while not self._busy and self._waiters and self._admitted < self._capacity():
            fut = self._waiters.popleft()
            if fut.done():  # cancelled while waiting
                continue
            fut.set_result(None)
            self._admitted += 1
