"""POST /v1/images/edits, as OpenAI's images API defines it (multipart): the form becomes an `ImageEditRequest` plus
the input image and mask, which are checked, decoded and resized into per-image `GenerationSpec`s with an `EditInput`.

`edit_upload` and `specs_from_edit` are pure (unit-tested without Ray: tests/unit/test_edit_validation.py); the
field checks and the fan-out are validation.py's, shared with generations. `specs_from_edit` decodes images, which is
CPU work: the ingress runs it in a thread, off the event loop.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from PIL import ExifTags, Image, ImageOps
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from deployments.config import AppConfig
from deployments.http.errors import InvalidRequest, invalid_from_validation
from deployments.http.protocol import ImageEditRequest
from deployments.http.validation import check_images_params, check_size, fan_out
from deployments.messages import EditInput, GenerationSpec

EDITS_PATH = "/v1/images/edits"
INPUT_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}  # PIL's name of the decoded format -> ours
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# The openai SDK flattens `extra_body` into form fields: a list of objects arrives as `lora[][name]`, `lora[][scale]`
# (its default, "brackets") or `lora[0][name]` ("indices").
_LORA_KEY = re.compile(r"^lora\[(\d{0,3})\]\[([^\[\]]{1,32})\]$")
LORA_FORM = 'a JSON list of {"name", "scale"} objects, or fields lora[i][name] and lora[i][scale]'
FORM_LIMITS = {"max_files": 8, "max_fields": 64}  # an edit has one image and a mask; the fields are a few


@dataclass(frozen=True)
class EditUpload:
    """What the form carried: the fields, shape-checked; the files, still encoded."""

    request: ImageEditRequest
    image: bytes
    mask: bytes | None


async def read_form(request: Request) -> list[tuple[str, str | bytes]]:
    """The multipart form's (name, value) pairs in order, files read as bytes (the body is already bounded by the
    guard's limit for this path)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        message = f"{EDITS_PATH} takes multipart/form-data (OpenAI's images edit), not '{content_type[:60]}'"
        raise InvalidRequest("body", message, limit="multipart/form-data")
    try:
        async with request.form(**FORM_LIMITS) as form:
            return [
                (name, await value.read() if isinstance(value, UploadFile) else value)
                for name, value in form.multi_items()
            ]
    except (HTTPException, MultiPartException, FormParserError) as exc:
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise InvalidRequest("body", f"body: not a valid multipart form ({detail})", limit=FORM_LIMITS) from None


def _one_file(name: str, values: list, required: bool) -> bytes | None:
    if len(values) > 1 or (required and not values):
        message = f"{name}: exactly one file is accepted; got {len(values)}" if values else f"{name} is required"
        raise InvalidRequest(name, message, limit=1)
    if values and not isinstance(values[0], bytes):
        raise InvalidRequest(name, f"{name} must be a file part, not a text field", limit="a PNG, JPEG or WebP file")
    return values[0] if values else None


def _lora_entries(parts: list[tuple[str, str, str | bytes]]) -> list[dict]:
    """`lora[i][key]` or `lora[][key]` fields -> a list of objects. Without indices a new object starts when a key
    repeats, which is how the SDK writes `[{"name": ..., "scale": ...}, ...]` in order."""
    indexed = [p for p in parts if p[0] != ""]
    if indexed and len(indexed) != len(parts):
        raise InvalidRequest("lora", "lora: mixes lora[i][key] and lora[][key] fields", limit=LORA_FORM)
    entries: dict[int, dict] = {}
    for index, key, value in parts:
        if isinstance(value, bytes):
            raise InvalidRequest(f"lora[{index}].{key}", "lora fields must be text, not files", limit=LORA_FORM)
        if index:
            entry = entries.setdefault(int(index), {})
            if key in entry:
                raise InvalidRequest(f"lora[{index}].{key}", f"lora[{index}][{key}] is given twice", limit=1)
        else:
            last = entries.get(len(entries) - 1)
            entry = last if last is not None and key not in last else entries.setdefault(len(entries), {})
        entry[key] = value
    return [entries[i] for i in sorted(entries)]


def _lora_json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequest("lora", f"lora: not JSON ({exc})", limit=LORA_FORM) from None


def edit_upload(items: Iterable[tuple[str, str | bytes]]) -> EditUpload:
    """The form's (name, value) pairs, files as bytes -> the request and its files. Accepts what the openai SDK
    sends: one image as `image`, a list as `image[]` (exactly one image either way), `extra_body` flattened."""
    known = set(ImageEditRequest.model_fields)
    images: list = []
    masks: list = []
    fields: dict[str, list] = {}
    lora_parts: list[tuple[str, str, str | bytes]] = []
    for name, value in items:
        if name in ("image", "image[]"):
            images.append(value)
        elif name == "mask":
            masks.append(value)
        elif m := _LORA_KEY.match(name):
            lora_parts.append((m[1], m[2], value))
        elif name in known:
            fields.setdefault(name, []).append(value)
        else:
            allowed = sorted(known | {"image", "mask"})
            raise InvalidRequest(name[:64], f"{name[:64]}: unknown field", code="extra_forbidden", limit=allowed)
    image = _one_file("image", images, required=True)
    mask = _one_file("mask", masks, required=False)
    data: dict[str, object] = {}
    for name, values in fields.items():
        if len(values) > 1:
            raise InvalidRequest(name, f"{name} is given {len(values)} times", limit=1)
        if isinstance(values[0], bytes):
            raise InvalidRequest(name, f"{name} must be a text field, not a file", limit="text")
        data[name] = values[0]
    if lora_parts and "lora" in data:
        raise InvalidRequest("lora", "lora is given both as JSON and as lora[i][key] fields", limit=LORA_FORM)
    if lora_parts:
        data["lora"] = _lora_entries(lora_parts)
    elif "lora" in data:
        data["lora"] = _lora_json(data["lora"])
    try:
        request = ImageEditRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_validation(exc.errors(), ImageEditRequest) from None
    return EditUpload(request, image, mask)


