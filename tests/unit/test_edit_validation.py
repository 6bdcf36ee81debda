"""POST /v1/images/edits checks, called directly (no Ray, no HTTP): the multipart fields as the openai SDK and curl
send them, every refusal's `param` and `limit` (image format, decompression bombs, mask size and alpha, strength, n,
LoRA), and the specs a valid edit becomes (image and mask at the output size, seeds s, s+1, ...). Also the LoRA checks
of the JSON routes, the mapping of a replica's "invalid" answer to a 422, and the per-path body limit.
HTTP end to end: tests/service/test_edits.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from deployments.http.edits import edit_upload, specs_from_edit
from deployments.http.errors import InvalidRequest, invalid_from_validation
from deployments.http.guards import GuardSettings
from deployments.http.protocol import GenerateRequest, ImageEditRequest, ImagesRequest
from deployments.http.serving import GenerationClient
from deployments.http.validation import output_encoding, specs_from_generate, specs_from_images
from deployments.messages import GenerationResult, LoraChoice
from deployments.options import ADAPTER_NAME
from tests.serve_harness import tiny_config

CFG = tiny_config()  # sides 256..512 in steps of 16, n 1..4, no LoRA; defaults: edit 0.6, inpaint 1.0
LORA_CFG = tiny_config(lora={})  # LoRA on: at most 2 adapters a request, scales in [-2, 2]
FORMATS = ["jpeg", "png", "webp"]


def encoded(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def photo(width: int = 256, height: int = 256, fmt: str = "PNG") -> bytes:
    """A smooth gradient (resizing it must not change its character): red across, green down."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    pixels = np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return encoded(Image.fromarray(pixels, "RGB"), fmt)


