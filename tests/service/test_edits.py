"""POST /v1/images/edits over real HTTP against real Serve (CPU, tiny random model), driven by the official `openai`
client unchanged: image-to-image and inpainting round trips, seeds, `extra_body` extensions (strength, seed, lora as
the SDK flattens them), the edit route's own body limit next to the JSON routes' smaller one, and 4xx bodies naming
the field and the limit. The pure checks behind them: tests/unit/test_edit_validation.py.

The app serves LoRA (one real adapter, made with peft on the tiny DiT) so the SDK's flattened `lora` reaches the
replica: a known name makes an image, an unknown one comes back as the replica's 422.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.batch_invariance import assert_same_image
from tests.http_client import b64_png_array
from tests.lora_adapters import save_tiny_adapter
from tests.serve_harness import BASE_URL, tiny_config

EDIT_LIMIT = 512 * 1024  # this module's limits.max_edit_body_bytes; JSON routes keep the default 64 KiB
SIDE = 256  # the CPU config's smallest side
FAST = {"num_inference_steps": 2}
HOLE = (64, 64, 192, 192)  # left, top, right, bottom of the mask's transparent (repainted) square


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def gradient(side: int = SIDE) -> np.ndarray:
    x = np.linspace(0, 255, side, dtype=np.float32)
    red, green = np.meshgrid(x, x)
    return np.stack([red, green, np.full_like(red, 128)], axis=-1).astype(np.uint8)


def mask_png(side: int = SIDE, hole: tuple[int, int, int, int] = HOLE) -> bytes:
    mask = Image.new("RGBA", (side, side), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), hole)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(serve_cluster, tmp_path_factory):
    ink = save_tiny_adapter(tmp_path_factory.mktemp("loras") / "ink")
    cfg = tiny_config(limits={"max_side": 512, "max_images_per_request": 4, "max_edit_body_bytes": EDIT_LIMIT}, lora={})
    serve_cluster.deploy(cfg, generator_options={"user_config": {"loras": {"ink": {"source": str(ink)}}}})
    return openai.OpenAI(base_url=BASE_URL + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    path.write_bytes(png(gradient()))
    return path


def _error(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.json()["error"]


def test_image_to_image_round_trip_with_the_openai_client(client, photo):
    """No mask: img2img at the input's size (size omitted = auto); n=2 gets seeds s, s+1; the same seed alone gives
    the same image."""
    with open(photo, "rb") as f:
        raw = client.images.with_raw_response.edit(
            model="z-image-turbo",
            image=f,
            prompt="the same scene at night",
            n=2,
            extra_body={"seed": 11, "strength": 0.5, **FAST},
        )
    assert raw.headers["X-Seed"] == "11,12" and raw.headers["X-Model-Source"] == "random:tiny"
    images = [b64_png_array(item.b64_json) for item in raw.parse().data]
    assert [im.shape for im in images] == [(SIDE, SIDE, 3)] * 2
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], gradient())  # it was edited
    with open(photo, "rb") as f:
        again = client.images.edit(
            model="z-image-turbo",
            image=f,
            prompt="the same scene at night",
            extra_body={"seed": 11, "strength": 0.5, **FAST},
        )
    assert_same_image(b64_png_array(again.data[0].b64_json), images[0], "edit seed 11 alone vs first of n=2")


def test_inpainting_keeps_the_unmasked_pixels_and_repaints_the_hole(client, photo, tmp_path):
    (tmp_path / "mask.png").write_bytes(mask_png())
    with open(photo, "rb") as image, open(tmp_path / "mask.png", "rb") as mask:
        result = client.images.edit(
            image=image, mask=mask, prompt="a red ball", size=f"{SIDE}x{SIDE}", extra_body={"seed": 3, **FAST}
        )
    out = b64_png_array(result.data[0].b64_json).astype(int)
    hole = np.zeros((SIDE, SIDE), bool)
    hole[HOLE[1] : HOLE[3], HOLE[0] : HOLE[2]] = True
    diff = np.abs(out - gradient().astype(int)).mean(axis=-1)
    assert diff[~hole].mean() <= 3, f"outside the mask: mean abs diff {diff[~hole].mean():.2f}"
    assert diff[hole].mean() > 10, f"inside the mask: mean abs diff {diff[hole].mean():.2f} (not repainted?)"


def test_lora_through_extra_body_reaches_the_replica(client, photo):
    """The SDK sends extra_body's list of objects as lora[][name] / lora[][scale]: a served adapter makes an image
    that differs from the base model's; an unknown one is the replica's 422 naming it and the known names."""
    edit = dict(model="z-image-turbo", prompt="ink drawing", size=f"{SIDE}x{SIDE}")
    with open(photo, "rb") as f:
        base = client.images.edit(image=f, **edit, extra_body={"seed": 5, "strength": 0.8, **FAST})
    with open(photo, "rb") as f:
        styled = client.images.edit(
            image=f, **edit, extra_body={"seed": 5, "strength": 0.8, "lora": [{"name": "ink", "scale": 1.5}], **FAST}
        )
    assert not np.array_equal(b64_png_array(base.data[0].b64_json), b64_png_array(styled.data[0].b64_json))
    with open(photo, "rb") as f, pytest.raises(openai.UnprocessableEntityError) as info:
        client.images.edit(image=f, **edit, extra_body={"lora": [{"name": "ink"}, {"name": "watercolor"}], **FAST})
    assert (info.value.body["param"], info.value.body["limit"]) == ("lora[1].name", ["ink"])
    generated = client.images.generate(
        prompt="ink drawing", size=f"{SIDE}x{SIDE}", extra_body={"lora": [{"name": "ink"}], "seed": 5, **FAST}
    )
    assert b64_png_array(generated.data[0].b64_json).shape == (SIDE, SIDE, 3)


def test_edit_body_limit_is_its_own_and_json_routes_keep_theirs(client):
    padding = b"\0" * (200 * 1024)  # over the JSON limit (64 KiB), under the edit limit
    response = httpx.post(f"{BASE_URL}/generate", json={"prompt": "x" * 70_000})
    assert response.status_code == 413 and _error(response)["limit"] == 64 * 1024
    files = {"image": ("photo.png", png(gradient()) + padding, "image/png")}
    response = httpx.post(f"{BASE_URL}/v1/images/edits", files=files, data={"prompt": "x", "strength": "2"})
    assert response.status_code == 422 and _error(response)["param"] == "strength"  # parsed: not a 413
    big = {"image": ("photo.png", png(gradient()) + b"\0" * EDIT_LIMIT, "image/png")}
    response = httpx.post(f"{BASE_URL}/v1/images/edits", files=big, data={"prompt": "x"})
    error = _error(response)
    assert response.status_code == 413 and (error["param"], error["limit"]) == ("body", EDIT_LIMIT)

    def chunked():  # no Content-Length: the guard counts what it reads
        for _ in range(EDIT_LIMIT // 65536 + 2):
            yield b"\0" * 65536

    headers = {"content-type": "multipart/form-data; boundary=x"}
    response = httpx.post(f"{BASE_URL}/v1/images/edits", content=chunked(), headers=headers)
    assert response.status_code == 413 and _error(response)["limit"] == EDIT_LIMIT


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE)).save(buf, format="GIF")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("files", "data", "param", "limit"),
    [
        ({"image": ("a.png", b"not an image at all", "image/png")}, {}, "image", ["jpeg", "png", "webp"]),
        ({"image": ("a.png", _gif(), "image/png")}, {}, "image", ["jpeg", "png", "webp"]),
        ({"image": ("a.png", png(gradient()))}, {"mask": "x"}, "mask", "a PNG, JPEG or WebP file"),
        ({"image": ("a.png", png(gradient()))}, {"strength": "1.5"}, "strength", {"gt": 0, "le": 1}),
        ({"image": ("a.png", png(gradient()))}, {"n": "5"}, "n", [1, 4]),
        ({"image": ("a.png", png(gradient()))}, {"lora": '[{"name": "ink", "scale": 3}]'}, "lora[0].scale", [-2, 2]),
    ],
    ids=["garbage", "gif", "mask-as-text", "strength", "n", "lora-scale"],
)
def test_invalid_edits_get_422_naming_field_and_limit(client, files, data, param, limit):
    response = httpx.post(f"{BASE_URL}/v1/images/edits", files=files, data={"prompt": "a car", **data})
    assert response.status_code == 422, response.text[:300]
    error = _error(response)
    assert (error["param"], error["limit"], error["type"]) == (param, limit, "invalid_request_error"), error


def test_a_form_without_an_image_names_the_image(client):
    body = b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na car\r\n--b--\r\n'
    headers = {"content-type": "multipart/form-data; boundary=b"}
    error = _error(httpx.post(f"{BASE_URL}/v1/images/edits", content=body, headers=headers))
    assert (error["param"], error["limit"]) == ("image", 1)


def test_mask_of_another_size_and_without_alpha_through_the_sdk(client, photo, tmp_path):
    (tmp_path / "small.png").write_bytes(mask_png(128, (0, 0, 64, 64)))
    (tmp_path / "opaque.png").write_bytes(png(gradient()))  # RGB: no alpha channel
    for name, limit in (("small.png", f"{SIDE}x{SIDE}"), ("opaque.png", "PNG or WebP with an alpha channel")):
        with open(photo, "rb") as image, open(tmp_path / name, "rb") as mask:
            with pytest.raises(openai.UnprocessableEntityError) as info:
                client.images.edit(image=image, mask=mask, prompt="a red ball")
        assert (info.value.body["param"], info.value.body["limit"]) == ("mask", limit)
    with open(photo, "rb") as a, open(photo, "rb") as b, pytest.raises(openai.UnprocessableEntityError) as info:
        client.images.edit(image=[a, b], prompt="two images")  # the SDK sends a list as image[]
    assert (info.value.body["param"], info.value.body["limit"]) == ("image", 1)


def test_json_body_is_refused_and_openapi_documents_the_form(client):
    response = httpx.post(f"{BASE_URL}/v1/images/edits", json={"prompt": "a car", "image": "x"})
    assert response.status_code == 422 and _error(response)["param"] == "body"
    schema = httpx.get(f"{BASE_URL}/openapi.json").json()
    op = schema["paths"]["/v1/images/edits"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["image"]["format"] == "binary" and {"image", "prompt"} <= set(form["required"])
    assert op["x-max-body-bytes"] == EDIT_LIMIT and str(EDIT_LIMIT) in op["description"]
    assert schema["paths"]["/generate"]["post"]["x-max-body-bytes"] == 64 * 1024
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ImagesResponse")
