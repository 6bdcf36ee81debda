"""Batch caps per image area through Serve and HTTP, on CPU with the tiny model.

1. Memory: `testing.emulate_memory` stands in for the GPU's measured peaks (a line in batch x pixels), so the start-up
   measurement caps each area as a card would: 2048x2048 at 1 image per call, 512x512 at the tier's 8. A burst that
   mixes both never runs a 2048^2 call above its cap, while the 512^2 requests still batch.
2. OOM: `tests.fakes.WrappingFactory(oom_above_pixels=...)` runs out of "memory" above a number of pixels per call;
   an OOM at 512x512 lowers that area's cap, and 256x256 keeps batching 4.
Pure logic: tests/unit/test_area_batching.py.
"""

from __future__ import annotations

import pytest

from tests.fakes import WrappingFactory
from tests.http_client import get_json, post_concurrently
from tests.serve_harness import tiny_config

GEN = {"user_config": {"batch_policy": "throughput", "batch_wait_timeout_s": 0.5, "cpu_max_batch_size": 8}}


def _body(side: int, seed: int) -> dict:
    return {"prompt": f"a lighthouse {seed}", "width": side, "height": side, "seed": seed, "num_inference_steps": 1}


def _calls_at(factory: WrappingFactory, side: int, since: int = 0) -> list[dict]:
    return [c for c in factory.calls()[since:] if (c["width"], c["height"]) == (side, side)]


@pytest.fixture(scope="module")
def memory_service(serve_cluster, tmp_path_factory):
    log = tmp_path_factory.mktemp("area-memory") / "calls.jsonl"
    factory = WrappingFactory(log_path=str(log))
    # 8 images of 512^2 fit the emulated budget; one 2048^2 image is over it (batch 1 is the floor)
    memory = {"fixed_bytes": 0, "bytes_per_pixel": 1.0, "budget_bytes": 8 * 512 * 512}
    config = tiny_config(
        limits={"max_side": 2048, "max_steps": 16, "max_images_per_request": 4}, testing={"emulate_memory": memory}
    )
    # two intra-op threads (the suite's default is one): a 2048^2 image takes the tiny model ~16 s on one CPU thread,
    # mostly the VAE decode, and nothing else runs while this module does
    threads = {"num_gpus": 0, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "2"}}}
    serve_cluster.deploy(
        config=config, pipeline_factory=factory, generator_options={**GEN, "ray_actor_options": threads}
    )
    return factory


def test_info_shows_the_cap_of_each_area(memory_service):
    batching = get_json("/info")["generator"]["batching"]
    caps = batching["max_batch_by_shape"]
    assert caps["2048x2048"] == 1 and caps["512x512"] == 8 and caps["256x256"] == 8, caps
    assert batching["memory_cap"] == 1 and batching["effective_max_batch"] == 8
    assert batching["memory_model"]["areas_measured"] == [512 * 512, 2048 * 2048]
    presets = get_json("/info")["presets"]
    assert sum(p["allowed"] for cls in presets.values() for p in cls) == 33  # sides <= 2048, area <= 2048^2


def test_a_2048_request_is_never_batched_beyond_its_cap(memory_service):
    bodies = [_body(2048, 1), _body(2048, 2)] + [_body(512, 10 + i) for i in range(6)]
    responses = post_concurrently("/generate", bodies, timeout_s=600)
    assert [r.status_code for r in responses] == [200] * 8, [r.text[:200] for r in responses]
    assert [int(r.headers["X-Batch-Size"]) for r in responses[:2]] == [1, 1]
    assert all(c["batch"] == 1 for c in _calls_at(memory_service, 2048))
    assert max(c["batch"] for c in _calls_at(memory_service, 512)) > 1  # small images still batch


@pytest.fixture(scope="module")
def oom_service(serve_cluster, tmp_path_factory):
    log = tmp_path_factory.mktemp("area-oom") / "calls.jsonl"
    factory = WrappingFactory(log_path=str(log), oom_above_pixels=512 * 512)  # 512^2: 1 fits; 256^2: 4 fit
    serve_cluster.deploy(pipeline_factory=factory, generator_options=GEN)
    return factory


def test_an_oom_at_one_area_lowers_that_area_only(oom_service):
    responses = post_concurrently("/generate", [_body(512, 100 + i) for i in range(3)])
    assert [r.status_code for r in responses] == [200] * 3, [r.text[:200] for r in responses]
    assert any(c["outcome"] == "oom" for c in _calls_at(oom_service, 512)), oom_service.calls()  # the fake fired
    batching = get_json("/info")["generator"]["batching"]
    assert batching["oom_caps"] == {str(512 * 512): 1} and batching["oom_splits"] > 0
    assert batching["max_batch_by_shape"]["512x512"] == 1 and batching["max_batch_by_shape"]["256x256"] == 8

    n = len(oom_service.calls())
    responses = post_concurrently("/generate", [_body(256, 200 + i) for i in range(4)] + [_body(512, 300)])
    assert [r.status_code for r in responses] == [200] * 5
    assert all(c["outcome"] == "ok" for c in oom_service.calls()[n:])  # no more OOMs at 512^2
    assert max(c["batch"] for c in _calls_at(oom_service, 256, n)) > 1  # 256^2 still batches
