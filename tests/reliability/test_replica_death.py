"""A Generator replica killed (SIGKILL of its process) in the middle of open-loop load.

What must hold: Serve replaces the replica; requests that were on it are retried once by the ingress on the survivor
(or, if that fails too, answered 503 `replica_died`), every other request succeeds, and nothing else fails. The
exception Ray 2.60 raises through the DeploymentHandle is read from the ingress's log line, so a change in Ray's
behaviour shows up here. The kill is a real SIGKILL of the replica process; the one fake is a 0.5 s sleep added to each
denoise call (`tests.fakes.WrappingFactory(sleep_s=0.5)`: a GPU-like batch time without burning CPU), so that several
requests are on the victim when it dies.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from bench import loadgen as lg
from tests import serve_harness
from tests.fakes import WrappingFactory

GEN = {
    "num_replicas": 2,
    "max_ongoing_requests": 16,
    "max_queued_requests": 64,  # the survivor alone must absorb the load while the replacement starts
    "user_config": {"cpu_max_batch_size": 8},
}
RATE_HZ = 3.0  # about half of what one replica serves with ~1.3 s batches of 8: the survivor can carry it alone
KILL_AT_S = 4.0
AFTER_RECOVERY_S = 4.0  # keep the load on this long after the replacement is RUNNING, so it serves some of it
MAX_LOAD_S = 90.0
RETRY_LOG = re.compile(r"generator replica died \((\w+)\); retrying once")


@pytest.fixture(scope="module")
def service(serve_cluster):
    serve_cluster.deploy(
        serve_cluster.tiny_config(), pipeline_factory=WrappingFactory(sleep_s=0.5), generator_options=GEN
    )
    return serve_cluster.BASE_URL


def _replica_pids(timeout_s: float = 30) -> dict[str, int]:
    """replica id -> pid of each Generator replica, from /info (each call lands on one replica)."""
    found: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < GEN["num_replicas"] and time.monotonic() < deadline:
        gen = httpx.get(f"{serve_harness.BASE_URL}/info", timeout=10).json()["generator"]
        found[gen["replica"]] = gen["pid"]
    assert len(found) == GEN["num_replicas"], found
    return found


def _running_replicas() -> int:
    status = serve.status().applications["zimage"].deployments["Generator"]
    return status.replica_states.get("RUNNING", 0)


def _ingress_log_lines() -> list[str]:
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    return [line for f in logs.glob("replica_zimage_Ingress_*.log") for line in f.read_text().splitlines()]


async def _kill_and_watch(victim_pid: int, t0: float, stop: asyncio.Event) -> dict:
    await asyncio.sleep(KILL_AT_S)
    killed_at = time.perf_counter() - t0
    os.kill(victim_pid, signal.SIGKILL)
    while _running_replicas() >= GEN["num_replicas"]:  # the controller notices the death
        await asyncio.sleep(0.1)
    noticed_at = time.perf_counter() - t0
    while _running_replicas() < GEN["num_replicas"]:
        await asyncio.sleep(0.25)
    recovered_at = time.perf_counter() - t0
    await asyncio.sleep(AFTER_RECOVERY_S)
    stop.set()
    return {
        "killed_at_s": killed_at,
        "death_noticed_after_s": noticed_at - killed_at,
        "recovered_after_s": recovered_at - killed_at,
    }


async def _scenario(victim_pid: int) -> tuple[list[lg.RequestRecord], dict]:
    t0, stop = time.perf_counter(), asyncio.Event()
    return await asyncio.gather(
        lg.open_loop(serve_harness.BASE_URL, RATE_HZ, MAX_LOAD_S, seed=3, stop=stop),
        _kill_and_watch(victim_pid, t0, stop),
    )


def test_killed_replica_is_replaced_and_only_its_requests_are_affected(service):
    before = _replica_pids()
    victim, survivor = sorted(before)
    log_lines_before = len(_ingress_log_lines())

    outcomes, timing = asyncio.run(_scenario(before[victim]))

    s = lg.summarize(outcomes)
    retries = [m[1] for line in _ingress_log_lines()[log_lines_before:] if (m := RETRY_LOG.search(line))]
    after = _replica_pids()
    new_replicas = sorted(set(after) - set(before))
    served_by_new = [o for o in outcomes if o.replica in new_replicas]
    first_new = min((o.due_s + o.latency_s for o in served_by_new), default=None)
    figures = {
        "generator_options": GEN,
        "rate_hz": RATE_HZ,
        "load_s": max(o.due_s for o in outcomes),
        **timing,
        "first_response_from_replacement_after_kill_s": first_new and first_new - timing["killed_at_s"],
        "replicas_before": sorted(before),
        "victim": victim,
        "replacement": new_replicas,
        "ingress_retries": len(retries),
        "retry_exception_types": sorted(set(retries)),
        "summary": s,
    }
    lg.save_result("replica_death", figures, outcomes)

    assert s["sent"] == s["ok"] + s["rejected"] + s["error"]
    assert s["error"] == 0, s["codes"]
    # Only requests that were on the dead replica may fail, and then as 503 `replica_died` (after one retry).
    failed = [o for o in outcomes if o.kind != "ok"]
    assert all(o.error == "replica_died" for o in failed), s["codes"]
    assert len(failed) <= len(retries)
    # Serve replaced it: a new replica id, in rotation, serving requests.
    assert victim not in after and survivor in after and len(new_replicas) == 1
    assert timing["recovered_after_s"] < 60
    assert served_by_new, "the replacement replica never served a request during the load"
