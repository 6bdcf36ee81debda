"""Check a request against the configured limits and turn it into per-image specs; nothing invalid reaches the GPU.

Pure functions of (request, AppConfig): unit-tested without Ray (tests/unit/test_validation.py).
"""

from __future__ import annotations

import re
import secrets

from deployments.config import DEFAULT_HUB_ID, AppConfig
from deployments.http.errors import InvalidRequest
from deployments.http.image_encoding import ImageFormat
from deployments.http.protocol import MAX_SEED, GenerateRequest, ImagesRequest, OutputEncoding
from deployments.messages import GenerationSpec

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


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
