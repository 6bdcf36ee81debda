"""Pipeline factories for tests: the real tiny random pipeline, wrapped to record, slow down or fail its denoise call.

Only the failure modes are fake (a CPU cannot run out of CUDA memory); every image is still made by the real
`ZImagePipeline`. Factories are plain picklable objects: Serve ships them to the Generator replica, which calls them
like `deployments.pipeline.loading.load_pipeline(source, device, dtype)`. Calls are recorded as JSON lines in a file
so the test process can see what reached the pipeline inside the replica process.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deployments.pipeline.loading import load_pipeline

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB (simulated by tests.fakes)"


def _seeds(generator) -> list[int]:
    gens = generator if isinstance(generator, list) else [generator]
    return [g.initial_seed() for g in gens if g is not None]


class WrappedPipeline:
    """Delegates everything to the real pipeline; `__call__` (the runner's denoise stage) is recorded and faulted."""

    def __init__(self, pipe, factory: WrappingFactory):
        self._pipe, self._factory = pipe, factory

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        f = self._factory
        seeds = _seeds(kwargs.get("generator"))
        batch = len(kwargs["prompt_embeds"]) if isinstance(kwargs.get("prompt_embeds"), list) else len(seeds)
        call = {
            "pid": os.getpid(),
            "batch": batch,
            "width": kwargs.get("width"),
            "height": kwargs.get("height"),
            "steps": kwargs.get("num_inference_steps"),
            "seeds": seeds,
        }
        pixels = batch * (kwargs.get("width") or 0) * (kwargs.get("height") or 0)
        oom = (
            (f.oom_above is not None and batch > f.oom_above)
            or (f.oom_above_pixels is not None and pixels > f.oom_above_pixels)
            or bool(set(seeds) & set(f.oom_seeds))
        )
        call["outcome"] = "oom" if oom else "ok"
        f.record(call)
        if oom:
            raise torch.OutOfMemoryError(OOM_MESSAGE)
        width = kwargs.get("width")
        per_call, per_image = f.sleep_per_call_by_width.get(width, 0.0), f.sleep_per_image_by_width.get(width, 0.0)
        extra = f.sleep_s + per_call + batch * per_image
        if extra:
            time.sleep(extra)
        return self._pipe(**kwargs)


@dataclass
class WrappingFactory:
    """Real pipeline from `load_pipeline`, wrapped.

    log_path: append one JSON line per denoise call (batch, shape, seeds, outcome).
    sleep_s: extra seconds per denoise call (a slow GPU, for overload tests).
    sleep_per_call_by_width / sleep_per_image_by_width: extra seconds per call, or per image in the call, for images of
        that width: a GPU time per batch the test controls (per call: batching pays; per image: it buys nothing).
    oom_above: raise torch.OutOfMemoryError when a call holds more than this many images.
    oom_above_pixels: raise torch.OutOfMemoryError when batch x width x height is above this (memory that grows with
        the image area: at a small area a larger batch fits than at a big one).
    oom_seeds: raise torch.OutOfMemoryError whenever one of these seeds is in the call (fails even alone).
    """

    log_path: str | None = None
    sleep_s: float = 0.0
    oom_above: int | None = None
    oom_above_pixels: int | None = None
    oom_seeds: tuple[int, ...] = field(default_factory=tuple)
    sleep_per_call_by_width: dict[int, float] = field(default_factory=dict)
    sleep_per_image_by_width: dict[int, float] = field(default_factory=dict)

    def __call__(self, source, device: str, dtype: torch.dtype):
        return WrappedPipeline(load_pipeline(source, device, dtype), self)

    def record(self, call: dict) -> None:
        if self.log_path:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(call) + "\n")

    def calls(self) -> list[dict]:
        """Every recorded denoise call so far (warm-up included), read in the test process."""
        if not self.log_path or not Path(self.log_path).exists():
            return []
        return [json.loads(line) for line in Path(self.log_path).read_text().splitlines() if line.strip()]
