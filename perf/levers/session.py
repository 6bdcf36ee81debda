"""One lever run: the pipeline, the service's runner, the output JSON, and the timed rows."""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deployments.config import ModelSource, RandomArch
from deployments.pipeline.loading import load_pipeline
from deployments.pipeline.random_model import build_random_pipeline
from deployments.pipeline.runner import Shape, ZImageRunner
from perf.levers import LEVERS

logger = logging.getLogger("perf.levers")
PROMPT = "A realistic photo of a red sports car on a mountain road at sunset"
GPU_SHAPE = Shape(1024, 1024, 8)
SMOKE_SHAPE = Shape(256, 256, 8)


def timed(fn, reps: int) -> tuple[float, list[float], object]:
    """Best of `reps` calls; the caller's first call was the warm-up (and compile)."""
    result, times = None, []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), times, result


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def dynamo_counters() -> dict:
    from torch._dynamo.utils import counters

    return {k: dict(v) for k, v in counters.items() if v}


@dataclass
class Session:
    out_path: Path
    batches: list[int]
    reps: int = 2
    profile_batch: int = 4
    smoke: bool = False  # tiny model on CPU at 256x256: checks the code path, not speed
    model: str | None = None
    out: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)  # batch -> (latents, images) of the eager `runner` row
    last: str = "start"  # the last lever applied (`after` of profiles)

    def __post_init__(self):
        arch = RandomArch.TINY if self.smoke else RandomArch.FULL
        self.device = "cpu" if self.smoke else "cuda"
        self.dtype = torch.float32 if self.smoke else torch.bfloat16
        self.shape = SMOKE_SHAPE if self.smoke else GPU_SHAPE
        import diffusers

        self.out.update(
            weights=self.model or f"random:{arch.value} (random weights of the {arch.value} architecture)",
            gpu=torch.cuda.get_device_name() if self.device == "cuda" else "cpu",
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            shape=self.shape.__dict__,
            rows=[],
        )
        t0 = time.perf_counter()
        if self.model:
            self.pipe = load_pipeline(ModelSource.parse(self.model), self.device, self.dtype).to(self.device)
        else:
            self.pipe = build_random_pipeline(arch, self.device, self.dtype)
        self.out["build_s"] = time.perf_counter() - t0
        self.runner = ZImageRunner(self.pipe, batch_encode=True)  # as the service runs on a GPU
        self.pipe.set_progress_bar_config(disable=True)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def save(self) -> None:
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self.out_path.write_text(json.dumps(self.out, indent=2, default=str))

    def add(self, key: str, value, append: bool = False) -> None:
        """Store a measurement under `key` (`append`: one more entry of a list, tagged with the lever before it)."""
        if append:
            self.out.setdefault(key, []).append({"after": self.last, **value})
        else:
            self.out[key] = value
        self.save()

    # ---- rows ---------------------------------------------------------------------------------------------------
    def batch_call(self, name: str, bs: int):
        prompts, seeds = [PROMPT] * bs, list(range(bs))
        if name != "pipe":
            return lambda: self.runner.run(prompts, seeds, self.shape)
        return lambda: self.pipe(
            prompt=prompts,
            height=self.shape.height,
            width=self.shape.width,
            num_inference_steps=self.shape.steps,
            guidance_scale=0.0,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            output_type="pil",
        )

    def rows(self, name: str) -> None:
        """One timed row per batch size: first call (compile), best of `reps`, stages, numerics vs `runner`."""
        for bs in self.batches:
            fn = self.batch_call(name, bs)
            t0 = time.perf_counter()
            fn()
            self.sync()
            extra = {"first_call_s": time.perf_counter() - t0}
            best, times, result = timed(fn, self.reps)
            if name != "pipe":
                extra.update(stages_s=result.times.__dict__, **self.numerics(name, bs))
            if name.startswith(("compile", "fp8", "torchao")):
                extra["dynamo_counters"] = dynamo_counters()
            row = {"lever": name, "batch": bs, "best_s": best, "times_s": times, "s_per_img": best / bs}
            self.out["rows"].append({**row, "img_per_s": bs / best, **extra})
            logger.info("%s bs=%d: %.3f s/img (%.3f img/s)", name, bs, best / bs, bs / best)
            self.save()

    def numerics(self, name: str, bs: int) -> dict:
        seeds = list(range(bs))
        embeds = self.runner.encode([PROMPT] * bs)
        lat = self.runner.denoise(embeds, self.shape, seeds).float()
        img = torch.stack([torch.from_numpy(i) for i in self.runner.decode(lat.to(self.dtype))])
        extra: dict = {"nan_latents": int(lat.isnan().sum())}
        if name == "runner":
            self.reference[bs] = (lat, img)
        elif bs in self.reference:
            ref_lat, ref_img = self.reference[bs]
            extra["max_abs_latent_diff_vs_eager"] = (lat - ref_lat).abs().max().item()
            extra["psnr_db_vs_eager"] = psnr(img, ref_img)
        if extra["nan_latents"]:
            from perf.levers.profiles import first_nan_module

            extra["first_nan_module"] = first_nan_module(self, embeds, seeds)
        return extra

    # ---- driving --------------------------------------------------------------------------------------------------
    def apply(self, name: str) -> None:
        lever = LEVERS[name]
        if self.smoke and lever.gpu_only:
            self.out.setdefault("skipped", []).append({"lever": name, "why": "needs a GPU"})
            logger.info("lever %s skipped: needs a GPU", name)
            return
        try:
            lever.apply(self)
            if lever.rows:
                self.rows(name)
            self.last = name
        except Exception as exc:
            self.out.setdefault("errors", []).append({"lever": name, "error": repr(exc), "tb": traceback.format_exc()})
            logger.error("lever %s failed: %s", name, exc)
        self.save()

    def finish(self) -> None:
        self.out["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9 if self.device == "cuda" else 0.0
        self.save()
