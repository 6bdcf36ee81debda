"""Open- and closed-loop HTTP load for the reliability tests, with outcomes that reconcile.

Open loop: requests are sent at scheduled times whatever the server does, and latency is measured from the scheduled
time (no coordinated omission). Every request ends as exactly one of ok (200), rejected (503) or error (anything
else, including client-side exceptions), so `sent == ok + rejected + errors` is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from tests.serve_harness import BASE_URL

logger = logging.getLogger(__name__)
RESULTS_ENV = "ZIMAGE_RESULTS_DIR"  # set it to write each scenario's raw JSON (e.g. tests/results/reliability)

Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass
class Outcome:
    """One request: when it was due, how long it took from then, and how it ended."""

    due_s: float  # scheduled send time, seconds after the run started
    latency_s: float  # completion - due time
    status: int | None  # None: the client got no HTTP answer (connection error, timeout)
    error: str | None = None  # client-side exception, or the JSON error's `code`
    retry_after: str | None = None
    replica: str | None = None
    batch_size: str | None = None
    send_lag_s: float = 0.0  # how late the client itself sent it (its own event loop lag, not the server's)

    @property
    def kind(self) -> str:
        if self.status == 200:
            return "ok"
        if self.status == 503:
            return "rejected"
        return "error"


def generate_request(payload: dict | None = None, headers: dict | None = None) -> Send:
    """POST /generate with a small default payload (256x256, 8 steps on the tiny model)."""
    body = payload or {"prompt": "a realistic photo of a red sports car on a mountain road at sunset"}

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/generate", json=body, headers=headers)

    return send


async def _one(client: httpx.AsyncClient, send: Send, due_s: float, t0: float) -> Outcome:
    lag = time.perf_counter() - t0 - due_s
    try:
        resp = await send(client)
    except httpx.HTTPError as exc:
        err = f"{type(exc).__name__}: {exc}"
        return Outcome(due_s, time.perf_counter() - t0 - due_s, None, error=err, send_lag_s=lag)
    latency = time.perf_counter() - t0 - due_s
    code = None
    if resp.status_code != 200:
        try:
            code = resp.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = resp.text[:200]
    return Outcome(
        due_s,
        latency,
        resp.status_code,
        error=code,
        retry_after=resp.headers.get("retry-after"),
        replica=resp.headers.get("x-replica"),
        batch_size=resp.headers.get("x-batch-size"),
        send_lag_s=lag,
    )


def client(timeout_s: float = 120.0) -> httpx.AsyncClient:
    """No connection cap: an open-loop generator must never queue on its own side."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    return httpx.AsyncClient(base_url=BASE_URL, timeout=timeout_s, limits=limits)


async def open_loop(
    rate_hz: float | Callable[[float], float],
    duration_s: float,
    send: Send | None = None,
    seed: int = 0,
    stop: asyncio.Event | None = None,
) -> list[Outcome]:
    """Poisson arrivals at `rate_hz` (a number, or a function of elapsed seconds) for `duration_s` or until `stop`."""
    send = send or generate_request()
    rng = random.Random(seed)
    tasks: list[asyncio.Task] = []
    async with client() as c:
        t0 = time.perf_counter()
        due = 0.0
        while due < duration_s and not (stop and stop.is_set()):
            rate = rate_hz(due) if callable(rate_hz) else rate_hz
            due += rng.expovariate(rate)
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(c, send, due, t0)))
        return list(await asyncio.gather(*tasks))


async def closed_loop(concurrency: int, duration_s: float, send: Send | None = None) -> tuple[list[Outcome], float]:
    """`concurrency` clients back to back; returns outcomes and the measured wall time."""
    send = send or generate_request()
    out: list[Outcome] = []
    async with client() as c:
        t0 = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() - t0 < duration_s:
                out.append(await _one(c, send, time.perf_counter() - t0, t0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return out, time.perf_counter() - t0


async def measure_capacity(concurrency: int, duration_s: float = 6.0, send: Send | None = None) -> float:
    """Completed images per second under a closed loop that keeps every batch full (after a short warm-up)."""
    await closed_loop(concurrency, 1.5, send)
    outcomes, wall = await closed_loop(concurrency, duration_s, send)
    ok = sum(o.kind == "ok" for o in outcomes)
    assert ok == len(outcomes), f"capacity run had failures: {summarize(outcomes)}"
    return ok / wall


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def latency_stats(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_s": pct(values, 50),
        "p90_s": pct(values, 90),
        "p99_s": pct(values, 99),
        "max_s": max(values) if values else None,
    }


def summarize(outcomes: list[Outcome]) -> dict:
    """Counts by kind (they must add up to `sent`), latency per kind, and the distinct error codes seen."""
    kinds = {k: [o for o in outcomes if o.kind == k] for k in ("ok", "rejected", "error")}
    return {
        "sent": len(outcomes),
        **{k: len(v) for k, v in kinds.items()},
        "latency": {k: latency_stats([o.latency_s for o in v]) for k, v in kinds.items()},
        "codes": sorted({f"{o.status}:{o.error}" for o in outcomes if o.kind != "ok"}),
        "client_send_lag_p99_s": pct([o.send_lag_s for o in outcomes], 99),
        "replicas": sorted({r for o in kinds["ok"] for r in (o.replica or "").split(",") if r}),
    }


def save_result(name: str, data: dict, outcomes: list[Outcome] | None = None) -> None:
    """Write the scenario's figures (and raw per-request outcomes) when ZIMAGE_RESULTS_DIR is set."""
    logger.info("%s: %s", name, json.dumps(data, default=str))
    out_dir = os.environ.get(RESULTS_ENV)
    if not out_dir:
        return
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "scenario": name,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_end": os.getloadavg()[0]},
        **data,
    }
    if outcomes is not None:
        record["requests"] = [asdict(o) for o in outcomes]
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
