"""Typed configuration of the application (option groups it composes: deployments/options.py).

`AppConfig` is parsed from the Serve application `args`; `GeneratorUserConfig` is the GPU deployment's
`user_config`, which Serve hands to `reconfigure()` live (batch size, batch wait, tier table, memory mode).
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from deployments.options import (
    ADAPTER_NAME,
    DEFAULT_TIERS,
    BatchPolicy,
    LoraAdapter,
    LoraSettings,
    MemoryMode,
    TestingOptions,
    Tier,
    _Strict,
)

DEFAULT_HUB_ID = "Tongyi-MAI/Z-Image-Turbo"


class RandomArch(str, Enum):
    """Random-weight builds of the real architecture (no download needed)."""

    FULL = "full"  # Qwen3-4B + 6B DiT + FLUX VAE, exact configs; for GPU benchmarks
    TINY = "tiny"  # same classes, tiny sizes; for CPU tests and trying the service


class ModelSource(_Strict):
    """Where the weights come from: exactly one of a Hub id, a local directory or random weights.

    The string form accepted by `parse` is what users write in YAML: `Tongyi-MAI/Z-Image-Turbo`,
    `/models/z-image` (or `./dir`), `random:full`, `random:tiny`.
    """

    hub_id: str | None = None
    local_dir: Path | None = None
    random: RandomArch | None = None
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub_id.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        chosen = [x for x in (self.hub_id, self.local_dir, self.random) if x is not None]
        if len(chosen) != 1:
            raise ValueError("model source needs exactly one of hub_id, local_dir or random")
        return self

    @classmethod
    def parse(cls, spec: str | dict | ModelSource) -> ModelSource:
        if isinstance(spec, ModelSource):
            return spec
        if isinstance(spec, dict):
            return cls.model_validate(spec)
        if spec.startswith("random:"):
            return cls(random=RandomArch(spec.split(":", 1)[1]))
        if spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().is_dir():
            return cls(local_dir=Path(spec).expanduser())
        return cls(hub_id=spec)

    @property
    def label(self) -> str:
        """Short name shown in /info and in every response (`X-Model-Source`)."""
        if self.random is not None:
            return f"random:{self.random.value}"
        if self.local_dir is not None:
            return f"local:{self.local_dir}"
        return f"hub:{self.hub_id}" + (f"@{self.revision}" if self.revision else "")

    @property
    def is_random(self) -> bool:
        return self.random is not None


class GeneratorUserConfig(_Strict):
    """Live-tunable knobs of the GPU deployment (Serve `user_config`, applied by `reconfigure()`)."""

    max_batch_size: int | None = Field(
        None, ge=1, le=64, description="Override the tier's batch size; still capped by the measured memory limit."
    )
    batch_wait_timeout_s: float = Field(
        0.05, ge=0, le=5, description="How long a batch takes late arrivals of its shape after it starts forming."
    )
    batch_policy: BatchPolicy = Field(
        BatchPolicy.LATENCY,
        description="`latency`: the smallest batch whose learnt seconds per image are within "
        "`batch_efficiency_tolerance` of the best batch the shape's queue could fill (batches grow only where they "
        "buy throughput), and the best one when more wait than the largest batch takes; `throughput`: every waiting "
        "request of the shape, up to its cap.",
    )
    batch_efficiency_tolerance: float = Field(
        0.03, ge=0, le=1, description="`latency` policy: throughput a smaller batch may give up (0.03 = 3%)."
    )
    tiers: tuple[Tier, ...] = Field(DEFAULT_TIERS, description="VRAM tier table, sorted by max_vram_gb.")
    memory_mode: MemoryMode = Field(MemoryMode.AUTO, description="`auto` follows the tier; set to override.")
    cpu_max_batch_size: int = Field(8, ge=1, le=64, description="Batch size when no GPU is present (tiny model).")
    loras: dict[str, LoraAdapter] = Field(
        default_factory=dict,
        description="LoRA adapters by the name requests use (`lora: [{name, scale}]`). Loaded at start and when this "
        "changes live; needs the application's `lora` settings (the DiT's adapter slots).",
    )

    @field_validator("loras")
    @classmethod
    def _adapter_names(cls, loras: dict[str, LoraAdapter]) -> dict[str, LoraAdapter]:
        for name in loras:
            if not re.fullmatch(ADAPTER_NAME, name):
                raise ValueError(f"loras: {name!r} is not a valid adapter name ({ADAPTER_NAME})")
        return loras

    @field_validator("tiers")
    @classmethod
    def _sorted_tiers(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        if not tiers:
            raise ValueError("tier table must have at least one row")
        return tuple(sorted(tiers, key=lambda t: t.max_vram_gb))


class RequestLimits(_Strict):
    """What the ingress accepts. Anything outside gets a 4xx before it reaches the GPU.

    Z-Image is trained for 512^2-2048^2 of image area at any aspect ratio: width and height are multiples of 16, each
    side at most `max_side` and the image at most `max_pixels` (what fits the card: 2048x2048 on 80 GB and larger,
    1536x1536 on 24 GB cards). The start-up memory measurement runs at the largest allowed area and a small one.
    """

    min_side: int = Field(256, ge=16)
    max_side: int = Field(2048, ge=16, description="Largest width or height.")
    max_pixels: int = Field(
        2048 * 2048,
        ge=256,
        description="Largest width x height. The batch size of each image area is capped by memory measured at "
        "start-up at the largest allowed area and a small one (docs/architecture.md).",
    )
    side_multiple: int = Field(16, ge=1, description="VAE scale x patch size: width/height must be multiples.")
    min_steps: int = 1
    max_steps: int = Field(16, ge=1, le=100)
    max_prompt_chars: int = Field(2000, ge=1)
    max_images_per_request: int = Field(4, ge=1, le=16, description="OpenAI `n` upper bound.")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="JSON request bodies above this get 413.")
    max_edit_body_bytes: int = Field(
        32 * 2**20, ge=1024, description="Bodies of POST /v1/images/edits (multipart) above this: 413."
    )
    max_input_pixels: int = Field(
        4096 * 4096, ge=256, description="Largest width x height of an edit's input image or mask (before resizing)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> RequestLimits:
        if self.min_side > self.max_side:
            raise ValueError(f"limits.min_side={self.min_side} > max_side={self.max_side}")
        if self.max_pixels < self.min_side**2:
            raise ValueError(f"limits.max_pixels={self.max_pixels} is below min_side^2={self.min_side**2}")
        return self

    def allows(self, width: int, height: int) -> bool:
        return all(self.min_side <= v <= self.max_side and v % self.side_multiple == 0 for v in (width, height)) and (
            width * height <= self.max_pixels
        )

    @property
    def min_area(self) -> int:
        return self.min_side**2

    @property
    def max_area(self) -> int:
        """The largest width x height any allowed size has."""
        return max(w * h for w, h in self.largest_shapes())

    def largest_shapes(self) -> list[tuple[int, int]]:
        """For each allowed width, the tallest allowed height (the candidates for the largest area)."""
        m = self.side_multiple
        lo = -(-self.min_side // m) * m
        out = []
        for w in range(lo, self.max_side + 1, m):
            h = min(self.max_side, self.max_pixels // w) // m * m
            if h >= self.min_side:
                out.append((w, h))
        return out

    def largest_square(self) -> int:
        """Side of the largest allowed square (the start-up memory measurement's large shape)."""
        m = self.side_multiple
        side = self.max_side // m * m
        while side * side > self.max_pixels:
            side -= m
        return side


class GenerationDefaults(_Strict):
    width: int = 1024
    height: int = 1024
    num_inference_steps: int = 8
    edit_strength: float = Field(0.6, gt=0, le=1, description="Image-to-image edits (no mask) without `strength`.")
    inpaint_strength: float = Field(1.0, gt=0, le=1, description="Edits with a mask without `strength`.")


class AppConfig(_Strict):
    """Application `args` in serve_config.yaml (see `deployments.app.build_app`)."""

    model: ModelSource = Field(default_factory=lambda: ModelSource(hub_id=DEFAULT_HUB_ID))
    model_name: str = Field("z-image-turbo", description="Name reported to OpenAI clients (`model` field).")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="`auto`: cuda if a GPU is visible, else cpu.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="`auto`: bfloat16 on GPU (fp16 gives black images with Z-Image), float32 on CPU."
    )
    limits: RequestLimits = Field(default_factory=RequestLimits)
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    memory_margin_gb: float = Field(
        1.0, ge=0, description="Headroom kept free when clamping the batch size by measured peak memory."
    )
    compile: bool = Field(False, description="torch.compile the DiT's repeated blocks (GPU only; ~1.5x at 1024^2).")
    compile_vae: bool = Field(
        True,
        description="With compile: also compile the VAE decoder (H100, 1024^2: decode 98 -> 44 ms/img, +5% img/s; "
        "costs +43 s of cold start on an empty Inductor cache, +7.5 s with a warm one).",
    )
    fp8_dit: bool = Field(
        False,
        description="Opt-in: the DiT's large linear layers as FP8 (e4m3, per-row scales) GEMMs. Needs compile and a "
        "GPU of compute capability >= 8.9 (Ada, Hopper, Blackwell). Changes the numerics (docs/performance.md).",
    )
    text_encoder_cuda_graphs: bool = Field(
        True,
        description="GPU, memory mode gpu: replay the text encoder as CUDA graphs (batch and length rounded up to "
        "powers of two, ~22 graphs captured at start-up). A batch-1 prompt encode is launch-bound without them "
        "(docs/architecture.md).",
    )
    warm_up_sizes: Literal["presets", "none"] | list[str] = Field(
        "presets",
        description="With compile, on a GPU: image sizes run once (batch 1, 1 step) at start-up so no request pays a "
        "compile. `presets`: every official preset the limits allow; `none`; or a list of `WIDTHxHEIGHT`.",
    )
    compile_cache_dir: str | None = Field(
        None, description="Persistent TorchInductor cache (e.g. on a volume) so a new replica skips recompilation."
    )
    api_key_env: str | None = Field(
        None, description="If set, the name of an env var holding a bearer API key required on all routes but /healthz."
    )
    log_prompts: bool = Field(False, description="Log prompts at INFO (off: prompts are user data).")
    retry_after_s: int = Field(2, ge=1, description="Retry-After header sent with 503 on overload.")
    ingress_max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Images one ingress replica may have at the Generator (sent, not yet answered); past it a request "
        "gets 503 + Retry-After at once, decided by the ingress without waiting on a Generator replica. null: what "
        "Serve admits, from the deployment options deployments/app.py sees (GENERATOR_DEFAULTS + Python overrides): "
        "for N Generator and M Ingress replicas, ceil(N x max_ongoing_requests / M) + max_queued_requests (Serve "
        "bounds ongoing per Generator replica, queued per caller): 32 + 64 = 96 with the defaults. Set it when "
        "serve_config's `deployments:` changes those options or the replica counts (the builder cannot see them).",
    )
    lora: LoraSettings | None = Field(
        None,
        description="Serve LoRA adapters (user_config `loras`). Off (null): the DiT has no adapter slots and "
        "requests naming adapters get 422. On: every batch runs through the slots (unused slots hold zeros).",
    )
    testing: TestingOptions = Field(
        default_factory=TestingOptions, description="Tests and experiments only; leave unset in production."
    )

    @field_validator("model", mode="before")
    @classmethod
    def _parse_model(cls, value):
        return ModelSource.parse(value)

    @model_validator(mode="after")
    def _fp8_needs_compile(self) -> AppConfig:
        if self.fp8_dit and not self.compile:
            raise ValueError("fp8_dit needs compile: true (eager, quantizing activations costs more than FP8 saves)")
        return self

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> AppConfig:
        lim, d = self.limits, self.defaults
        for name in ("width", "height"):
            v = getattr(d, name)
            if not lim.min_side <= v <= lim.max_side or v % lim.side_multiple:
                raise ValueError(f"defaults.{name}={v} is outside limits")
        if d.width * d.height > lim.max_pixels:
            raise ValueError(f"defaults {d.width}x{d.height} is above limits.max_pixels={lim.max_pixels}")
        if isinstance(self.warm_up_sizes, list):
            for size in self.warm_up_sizes:
                if not lim.allows(*(int(v) for v in size.split("x"))):
                    raise ValueError(f"warm_up_sizes: {size} is outside limits")
        return self

    @field_validator("warm_up_sizes")
    @classmethod
    def _sizes(cls, value):
        if isinstance(value, list):
            for size in value:
                if not re.fullmatch(r"\d+x\d+", size):
                    raise ValueError(f"warm_up_sizes: {size!r} is not WIDTHxHEIGHT")
        return value
