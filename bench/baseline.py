"""In-process baseline: the plain diffusers call a user would write, at the same sizes, no server.

    pipe(prompt=[prompt] * bs, height=h, width=w, num_inference_steps=8, guidance_scale=0.0, generator=g)

Same telemetry, same row format as the serve sweep, so `bench report` can set them side by side. Each call is one
"request" of `bs` images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import torch

from bench.results import RunFile
from bench.stats import request_stats
from bench.sweep import log_row
from bench.workload import ARTICLE_PROMPT, ARTICLE_SEED
from deployments.config import ModelSource
from deployments.pipeline.devices import resolve_device, resolve_dtype
from deployments.pipeline.loading import load_pipeline
from deployments.pipeline.random_model import build_random_pipeline

logger = logging.getLogger(__name__)


@dataclass
class BaselinePlan:
    grid: list[tuple[int, int, list[int]]] = field(default_factory=lambda: [(1024, 1024, [1, 2, 4, 6, 8])])
    steps: int = 8
    repeats: int = 2  # measured calls per row
    warmup: int = 1  # warm-up calls per row (same shapes)
    warmup_steps: int | None = None
    budget_s: float | None = None
    prompt: str = ARTICLE_PROMPT
    seed: int = ARTICLE_SEED
    model: str = "random:full"
    device: str = "auto"
    dtype: str = "auto"

    def describe(self) -> dict:
        d = asdict(self)
        d["grid"] = [{"width": w, "height": h, "batch_sizes": b} for w, h, b in self.grid]
        return d


def build_pipeline(plan: BaselinePlan):
    """Random weights are built straight on the device (seconds); real weights load to CPU, then move."""
    source = ModelSource.parse(plan.model)
    device = resolve_device(plan.device)
    dtype = resolve_dtype(plan.dtype, device)
    start = time.perf_counter()
    if source.random is not None:
        pipe = build_random_pipeline(source.random, device, dtype)
    else:
        pipe = load_pipeline(source, "cpu", dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    logger.info("pipeline %s on %s/%s ready in %.1fs", source.label, device, dtype, time.perf_counter() - start)
    return pipe, source.label, device


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _call(pipe, device: str, prompt: str, seed: int, bs: int, w: int, h: int, steps: int) -> None:
    generator = torch.Generator(device=device).manual_seed(seed)
    pipe(
        prompt=[prompt] * bs,
        height=h,
        width=w,
        num_inference_steps=steps,
        guidance_scale=0.0,
        generator=generator,
    )


def run_baseline(plan: BaselinePlan, pipe, device: str, run: RunFile, sampler=None) -> None:
    start = time.monotonic()
    last_s_per_px: float | None = None
    failures = 0
    for w, h, sizes in plan.grid:
        oomed = False
        for bs in sizes:
            key = {"width": w, "height": h, "steps": plan.steps, "batch_size": bs}
            if oomed:
                run.skip(key, "a smaller batch already ran out of GPU memory at this size")
                continue
            if plan.budget_s is not None:
                left = plan.budget_s - (time.monotonic() - start)
                warm_frac = max((plan.warmup_steps or plan.steps) / plan.steps, 0.3)
                est = last_s_per_px * w * h * bs * (plan.repeats + plan.warmup * warm_frac) if last_s_per_px else 0
                if left <= 0 or est > left:
                    run.skip(key, f"time budget: ~{est:.0f}s needed, {max(left, 0):.0f}s left of {plan.budget_s:.0f}s")
                    continue
            try:
                summary = _row(plan, pipe, device, run, sampler, key)
            except torch.cuda.OutOfMemoryError as exc:
                oomed = True
                torch.cuda.empty_cache()
                run.skip(key, f"CUDA out of memory: {str(exc).splitlines()[0][:200]}")
                continue
            except Exception as exc:  # record and go on; a sticky CUDA error will fail the next row too
                logger.exception("row %s failed", key)
                run.skip(key, f"row failed: {type(exc).__name__}: {exc}"[:500])
                failures += 1
                if failures >= 2:
                    raise RuntimeError("two rows in a row failed; stopping the baseline") from exc
                continue
            failures = 0
            if summary.get("s_per_image"):
                last_s_per_px = summary["s_per_image"] / (w * h)


def _row(plan: BaselinePlan, pipe, device: str, run: RunFile, sampler, key: dict) -> dict:
    w, h, bs = key["width"], key["height"], key["batch_size"]
    for _ in range(plan.warmup):
        _call(pipe, device, plan.prompt, plan.seed, bs, w, h, plan.warmup_steps or plan.steps)
    _sync(device)
    records = []
    for i in range(plan.repeats):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        _call(pipe, device, plan.prompt, plan.seed, bs, w, h, plan.steps)
        _sync(device)
        t1 = time.time()
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        records.append(
            {
                "index": i,
                "phase": "measure",
                "scheduled_t": t0,
                "sent_t": t0,
                "done_t": t1,
                "latency_s": t1 - t0,
                "status": None,
                "outcome": "ok",
                "images": bs,
                "batch_size": bs,
                "inference_ms": (t1 - t0) * 1e3,
                "peak_memory_mb": peak,
                "replica": f"call-{i}",
                "seed": plan.seed,
                "steps": plan.steps,
            }
        )
    stats = request_stats(records)
    samples = sampler.window(stats["window_start"], stats["window_end"]) if sampler else []
    extra = {"load_mode": "in-process", "concurrency": 1, "effective_max_batch": bs, "warmup_requests": plan.warmup}
    summary = run.add_row(key, stats, samples, extra, records)
    log_row(summary)
    return summary
