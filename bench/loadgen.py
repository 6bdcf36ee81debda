"""HTTP load driver: closed loop (N clients, each sends when its last answer came) or open loop (Poisson arrivals).

Open-loop latency is measured from the *scheduled* send time, so a slow server cannot hide its queueing by slowing
the client down (no coordinated omission). Both loops are bounded by a request count and a duration; requests still
in flight `drain_s` after the duration are cancelled and counted as errors. A warm-up phase (closed loop, optionally
with fewer denoising steps: same tensor shapes, less time) runs first and is excluded from the measured phase.

Closed loop with `cooldown`: once the measured requests are all sent, the clients keep sending (phase "cooldown",
not measured) until every measured request has its answer. Without it the last measured requests run in partial
batches while the load drains, and a batching server's throughput is understated by its own tail.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import aiohttp

from bench.workload import Workload

logger = logging.getLogger(__name__)

REJECT_STATUSES = (429, 503)  # overload answers (queue full): the service said "not now", not "broken"


@dataclass
class RequestRecord:
    """One request. Times are wall clock (time.time()), derived from a monotonic clock so they never jump."""

    index: int
    phase: str  # "warmup" | "measure" | "cooldown"
    scheduled_t: float  # when it was meant to be sent (open: the Poisson schedule; closed: when its client was free)
    sent_t: float  # when the request actually started
    done_t: float | None = None
    status: int | None = None
    outcome: str = "pending"  # ok | rejected | error | timeout | cancelled
    error: str | None = None
    seed: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    queue_wait_ms: float | None = None
    inference_ms: float | None = None
    peak_memory_mb: float | None = None
    replica: str | None = None
    bytes: int = 0

    @property
    def latency_s(self) -> float | None:
        return None if self.done_t is None else self.done_t - self.scheduled_t

    @property
    def send_lag_s(self) -> float:
        return self.sent_t - self.scheduled_t

    def as_dict(self) -> dict:
        d = asdict(self)
        d["latency_s"] = self.latency_s
        return d


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


def _header(headers, name: str, cast=float):
    raw = headers.get(name)
    if raw is None or raw == "":
        return None
    try:
        return cast(raw.split(",")[0])
    except ValueError:
        return None


class LoadDriver:
    """Sends a Workload to `base_url` under a LoadSpec; `on_done(record)` runs after each request (progress bars)."""

    def __init__(
        self,
        base_url: str,
        workload: Workload,
        spec: LoadSpec,
        on_done: Callable[[RequestRecord], None] | None = None,
        headers: dict | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.workload = workload
        self.spec = spec
        self.on_done = on_done
        self.headers = headers or {}
        self._next_index = 0
        self._mono0 = time.monotonic()
        self._wall0 = time.time()

    def _wall(self, mono: float) -> float:
        return self._wall0 + (mono - self._mono0)

    async def run(self) -> dict[str, Phase]:
        connector = aiohttp.TCPConnector(limit=0)  # no client-side cap: the load model decides concurrency
        timeout = aiohttp.ClientTimeout(total=self.spec.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers) as session:
            phases = {}
            s = self.spec
            if s.warmup_requests:
                conc = s.warmup_concurrency or (s.concurrency if s.mode == "closed" else 1)
                phases["warmup"] = await self._closed(session, "warmup", conc, s.warmup_requests, s.warmup_steps)
            if s.mode == "closed":
                cooldown = Phase("cooldown", 0.0) if s.cooldown else None
                phases["measure"] = await self._closed(session, "measure", s.concurrency, s.requests, None, cooldown)
                if cooldown is not None:
                    phases["cooldown"] = cooldown
            else:
                phases["measure"] = await self._open(session, s.rate, s.requests)
            return phases

    # ---- one request ---------------------------------------------------------------------------------------------
    async def _one(self, session, phase: Phase, scheduled_mono: float, steps: int | None) -> None:
        index = self._next_index
        self._next_index += 1
        path, body = self.workload.request(index, steps)
        rec = RequestRecord(
            index=index,
            phase=phase.name,
            scheduled_t=self._wall(scheduled_mono),
            sent_t=self._wall(time.monotonic()),
            seed=body.get("seed"),
            steps=body.get("num_inference_steps"),
        )
        phase.records.append(rec)
        try:
            async with session.post(self.base_url + path, json=body) as resp:
                payload = await resp.read()
                rec.status, rec.bytes = resp.status, len(payload)
                if 200 <= resp.status < 300:
                    rec.outcome = "ok"
                    h = resp.headers
                    rec.batch_size = _header(h, "X-Batch-Size", int)
                    rec.queue_wait_ms = _header(h, "X-Queue-Wait-Ms")
                    rec.inference_ms = _header(h, "X-Inference-Ms")
                    rec.peak_memory_mb = _header(h, "X-Peak-Memory-MB")
                    rec.replica = h.get("X-Replica")
                else:
                    rec.outcome = "rejected" if resp.status in REJECT_STATUSES else "error"
                    rec.error = payload[:300].decode("utf-8", "replace")
        except asyncio.CancelledError:
            rec.outcome, rec.error = "cancelled", "still in flight at the duration bound"
            raise
        except TimeoutError:
            rec.outcome, rec.error = "timeout", f"no answer within {self.spec.timeout_s}s"
        except aiohttp.ClientError as exc:
            rec.outcome, rec.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            rec.done_t = self._wall(time.monotonic())
            if self.on_done is not None:
                self.on_done(rec)

    # ---- load models ---------------------------------------------------------------------------------------------
    async def _finish(self, phase: Phase, tasks: list[asyncio.Task], hard_end_mono: float) -> Phase:
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, hard_end_mono - time.monotonic()))
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if pending:
                logger.warning("%s: cancelled %d request task(s) at the duration bound", phase.name, len(pending))
        phase.end_t = self._wall(time.monotonic())
        return phase

    async def _closed(
        self, session, name: str, concurrency: int, requests: int, steps: int | None, cooldown: Phase | None = None
    ) -> Phase:
        """`concurrency` clients share `requests`; with a `cooldown` phase a client whose share is used up keeps
        sending into it while any request of `phase` is still unanswered (a full queue until the last one is done)."""
        start = time.monotonic()
        phase = Phase(name, self._wall(start))
        send_until = start + self.spec.duration_s
        remaining, unanswered = [requests], [requests]

        async def client() -> None:
            while time.monotonic() < send_until:
                if remaining[0] > 0:
                    remaining[0] -= 1
                    try:
                        await self._one(session, phase, time.monotonic(), steps)
                    finally:
                        unanswered[0] -= 1
                elif cooldown is not None and unanswered[0] > 0:
                    if not cooldown.start_t:
                        cooldown.start_t = self._wall(time.monotonic())
                    await self._one(session, cooldown, time.monotonic(), steps)
                else:
                    return

        tasks = [asyncio.create_task(client()) for _ in range(min(concurrency, max(requests, 1)))]
        await self._finish(phase, tasks, send_until + self.spec.drain_s)
        if cooldown is not None:
            cooldown.end_t = phase.end_t
        return phase

    def arrival_offsets(self, rate: float, requests: int) -> list[float]:
        """Poisson process: exponential gaps with mean 1/rate, seeded, cut at the request count and duration."""
        rng = random.Random(self.spec.arrival_seed)
        offsets, t = [], 0.0
        while len(offsets) < requests:
            t += rng.expovariate(rate)
            if t > self.spec.duration_s:
                break
            offsets.append(t)
        return offsets

    async def _open(self, session, rate: float, requests: int) -> Phase:
        start = time.monotonic()
        phase = Phase("measure", self._wall(start))
        tasks = []
        for offset in self.arrival_offsets(rate, requests):
            target = start + offset
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._one(session, phase, target, None)))
        return await self._finish(phase, tasks, start + self.spec.duration_s + self.spec.drain_s)


def run_load(base_url: str, workload: Workload, spec: LoadSpec, on_done=None, headers=None) -> dict[str, Phase]:
    return asyncio.run(LoadDriver(base_url, workload, spec, on_done, headers).run())
