"""What each benchmark request asks for: the article's fixed prompt and seed, or varied prompts and seeds; the task
(generate, or edit / inpaint an image the service made first) and the LoRA adapters it names."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import NamedTuple

import httpx

from bench.request_records import make_client

ARTICLE_PROMPT = "A realistic photo of a red sports car on a mountain road at sunset"
ARTICLE_SEED = 42
# Short prompts (< 32 tokens, like the article's) so the DiT sequence length - and the FLOP count - stays the same.
VARIED_PROMPTS = (
    ARTICLE_PROMPT,
    "A cinematic photo of a cat on a city street at night",
    "An oil painting of a forest river in the snow",
    "A watercolor sketch of an old house by the sea",
    "A detailed photograph of a woman on the beach at sunrise",
    "A wide shot landscape of a mountain road in the rain",
    "A close-up portrait of a dog in a green forest",
    "A bright photo of a small blue building in the city",
)
TASKS = ("generate", "edit", "inpaint")  # the service's `task` metric tag: edit = no mask, inpaint = with a mask
EDITS_PATH = "/v1/images/edits"
EDIT_INPUTS = 4  # distinct input images an edits run makes first (seed, seed + 1, ...) and sends in turn


@dataclass(frozen=True)
class Lora:
    """One adapter a request names; scale None: the adapter's configured scale."""

    name: str
    scale: float | None = None

    @classmethod
    def parse(cls, text: str) -> Lora:
        """`ink` or `ink:0.8`."""
        name, sep, scale = text.partition(":")
        if not name or (sep and not scale):
            raise ValueError(f"{text!r} must look like NAME or NAME:SCALE")
        return cls(name, float(scale) if sep else None)

    def as_json(self) -> dict:
        return {"name": self.name} | ({} if self.scale is None else {"scale": self.scale})

    def __str__(self) -> str:
        return self.name if self.scale is None else f"{self.name}:{self.scale:g}"


def adapter_label(loras: tuple[Lora, ...]) -> str:
    """The service's `adapter` metric tag for this set (names sorted, joined by '+'; `none`), as Grafana shows it."""
    return "+".join(sorted(lora.name for lora in loras)) or "none"


def inpaint_mask(width: int, height: int) -> bytes:
    """RGBA PNG, opaque (keep) with a fully transparent centre (repaint): the middle half of each side."""
    from PIL import Image

    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (width // 4, height // 4, width - width // 4, height - height // 4))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


class WorkloadRequest(NamedTuple):
    """One request: JSON `body`, or (edits) the multipart form's fields in `body` plus its `files`."""

    path: str
    body: dict
    files: dict | None = None

    def send(self, client: httpx.AsyncClient) -> Awaitable[httpx.Response]:
        if self.files is None:
            return client.post(self.path, json=self.body)
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.body.items()}  # lora: a JSON string
        return client.post(self.path, data=form, files=self.files)