def _open(param: str, data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only: format and size are checked before any pixel is decoded (decompression bombs)."""
    formats = sorted(INPUT_FORMATS.values())
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InvalidRequest(param, f"{param} has more than {max_pixels} pixels", limit=max_pixels) from None
    except Exception:  # noqa: BLE001 - untrusted bytes: whatever PIL raises, the file is not an image it can read
        raise InvalidRequest(param, f"{param} is not an image file (PNG, JPEG or WebP)", limit=formats) from None
    if image.format not in INPUT_FORMATS:
        raise InvalidRequest(param, f"{param} is {image.format}; accepted: PNG, JPEG, WebP", limit=formats)
    width, height = image.size
    if width * height > max_pixels:
        message = f"{param} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        raise InvalidRequest(param, message, limit=max_pixels)
    return image


def _decode(param: str, image: Image.Image) -> Image.Image:
    """Pixels, upright as a viewer shows them (EXIF orientation: phone photos)."""
    try:
        image.load()
        if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16"):  # 16-bit grey: scale to 8 bits (convert("RGB") would clip)
            image = image.convert("I").point(lambda v: v / 256).convert("L")
    except Exception:  # noqa: BLE001 - untrusted bytes: truncated or corrupt data is the client's, not a 500
        message = f"{param} could not be decoded (truncated or corrupt)"
        raise InvalidRequest(param, message, limit="a valid PNG, JPEG or WebP file") from None
    return image


def _check_strength(strength: float | None, masked: bool, cfg: AppConfig) -> float:
    if strength is None:
        return cfg.defaults.inpaint_strength if masked else cfg.defaults.edit_strength
    if not 0 < strength <= 1:  # also refuses NaN
        raise InvalidRequest("strength", f"strength={strength} is outside (0, 1]", limit={"gt": 0, "le": 1})
    return strength


def _auto_size(size: tuple[int, int], cfg: AppConfig) -> tuple[int, int]:
    """`size: auto`: the input's size snapped down to the side multiple, then the generations' size limits."""
    m = cfg.limits.side_multiple
    width, height = size[0] // m * m, size[1] // m * m
    try:
        return check_size(f"{width}x{height}", cfg)
    except InvalidRequest as exc:
        message = f"size 'auto' is the input image's {size[0]}x{size[1]} snapped down to {width}x{height}: " + (
            f"{exc.message}; send a size"
        )
        raise InvalidRequest("size", message, limit=exc.limit) from None


def specs_from_edit(upload: EditUpload, cfg: AppConfig, request_id: str) -> list[GenerationSpec]:
    """The checks of generations, then the image (and mask) at the output size: one spec per image, seeds s, s+1, ...
    Without a mask it is image-to-image; with one, inpainting where the mask is fully transparent."""
    req = upload.request
    job = check_images_params(req, cfg)
    strength = _check_strength(req.strength, upload.mask is not None, cfg)
    requested = None if req.size in (None, "auto") else check_size(req.size, cfg)
    max_pixels = cfg.limits.max_input_pixels
    image = _open("image", upload.image, max_pixels)
    mask = _open("mask", upload.mask, max_pixels) if upload.mask is not None else None
    if mask is not None and mask.mode not in ALPHA_MODES and "transparency" not in mask.info:
        message = f"mask has no alpha channel (mode {mask.mode}); its fully transparent pixels mark what to repaint"
        raise InvalidRequest("mask", message, limit="PNG or WebP with an alpha channel")
    image = _decode("image", image)
    if mask is not None:
        mask = _decode("mask", mask)
        if mask.size != image.size:
            w, h = image.size
            message = f"mask is {mask.size[0]}x{mask.size[1]}; it must be the image's size, {w}x{h}"
            raise InvalidRequest("mask", message, limit=f"{w}x{h}")
    width, height = requested or _auto_size(image.size, cfg)
    pixels = image.convert("RGB")
    if pixels.size != (width, height):
        pixels = pixels.resize((width, height), Image.Resampling.LANCZOS)
    repaint = None
    if mask is not None:
        hole = mask.convert("RGBA").getchannel("A").point(lambda a: 255 if a == 0 else 0)
        if hole.size != (width, height):
            hole = hole.resize((width, height), Image.Resampling.NEAREST)
        repaint = np.asarray(hole) > 127
    edit = EditInput(image=np.asarray(pixels, dtype=np.uint8), mask=repaint, strength=strength)
    return fan_out(job, width, height, request_id, edit=edit)


def edit_request_body() -> dict:
    """OpenAPI `requestBody` of the route (its form is read by hand, so FastAPI cannot derive it): the fields of
    `ImageEditRequest` plus the two files; `lora` is a JSON string in a form."""
    schema = ImageEditRequest.model_json_schema()
    schema.pop("$defs", None)  # only `lora` used them, and in a form it is a string
    files = {
        "image": {"type": "string", "format": "binary", "description": "The image to edit: PNG, JPEG or WebP."},
        "mask": {
            "type": "string",
            "format": "binary",
            "description": "Optional PNG (or WebP) with alpha, the image's size: fully transparent pixels are "
            "repainted (inpainting), the rest is kept.",
        },
    }
    lora = {"type": "string", "description": f"LoRA adapters: {LORA_FORM}."}
    schema["properties"] = files | {**schema["properties"], "lora": lora}
    schema["required"] = ["image", *schema.get("required", [])]
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
