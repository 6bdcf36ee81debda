"""CUDA OOM split-retry: a batch that runs out of memory is halved and retried, down to batch 1."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


@dataclass
class SplitOutcome(Generic[R]):
    results: list[R]
    oom_splits: int = 0
    largest_failed: int | None = None  # smallest batch that hit OOM although all its items fit alone (None: none)
    sizes_run: list[int] = field(default_factory=list)


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
