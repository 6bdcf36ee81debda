"""The one HTTP load generator (httpx), for bench and the reliability tests.

Two load models: closed loop (N clients, each sends when its last answer came) and open loop (Poisson arrivals,
optionally with a rate that changes over time). Open-loop latency is measured from the *scheduled* send time, so a slow
server cannot hide its queueing by slowing the client down (no coordinated omission).

Accounting: every request ends as exactly one `RequestRecord` whose `kind` is ok (2xx), rejected (429/503: the
service said "not now") or error (any other status, a client-side exception, a timeout, or a cancellation at the
duration bound), so `sent == ok + rejected + errors` holds by construction and `summarize` checks it.

Two entry points share the request path (`send_one`) and the Poisson schedule (`poisson_offsets`):
- `LoadDriver` / `run_load`: bench's phased runs of a `Workload` (warm-up, measured phase, optional cooldown; JSON
  generations or multipart edits, whatever the workload's `request(i).send` posts), bounded
  by a request count and a duration; requests still in flight `drain_s` after the duration are cancelled. With
  `cooldown` the clients keep sending (unmeasured) until every measured request is answered, so a batching server's
  throughput is not understated by the partial batches of its own tail.
- `open_loop` / `closed_loop` / `measure_capacity`: the reliability tests' scenarios (one payload, time-bounded).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from bench.request_records import (  # noqa: F401  (re-exported: the load generator's public names)
    DEFAULT_PROMPT,
    ERROR_OUTCOMES,
    REJECT_STATUSES,
    RESULTS_ENV,
    Clock,
    RequestRecord,
    Send,
    latency_stats,
    make_client,
    pct,
    save_result,
    send_one,
    summarize,
)
from bench.workload import Workload

logger = logging.getLogger(__name__)


def poisson_offsets(rate: float | Callable[[float], float], duration_s: float, seed: int, limit: int | None = None):
    """Seeded Poisson arrivals (exponential gaps, mean 1/rate; `rate` may be a function of elapsed seconds), cut at
    `duration_s` and `limit` arrivals."""
    rng, t, n = random.Random(seed), 0.0, 0
    while limit is None or n < limit:
        t += rng.expovariate(rate(t) if callable(rate) else rate)
        if t > duration_s:
            return
        n += 1
        yield t


async def _cancel_after(tasks: list[asyncio.Task], deadline_mono: float, what: str) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline_mono - time.monotonic()))
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        logger.warning("%s: cancelled %d request task(s) at the duration bound", what, len(pending))


# ---- bench: phased runs of a workload -----------------------------------------------------------------------------
@dataclass
class LoadSpec:
    """How hard and how long to push; `requests` and `duration_s` bound the measured phase."""

    mode: str = "closed"  # closed | open
    concurrency: int = 1  # closed loop: number of clients
    rate: float | None = None  # open loop: mean arrivals per second (Poisson)
    requests: int = 16
    duration_s: float = 300.0  # no new sends after this; in flight at duration_s + drain_s -> cancelled
    drain_s: float = 120.0
    warmup_requests: int = 0
    warmup_concurrency: int | None = None  # default: `concurrency` (closed) or 1 (open)
    warmup_steps: int | None = None  # default: the workload's steps
    cooldown: bool = False  # closed loop: keep the load on (unmeasured) until the measured requests are answered
    timeout_s: float = 600.0  # per request
    arrival_seed: int = 0

    def __post_init__(self):
        if self.mode not in ("closed", "open"):
            raise ValueError(f"mode must be closed or open, not {self.mode!r}")
        if self.mode == "open" and not (self.rate and self.rate > 0):
            raise ValueError("open loop needs rate > 0")
        if self.concurrency < 1 or self.requests < 0 or self.duration_s <= 0:
            raise ValueError("need concurrency >= 1, requests >= 0, duration_s > 0")


@dataclass
class Phase:
    name: str
    start_t: float
    end_t: float = 0.0
    records: list[RequestRecord] = field(default_factory=list)

    @property
    def last_done_t(self) -> float:
        done = [r.done_t for r in self.records if r.done_t is not None]
        return max(done) if done else self.end_t


class LoadDriver:
    """Sends a Workload to `base_url` under a LoadSpec; `on_done(record)` runs after each request (progress bars)."""

    def __init__(self, base_url, workload: Workload, spec: LoadSpec, on_done=None, headers: dict | None = None):
        self.base_url, self.workload, self.spec = base_url, workload, spec
        self.on_done, self.headers = on_done, headers or {}
        self._next_index = 0
        self.clock = Clock()

    async def run(self) -> dict[str, Phase]:
        async with make_client(self.base_url, self.spec.timeout_s, self.headers) as client:
            phases, s = {}, self.spec
            if s.warmup_requests:
                conc = s.warmup_concurrency or (s.concurrency if s.mode == "closed" else 1)
                phases["warmup"] = await self._closed(client, "warmup", conc, s.warmup_requests, s.warmup_steps)
            if s.mode == "closed":
                cooldown = Phase("cooldown", 0.0) if s.cooldown else None
                phases["measure"] = await self._closed(client, "measure", s.concurrency, s.requests, None, cooldown)
                if cooldown is not None:
                    phases["cooldown"] = cooldown
            else:
                phases["measure"] = await self._open(client, s.rate, s.requests)
            return phases

    async def _one(self, client, phase: Phase, scheduled_mono: float, steps: int | None) -> None:
        index = self._next_index
        self._next_index += 1
        req = self.workload.request(index, steps)
        rec = RequestRecord(
            index=index,
            phase=phase.name,
            scheduled_t=self.clock.wall(scheduled_mono),
            sent_t=self.clock.wall(),
            due_s=scheduled_mono - self.clock.mono0,
            seed=req.body.get("seed"),
            steps=req.body.get("num_inference_steps"),
        )
        phase.records.append(rec)
        await send_one(client, req.send, rec, self.clock, self.spec.timeout_s, self.on_done)

    async def _closed(
        self, client, name: str, concurrency: int, requests: int, steps: int | None, cooldown: Phase | None = None
    ) -> Phase:
        """`concurrency` clients share `requests`; with a `cooldown` phase a client whose share is used up keeps
        sending into it while any request of `phase` is still unanswered (a full queue until the last one is done)."""
        start = time.monotonic()
        phase = Phase(name, self.clock.wall(start))
        send_until = start + self.spec.duration_s
        remaining, unanswered = [requests], [requests]

        async def one_client() -> None:
            while time.monotonic() < send_until:
                if remaining[0] > 0:
                    remaining[0] -= 1
                    try:
                        await self._one(client, phase, time.monotonic(), steps)
                    finally:
                        unanswered[0] -= 1
                elif cooldown is not None and unanswered[0] > 0:
                    if not cooldown.start_t:
                        cooldown.start_t = self.clock.wall()
                    await self._one(client, cooldown, time.monotonic(), steps)
                else:
                    return

        tasks = [asyncio.create_task(one_client()) for _ in range(min(concurrency, max(requests, 1)))]
        await _cancel_after(tasks, send_until + self.spec.drain_s, name)
        phase.end_t = self.clock.wall()
        if cooldown is not None:
            cooldown.end_t = phase.end_t
        return phase

    def arrival_offsets(self, rate: float, requests: int) -> list[float]:
        return list(poisson_offsets(rate, self.spec.duration_s, self.spec.arrival_seed, requests))

    async def _open(self, client, rate: float, requests: int) -> Phase:
        start = time.monotonic()
        phase = Phase("measure", self.clock.wall(start))
        tasks = []
        for offset in self.arrival_offsets(rate, requests):
            target = start + offset
            if (delay := target - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._one(client, phase, target, None)))
        await _cancel_after(tasks, start + self.spec.duration_s + self.spec.drain_s, "measure")
        phase.end_t = self.clock.wall()
        return phase


def run_load(base_url: str, workload: Workload, spec: LoadSpec, on_done=None, headers=None) -> dict[str, Phase]:
    return asyncio.run(LoadDriver(base_url, workload, spec, on_done, headers).run())


# ---- reliability scenarios: one payload, time-bounded -------------------------------------------------------------
def generate_request(payload: dict | None = None, headers: dict | None = None) -> Send:
    """POST /generate with `payload` (default: one prompt, the service's default size and steps)."""
    body = payload or {"prompt": DEFAULT_PROMPT}
    return lambda client: client.post("/generate", json=body, headers=headers)


async def request_at(
    client: httpx.AsyncClient, send: Send, clock: Clock, due_s: float = 0.0, timeout_s: float = 120.0
) -> RequestRecord:
    """One request of a scenario, due `due_s` after `clock` started (latency counts from then)."""
    rec = RequestRecord(0, "load", clock.wall(clock.mono0 + due_s), clock.wall(), due_s=due_s)
    return await send_one(client, send, rec, clock, timeout_s)


async def open_loop(
    base_url: str,
    rate_hz: float | Callable[[float], float],
    duration_s: float,
    send: Send | None = None,
    seed: int = 0,
    stop: asyncio.Event | None = None,
    timeout_s: float = 120.0,
) -> list[RequestRecord]:
    """Poisson arrivals at `rate_hz` (a number, or a function of elapsed seconds) for `duration_s` or until `stop`;
    waits for every answer (each request is bounded by `timeout_s`)."""
    send = send or generate_request()
    tasks: list[asyncio.Task] = []
    async with make_client(base_url, timeout_s) as client:
        clock = Clock()
        for due in poisson_offsets(rate_hz, duration_s, seed):
            if stop is not None and stop.is_set():
                break
            if (delay := clock.mono0 + due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(request_at(client, send, clock, due, timeout_s)))
        return list(await asyncio.gather(*tasks))


async def closed_loop(
    base_url: str, concurrency: int, duration_s: float, send: Send | None = None, timeout_s: float = 120.0
) -> tuple[list[RequestRecord], float]:
    """`concurrency` clients back to back for `duration_s`; returns the records and the measured wall time."""
    send = send or generate_request()
    out: list[RequestRecord] = []
    async with make_client(base_url, timeout_s) as client:
        clock = Clock()

        async def worker() -> None:
            while (now := time.monotonic() - clock.mono0) < duration_s:
                out.append(await request_at(client, send, clock, now, timeout_s))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return out, time.monotonic() - clock.mono0


async def measure_capacity(base_url: str, concurrency: int, duration_s: float = 6.0, send: Send | None = None) -> float:
    """Completed images per second under a closed loop that keeps every batch full (after a short warm-up)."""
    await closed_loop(base_url, concurrency, 1.5, send)
    records, wall = await closed_loop(base_url, concurrency, duration_s, send)
    ok = sum(r.kind == "ok" for r in records)
    assert ok == len(records), f"capacity run had failures: {summarize(records)}"
    return ok / wall
