"""The official `openai` SDK works against the service unchanged (real Serve on CPU, tiny model, real HTTP):
images.generate round trip, extensions through `extra_body`, models.list, and typed errors."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest

from tests.http_client import b64_png_array
from tests.serve_harness import BASE_URL

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def client(serve_cluster):
    serve_cluster.deploy()
    return openai.OpenAI(base_url=BASE_URL + "/v1", api_key="x", max_retries=0, timeout=120)


def test_images_generate_round_trip(client):
    raw = client.images.with_raw_response.generate(
        model="z-image-turbo", prompt="a red sports car", size="256x256", n=2, extra_body={"seed": 7}
    )
    assert raw.headers["X-Seed"] == "7,8" and raw.headers["X-Model-Source"] == "random:tiny"
    result = raw.parse()
    assert len(result.data) == 2
    images = []
    for item in result.data:
        assert base64.b64decode(item.b64_json).startswith(PNG_MAGIC)
        images.append(b64_png_array(item.b64_json))
        assert images[-1].shape == (256, 256, 3)
    assert not np.array_equal(images[0], images[1])  # seeds 7 and 8

    again = client.images.generate(
        model="z-image-turbo", prompt="a red sports car", size="256x256", extra_body={"seed": 7}
    )
    assert np.array_equal(b64_png_array(again.data[0].b64_json), images[0])  # seed 7 alone == first of n=2


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["z-image-turbo"]


def test_sdk_surfaces_typed_errors(client):
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.images.generate(model="z-image-turbo", prompt="a cat", size="4096x4096")
    assert info.value.status_code == 422
    assert info.value.body["param"] == "width" and info.value.body["limit"] == [256, 512]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.images.generate(model="dall-e-3", prompt="a cat")
    assert info.value.body["param"] == "model"
