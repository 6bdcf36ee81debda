"""Check a request against the configured limits and turn it into per-image specs; nothing invalid reaches the GPU.

Pure functions of (request, AppConfig): unit-tested without Ray (tests/unit/test_validation.py).
"""

from __future__ import annotations

import math
import re
import secrets
from typing import NamedTuple

from deployments.config import ADAPTER_NAME, DEFAULT_HUB_ID, AppConfig, RequestLimits
from deployments.http.errors import InvalidRequest
from deployments.http.image_encoding import ImageFormat
from deployments.http.protocol import (
    MAX_SEED,
    GenerateRequest,
    ImagesParams,
    ImagesRequest,
    LoraRequest,
    OutputEncoding,
)
from deployments.messages import EditInput, GenerationSpec, LoraChoice

# `1024x1024`, or a preset label as the official demo writes it: `832x1248 ( 2:3 )` (deployments/presets.py)
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})(?: ?\( ?\d{1,2}:\d{1,2} ?\))?$")


def _check_prompt(prompt: str, cfg: AppConfig) -> str:
    text = prompt.strip()
    if not text:
        raise InvalidRequest("prompt", "prompt must not be empty", limit=[1, cfg.limits.max_prompt_chars])
    try:  # JSON may carry lone surrogates ("\ud800"): not text, and the tokenizer raises on them (a 500 otherwise)
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        message = f"prompt is not valid Unicode text (character {exc.start})"
        raise InvalidRequest("prompt", message, limit="valid Unicode text") from None
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


def _check_area(width: int, height: int, cfg: AppConfig) -> None:
    lim = cfg.limits
    if width * height > lim.max_pixels:
        w, h = nearest_valid_size(width, height, lim)
        message = (
            f"width x height = {width}x{height} = {width * height} pixels is above the limit of {lim.max_pixels}; "
            f"the nearest valid size is {w}x{h}"
        )
        raise InvalidRequest("width", message, limit={"max_pixels": lim.max_pixels, "nearest": f"{w}x{h}"})


