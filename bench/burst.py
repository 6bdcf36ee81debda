"""N requests sent at one instant (aiohttp), for overload scenarios.

Why not httpx, the load generator's client: its connection pool spends ~11 ms of client CPU per new concurrent
connection on a 2-core box. 300 POSTs at once against a trivial uvicorn app that answers 503 at once came back in
p99 3.3 s with httpx and 0.16 s with aiohttp: an httpx burst measures the client, not the service.
Each answer is classified by the same code as every other request (`record_response`), so the accounting is the same.
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx

from bench.request_records import Clock, RequestRecord, record_response


async def _one(session: aiohttp.ClientSession, url: str, payload: dict, rec: RequestRecord, clock: Clock) -> None:
    try:
        async with session.post(url, json=payload) as resp:
            body = await resp.read()
            record_response(rec, httpx.Response(resp.status, headers=list(resp.headers.items()), content=body))
    except TimeoutError:
        rec.outcome, rec.error = "timeout", "no answer within the burst's timeout"
    except aiohttp.ClientError as exc:
        rec.outcome, rec.error = "error", f"{type(exc).__name__}: {exc}"
    finally:
        rec.done_t = clock.wall()


async def burst(
    base_url: str, payload: dict, n: int, path: str = "/generate", timeout_s: float = 120.0, headers: dict | None = None
) -> tuple[list[RequestRecord], float]:
    """POST `payload` n times at once, one connection each; the records (latency from the burst's start) and its
    wall time."""
    url = base_url.rstrip("/") + path
    connector = aiohttp.TCPConnector(limit=0)  # no client-side cap: all n connections open at once
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        clock = Clock()
        records = [RequestRecord(i, "load", clock.wall(clock.mono0), clock.wall()) for i in range(n)]
        await asyncio.gather(*(_one(session, url, payload, rec, clock) for rec in records))
        return records, clock.wall() - clock.wall0
