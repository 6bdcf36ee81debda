"""Model sources load for real or fail loudly, naming the source: a saved pipeline directory round-trips bit for bit
(in-process and through Serve over HTTP); a missing, non-pipeline or unreachable source fails the deployment fast
instead of hanging or silently serving random weights.

No network and no real weights here: the "real" pipeline is the tiny random one written with `save_pretrained`, and
the unreachable Hub is the real id with `HF_HUB_OFFLINE=1` in the replica.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import ray
import torch
from ray import serve

from deployments.app import make_app
from deployments.config import ModelSource, RandomArch
from deployments.pipeline.loading import ModelSourceError, load_pipeline
from deployments.pipeline.random_model import build_random_pipeline
from deployments.pipeline.runner import Shape, ZImageRunner
from tests.http_client import png_array, post
from tests.serve_harness import tiny_config

WEIGHT_SEED = 123  # not the service's random:tiny seed (0): serving random:tiny by mistake would not match
PROMPT, SEED, SHAPE = "a red sports car on a mountain road", 5, Shape(256, 256, 4)
HUB_ID = "Tongyi-MAI/Z-Image-Turbo"


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("zimage-tiny")
    build_random_pipeline(RandomArch.TINY, "cpu", torch.float32, seed=WEIGHT_SEED).save_pretrained(path)
    return path


# ---- unit: load_pipeline ------------------------------------------------------------------------------------------
def test_source_strings_parse_to_the_right_kind(saved_dir):
    assert ModelSource.parse(str(saved_dir)).label == f"local:{saved_dir}"
    assert ModelSource.parse("/no/such/dir").local_dir is not None  # absolute paths are directories, never Hub ids
    assert ModelSource.parse("random:tiny").is_random
    assert ModelSource.parse(HUB_ID).label == f"hub:{HUB_ID}"


def test_saved_directory_loads_the_same_weights_and_images(saved_dir):
    memory = build_random_pipeline(RandomArch.TINY, "cpu", torch.float32, seed=WEIGHT_SEED)
    loaded = load_pipeline(ModelSource.parse(str(saved_dir)), "cpu", torch.float32)
    for name in ("transformer", "text_encoder", "vae"):
        a, b = getattr(memory, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} weights differ after save/load"
    out_memory = ZImageRunner(memory).run([PROMPT], [SEED], SHAPE).images[0]
    out_loaded = ZImageRunner(loaded).run([PROMPT], [SEED], SHAPE).images[0]
    assert np.array_equal(out_memory, out_loaded)


def test_missing_directory_names_the_source(tmp_path):
    source = ModelSource.parse(str(tmp_path / "nope"))
    with pytest.raises(ModelSourceError, match="does not exist") as info:
        load_pipeline(source, "cpu", torch.float32)
    assert str(tmp_path / "nope") in str(info.value)


def test_directory_without_a_pipeline_names_the_source(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelSourceError, match="model_index.json") as info:
        load_pipeline(ModelSource.parse(str(tmp_path)), "cpu", torch.float32)
    assert str(tmp_path) in str(info.value)


def test_broken_pipeline_directory_names_the_source(tmp_path, saved_dir):
    (tmp_path / "model_index.json").write_text((saved_dir / "model_index.json").read_text())  # no component dirs
    with pytest.raises(ModelSourceError) as info:
        load_pipeline(ModelSource.parse(str(tmp_path)), "cpu", torch.float32)
    assert f"local:{tmp_path}" in str(info.value)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "ZImagePipeline"


# ---- real Serve -----------------------------------------------------------------------------------------------------
@ray.remote
def _reference_image(weight_seed: int) -> np.ndarray:
    """The in-memory pipeline's image, computed in a Ray worker (same env as the replica: MKL_CBWR, 1 thread)."""
    pipe = build_random_pipeline(RandomArch.TINY, "cpu", torch.float32, seed=weight_seed)
    return ZImageRunner(pipe).run([PROMPT], [SEED], SHAPE).images[0]


def test_serve_loads_a_local_directory(serve_cluster, saved_dir):
    serve_cluster.deploy(tiny_config(model=str(saved_dir)))
    response = post("/generate", {"prompt": PROMPT, "seed": SEED, "num_inference_steps": SHAPE.steps})
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Source"] == f"local:{saved_dir}"
    served = png_array(response.content)
    assert np.array_equal(served, ray.get(_reference_image.remote(WEIGHT_SEED)))
    assert not np.array_equal(served, ray.get(_reference_image.remote(0)))  # not the random:tiny fallback
    serve.delete("zimage")


def _deploy_expect_failure(config, generator_options: dict | None = None, timeout_s: float = 90) -> str:
    """`serve.run` must raise (the app ends DEPLOY_FAILED, never RUNNING) within `timeout_s`; returns the Generator's
    status message. One constructor attempt instead of Serve's default 3 keeps the test short; each would fail alike."""
    app = make_app(config, generator_options={"max_constructor_retry_count": 1, **(generator_options or {})})
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(serve.run, app, name="zimage-bad", route_prefix="/bad")
        try:
            with pytest.raises(RuntimeError) as info:
                future.result(timeout=timeout_s)
        finally:
            status = serve.status().applications.get("zimage-bad")
            serve.delete("zimage-bad")
    assert status is not None and status.status == "DEPLOY_FAILED", status
    logging.getLogger(__name__).info("serve.run raised: %s", info.value)
    return status.deployments["Generator"].message


def test_serve_fails_fast_on_a_missing_directory(serve_cluster, tmp_path):
    missing = tmp_path / "not-there"
    start = time.monotonic()
    message = _deploy_expect_failure(tiny_config(model=str(missing)))
    assert str(missing) in message and "does not exist" in message
    assert time.monotonic() - start < 90


def test_serve_fails_fast_on_an_unreachable_hub_id(serve_cluster):
    options = {"ray_actor_options": {"num_gpus": 0, "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}}}
    start = time.monotonic()
    message = _deploy_expect_failure(tiny_config(model=HUB_ID), generator_options=options)
    assert HUB_ID in message
    assert time.monotonic() - start < 90
