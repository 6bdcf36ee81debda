"""Generator autoscaling on logical GPUs, on the production policy: 1 -> 2 replicas when the queue wait passes its
target, back to 1 when load falls, nothing lost.

Ray is started with 2 *logical* GPUs (scheduling only: there is no GPU here) and the Generator asks for
`num_gpus: 1` per replica, as in production, while the model runs on the CPU (tiny random weights). The policy is
serve_config.yaml's (`deployments.autoscaling:QueueWaitPolicy`, fed by each replica's `record_autoscaling_stats`);
the autoscaler, the scheduler, the router and the draining of a removed replica are real. `target_ongoing_requests`
(the policy's fallback before anything is learnt, Serve's own formula) is out of reach, so only the learnt queue wait
can add the replica. One fake: a 0.5 s sleep per denoise call (`tests.fakes.WrappingFactory(sleep_s=0.5)`), a GPU-like
batch time (batching pays: ~0.7 s/img alone, ~0.3 in batches of 4), so that load builds a queue wait without two
replicas fighting over two shared CPU cores.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import ray
from ray import serve

from bench import loadgen as lg
from tests import serve_harness
from tests.fakes import WrappingFactory

AUTOSCALING = {
    "min_replicas": 1,
    "initial_replicas": 1,
    "max_replicas": 2,
    # Up when the estimated wait (ongoing x learnt s/img / replicas) passes 2 s, down when one replica fewer would
    # keep it under 1 s: LOW is under 1 ongoing x 0.7 s/img; at HIGH one replica's queue grows by ~3 a second.
    "policy": {
        "policy_function": "deployments.autoscaling:QueueWaitPolicy",
        "policy_kwargs": {"target_queue_wait_s": 2.0, "downscale_headroom": 0.5},
    },
    "target_ongoing_requests": 1000,  # the fallback, out of reach: a scale-up here is the queue-wait signal's
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 3,
}
GEN = {
    "ray_actor_options": {"num_gpus": 1, "num_cpus": 0},
    "max_ongoing_requests": 8,
    "max_queued_requests": 256,  # the test is about scaling, not shedding: nothing may be refused
    "graceful_shutdown_wait_loop_s": 0.5,  # a removed replica is gone as soon as its requests are answered
    "autoscaling_config": AUTOSCALING,
    "user_config": {"cpu_max_batch_size": 4},
}
LOW_HZ, HIGH_HZ = 1.0, 6.0  # one replica serves ~3-5/s in batches of 4: HIGH builds a queue on one, not on two
WARM_S, HOLD_S, AFTER_S, MAX_PHASE_S = 3.0, 3.0, 1.5, 60.0
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def service(serve_cluster):
    """The shared test cluster has 4 logical CPUs and 2 logical GPUs: room for exactly 2 Generator replicas."""
    assert ray.cluster_resources().get("GPU") == 2
    serve_cluster.deploy(pipeline_factory=WrappingFactory(sleep_s=0.5), generator_options=GEN)
    return serve_cluster.BASE_URL


def _replicas() -> dict[str, int]:
    return dict(serve.status().applications["zimage"].deployments["Generator"].replica_states)


class Script:
    """Drives the offered rate through phases and records the replica count over time."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.rate, self.phases, self.samples = LOW_HZ, {}, []

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append((round(self.now(), 2), await asyncio.to_thread(_replicas)))
            await asyncio.sleep(0.25)

    async def wait_for(self, predicate, timeout_s: float) -> float | None:
        start = self.now()
        while self.now() - start < timeout_s:
            if self.samples and predicate(self.samples[-1][1]):
                return self.now() - start
            await asyncio.sleep(0.1)
        return None

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(WARM_S)
        self.rate, self.phases["high_at_s"] = HIGH_HZ, self.now()
        self.phases["scale_up_s"] = await self.wait_for(lambda s: s.get("RUNNING", 0) == 2, MAX_PHASE_S)
        await asyncio.sleep(HOLD_S)
        self.rate, self.phases["low_at_s"] = LOW_HZ, self.now()
        self.phases["scale_down_s"] = await self.wait_for(lambda s: s == {"RUNNING": 1}, MAX_PHASE_S)
        await asyncio.sleep(AFTER_S)  # a little load after the scale-down, on the remaining replica
        self.phases["end_s"] = self.now()
        stop.set()


async def _scenario() -> tuple[list[lg.RequestRecord], Script]:
    script, stop = Script(), asyncio.Event()
    outcomes, _, _ = await asyncio.gather(
        lg.open_loop(serve_harness.BASE_URL, lambda _t: script.rate, 3 * MAX_PHASE_S, seed=21, stop=stop),
        script.run(stop),
        script.sample(stop),
    )
    return outcomes, script


KEYS = ("sent", "ok", "rejected", "error", "replicas")


def test_scales_up_under_load_and_back_down_without_losing_requests(service):
    assert _replicas() == {"RUNNING": 1}
    outcomes, script = asyncio.run(_scenario())
    s = lg.summarize(outcomes)
    p = script.phases
    by_phase = {
        "low": lg.summarize([o for o in outcomes if o.due_s < p["high_at_s"]]),
        "high": lg.summarize([o for o in outcomes if p["high_at_s"] <= o.due_s < p["low_at_s"]]),
        "low_again": lg.summarize([o for o in outcomes if o.due_s >= p["low_at_s"]]),
    }
    lg.save_result(
        "autoscaling",
        {
            "autoscaling_config": AUTOSCALING,
            "rates_hz": {"low": LOW_HZ, "high": HIGH_HZ},
            "phases": p,
            "summary": s,
            "by_phase": {
                k: {x: v[x] for x in ("sent", "ok", "rejected", "error", "replicas")} for k, v in by_phase.items()
            },
            "replica_states": script.samples,
        },
        outcomes,
    )

    assert p["scale_up_s"] is not None, f"never reached 2 replicas: {script.samples[-3:]}"
    assert p["scale_down_s"] is not None, f"never went back to 1 replica: {script.samples[-3:]}"
    assert s["ok"] == s["sent"] > 0, s["codes"]  # no request lost through either scale event
    assert len(by_phase["high"]["replicas"]) == 2, "both replicas must have served during the high phase"
    running = [n for n, _ in itertools.groupby(states.get("RUNNING", 0) for _, states in script.samples)]
    assert running == [1, 2, 1], f"the count must follow the load once up and once down, no flapping: {running}"
