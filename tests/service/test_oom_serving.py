"""CUDA OOM handling through Serve and HTTP: a batch that does not fit is split and retried, the batch size drops for
good (visible in /info), and a request that fails even alone gets a 500 by itself.

Fake: `tests.fakes.WrappingFactory` raises `torch.OutOfMemoryError` from the real tiny pipeline's denoise call when the
call holds more than 2 images, or holds a poisoned seed. In-process checks: tests/unit/test_oom_split.py.
"""

from __future__ import annotations

import pytest

from tests.fakes import WrappingFactory
from tests.http_client import get_json, post_concurrently

POISON = 666_666  # this seed OOMs in any batch, alone too


@pytest.fixture(scope="module")
def oom_service(serve_cluster, tmp_path_factory):
    log = tmp_path_factory.mktemp("oom") / "calls.jsonl"
    factory = WrappingFactory(log_path=str(log), oom_above=2, oom_seeds=(POISON,))
    serve_cluster.deploy(
        pipeline_factory=factory,
        generator_options={
            "user_config": {"batch_policy": "throughput", "batch_wait_timeout_s": 0.5, "cpu_max_batch_size": 8}
        },
    )
    return factory


def _body(seed: int) -> dict:
    return {"prompt": f"a cat on a beach {seed}", "seed": seed, "num_inference_steps": 2}


def test_batch_over_the_limit_is_split_and_the_cap_drops(oom_service):
    responses = post_concurrently("/generate", [_body(100 + i) for i in range(8)])
    assert [r.status_code for r in responses] == [200] * 8, [r.text[:200] for r in responses]
    assert all(int(r.headers["X-Batch-Size"]) <= 2 for r in responses)
    calls = oom_service.calls()
    assert any(c["outcome"] == "oom" and c["batch"] > 2 for c in calls), calls  # the fake really fired
    batching = get_json("/info")["generator"]["batching"]
    assert batching["oom_cap"] == 2 and batching["effective_max_batch"] == 2
    assert batching["oom_splits"] > 0

    n_calls = len(oom_service.calls())
    responses = post_concurrently("/generate", [_body(200 + i) for i in range(6)])
    assert [r.status_code for r in responses] == [200] * 6
    assert all(c["outcome"] == "ok" for c in oom_service.calls()[n_calls:])  # no more OOMs: the cap holds


def test_request_that_ooms_alone_fails_alone(oom_service):
    before = get_json("/info")["generator"]["batching"]
    bodies = [_body(300), _body(POISON), _body(301), _body(302)]
    responses = post_concurrently("/generate", bodies)
    poisoned = responses[1]
    assert poisoned.status_code == 500
    error = poisoned.json()["error"]
    assert error["code"] == "oom" and "out of memory" in error["message"].lower()
    assert [responses[i].status_code for i in (0, 2, 3)] == [200, 200, 200]
    after = get_json("/info")["generator"]["batching"]
    assert after["effective_max_batch"] == before["effective_max_batch"]
