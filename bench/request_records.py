"""One request of a load run: how it is sent (`send_one`), and the record it leaves (`RequestRecord`, exactly one per
request: ok, rejected or error), plus the summaries of many (`summarize` checks sent == ok + rejected + errors)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

logger = logging.getLogger(__name__)

REJECT_STATUSES = (429, 503)  # overload answers (queue full): the service said "not now", not "broken"
ERROR_OUTCOMES = ("error", "timeout", "cancelled")
RESULTS_ENV = "ZIMAGE_RESULTS_DIR"  # set it to write each reliability scenario's raw JSON (tests/results/reliability)
DEFAULT_PROMPT = "a realistic photo of a red sports car on a mountain road at sunset"

Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass
class RequestRecord:
    """One request. Times are wall clock (time.time()), derived from a monotonic clock so they never jump."""

    index: int
    phase: str  # "warmup" | "measure" | "cooldown" | "load" (reliability scenarios)
    scheduled_t: float  # when it was meant to be sent (open: the Poisson schedule; closed: when its client was free)
    sent_t: float  # when the request actually started
    due_s: float = 0.0  # scheduled send time, seconds after its run started
    done_t: float | None = None
    status: int | None = None  # None: no HTTP answer (connection error, timeout, cancelled)
    outcome: str = "pending"  # ok | rejected | error | timeout | cancelled
    error: str | None = None  # the body's start (non-2xx) or the client-side exception
    code: str | None = None  # the JSON error's `code` (non-2xx answers from the service)
    retry_after: str | None = None
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

    @property
    def kind(self) -> str:
        """ok | rejected | error: the three bins every request falls in exactly once."""
        return "error" if self.outcome in ERROR_OUTCOMES or self.outcome == "pending" else self.outcome

    def as_dict(self) -> dict:
        d = asdict(self)
        d["latency_s"] = self.latency_s
        return d


class Clock:
    """Monotonic time for scheduling, reported as wall-clock seconds."""

    def __init__(self):
        self.mono0, self.wall0 = time.monotonic(), time.time()

    def wall(self, mono: float | None = None) -> float:
        return self.wall0 + ((time.monotonic() if mono is None else mono) - self.mono0)


def _header(headers, name: str, cast=float):
    raw = headers.get(name)
    if raw is None or raw == "":
        return None
    try:
        return cast(raw.split(",")[0])
    except ValueError:
        return None


def record_response(rec: RequestRecord, resp: httpx.Response) -> None:
    h = resp.headers
    rec.status, rec.bytes = resp.status_code, len(resp.content)
    rec.replica, rec.retry_after = h.get("x-replica"), h.get("retry-after")
    if 200 <= resp.status_code < 300:
        rec.outcome = "ok"
        rec.batch_size = _header(h, "x-batch-size", int)
        rec.queue_wait_ms = _header(h, "x-queue-wait-ms")
        rec.inference_ms = _header(h, "x-inference-ms")
        rec.peak_memory_mb = _header(h, "x-peak-memory-mb")
        return
    rec.outcome = "rejected" if resp.status_code in REJECT_STATUSES else "error"
    rec.error = resp.content[:300].decode("utf-8", "replace")
    try:
        rec.code = resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        pass


async def send_one(
    client: httpx.AsyncClient,
    send: Send,
    rec: RequestRecord,
    clock: Clock,
    timeout_s: float,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> RequestRecord:
    """Run `send` and classify its answer into `rec`; whatever happens, `rec` ends with exactly one outcome."""
    try:
        async with asyncio.timeout(timeout_s):
            record_response(rec, await send(client))
    except asyncio.CancelledError:
        rec.outcome, rec.error = "cancelled", "still in flight at the duration bound"
        raise
    except (TimeoutError, httpx.TimeoutException):
        rec.outcome, rec.error = "timeout", f"no answer within {timeout_s}s"
    except httpx.HTTPError as exc:
        rec.outcome, rec.error = "error", f"{type(exc).__name__}: {exc}"
    finally:
        rec.done_t = clock.wall()
        if on_done is not None:
            on_done(rec)
    return rec


def make_client(base_url: str, timeout_s: float = 600.0, headers: dict | None = None) -> httpx.AsyncClient:
    """No client-side connection cap: the load model, not the client, decides concurrency."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, limits=limits, headers=headers or {})


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def latency_stats(values: list[float]) -> dict:
    return {"n": len(values), **{f"p{q}_s": pct(values, q) for q in (50, 90, 99)}, "max_s": max(values, default=None)}


def summarize(records: list[RequestRecord]) -> dict:
    """Counts by kind (checked to add up to `sent`), latency per kind, and the distinct status:code pairs seen."""
    kinds = {k: [r for r in records if r.kind == k] for k in ("ok", "rejected", "error")}
    summary = {"sent": len(records), **{k: len(v) for k, v in kinds.items()}}
    assert summary["sent"] == summary["ok"] + summary["rejected"] + summary["error"], summary
    return {
        **summary,
        "latency": {k: latency_stats([r.latency_s for r in v]) for k, v in kinds.items()},
        "codes": sorted({f"{r.status}:{r.code or r.error}" for r in records if r.kind != "ok"}),
        "client_send_lag_p99_s": pct([r.send_lag_s for r in records], 99),
        "replicas": sorted({p for r in kinds["ok"] for p in (r.replica or "").split(",") if p}),
    }


def save_result(name: str, data: dict, records: list[RequestRecord] | None = None) -> None:
    """Write a scenario's figures (and its raw per-request records) under $ZIMAGE_RESULTS_DIR when it is set."""
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
    if records is not None:
        record["requests"] = [r.as_dict() for r in records]
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
