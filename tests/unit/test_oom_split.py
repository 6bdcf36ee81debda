"""CUDA OOM handling: a batch that does not fit is split and retried, the batch size drops for good, and a request
that fails even alone fails by itself.

Fake: a CPU cannot run out of CUDA memory, so `tests.fakes.WrappingFactory` raises `torch.OutOfMemoryError` from the
real tiny pipeline's denoise call when the call holds more than 2 images, or holds a poisoned seed. Everything else
(Serve, batching, HTTP, the generator's split/retry and caps) is the real code.
"""

from __future__ import annotations

import pytest

from deployments.generator import ZImageGenerator
from deployments.messages import GenerationSpec
from tests.fakes import WrappingFactory
from tests.http_client import get_json, post_concurrently
from tests.serve_harness import tiny_config

POISON = 666_666  # this seed OOMs in any batch, alone too


def _spec(seed: int) -> GenerationSpec:
    return GenerationSpec(prompt=f"a red car {seed}", width=256, height=256, steps=2, seed=seed)


def test_generator_splits_and_isolates_a_request_that_fails_alone():
    """In-process (no Serve): the split/retry and cap logic of the generator's `GroupExecutor.run_group` on a real
    tiny pipeline."""
    gen = ZImageGenerator(tiny_config().model_dump(mode="json"), WrappingFactory(oom_above=2, oom_seeds=(POISON,)))
    gen.reconfigure({"cpu_max_batch_size": 8})
    results = gen.executor.run_group([_spec(s) for s in (1, 2, 3, 4, 5, 6)])
    assert all(r.error is None and r.image.shape == (256, 256, 3) for r in results)
    assert max(r.batch_size for r in results) == 2
    assert (gen.state.oom_cap, gen.state.effective_max_batch) == (2, 2)

    results = gen.executor.run_group([_spec(7), _spec(POISON)])
    assert results[0].error is None and results[0].image is not None  # its neighbour is not dragged down
    assert results[1].error_kind == "oom" and "out of memory" in results[1].error
    assert gen.state.effective_max_batch == 2  # a request that fails alone says nothing about the batch size


@pytest.fixture(scope="module")
def oom_service(serve_cluster, tmp_path_factory):
    log = tmp_path_factory.mktemp("oom") / "calls.jsonl"
    factory = WrappingFactory(log_path=str(log), oom_above=2, oom_seeds=(POISON,))
    serve_cluster.deploy(
        pipeline_factory=factory,
        generator_options={"user_config": {"batch_wait_timeout_s": 0.5, "cpu_max_batch_size": 8}},
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
