"""Pure decisions behind the batch size: VRAM tier, memory clamp per image area, OOM caps per area, grouping by
shape."""

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


@dataclass(frozen=True)
class AreaMemoryModel:
    """Peak memory per stage as a function of the image area and the batch size, from batch 1 and 2 measured at two
    areas (`small` and `large`, pixels per image): the batch-1 peak and the per-image growth are each linear in the
    area (activations, latents and the decode all scale with pixels; weights do not). One measured area: that area's
    line for every area at or below it (an upper bound: smaller images need less).

    `max_batch(area)`: the largest batch whose predicted peak keeps every stage under the budget; at least 1.
    `one_above`: areas above it run alone (the probe found batch 2 out of memory at the largest area and measured a
    middle one instead: nothing is known between the two but that the top does not batch).
    """

    small_area: int
    large_area: int
    small: dict[str, MemoryClamp]  # per stage
    large: dict[str, MemoryClamp]
    one_above: int | None = None

    def _at(self, stage: str, area: int) -> tuple[float, float, int]:
        lo, hi = self.small[stage], self.large[stage]
        if self.large_area == self.small_area:
            return float(hi.peak_batch1_bytes), float(hi.per_image_bytes), hi.budget_bytes
        t = (area - self.small_area) / (self.large_area - self.small_area)
        peak1 = lo.peak_batch1_bytes + t * (hi.peak_batch1_bytes - lo.peak_batch1_bytes)
        per = lo.per_image_bytes + t * (hi.per_image_bytes - lo.per_image_bytes)
        # below the small area a line may fall under what the small area needs per image: never predict less than
        # the smaller of the two measured values scaled down by area
        floor = min(lo.per_image_bytes, hi.per_image_bytes) * min(1.0, area / max(self.small_area, 1))
        return peak1, max(per, floor, 1.0), hi.budget_bytes

    def predicted_peak(self, area: int, batch: int) -> int:
        return int(max(p1 + (batch - 1) * per for p1, per, _ in (self._at(k, area) for k in self.large)))

    def max_batch(self, area: int) -> int:
        if self.one_above is not None and area > self.one_above:
            return 1
        caps = []
        for stage in self.large:
            peak1, per, budget = self._at(stage, area)
            caps.append(1 if peak1 > budget else 1 + int((budget - peak1) // per))
        return max(1, min(caps, default=1))

    def as_dict(self) -> dict:
        return {
            "areas_measured": [self.small_area, self.large_area],
            "stage_peak_batch1_bytes": {
                k: [self.small[k].peak_batch1_bytes, self.large[k].peak_batch1_bytes] for k in self.large
            },
            "stage_per_image_bytes": {
                k: [self.small[k].per_image_bytes, self.large[k].per_image_bytes] for k in self.large
            },
            "budget_bytes": next(iter(self.large.values())).budget_bytes if self.large else None,
            "batch_1_above_area": self.one_above,
        }


def group_by_shape(items: Sequence[T], shape_of: Callable[[T], tuple]) -> dict[tuple, list[int]]:
    """Indices of items per shape, in arrival order: different shapes never share a pipeline call."""
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(shape_of(item), []).append(i)
    return groups


def effective_batch_size(desired: int, memory_cap: int | None, oom_cap: int | None) -> int:
    """The smallest of what the tier (or user_config) wants, what memory allows, and what OOMs taught; at least 1."""
    return max(1, min(c for c in (desired, memory_cap, oom_cap) if c is not None))


def oom_cap_for_area(oom_caps: dict[int, int], area: int) -> int | None:
    """An OOM at some area also bounds every larger area (a bigger image needs more memory): the smallest cap recorded
    at this area or below; None where no OOM taught anything."""
    caps = [cap for a, cap in oom_caps.items() if a <= area]
    return min(caps) if caps else None


def chunks_of(items: Sequence[T], size: int) -> list[list[T]]:
    """Split a same-shape group into consecutive chunks of at most `size` (the shape's own max batch)."""
    size = max(1, size)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def cap_after_oom(oom_cap: int | None, smallest_failed: int, largest_ok: int) -> int:
    """A batch of `smallest_failed` ran out of memory while `largest_ok` ran: never try the failed size again."""
    new_cap = max(1, min(largest_ok, smallest_failed - 1))
    return new_cap if oom_cap is None else min(oom_cap, new_cap)


@dataclass
class BatchingState:
    """Why the replica runs the batch sizes it runs (shown in /info and logged).

    A shape's max batch = min(desired (tier or user_config), memory cap for its area, OOM cap for its area).
    `effective_max_batch` is the largest of those over the allowed areas (the smallest area's): what @serve.batch
    collects; the executor splits a same-shape group into chunks of its own shape's cap.
    """

    vram_gb: float | None = None
    emulated: bool = False
    tier: Tier | None = None
    memory_mode: MemoryMode | None = None
    desired_max_batch: int = 1
    memory_cap: int | None = None  # at the largest allowed area (or every area when there is no per-area model)
    oom_cap: int | None = None  # the lowest OOM cap of any area
    effective_max_batch: int = 1
    batch_wait_timeout_s: float = 0.05
    clamp: dict[str, MemoryClamp] = field(default_factory=dict)  # per pipeline stage, at the largest area
    memory_model: AreaMemoryModel | None = None
    oom_caps: dict[int, int] = field(default_factory=dict)  # image area (pixels) -> cap after an OOM at that area
    min_area: int = 0  # smallest allowed area: its cap is the largest, so @serve.batch's
    shown_shapes: tuple[tuple[int, int], ...] = ()  # the shapes /info lists a max batch for
    oom_splits: int = 0

    def memory_cap_for(self, area: int) -> int | None:
        if self.memory_model is not None:
            return self.memory_model.max_batch(area)
        return self.memory_cap

    def max_batch_for(self, area: int) -> int:
        oom = oom_cap_for_area(self.oom_caps, area) if self.oom_caps else self.oom_cap  # None/uniform: every area
        return effective_batch_size(self.desired_max_batch, self.memory_cap_for(area), oom)

    def lower_after_oom(self, area: int, smallest_failed: int, largest_ok: int) -> None:
        self.oom_caps[area] = cap_after_oom(self.oom_caps.get(area), smallest_failed, largest_ok)
        self.oom_cap = min(self.oom_caps.values())

    def update_effective(self) -> int:
        self.effective_max_batch = self.max_batch_for(self.min_area)
        return self.effective_max_batch

    def max_batch_by_shape(self) -> dict[str, int]:
        return {f"{w}x{h}": self.max_batch_for(w * h) for w, h in self.shown_shapes}

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tier"] = self.tier.model_dump(mode="json") if self.tier else None
        d["memory_mode"] = self.memory_mode.value if self.memory_mode else None
        d["memory_model"] = self.memory_model.as_dict() if self.memory_model else None
        d["oom_caps"] = {str(a): c for a, c in sorted(self.oom_caps.items())}
        d["shown_shapes"] = None
        d["max_batch_by_shape"] = self.max_batch_by_shape()
        if self.memory_model is not None:  # at the largest measured area and its own max batch
            area = self.memory_model.large_area
            d["predicted_peak_at_largest_area_bytes"] = self.memory_model.predicted_peak(area, self.max_batch_for(area))
        elif self.clamp:
            d["predicted_peak_at_effective_bytes"] = max(
                c.predicted_peak(self.effective_max_batch) for c in self.clamp.values()
            )
        return d
