"""The pure parts of a latency-vs-offered-load run: each variant's user_config change, the open-loop schedule at
fractions of measured capacity, and one load's numbers from its request records (no HTTP here, so unit-testable)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.loadgen import poisson_offsets
from bench.stats import distinct_batches, percentile, request_stats

DEFAULT_LOADS = (0.25, 0.5, 0.8, 0.95, 1.1)


def variant_changes(current: dict, overlays: dict[str, dict]) -> tuple[dict[str, dict], dict]:
    """Per variant, the user_config change to PUT: its overlay over the deployed values, where a key that only another
    variant sets goes back to its deployed value (variants do not leak into each other). Also returns the deployed
    values of every key touched, to restore at the end. A key the Generator does not have (its /info `user_config`
    lists them all) is refused here, before a PUT the replica would reject."""
    touched = list(dict.fromkeys(k for overlay in overlays.values() for k in overlay))
    unknown = [k for k in touched if current and k not in current]
    if unknown:
        raise ValueError(f"the Generator's user_config has no field(s) {unknown}; it has {sorted(current)}")
    original = {k: current.get(k) for k in touched}
    return {name: {**original, **overlay} for name, overlay in overlays.items()}, original


@dataclass(frozen=True)
class LoadPoint:
    """One open-loop load: `fraction` of capacity, its Poisson rate and the planned send times (seconds)."""

    fraction: float
    rate_rps: float
    offsets_s: tuple[float, ...]

    @property
    def planned_s(self) -> float:
        return self.offsets_s[-1] if self.offsets_s else 0.0


def load_schedule(capacity_img_s: float, fractions, requests: int, seed: int) -> list[LoadPoint]:
    """One load per fraction of `capacity_img_s` (one image per request, so img/s = requests/s), `requests` seeded
    Poisson arrivals each. The same seed gives every load the same arrival pattern, stretched to its rate, so loads
    differ in rate only. These are the offsets the load generator draws (same seed, same limit)."""
    if not capacity_img_s or capacity_img_s <= 0:
        raise ValueError(f"capacity must be > 0 img/s, not {capacity_img_s}")
    if any(f <= 0 for f in fractions) or requests < 1:
        raise ValueError(f"need fractions > 0 and requests >= 1 (got {list(fractions)}, {requests})")
    points = []
    for f in sorted(fractions):
        rate = f * capacity_img_s
        points.append(LoadPoint(f, rate, tuple(poisson_offsets(rate, math.inf, seed, requests))))
    return points


def shape_of(record: dict) -> str:
    return f"{record['width']}x{record['height']}"


def load_summary(records: list[dict]) -> dict:
    """One load's measured numbers: counts (sent = ok + rejected + errors), latency percentiles (answered requests,
    from the scheduled send), the rate really sent and answered, queue wait (X-Queue-Wait-Ms) and, per shape, the
    mean batch (X-Batch-Size over distinct pipeline calls). Records carry `width`/`height` (the shape mix's)."""
    stats = request_stats(records)
    stats["sent_rate_rps"] = stats.pop("offered_rate_rps")  # bench run's name for it; here "offered" is the plan's
    ok = [r for r in records if r["outcome"] == "ok"]
    waits = [r["queue_wait_ms"] for r in ok if r.get("queue_wait_ms") is not None]
    by_shape = {}
    for shape in dict.fromkeys(shape_of(r) for r in records):
        sent = [r for r in records if shape_of(r) == shape]
        answered = [r for r in sent if r["outcome"] == "ok"]
        batches = distinct_batches(answered)
        by_shape[shape] = {
            "sent": len(sent),
            "ok": len(answered),
            "batches": len(batches),
            "mean_batch_size": sum(b for b, _ in batches) / len(batches) if batches else None,
            "latency_p99_s": percentile([r["latency_s"] for r in answered], 99),
        }
    return {
        **stats,
        "queue_wait_p90_ms": percentile(waits, 90),
        "queue_wait_p99_ms": percentile(waits, 99),
        "by_shape": by_shape,
    }
