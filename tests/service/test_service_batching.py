"""Dynamic batching in real Ray Serve on CPU (tiny model, real HTTP): batches form under load, different shapes never
share a pipeline call, and a `user_config` change resizes batches live on the same replica.

The pipeline is the real tiny one wrapped by `tests.fakes.WrappingFactory` only to record each denoise call (batch,
shape, seeds) so the test can see what reached the pipeline inside the replica.
"""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import pytest
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from tests.fakes import WrappingFactory
from tests.http_client import BASE_URL, get_json, png_array, post_concurrently
from tests.serve_harness import HTTP_PORT, WORKER_ENV, tiny_config, wait_healthy


@pytest.fixture(scope="module")
def recorded(serve_cluster, tmp_path_factory):
    factory = WrappingFactory(log_path=str(tmp_path_factory.mktemp("batching") / "calls.jsonl"))
    # classic dynamic batching (every waiting request of a shape, up to cpu_max_batch_size 8, 50 ms wait); the
    # latency policy is tests/service/test_batch_policy.py
    serve_cluster.deploy(pipeline_factory=factory, generator_options={"user_config": {"batch_policy": "throughput"}})
    return factory


def _call_of(calls: list[dict], seed: int) -> dict:
    (call,) = [c for c in calls if seed in c["seeds"]]
    return call


def test_batches_form_under_concurrent_load(recorded):
    seeds = list(range(1000, 1016))
    responses = post_concurrently(
        "/generate", [{"prompt": f"a dog {s}", "seed": s, "num_inference_steps": 2} for s in seeds]
    )
    assert [r.status_code for r in responses] == [200] * 16
    sizes = [int(r.headers["X-Batch-Size"]) for r in responses]
    assert sum(s > 1 for s in sizes) >= 12, sizes  # most requests shared a pipeline call
    assert max(sizes) <= 8  # cpu_max_batch_size
    calls = recorded.calls()
    for seed, size in zip(seeds, sizes, strict=True):
        assert _call_of(calls, seed)["batch"] == size  # the header tells the truth about the pipeline call


def test_different_shapes_never_share_a_pipeline_call(recorded):
    kinds = [(256, 256, 2), (256, 320, 2), (256, 256, 3)]  # (width, height, steps)
    requests = {}
    for i in range(18):
        width, height, steps = kinds[i % 3]
        seed = 2000 + i
        requests[seed] = {"prompt": f"a tree {i}", "width": width, "height": height, "num_inference_steps": steps}
    bodies = [{**body, "seed": seed} for seed, body in requests.items()]
    responses = post_concurrently("/generate", bodies)
    assert [r.status_code for r in responses] == [200] * len(bodies)
    calls = recorded.calls()
    multi = collections.Counter()
    for body, response in zip(bodies, responses, strict=True):
        call = _call_of(calls, body["seed"])
        shape = (body["width"], body["height"], body["num_inference_steps"])
        assert (call["width"], call["height"], call["steps"]) == shape
        for other in call["seeds"]:  # every image in that call asked for the same shape
            o = requests[other]
            assert (o["width"], o["height"], o["num_inference_steps"]) == shape
        assert int(response.headers["X-Batch-Size"]) == call["batch"] == len(call["seeds"])
        assert png_array(response.content).shape == (body["height"], body["width"], 3)
        multi[shape] += call["batch"] > 1
    assert len([s for s in multi if multi[s]]) >= 2, multi  # shapes were batched while mixed in the queue
    # Each batch takes the waiting requests of one shape (6 per shape here); a gate that admits 8 of any shape and
    # groups them afterwards gave batches of ~2.7.
    sizes = [int(r.headers["X-Batch-Size"]) for r in responses]
    assert sum(sizes) / len(sizes) >= 3.5, sizes


