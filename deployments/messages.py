"""Messages between the ingress and the GPU deployment (plain dataclasses: they cross Ray's object store)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class GenerationSpec:
    """One image to generate; validated by the ingress before it gets here."""

    prompt: str
    width: int
    height: int
    steps: int
    seed: int
    request_id: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.width, self.height, self.steps)


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
    error_kind: str | None = None  # "oom" | "internal"
