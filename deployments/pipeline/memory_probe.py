"""Cap the batch size by measured peak memory: run batch 1 and 2 at the largest allowed size, fit a line per stage."""

from __future__ import annotations

import logging

import torch

from deployments.batching.oom_split import is_oom
from deployments.batching.policy import MemoryClamp
from deployments.pipeline.runner import Shape, ZImageRunner

logger = logging.getLogger("ray.serve")


def usable_capacity_bytes(emulated_vram_gb: float | None) -> int:
    """What torch may use: free + its own reserve; on an emulated card, its size minus what is not torch's."""
    free, total = torch.cuda.mem_get_info()
    if emulated_vram_gb:
        outside_torch = total - free - torch.cuda.memory_reserved()
        return int(emulated_vram_gb * 1e9) - outside_torch
    return free + torch.cuda.memory_reserved()


def measure_memory_clamp(
    runner: ZImageRunner, side: int, margin_gb: float, emulated_vram_gb: float | None, what: str
) -> tuple[dict[str, MemoryClamp], int]:
    """Per-stage clamps and the batch cap they allow. Batch 1 must fit (else the replica cannot serve: raise);
    an OOM at batch 2 caps the batch at 1. Peak memory does not depend on the step count, so 2 steps suffice."""
    shape = Shape(side, side, 2)
    peaks: list[dict[str, int] | None] = []
    for b in (1, 2):
        torch.cuda.empty_cache()
        try:
            peaks.append(runner.run(["warm-up"] * b, list(range(b)), shape).stage_peak_bytes)
        except Exception as exc:
            if not is_oom(exc) or b == 1:
                raise RuntimeError(f"{what}: batch {b} at {side}x{side} failed: {exc}") from exc
            peaks.append(None)
    torch.cuda.empty_cache()
    capacity = usable_capacity_bytes(emulated_vram_gb)
    budget = capacity - int(margin_gb * 1e9)
    if peaks[1] is None:
        clamp, cap = {}, 1
    else:  # peak(b) = max over stages of a line fitted per stage; the cap keeps every stage under the budget
        clamp = {k: MemoryClamp(peaks[0][k], peaks[1][k], budget) for k in peaks[0]}
        cap = min(c.max_batch for c in clamp.values())
    logger.info(
        "memory clamp at %dx%d: stage peaks GB @1 %s, @2 %s; budget %.2f GB (capacity %.2f - margin %.2f) -> cap %d",
        side,
        side,
        {k: round(v / 1e9, 2) for k, v in peaks[0].items()},
        {k: round(v / 1e9, 2) for k, v in peaks[1].items()} if peaks[1] else "OOM",
        budget / 1e9,
        capacity / 1e9,
        margin_gb,
        cap,
    )
    return clamp, cap