def mask_png(width: int = 256, height: int = 256, hole: tuple[int, int, int, int] = (64, 64, 192, 192)) -> bytes:
    """Opaque, with a fully transparent rectangle (left, top, right, bottom): the area to repaint."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), hole)
    return encoded(mask)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over a few bytes of data: decoding it would need gigabytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )


def form(image: bytes | None = None, mask: bytes | None = None, image_name: str = "image", **fields) -> list:
    """(name, value) pairs as the ingress reads a multipart form: files as bytes, fields as text."""
    items = [] if image is None else [(image_name, image)]
    if mask is not None:
        items.append(("mask", mask))
    items += [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in {"prompt": "a red car", **fields}.items()]
    return items


def edit(cfg=CFG, image: bytes | None = None, **kw):
    return specs_from_edit(edit_upload(form(photo() if image is None else image, **kw)), cfg, "req")


def refused(fn, *args, **kw) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        fn(*args, **kw)
    err = info.value
    assert err.status == 422 and err.type == "invalid_request_error"
    assert err.param and err.limit is not None, f"every refusal names its field and limit ({err.message})"
    return err


# ---- valid edits become specs ---------------------------------------------------------------------------------------
def test_image_to_image_specs_take_the_input_size_snapped_down_and_seeds_s_s_plus_1():
    specs = edit(image=photo(300, 270), n="2", seed="7", num_inference_steps="3")
    assert [s.seed for s in specs] == [7, 8] and [s.request_id for s in specs] == ["req/0", "req/1"]
    for spec in specs:
        assert (spec.width, spec.height, spec.steps, spec.task) == (288, 256, 3, "edit")
        assert spec.edit.image.shape == (256, 288, 3) and spec.edit.image.dtype == np.uint8
        assert spec.edit.mask is None and spec.edit.strength == CFG.defaults.edit_strength
        assert spec.loras == ()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_inputs_are_resized_to_the_requested_size(fmt):
    (spec,) = edit(image=photo(320, 200, fmt), size="256x256", strength="0.35")
    assert spec.edit.image.shape == (256, 256, 3) and spec.edit.strength == 0.35
    assert spec.edit.image[128, 0, 0] < 40 and spec.edit.image[128, -1, 0] > 215  # the gradient survived LANCZOS


def test_image_brackets_is_the_same_field_and_ignored_openai_fields_are_accepted():
    ignored = {"user": "u1", "quality": "high", "background": "opaque", "input_fidelity": "high"}
    (spec,) = edit(image_name="image[]", model="Tongyi-MAI/Z-Image-Turbo", response_format="b64_json", **ignored)
    assert spec.edit.image.shape == (256, 256, 3)


def test_mask_transparent_pixels_are_the_area_to_repaint_at_the_output_size():
    (spec,) = edit(image=photo(512, 512), mask=mask_png(512, 512, (128, 0, 512, 256)), size="256x256")
    assert spec.task == "inpaint" and spec.edit.strength == CFG.defaults.inpaint_strength
    repaint = spec.edit.mask
    assert repaint.shape == (256, 256) and repaint.dtype == bool
    expected = np.zeros((256, 256), bool)
    expected[0:128, 64:256] = True  # NEAREST: the hole's edges stay sharp
    assert np.array_equal(repaint, expected)


def test_a_palette_mask_with_a_transparent_index_counts_as_alpha():
    mask = Image.new("P", (256, 256), 1)
    mask.paste(0, (0, 0, 128, 256))
    (spec,) = edit(mask=encoded(mask, transparency=0), strength="0.9")
    assert spec.edit.mask[:, :128].all() and not spec.edit.mask[:, 128:].any() and spec.edit.strength == 0.9


def test_exif_orientation_is_applied_before_the_size_is_taken():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: a 320x256 file is shown 256x320
    data = encoded(Image.open(io.BytesIO(photo(320, 256))), "JPEG", exif=exif.tobytes())
    (spec,) = edit(image=data)
    assert (spec.width, spec.height) == (256, 320)


def test_output_encoding_applies_to_edits():
    upload = edit_upload(form(photo(), output_format="webp", output_compression="50"))
    assert output_encoding(upload.request) == ("webp", 50)
    err = refused(output_encoding, edit_upload(form(photo(), output_compression="50")).request)
    assert (err.param, err.limit) == ("output_compression", ["jpeg", "webp"])


# ---- refusals -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"definitely not an image", "not an image"),
        (b"", "not an image"),
        (encoded(Image.new("RGB", (256, 256)), "GIF"), "GIF"),
        (encoded(Image.new("RGB", (256, 256)), "BMP"), "BMP"),
        (photo()[:200], "decoded"),  # truncated PNG: the header reads, the pixels do not
    ],
    ids=["garbage", "empty", "gif", "bmp", "truncated"],
)
def test_only_png_jpeg_webp_images_that_decode_are_accepted(data, text):
    err = refused(edit, image=data)
    assert err.param == "image" and text.lower() in err.message.lower()
    if text != "decoded":
        assert err.limit == FORMATS


def test_input_above_max_input_pixels_is_refused_from_the_header():
    cfg = tiny_config(limits={"max_side": 512, "max_input_pixels": 300 * 300})
    err = refused(edit, cfg, image=photo(301, 300))
    assert (err.param, err.limit) == ("image", 90_000) and "301x300" in err.message
    err = refused(edit, cfg, mask=mask_png(301, 300))
    assert (err.param, err.limit) == ("mask", 90_000)


@pytest.mark.parametrize("side", [5000, 100_000], ids=["above-limit", "above-pil-bomb-limit"])
def test_decompression_bombs_are_refused_before_decoding(side):
    """A 1 KB PNG claiming side x side pixels: refused from its header (PIL's own bomb check fires first at 100k)."""
    err = refused(edit, image=png_header_only(side, side))
    assert (err.param, err.limit) == ("image", CFG.limits.max_input_pixels)
    err = refused(edit, mask=png_header_only(side, side))
    assert (err.param, err.limit) == ("mask", CFG.limits.max_input_pixels)


def test_mask_of_another_size_is_refused_naming_the_image_size():
    err = refused(edit, image=photo(320, 256), mask=mask_png(256, 256))
    assert (err.param, err.limit) == ("mask", "320x256") and "256x256" in err.message


@pytest.mark.parametrize(
    "mask",
    [encoded(Image.new("RGB", (256, 256))), encoded(Image.new("L", (256, 256))), photo(fmt="JPEG")],
    ids=["rgb-png", "grey-png", "jpeg"],
)
def test_mask_without_alpha_is_refused(mask):
    err = refused(edit, mask=mask)
    assert err.param == "mask" and "alpha" in err.message


@pytest.mark.parametrize("strength", ["0", "1.5", "-0.1", "nan"])
def test_strength_outside_0_1_is_refused(strength):
    err = refused(edit, strength=strength)
    assert (err.param, err.limit) == ("strength", {"gt": 0, "le": 1})
    (spec,) = edit(strength="1")
    assert spec.edit.strength == 1.0


@pytest.mark.parametrize(
    ("fields", "param", "limit"),
    [
        ({"n": "0"}, "n", [1, 4]),
        ({"n": "5"}, "n", [1, 4]),
        ({"n": "two"}, "n", "integer"),
        ({"strength": "strong"}, "strength", "number"),
        ({"size": "big"}, "size", "WIDTHxHEIGHT"),
        ({"size": "1024x1024"}, "size", None),
        ({"model": "dall-e-2"}, "model", ["z-image-turbo", "Tongyi-MAI/Z-Image-Turbo"]),
        ({"response_format": "url"}, "response_format", "b64_json"),
        ({"num_inference_steps": "17"}, "num_inference_steps", [1, 16]),
        ({"seed": "-1"}, "seed", None),
        ({"prompt": "  "}, "prompt", [1, 2000]),
        ({"output_format": "gif"}, "output_format", None),
    ],
)
def test_field_limits_are_the_generations_ones(fields, param, limit):
    err = refused(edit, **fields)
    assert err.param == param
    if limit is not None:
        assert err.limit == limit


def test_size_auto_outside_the_limits_names_the_nearest_valid_size():
    err = refused(edit, image=photo(800, 600))
    assert err.param == "size" and err.limit["nearest"] == "512x512" and "800x600" in err.message
    err = refused(edit, image=photo(200, 200), size="auto")
    assert err.param == "size" and err.limit["nearest"] == "256x256"


@pytest.mark.parametrize(
    ("items", "param", "limit"),
    [
        ([("prompt", "a car")], "image", 1),
        ([("image", photo()), ("image", photo()), ("prompt", "a car")], "image", 1),
        ([("image[]", photo()), ("image[]", photo()), ("prompt", "a car")], "image", 1),
        ([("image", photo()), ("image[]", photo()), ("prompt", "a car")], "image", 1),
        ([("image", "not a file"), ("prompt", "a car")], "image", "a PNG, JPEG or WebP file"),
        ([("image", photo()), ("mask", mask_png()), ("mask", mask_png()), ("prompt", "a car")], "mask", 1),
        ([("image", photo())], "prompt", "required"),
        ([("image", photo()), ("prompt", "a"), ("prompt", "b")], "prompt", 1),
        ([("image", photo()), ("prompt", photo())], "prompt", "text"),
    ],
    ids=["no-image", "two-images", "two-images[]", "image-and-image[]", "text-image", "two-masks", "no-prompt",
         "two-prompts", "file-prompt"],
)  # fmt: skip
def test_form_shape_errors(items, param, limit):
    err = refused(edit_upload, items)
    assert (err.param, err.limit) == (param, limit)


def test_unknown_fields_are_refused_listing_the_known_ones():
    err = refused(edit_upload, form(photo(), guidance_scale="5"))
    assert err.param == "guidance_scale" and {"image", "mask", "prompt", "strength", "lora"} <= set(err.limit)


# ---- LoRA -----------------------------------------------------------------------------------------------------------
INK, OIL = {"name": "ink-style", "scale": 0.8}, {"name": "oil", "scale": -0.5}


@pytest.mark.parametrize(
    ("lora", "param", "limit", "text"),
    [
        ([INK, OIL, {"name": "third"}], "lora", 2, "limit is 2"),
        ([{"name": "../etc/passwd"}], "lora[0].name", ADAPTER_NAME, "not an adapter name"),
        ([INK, {"name": "ink-style"}], "lora[1].name", "each adapter at most once", "twice"),
        ([INK, {"name": "oil", "scale": 2.5}], "lora[1].scale", [-2.0, 2.0], "outside"),
        ([{"name": "ink", "scale": float("nan")}], "lora[0].scale", [-2.0, 2.0], "outside"),
    ],
)
@pytest.mark.parametrize("route", ["generate", "images", "edits"])
def test_lora_checks_on_every_route(route, lora, param, limit, text):
    def call():
        if route == "generate":
            return specs_from_generate(GenerateRequest(prompt="a car", lora=lora), LORA_CFG, "r")
        if route == "images":
            return specs_from_images(ImagesRequest(prompt="a car", lora=lora), LORA_CFG, "r")
        return edit(LORA_CFG, lora=lora)

    err = refused(call)
    assert (err.param, err.limit) == (param, limit) and text in err.message


def test_lora_on_a_server_without_adapters_is_refused():
    err = refused(specs_from_images, ImagesRequest(prompt="a car", lora=[INK]), CFG, "r")
    assert (err.param, err.limit) == ("lora", 0) and "serves no LoRA adapters" in err.message
    err = refused(edit, lora=[INK])
    assert (err.param, err.limit) == ("lora", 0)
    (spec,) = specs_from_images(ImagesRequest(prompt="a car", lora=[]), CFG, "r")  # an empty list asks for nothing
    assert spec.loras == ()


def test_adapters_are_sorted_by_name_and_a_missing_scale_stays_none():
    specs = specs_from_images(ImagesRequest(prompt="a car", n=2, lora=[OIL, {"name": "ink-style"}]), LORA_CFG, "r")
    assert [s.loras for s in specs] == [(LoraChoice("ink-style", None), LoraChoice("oil", -0.5))] * 2
    (spec,) = specs_from_generate(GenerateRequest(prompt="a car", lora=[INK]), LORA_CFG, "r")
    assert spec.loras == (LoraChoice("ink-style", 0.8),)


@pytest.mark.parametrize(
    "fields",
    [
        [("lora", json.dumps([OIL, INK]))],  # a JSON string (curl -F 'lora=[...]')
        [("lora[][name]", "oil"), ("lora[][scale]", "-0.5"), ("lora[][name]", "ink-style"), ("lora[][scale]", "0.8")],
        [("lora[1][scale]", "0.8"), ("lora[0][name]", "oil"), ("lora[1][name]", "ink-style"),
         ("lora[0][scale]", "-0.5")],
    ],
    ids=["json-string", "sdk-brackets", "indices"],
)  # fmt: skip
def test_lora_form_encodings(fields):
    """The openai SDK flattens extra_body={"lora": [...]} to lora[][name] / lora[][scale] (its default array format)."""
    (spec,) = specs_from_edit(edit_upload([("image", photo()), ("prompt", "a car"), *fields]), LORA_CFG, "r")
    assert spec.loras == (LoraChoice("ink-style", 0.8), LoraChoice("oil", -0.5))


def test_sdk_brackets_without_scale_start_a_new_entry_at_each_name():
    fields = [("lora[][name]", "oil"), ("lora[][name]", "ink-style"), ("lora[][scale]", "0.8")]
    (spec,) = specs_from_edit(edit_upload([("image", photo()), ("prompt", "a car"), *fields]), LORA_CFG, "r")
    assert spec.loras == (LoraChoice("ink-style", 0.8), LoraChoice("oil", None))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ([("lora", "[{not json")], "lora"),
        ([("lora", '{"name": "oil"}')], "lora"),
        ([("lora", "[]"), ("lora[0][name]", "oil")], "lora"),
        ([("lora[0][name]", "oil"), ("lora[][name]", "ink")], "lora"),
        ([("lora[0][name]", "oil"), ("lora[0][name]", "ink")], "lora[0].name"),
        ([("lora[0][name]", "oil"), ("lora[0][weight]", "1")], "lora[0].weight"),
        ([("lora[0][name]", "oil"), ("lora[0][scale]", "big")], "lora[0].scale"),
        ([("lora[99999][name]", "oil")], "lora[99999][name]"),
    ],
)
def test_malformed_lora_fields_are_refused(fields, param):
    err = refused(edit_upload, [("image", photo()), ("prompt", "a car"), *fields])
    assert err.param == param


