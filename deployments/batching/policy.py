"""Pure decisions behind the batch size: VRAM tier, memory clamp, grouping by shape."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from deployments.config import MemoryMode, Tier

T = TypeVar("T")


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


def effective_batch_size(desired: int, memory_cap: int | None, oom_cap: int | None) -> int:
    """The smallest of what the tier (or user_config) wants, what memory allows, and what OOMs taught; at least 1."""
    return max(1, min(c for c in (desired, memory_cap, oom_cap) if c is not None))


def cap_after_oom(oom_cap: int | None, smallest_failed: int, largest_ok: int) -> int:
    """A batch of `smallest_failed` ran out of memory while `largest_ok` ran: never try the failed size again."""
    new_cap = max(1, min(largest_ok, smallest_failed - 1))
    return new_cap if oom_cap is None else min(oom_cap, new_cap)


@dataclass
class BatchingState:
    """Why the replica runs the batch size it runs (shown in /info and logged)."""

    vram_gb: float | None = None
    emulated: bool = False
    tier: Tier | None = None
    memory_mode: MemoryMode | None = None
    desired_max_batch: int = 1
    memory_cap: int | None = None
    oom_cap: int | None = None
    effective_max_batch: int = 1
    batch_wait_timeout_s: float = 0.05
    clamp: dict[str, MemoryClamp] = field(default_factory=dict)  # per pipeline stage
    oom_splits: int = 0

    def update_effective(self) -> int:
        self.effective_max_batch = effective_batch_size(self.desired_max_batch, self.memory_cap, self.oom_cap)
        return self.effective_max_batch

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tier"] = self.tier.model_dump(mode="json") if self.tier else None
        d["memory_mode"] = self.memory_mode.value if self.memory_mode else None
        if self.clamp:
            d["predicted_peak_at_effective_bytes"] = max(
                c.predicted_peak(self.effective_max_batch) for c in self.clamp.values()
            )
        return d
