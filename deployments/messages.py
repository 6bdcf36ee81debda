"""Messages between the ingress and the GPU deployment (plain dataclasses: they cross Ray's object store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA adapter named in the replica's config, applied at `scale` (0 = the base model; None = the adapter's
    configured default scale)."""

    name: str
    scale: float | None = None


@dataclass(frozen=True, eq=False)
class EditInput:
    """What an edit starts from, already decoded and resized to the output size by the ingress."""

    image: np.ndarray  # HxWx3 uint8, the output's width and height
    mask: np.ndarray | None  # HxW bool, True where to repaint (OpenAI: the mask's transparent pixels); None: img2img
    strength: float  # (0, 1]: how far from the input the result may go (1 = repaint entirely)


Task = Literal["generate", "edit", "inpaint"]


@dataclass(frozen=True)
class GenerationSpec:
    """One image to generate or edit; validated by the ingress before it gets here."""

    prompt: str
    width: int
    height: int
    steps: int
    seed: int
    request_id: str = ""
    edit: EditInput | None = None
    loras: tuple[LoraChoice, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.width, self.height, self.steps)

    @property
    def task(self) -> Task:
        if self.edit is None:
            return "generate"
        return "edit" if self.edit.mask is None else "inpaint"

    @property
    def batch_key(self) -> tuple:
        """Requests with the same key may share one pipeline call: same task, shape, strength and adapter set."""
        strength = self.edit.strength if self.edit is not None else None
        return (self.task, self.width, self.height, self.steps, strength, self.loras)


@dataclass
class GenerationResult:
    """The image plus what the replica knows about how it was made (sent back as X-* response headers)."""

    image: np.ndarray | None  # HxWx3 uint8
    seed: int
    model_source: str
    replica: str
    batch_size: int = 0  # images in the pipeline call that made this one
    queue_wait_s: float = 0.0  # arrival at the replica -> start of its batch
    inference_s: float = 0.0  # wall time of that pipeline call (all stages)
    stage_s: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0  # torch peak allocated during the batch (0 on CPU)
    error: str | None = None  # set when generation failed for this item
    error_kind: str | None = None  # "oom" | "internal" | "invalid" (the request names something the replica lacks)
    error_param: str | None = None  # for "invalid": the request field at fault
    error_limit: object = None  # for "invalid": what is allowed (e.g. the adapter names)