def test_nested_pydantic_errors_name_the_field_as_clients_write_it():
    with pytest.raises(ValidationError) as info:
        ImagesRequest(prompt="a car", lora=[{"name": "oil", "weight": 1}])
    err = invalid_from_validation(info.value.errors(), ImagesRequest)
    assert (err.param, err.limit) == ("lora[0].weight", ["name", "scale"])
    with pytest.raises(ValidationError) as info:
        ImageEditRequest(prompt="a car", lora=[{"name": 3}])
    assert invalid_from_validation(info.value.errors(), ImageEditRequest).param == "lora[0].name"


class _Handle:
    """Stands in for the Generator's DeploymentHandle: `generate.remote(spec)` answers what the replica would."""

    def __init__(self, answer):
        self.generate = self
        self.answer = answer

    def remote(self, spec):
        async def result():
            return self.answer(spec)

        return result()


def test_a_replica_refusing_an_adapter_is_a_422_naming_it_in_the_request_order():
    """The replica indexes the sorted adapters; the client sent ["oil", "ink-style"]: "oil" is its lora[0]."""

    def answer(spec):
        missing = [i for i, c in enumerate(spec.loras) if c.name == "oil"][0]
        return GenerationResult(
            image=None,
            seed=spec.seed,
            model_source="random:tiny",
            replica="r",
            error="unknown LoRA adapter 'oil'",
            error_kind="invalid",
            error_param=f"lora[{missing}].name",
            error_limit={"ink-style"},
        )

    specs = specs_from_images(ImagesRequest(prompt="a car", lora=[OIL, INK]), LORA_CFG, "r")
    client = GenerationClient(LORA_CFG, _Handle(answer), metrics=None)
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(client.run(specs, ["oil", "ink-style"]))
    assert (info.value.param, info.value.limit, info.value.status) == ("lora[0].name", ["ink-style"], 422)


def test_body_limit_is_per_path():
    guard = GuardSettings(64 * 1024, None, {"/v1/images/edits": 32 * 2**20})
    assert guard.body_limit({"path": "/v1/images/edits"}) == 32 * 2**20
    assert guard.body_limit({"path": "/v1/images/edits/"}) == 32 * 2**20
    assert guard.body_limit({"path": "/zimage/v1/images/edits", "root_path": "/zimage"}) == 32 * 2**20
    assert guard.body_limit({"path": "/v1/images/generations"}) == 64 * 1024
    assert guard.body_limit({"path": "/generate"}) == 64 * 1024