def test_requests_arriving_during_a_batch_share_the_next_one(recorded):
    """Ray Serve >= 2.47 closes a batch `batch_wait_timeout_s` after its first request even while the previous batch
    still runs, so requests trickling in during a long batch used to run as batches of one after it. The Generator's
    BatchGate holds them until the GPU is free: four requests sent one by one (further apart than the 50 ms wait)
    during a ~1.5 s batch share one pipeline call after it."""
    slow = [
        {"prompt": f"a boat {i}", "seed": 4000 + i, "width": 512, "height": 512, "num_inference_steps": 16}
        for i in range(4)
    ]
    later = [{"prompt": f"a bird {i}", "seed": 4100 + i, "num_inference_steps": 2} for i in range(4)]

    async def go():
        async with httpx.AsyncClient(base_url=BASE_URL, timeout=180, limits=httpx.Limits(max_connections=16)) as c:
            first = [asyncio.create_task(c.post("/generate", json=b)) for b in slow]
            await asyncio.sleep(0.3)  # arrival pacing: the slow batch has started
            rest = []
            for body in later:
                rest.append(asyncio.create_task(c.post("/generate", json=body)))
                await asyncio.sleep(0.15)
            last_sent = time.monotonic()
            slow_responses = await asyncio.gather(*first)
            slow_done = time.monotonic()
            return slow_responses, await asyncio.gather(*rest), last_sent, slow_done

    slow_responses, later_responses, last_sent, slow_done = asyncio.run(go())
    assert [r.status_code for r in slow_responses + later_responses] == [200] * 8
    assert slow_done > last_sent, "the slow batch ended before the last request came: the test proves nothing"
    calls = recorded.calls()
    later_calls = {tuple(_call_of(calls, b["seed"])["seeds"]) for b in later}
    assert later_calls == {tuple(b["seed"] for b in later)}, later_calls  # one call, all four, in arrival order
    assert [int(r.headers["X-Batch-Size"]) for r in later_responses] == [4] * 4


# ---- live reconfigure ---------------------------------------------------------------------------------------------
def _declarative(user_config: dict) -> ServeDeploySchema:
    """The config-file path (`serve deploy`): only this keeps replicas across a user_config change. `serve.run`
    gives every redeploy a new random code version, which restarts replicas."""
    return ServeDeploySchema.parse_obj(
        {
            "http_options": {"host": "127.0.0.1", "port": HTTP_PORT},
            "applications": [
                {
                    "name": "zimage",
                    "route_prefix": "/",
                    "import_path": "deployments.app:build_app",
                    "runtime_env": {"env_vars": WORKER_ENV},
                    "args": tiny_config().model_dump(mode="json"),
                    "deployments": [{"name": "Generator", "user_config": user_config}],
                }
            ],
        }
    )


def _wait_for(predicate, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError("condition not met")


def _burst(seed0: int, n: int = 8):
    body = [{"prompt": f"a house {i}", "seed": seed0 + i, "num_inference_steps": 2} for i in range(n)]
    responses = post_concurrently("/generate", body)
    assert [r.status_code for r in responses] == [200] * n
    return [int(r.headers["X-Batch-Size"]) for r in responses], {r.headers["X-Replica"] for r in responses}


def test_user_config_change_resizes_batches_live(recorded):
    serve.delete("zimage")
    client = _get_global_client()
    client.deploy_apps(_declarative({"batch_policy": "throughput", "batch_wait_timeout_s": 0.5}))
    wait_healthy()
    _wait_for(lambda: serve.status().applications["zimage"].status == "RUNNING")
    before = get_json("/info")["generator"]
    assert before["batching"]["effective_max_batch"] == 8
    sizes, replicas = _burst(3000)
    assert max(sizes) > 2, sizes

    client.deploy_apps(_declarative({"batch_policy": "throughput", "batch_wait_timeout_s": 0.5, "max_batch_size": 2}))
    after = _wait_for(lambda: (g := get_json("/info")["generator"])["batching"]["effective_max_batch"] == 2 and g)
    assert after["user_config"]["max_batch_size"] == 2
    assert (after["pid"], after["replica"]) == (before["pid"], before["replica"])  # reconfigured, not restarted
    sizes, replicas_after = _burst(3100)
    assert max(sizes) <= 2 and sizes.count(2) >= 2, sizes
    assert replicas_after == replicas == {before["replica"]}
