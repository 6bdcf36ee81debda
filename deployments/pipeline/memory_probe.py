"""Cap the batch size of every image area by measured peak memory: batch 1 and 2 at the largest allowed area and at a
small one, a line per stage over the batch at each, interpolated over the area (batching/policy.py AreaMemoryModel)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from deployments.batching.oom_split import is_oom
from deployments.batching.policy import AreaMemoryModel, MemoryClamp
from deployments.config import RequestLimits
from deployments.options import EmulatedMemory
from deployments.pipeline.runner import Shape, ZImageRunner

logger = logging.getLogger("ray.serve")

# Peak memory does not depend on the step count: 2 steps measure it (and compile the batch-1 and batch>1 graphs)
PROBE_STEPS = 2
SMALL_PROBE_SIDE = 512  # the small area measured (or min_side when larger): Z-Image's smallest trained size

RunPeaks = Callable[[int, Shape], dict[str, int]]


def usable_capacity_bytes(emulated_vram_gb: float | None) -> int:
    """What torch may use: free + its own reserve; on an emulated card, its size minus what is not torch's."""
    free, total = torch.cuda.mem_get_info()
    if emulated_vram_gb:
        outside_torch = total - free - torch.cuda.memory_reserved()
        return int(emulated_vram_gb * 1e9) - outside_torch
    return free + torch.cuda.memory_reserved()


def probe_sides(limits: RequestLimits) -> tuple[int, int]:
    """(small, large) square sides measured: the largest allowed square, and 512 (the smallest side when the largest
    is 512 or less)."""
    large = limits.largest_square()
    m = limits.side_multiple
    min_side = -(-limits.min_side // m) * m
    small = SMALL_PROBE_SIDE if large > SMALL_PROBE_SIDE else min_side
    return max(min(small, large), min_side), large


def middle_side(small: int, large: int, multiple: int) -> int | None:
    """The side between the two probed ones (their geometric mean on the size grid), if there is room for one."""
    side = int((small * large) ** 0.5) // multiple * multiple
    return side if small < side < large else None


def measure_area_memory(
    run_peaks: RunPeaks, limits: RequestLimits, budget_bytes: int | Callable[[], int], what: str
) -> AreaMemoryModel:
    """Batch 1 and 2 at the small and the large side. Batch 1 at the largest area must fit (else this card cannot
    serve the configured limits: raise, naming `limits.max_pixels`). An OOM at batch 2 caps that area at 1; then a
    middle side is measured too, and areas up to it batch from the small-to-middle line (a line ending in an OOM
    would cap the mid sizes at 1 as well: on a 16 GB card 1024² would never batch because 2048² cannot).
    `budget_bytes` may be a callable, read after the runs (compiling allocates outside torch's pool)."""
    small_side, large_side = probe_sides(limits)
    measured: dict[int, list[dict[str, int] | None]] = {}
    for side in dict.fromkeys((large_side, small_side)):
        measured[side] = _probe_side(run_peaks, side, what)
    mid = middle_side(small_side, large_side, limits.side_multiple)
    if measured[large_side][1] is None and mid is not None:
        measured[mid] = _probe_side(run_peaks, mid, what)
    budget = budget_bytes() if callable(budget_bytes) else budget_bytes
    clamps = {side: _clamps(side, p1, p2, budget) for side, (p1, p2) in measured.items()}
    if mid in measured and measured[mid][1] is not None:
        return AreaMemoryModel(small_side**2, mid**2, clamps[small_side], clamps[mid], one_above=mid**2)
    return AreaMemoryModel(small_side**2, large_side**2, clamps[small_side], clamps[large_side])


def _probe_side(run_peaks: RunPeaks, side: int, what: str) -> list[dict[str, int] | None]:
    """Stage peaks at batch 1 and 2 (None: batch 2 ran out of memory); batch 1 must fit."""
    shape = Shape(side, side, PROBE_STEPS)
    peaks: list[dict[str, int] | None] = []
    for b in (1, 2):
        try:
            peaks.append(run_peaks(b, shape))
        except Exception as exc:
            if not is_oom(exc) or b == 1:
                hint = " (lower limits.max_pixels / max_side for this card)" if is_oom(exc) else ""
                raise RuntimeError(f"{what}: batch {b} at {side}x{side} failed{hint}: {exc}") from exc
            peaks.append(None)
    return peaks


def _clamps(side: int, p1: dict[str, int], p2: dict[str, int] | None, budget: int) -> dict[str, MemoryClamp]:
    # batch 2 out of memory: a per-image growth of the whole budget caps this area at 1
    clamps = {k: MemoryClamp(p1[k], p2[k] if p2 else p1[k] + budget, budget) for k in p1}
    logger.info(
        "memory at %dx%d: stage peaks GB @1 %s, @2 %s; budget %.2f GB -> cap %d",
        side,
        side,
        {k: round(v / 1e9, 2) for k, v in p1.items()},
        {k: round(v / 1e9, 2) for k, v in p2.items()} if p2 else "OOM",
        budget / 1e9,
        min((c.max_batch for c in clamps.values()), default=1),
    )
    return clamps


def gpu_run_peaks(runner: ZImageRunner) -> RunPeaks:
    def run(batch: int, shape: Shape) -> dict[str, int]:
        torch.cuda.empty_cache()
        try:
            return runner.run(["warm-up"] * batch, list(range(batch)), shape).stage_peak_bytes
        finally:
            torch.cuda.empty_cache()

    return run


def emulated_run_peaks(mem: EmulatedMemory) -> RunPeaks:
    """Tests: a linear memory model instead of a GPU's measured peaks (nothing runs)."""

    def run(batch: int, shape: Shape) -> dict[str, int]:
        return {"denoise": int(mem.fixed_bytes + batch * shape.width * shape.height * mem.bytes_per_pixel)}

    return run


def measure_memory_model(
    runner: ZImageRunner, limits: RequestLimits, margin_gb: float, emulated_vram_gb: float | None, what: str
) -> AreaMemoryModel:
    """On the GPU: the per-area model under the card's usable memory minus `margin_gb`."""

    def budget() -> int:
        torch.cuda.empty_cache()
        return usable_capacity_bytes(emulated_vram_gb) - int(margin_gb * 1e9)

    return measure_area_memory(gpu_run_peaks(runner), limits, budget, what)
