"""Batching must not change what a request gets: its image is bit-identical alone or in a batch of 8 (real Serve on CPU,
tiny model, fp32, PNGs decoded and compared over real HTTP), and seeds make images reproducible.

Why `MKL_CBWR=AVX2,STRICT` (set for the Ray workers by `tests.serve_harness.WORKER_ENV`): the runner gives every
item its own noise generator and encodes prompts one by one, but the DiT's linear layers still see the whole batch.
MKL picks its kernel by problem size (GEMV for a single row, GEMM with size-dependent blocking for more) and each
sums in its own order, so the same row can come out with different rounding when its batch grows; on
this machine, without the setting, 7 pixels of a 256x256 image differ by 1 between batch 1 and batch 8. MKL's strict
conditional numerical reproducibility (CNR) mode fixes the code path and summation order, which makes each row of
a GEMM independent of how many rows are computed with it - on Intel CPUs. On an AMD EPYC host the mode does not make
a 1-row product match an 8-row one, and the images differ by one in a few values: `tests.batch_invariance` probes
the host and asserts bit-identity where it holds, rounding-only differences elsewhere. On a GPU the equivalent
guarantee needs deterministic, batch-invariant kernels and is not claimed; there the tolerance is the bf16 noise
floor.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.batch_invariance import assert_same_image
from tests.http_client import b64_png_array, png_array, post, post_concurrently

PROMPTS = [
    "A realistic photo of a red sports car on a mountain road at sunset",
    "a cat",
    "an oil painting of a forest river at night, detailed",
    "a small old house in the snow",
    "portrait of a woman, cinematic light",
    "a dog on a beach",
    "city street in the rain, wide shot",
    "a blue sky with clouds",
]


@pytest.fixture(scope="module")
def service(serve_cluster):
    # A long batch wait so 8 concurrent requests always make one batch of 8.
    serve_cluster.deploy(
        generator_options={
            "user_config": {"batch_policy": "throughput", "batch_wait_timeout_s": 1.0, "cpu_max_batch_size": 8}
        }
    )


def _generate(prompt: str, seed: int):
    response = post("/generate", {"prompt": prompt, "seed": seed})
    assert response.status_code == 200, response.text
    return png_array(response.content), response


def test_image_is_bit_identical_alone_and_in_a_batch_of_8(service):
    seeds = [40 + i for i in range(8)]
    alone = {}
    for i in (0, 5):  # first and a later position in the batch
        alone[i], response = _generate(PROMPTS[i], seeds[i])
        assert response.headers["X-Batch-Size"] == "1"
    responses = post_concurrently("/generate", [{"prompt": p, "seed": s} for p, s in zip(PROMPTS, seeds, strict=True)])
    assert [r.status_code for r in responses] == [200] * 8
    assert [r.headers["X-Batch-Size"] for r in responses] == ["8"] * 8
    for i, image in alone.items():
        batched = png_array(responses[i].content)
        assert image.shape == (256, 256, 3)
        assert_same_image(image, batched, f"prompt {i} alone vs in the batch")


def test_same_seed_same_image_different_seed_different_image(service):
    a, response = _generate(PROMPTS[0], 7)
    b, _ = _generate(PROMPTS[0], 7)
    c, _ = _generate(PROMPTS[0], 8)
    assert response.headers["X-Seed"] == "7"
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5  # noise images: different seeds differ everywhere


def test_openai_n2_uses_seed_and_seed_plus_one(service):
    response = post("/v1/images/generations", {"prompt": PROMPTS[2], "n": 2, "size": "256x256", "seed": 123})
    assert response.status_code == 200, response.text
    assert response.headers["X-Seed"] == "123,124"
    images = [b64_png_array(d["b64_json"]) for d in response.json()["data"]]
    for image, seed in zip(images, (123, 124), strict=True):
        single, _ = _generate(PROMPTS[2], seed)
        assert_same_image(image, single, f"n=2 image for seed {seed} vs a single request")
    assert not np.array_equal(images[0], images[1])
