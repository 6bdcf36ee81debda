"""The official `openai` SDK works against the service unchanged (real Serve on CPU, tiny model, real HTTP):
images.generate round trip, extensions through `extra_body`, models.list, and typed errors."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.batch_invariance import assert_same_image
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
    assert_same_image(b64_png_array(again.data[0].b64_json), images[0], "seed 7 alone vs first of n=2")


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_jpeg_and_webp_output_with_compression(client, fmt, magic):
    """OpenAI's `output_format` / `output_compression`: the bytes are that format, the quality is applied."""
    sizes = []
    for quality in (100, 10):
        result = client.images.generate(
            model="z-image-turbo",
            prompt="a red sports car",
            size="256x256",
            output_format=fmt,
            output_compression=quality,
            extra_body={"seed": 7},
        )
        data = base64.b64decode(result.data[0].b64_json)
        assert data.startswith(magic) and result.output_format == fmt
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == fmt.upper() and img.size == (256, 256)
        sizes.append(len(data))
    assert sizes[1] < sizes[0]  # quality 10 is smaller than quality 100


def test_generate_route_answers_in_the_requested_format(client):
    body = {"prompt": "a cat", "width": 256, "height": 256, "output_format": "webp"}
    response = httpx.post(BASE_URL + "/generate", json=body, timeout=120)
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(response.content)) as img:
        assert img.format == "WEBP" and img.size == (256, 256)


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["z-image-turbo"]


def test_sdk_surfaces_typed_errors(client):
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.images.generate(model="z-image-turbo", prompt="a cat", size="4096x4096")
    assert info.value.status_code == 422
    assert info.value.body["param"] == "size" and info.value.body["limit"]["nearest"] == "512x512"
    assert "nearest valid size is 512x512" in info.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.images.generate(model="dall-e-3", prompt="a cat")
    assert info.value.body["param"] == "model"