@dataclass(frozen=True)
class Workload:
    width: int = 1024
    height: int = 1024
    steps: int = 8
    mode: str = "article"  # "article": same prompt + seed 42 every time; "varied": cycle prompts, seed + i
    prompt: str = ARTICLE_PROMPT
    seed: int = ARTICLE_SEED
    endpoint: str = "generate"  # "generate" (image bytes) or "openai" (/v1/images/generations, b64 JSON)
    output_format: str | None = None  # png | jpeg | webp; None: the service's default (png), field not sent
    task: str = "generate"  # edit / inpaint: POST /v1/images/edits with `inputs` (and `mask`), whatever `endpoint`
    loras: tuple[Lora, ...] = ()
    strength: float | None = None  # edits: None = the service's default (not sent)
    inputs: tuple[bytes, ...] = ()  # edits: PNG images to edit, sent in turn (`prepare_edits` makes them)
    mask: bytes | None = None  # inpaint: RGBA PNG, transparent where to repaint

    def __post_init__(self):
        if self.mode not in ("article", "varied"):
            raise ValueError(f"unknown prompt mode {self.mode!r} (article | varied)")
        if self.endpoint not in ("generate", "openai"):
            raise ValueError(f"unknown endpoint {self.endpoint!r} (generate | openai)")
        if self.output_format not in (None, "png", "jpeg", "webp"):
            raise ValueError(f"unknown output format {self.output_format!r} (png | jpeg | webp)")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r} ({' | '.join(TASKS)})")
        if self.strength is not None and (self.task == "generate" or not 0 < self.strength <= 1):
            raise ValueError(f"strength={self.strength}: only for edit / inpaint, in (0, 1]")

    @property
    def is_edit(self) -> bool:
        return self.task != "generate"

    def prompt_seed(self, i: int) -> tuple[str, int]:
        if self.mode == "article":
            return self.prompt, self.seed
        return VARIED_PROMPTS[i % len(VARIED_PROMPTS)], self.seed + i

    def _images_fields(self, prompt: str, seed: int, steps: int) -> dict:
        """The fields OpenAI's generations and edits share (with this service's extensions)."""
        return {
            "prompt": prompt,
            "n": 1,
            "size": f"{self.width}x{self.height}",
            "response_format": "b64_json",
            "seed": seed,
            "num_inference_steps": steps,
        }

    def request(self, i: int, steps: int | None = None) -> WorkloadRequest:
        """Request number i."""
        prompt, seed = self.prompt_seed(i)
        steps = self.steps if steps is None else steps
        extra = {"output_format": self.output_format} if self.output_format else {}
        if self.loras:
            extra["lora"] = [lora.as_json() for lora in self.loras]
        if self.is_edit:
            if not self.inputs or (self.task == "inpaint" and self.mask is None):
                raise ValueError(f"a {self.task} workload needs its input images (and mask): prepare_edits() first")
            if self.strength is not None:
                extra["strength"] = self.strength
            k = i % len(self.inputs)
            files = {"image": (f"input-{k}.png", self.inputs[k], "image/png")}
            if self.task == "inpaint":
                files["mask"] = ("mask.png", self.mask, "image/png")
            return WorkloadRequest(EDITS_PATH, {**self._images_fields(prompt, seed, steps), **extra}, files)
        if self.endpoint == "openai":
            return WorkloadRequest("/v1/images/generations", {**self._images_fields(prompt, seed, steps), **extra})
        body = {"prompt": prompt, "width": self.width, "height": self.height, "num_inference_steps": steps}
        return WorkloadRequest("/generate", {**body, "seed": seed, **extra})

    def input_request(self, k: int) -> dict:
        """/generate body of edit input k: the varied prompts, seed + k, this size and steps, PNG, no adapters."""
        return {
            "prompt": VARIED_PROMPTS[k % len(VARIED_PROMPTS)],
            "width": self.width,
            "height": self.height,
            "num_inference_steps": self.steps,
            "seed": self.seed + k,
            "output_format": "png",
        }

    def dit_steps(self) -> int:
        """DiT forwards per image: every step when generating; an edit starts part-way, as diffusers' img2img and
        inpaint pipelines count (`get_timesteps`): steps - int(steps - steps x strength)."""
        if not self.is_edit or self.strength is None:
            return self.steps
        return self.steps - int(max(self.steps - self.steps * self.strength, 0))

    def row_tags(self) -> dict:
        """What a result row says about the work: task and adapters (as the service's metric tags), strength."""
        return {
            "task": self.task,
            "adapter": adapter_label(self.loras),
            "lora": self.lora_text or None,
            "strength": self.strength if self.is_edit else None,
            "dit_steps": self.dit_steps(),
        }

    @property
    def lora_text(self) -> str:
        """`ink:0.8, film` (empty: none)."""
        return ", ".join(map(str, self.loras))

    def title(self) -> str:
        """`inpaint, strength 1, LoRA ink:0.8` / `generate, no LoRA`: for labels and report headers."""
        parts = [self.task] + ([f"strength {self.strength:g}"] if self.is_edit and self.strength is not None else [])
        return ", ".join([*parts, f"LoRA {self.lora_text}" if self.loras else "no LoRA"])

    def describe(self) -> dict:
        out = {
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "prompt_mode": self.mode,
            "prompt": self.prompt if self.mode == "article" else list(VARIED_PROMPTS),
            "seed": self.seed,
            "endpoint": "edits" if self.is_edit else self.endpoint,
            "output_format": self.output_format or "png",
            "guidance_scale": 0.0,
            "task": self.task,
            "lora": [lora.as_json() for lora in self.loras],
            "lora_text": self.lora_text,
            "adapter": adapter_label(self.loras),
        }
        if self.is_edit:
            out["strength"] = self.strength
            out["dit_steps"] = self.dit_steps()
            out["edit_inputs"] = {
                "images": len(self.inputs),
                "made_by": "POST /generate on the service, before the run",
                "requests": [self.input_request(k) for k in range(len(self.inputs))],
                "mask": "RGBA, transparent in the middle half of each side" if self.task == "inpaint" else None,
            }
        return out


async def _make_inputs(url: str, workload: Workload, count: int, headers: dict | None, timeout_s: float):
    async with make_client(url, timeout_s, headers) as client:
        bodies = [workload.input_request(k) for k in range(count)]
        answers = await asyncio.gather(*(client.post("/generate", json=body) for body in bodies))
    for k, resp in enumerate(answers):
        if resp.status_code != 200:
            raise RuntimeError(f"edit input {k}: POST /generate answered {resp.status_code}: {resp.text[:300]}")
    return tuple(resp.content for resp in answers)


def prepare_edits(
    url: str, workload: Workload, count: int = EDIT_INPUTS, headers: dict | None = None, timeout_s: float = 600.0
) -> Workload:
    """An edit / inpaint workload with its inputs: `count` images the service generates at the run's size (seeds
    seed, seed + 1, ...; sent at once, so they batch), plus the inpaint mask. A generate workload comes back as is."""
    if not workload.is_edit:
        return workload
    if count < 1:
        raise ValueError(f"an edits run needs at least one input image, not {count}")
    inputs = asyncio.run(_make_inputs(url, workload, count, headers, timeout_s))
    mask = inpaint_mask(workload.width, workload.height) if workload.task == "inpaint" else None
    return replace(workload, inputs=inputs, mask=mask)