def nearest_valid_size(width: int, height: int, lim: RequestLimits) -> tuple[int, int]:
    """The allowed size closest to `width`x`height`: sides rounded to the multiple and clamped to the side limits, then
    scaled down at the same aspect ratio if the area is still above `max_pixels`."""
    m = lim.side_multiple
    lo, hi = -(-lim.min_side // m) * m, lim.max_side // m * m

    def snap(v: float, down: bool = False) -> int:
        q = math.floor(v / m) if down else math.floor(v / m + 0.5)
        return min(max(q * m, lo), hi)

    w, h = snap(width), snap(height)
    if w * h > lim.max_pixels:
        scale = math.sqrt(lim.max_pixels / (w * h))
        w, h = snap(w * scale, down=True), snap(h * scale, down=True)
        while w * h > lim.max_pixels:  # clamping to min_side can push the area back up: shrink the longer side
            if w >= h and w > lo:
                w -= m
            elif h > lo:
                h -= m
            else:
                break
    return w, h


def _size_limit(lim: RequestLimits, nearest: tuple[int, int]) -> dict:
    return {
        "side_multiple": lim.side_multiple,
        "min_side": lim.min_side,
        "max_side": lim.max_side,
        "max_pixels": lim.max_pixels,
        "nearest": f"{nearest[0]}x{nearest[1]}",
    }


def check_size(size: str, cfg: AppConfig) -> tuple[int, int]:
    """OpenAI `size`: `WIDTHxHEIGHT` or a preset label; a size the limits refuse gets a 422 naming the nearest one."""
    m = _SIZE.match(size)
    if not m:
        raise InvalidRequest(
            "size", f"size '{size[:40]}' must look like '1024x1024' or be 'auto'", limit="WIDTHxHEIGHT"
        )
    width, height = int(m[1]), int(m[2])
    lim = cfg.limits
    if lim.allows(width, height):
        return width, height
    reasons = []
    if not all(lim.min_side <= v <= lim.max_side for v in (width, height)):
        reasons.append(f"each side must be within [{lim.min_side}, {lim.max_side}]")
    if width % lim.side_multiple or height % lim.side_multiple:
        reasons.append(f"width and height must be multiples of {lim.side_multiple}")
    if width * height > lim.max_pixels:
        reasons.append(f"{width * height} pixels is above the limit of {lim.max_pixels}")
    why = ", and ".join(reasons)
    nearest = nearest_valid_size(width, height, lim)
    message = f"size '{width}x{height}' is not allowed: {why}; the nearest valid size is {nearest[0]}x{nearest[1]}"
    raise InvalidRequest("size", message, limit=_size_limit(lim, nearest))


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


def served_model_names(cfg: AppConfig) -> list[str]:
    """`model` values accepted: the configured name, and the model's Hub id (clients often send that)."""
    return list(dict.fromkeys([cfg.model_name, cfg.model.hub_id or DEFAULT_HUB_ID]))


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


def check_loras(loras: list[LoraRequest] | None, cfg: AppConfig) -> tuple[LoraChoice, ...]:
    """Count, names and scales against `cfg.lora`; sorted by name so equal adapter sets share a batch key. Whether a
    name is loaded is the GPU replica's answer (adapters change live through user_config)."""
    if not loras:
        return ()
    settings = cfg.lora
    if settings is None:
        raise InvalidRequest("lora", "this server serves no LoRA adapters", limit=0)
    most = settings.max_adapters_per_request
    if len(loras) > most:
        raise InvalidRequest("lora", f"{len(loras)} LoRA adapters given; the limit is {most} a request", limit=most)
    seen: set[str] = set()
    for i, lora in enumerate(loras):
        if not re.fullmatch(ADAPTER_NAME, lora.name):
            message = f"lora[{i}].name '{lora.name[:70]}' is not an adapter name ({ADAPTER_NAME})"
            raise InvalidRequest(f"lora[{i}].name", message, limit=ADAPTER_NAME)
        if lora.name in seen:
            message = f"lora[{i}].name '{lora.name}' is given twice; name each adapter once"
            raise InvalidRequest(f"lora[{i}].name", message, limit="each adapter at most once")
        seen.add(lora.name)
        low, high = settings.min_scale, settings.max_scale
        if lora.scale is not None and not low <= lora.scale <= high:
            message = f"lora[{i}].scale={lora.scale} is outside [{low}, {high}]"
            raise InvalidRequest(f"lora[{i}].scale", message, limit=[low, high])
    return tuple(sorted((LoraChoice(x.name, x.scale) for x in loras), key=lambda c: c.name))


def specs_from_generate(req: GenerateRequest, cfg: AppConfig, request_id: str) -> list[GenerationSpec]:
    width = _check_side("width", cfg.defaults.width if req.width is None else req.width, cfg)
    height = _check_side("height", cfg.defaults.height if req.height is None else req.height, cfg)
    _check_area(width, height, cfg)
    return [
        GenerationSpec(
            prompt=_check_prompt(req.prompt, cfg),
            width=width,
            height=height,
            steps=_check_steps(req.num_inference_steps, cfg),
            seed=_check_seed(req.seed),
            request_id=request_id,
            loras=check_loras(req.lora, cfg),
        )
    ]


class ImagesJob(NamedTuple):
    """An OpenAI images request's checked values, before the size is known (edits take it from the input)."""

    n: int
    prompt: str
    steps: int
    seed: int
    loras: tuple[LoraChoice, ...]


def check_images_params(req: ImagesParams, cfg: AppConfig) -> ImagesJob:
    """The checks generations and edits share: model, response_format, n, prompt, steps, seeds, LoRA."""
    names = served_model_names(cfg)
    if req.model is not None and req.model not in names:
        raise InvalidRequest("model", f"model '{req.model}' is not served here; use '{cfg.model_name}'", limit=names)
    if req.response_format == "url":
        raise InvalidRequest(
            "response_format", "response_format 'url' is not supported; use 'b64_json'", limit="b64_json"
        )
    max_n = cfg.limits.max_images_per_request
    if not 1 <= req.n <= max_n:
        raise InvalidRequest("n", f"n={req.n} is outside [1, {max_n}]", limit=[1, max_n])
    prompt, steps, seed = (
        _check_prompt(req.prompt, cfg),
        _check_steps(req.num_inference_steps, cfg),
        _check_seed(req.seed),
    )
    if seed + req.n - 1 > MAX_SEED:
        raise InvalidRequest("seed", f"seed + n - 1 must stay <= {MAX_SEED}", limit=[0, MAX_SEED])
    return ImagesJob(req.n, prompt, steps, seed, check_loras(req.lora, cfg))


def fan_out(
    job: ImagesJob, width: int, height: int, request_id: str, edit: EditInput | None = None
) -> list[GenerationSpec]:
    """n images: seeds seed, seed+1, ... so each is reproducible alone."""
    return [
        GenerationSpec(
            prompt=job.prompt,
            width=width,
            height=height,
            steps=job.steps,
            seed=job.seed + i,
            request_id=f"{request_id}/{i}",
            edit=edit,
            loras=job.loras,
        )
        for i in range(job.n)
    ]


def specs_from_images(req: ImagesRequest, cfg: AppConfig, request_id: str) -> list[GenerationSpec]:
    job = check_images_params(req, cfg)
    if req.size in (None, "auto"):
        width, height = cfg.defaults.width, cfg.defaults.height
    else:
        width, height = check_size(req.size, cfg)
    return fan_out(job, width, height, request_id)
