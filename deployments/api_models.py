"""HTTP request/response schemas: the OpenAI images API and a plain `/generate`; limits come from config."""

from __future__ import annotations

import re
import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.config import AppConfig
from deployments.errors import InvalidRequest
from deployments.images import ImageFormat
from deployments.schemas import GenerationSpec

MAX_SEED = 2**32 - 1
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class OutputEncoding(BaseModel):
    """How the image comes back: as OpenAI's images API names it."""

    output_format: ImageFormat | None = Field(None, description="`png` (default, lossless), `jpeg` or `webp`.")
    output_compression: int | None = Field(
        None, description="jpeg/webp quality, 0-100 (OpenAI's name; 100 = best, the default)."
    )


class GenerateRequest(OutputEncoding):
    """POST /generate: one image, answered as image bytes (PNG unless `output_format` says otherwise)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(description="What to draw (any language; Z-Image renders Chinese and English text).")
    width: int | None = Field(None, description="Pixels; a multiple of 16 within the configured limits.")
    height: int | None = None
    num_inference_steps: int | None = Field(None, description="Denoising steps (Turbo: 8).")
    seed: int | None = Field(None, description=f"0..{MAX_SEED}; random when omitted. Same seed, same image.")


class ImagesRequest(OutputEncoding):
    """POST /v1/images/generations, as the `openai` SDK sends it (seed/num_inference_steps via `extra_body`)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = Field(None, description="`WIDTHxHEIGHT` or `auto`.")
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    quality: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")
    style: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")
    user: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")
    seed: int | None = None
    num_inference_steps: int | None = None


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: ImageFormat = "png"


def _check_prompt(prompt: str, cfg: AppConfig) -> str:
    text = prompt.strip()
    if not text:
        raise InvalidRequest("prompt", "prompt must not be empty")
    try:  # JSON may carry lone surrogates ("\ud800"): not text, and the tokenizer raises on them (a 500 otherwise)
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest("prompt", f"prompt is not valid Unicode text (character {exc.start})") from None
    if len(prompt) > cfg.limits.max_prompt_chars:
        raise InvalidRequest(
            "prompt",
            f"prompt has {len(prompt)} characters; the limit is {cfg.limits.max_prompt_chars}",
            limit=cfg.limits.max_prompt_chars,
        )
    return prompt


def _check_side(name: str, value: int, cfg: AppConfig) -> int:
    lim = cfg.limits
    if not lim.min_side <= value <= lim.max_side:
        raise InvalidRequest(
            name, f"{name}={value} is outside [{lim.min_side}, {lim.max_side}]", limit=[lim.min_side, lim.max_side]
        )
    if value % lim.side_multiple:
        raise InvalidRequest(name, f"{name}={value} must be a multiple of {lim.side_multiple}", limit=lim.side_multiple)
    return value


def _check_steps(steps: int | None, cfg: AppConfig) -> int:
    steps = cfg.defaults.num_inference_steps if steps is None else steps
    lim = cfg.limits
    if not lim.min_steps <= steps <= lim.max_steps:
        raise InvalidRequest(
            "num_inference_steps",
            f"num_inference_steps={steps} is outside [{lim.min_steps}, {lim.max_steps}]",
            limit=[lim.min_steps, lim.max_steps],
        )
    return steps


def _check_seed(seed: int | None) -> int:
    if seed is None:
        return secrets.randbelow(MAX_SEED + 1)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest("seed", f"seed={seed} is outside [0, {MAX_SEED}]", limit=[0, MAX_SEED])
    return seed


def output_encoding(req: OutputEncoding) -> tuple[ImageFormat, int | None]:
    """Format and quality, checked before any GPU work."""
    fmt = req.output_format or "png"
    quality = req.output_compression
    if quality is not None:
        if fmt == "png":
            raise InvalidRequest(
                "output_compression", "output_compression applies to jpeg and webp only", limit=["jpeg", "webp"]
            )
        if not 0 <= quality <= 100:
            message = f"output_compression={quality} is outside [0, 100]"
            raise InvalidRequest("output_compression", message, limit=[0, 100])
    return fmt, quality


def specs_from_generate(req: GenerateRequest, cfg: AppConfig, request_id: str) -> list[GenerationSpec]:
    width = _check_side("width", cfg.defaults.width if req.width is None else req.width, cfg)
    height = _check_side("height", cfg.defaults.height if req.height is None else req.height, cfg)
    return [
        GenerationSpec(
            prompt=_check_prompt(req.prompt, cfg),
            width=width,
            height=height,
            steps=_check_steps(req.num_inference_steps, cfg),
            seed=_check_seed(req.seed),
            request_id=request_id,
        )
    ]


def specs_from_images(req: ImagesRequest, cfg: AppConfig, request_id: str) -> list[GenerationSpec]:
    """n images: seeds seed, seed+1, ... so each is reproducible alone."""
    if req.model is not None and req.model != cfg.model_name:
        raise InvalidRequest(
            "model", f"model '{req.model}' is not served here; use '{cfg.model_name}'", limit=cfg.model_name
        )
    if req.response_format == "url":
        raise InvalidRequest(
            "response_format", "response_format 'url' is not supported; use 'b64_json'", limit="b64_json"
        )
    max_n = cfg.limits.max_images_per_request
    if not 1 <= req.n <= max_n:
        raise InvalidRequest("n", f"n={req.n} is outside [1, {max_n}]", limit=[1, max_n])
    if req.size in (None, "auto"):
        width, height = cfg.defaults.width, cfg.defaults.height
    else:
        m = _SIZE.match(req.size)
        if not m:
            raise InvalidRequest(
                "size", f"size '{req.size[:40]}' must look like '1024x1024' or be 'auto'", limit="WIDTHxHEIGHT"
            )
        width, height = _check_side("width", int(m[1]), cfg), _check_side("height", int(m[2]), cfg)
    prompt, steps, seed = (
        _check_prompt(req.prompt, cfg),
        _check_steps(req.num_inference_steps, cfg),
        _check_seed(req.seed),
    )
    if seed + req.n - 1 > MAX_SEED:
        raise InvalidRequest("seed", f"seed + n - 1 must stay <= {MAX_SEED}", limit=[0, MAX_SEED])
    return [
        GenerationSpec(
            prompt=prompt, width=width, height=height, steps=steps, seed=seed + i, request_id=f"{request_id}/{i}"
        )
        for i in range(req.n)
    ]
