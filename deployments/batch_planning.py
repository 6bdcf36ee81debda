"""Pure decisions behind batching: VRAM tier, memory clamp, grouping by shape, OOM split-retry."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from deployments.config import Tier

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def select_tier(total_vram_gb: float, tiers: Sequence[Tier]) -> Tier:
    """First tier (sorted by size) whose `max_vram_gb` covers this card; the largest tier otherwise."""
    for tier in sorted(tiers, key=lambda t: t.max_vram_gb):
        if total_vram_gb <= tier.max_vram_gb:
            return tier
    return max(tiers, key=lambda t: t.max_vram_gb)


@dataclass(frozen=True)
class MemoryClamp:
    """Linear fit of peak memory over batch size from two measurements, and the largest batch under budget."""

    peak_batch1_bytes: int
    peak_batch2_bytes: int
    budget_bytes: int

    @property
    def per_image_bytes(self) -> int:
        return max(self.peak_batch2_bytes - self.peak_batch1_bytes, 1)

    def predicted_peak(self, batch: int) -> int:
        return self.peak_batch1_bytes + (batch - 1) * self.per_image_bytes

    @property
    def max_batch(self) -> int:
        if self.peak_batch1_bytes > self.budget_bytes:
            return 1  # batch 1 is the floor: it ran during the measurement
        return max(1, 1 + (self.budget_bytes - self.peak_batch1_bytes) // self.per_image_bytes)


def group_by_shape(items: Sequence[T], shape_of: Callable[[T], tuple]) -> dict[tuple, list[int]]:
    """Indices of items per shape, in arrival order: different shapes never share a pipeline call."""
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(shape_of(item), []).append(i)
    return groups


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


@dataclass
class SplitOutcome(Generic[R]):
    results: list[R]
    oom_splits: int = 0
    largest_failed: int | None = None  # smallest batch that hit OOM although all its items fit alone (None: none)
    sizes_run: list[int] = field(default_factory=list)
    failed_alone: int = 0  # items that hit OOM even alone (answered by `on_fail_alone`)


def run_with_oom_split(
    items: Sequence[T],
    run: Callable[[Sequence[T]], list[R]],
    on_oom: Callable[[], None] = lambda: None,
    on_fail_alone: Callable[[T, BaseException], R] | None = None,
) -> SplitOutcome[R]:
    """Run `items` as one batch; on CUDA OOM split in halves and retry each half, down to batch 1.

    A request that fails alone would not succeed in any batch: without `on_fail_alone` its error re-raises (failing
    every item); with it, that item's result is `on_fail_alone(item, exc)` and the others still run. Only batches
    whose items all succeeded in smaller batches count as too large (`largest_failed`): a batch that failed because
    it held such a request says nothing about the batch size.
    """
    outcome: SplitOutcome[R] = SplitOutcome(results=[])

    def attempt(chunk: Sequence[T]) -> tuple[list[R], bool]:
        try:
            out = run(chunk)
            outcome.sizes_run.append(len(chunk))
            return out, True
        except Exception as exc:
            if not is_oom(exc) or (len(chunk) == 1 and on_fail_alone is None):
                raise
            on_oom()
            if len(chunk) == 1:
                outcome.failed_alone += 1
                logger.warning("CUDA OOM at batch 1: failing this request alone")
                return [on_fail_alone(chunk[0], exc)], False
            outcome.oom_splits += 1
            half = (len(chunk) + 1) // 2
            logger.warning("CUDA OOM at batch %d: retrying as %d + %d", len(chunk), half, len(chunk) - half)
            left, left_ok = attempt(chunk[:half])
            right, right_ok = attempt(chunk[half:])
            if left_ok and right_ok and (outcome.largest_failed is None or len(chunk) < outcome.largest_failed):
                outcome.largest_failed = len(chunk)
            return left + right, left_ok and right_ok

    outcome.results = attempt(list(items))[0]
    return outcome
