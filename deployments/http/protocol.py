"""HTTP protocol models: the OpenAI images API and a plain `/generate`. Shapes only; deployments/http/validation.py
checks values against the configured limits (they are per deployment, so not in the schema's static bounds)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.http.image_encoding import ImageFormat

MAX_SEED = 2**32 - 1


class OutputEncoding(BaseModel):
    """How the image comes back: as OpenAI's images API names it."""

    output_format: ImageFormat | None = Field(None, description="`png` (default, lossless), `jpeg` or `webp`.")
    output_compression: int | None = Field(
        None, description="jpeg/webp quality, 0-100 (OpenAI's name; 100 = best, the default)."
    )


class LoraRequest(BaseModel):
    """One LoRA adapter applied to a request's images."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="An adapter this server serves (`GET /v1/models` lists them after the model).")
    scale: float | None = Field(None, description="How strongly to apply it; null: the adapter's configured scale.")


def _lora_field():
    return Field(
        None,
        description='LoRA adapters, e.g. `[{"name": "ink-style", "scale": 0.8}]` (names: `GET /v1/models`; how many '
        "and which scales: `GET /info` `generator.lora.settings`).",
    )


class GenerateRequest(OutputEncoding):
    """POST /generate: one image, answered as image bytes (PNG unless `output_format` says otherwise)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(description="What to draw (any language; Z-Image renders Chinese and English text).")
    width: int | None = Field(None, description="Pixels; a multiple of 16 within the configured limits.")
    height: int | None = None
    num_inference_steps: int | None = Field(None, description="Denoising steps (Turbo: 8).")
    seed: int | None = Field(None, description=f"0..{MAX_SEED}; random when omitted. Same seed, same image.")
    lora: list[LoraRequest] | None = _lora_field()


class ImagesParams(OutputEncoding):
    """Fields OpenAI's generations and edits share; the extensions (`seed`, `num_inference_steps`, `lora`) come
    through the SDK's `extra_body`."""

    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = Field(None, description="`WIDTHxHEIGHT` or `auto`.")
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    quality: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")
    user: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")
    seed: int | None = Field(None, description=f"0..{MAX_SEED}; random when omitted. Image i gets seed + i.")
    num_inference_steps: int | None = None
    lora: list[LoraRequest] | None = _lora_field()


class ImagesRequest(ImagesParams):
    """POST /v1/images/generations, as the `openai` SDK sends it (JSON)."""

    model_config = ConfigDict(extra="forbid")
    style: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")


class ImageEditRequest(ImagesParams):
    """The non-file fields of POST /v1/images/edits (multipart; the files are `image` and `mask`)."""

    model_config = ConfigDict(extra="forbid")
    size: str | None = Field(
        None, description="`WIDTHxHEIGHT`, a preset label, or `auto`: the input image's size snapped down to 16."
    )
    background: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")
    input_fidelity: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")
    strength: float | None = Field(
        None,
        description="(0, 1]: how far the result may move from the input (1: repaint entirely). Default: "
        "`defaults.edit_strength` without a mask, `defaults.inpaint_strength` with one.",
    )


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: ImageFormat = "png"


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="`invalid_request_error`, `authentication_error`, `overloaded` or `server_error`.")
    param: str | None = Field(None, description="The request field at fault (dotted path), `body` for the whole body.")
    code: str | None = None
    limit: int | float | str | list | dict | None = Field(None, description="The limit the field broke, if any.")


class ErrorResponse(BaseModel):
    """Every error body, OpenAI's shape."""

    error: ErrorDetail
