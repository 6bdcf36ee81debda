"""Capacity plan from a latency-vs-offered-load curve: the highest rate whose p99 meets a target, and the replicas a
target rate needs. Pure arithmetic on the loads' summaries, so the JSON's plan can be recomputed from its rows."""

from __future__ import annotations

import math


def _meets(load: dict, target_s: float) -> bool:
    """Every request answered (no 503, no error) and p99 of their latency within the target."""
    p99 = load.get("latency_p99_s")
    return load["sent"] > 0 and load["ok"] == load["sent"] and p99 is not None and p99 <= target_s


def _why_not(load: dict, target_s: float) -> str:
    p99, failed = load.get("latency_p99_s"), load["sent"] - load["ok"]
    parts = [f"p99 {p99:.2f} s > {target_s:g} s"] if p99 is not None and p99 > target_s else []
    parts += [f"{failed} of {load['sent']} not answered (503 or error)"] if failed else []
    return ", ".join(parts) or "no requests"


def max_rate_within(loads: list[dict], target_s: float) -> dict:
    """The highest offered rate (req/s) whose p99 <= `target_s`, from loads with `fraction`, `offered_rate_rps`,
    `latency_p99_s`, `sent`, `ok`. Walks up the loads to the first that misses and interpolates p99 linearly between
    it and the last that met the target; a miss by failed requests alone gives the last met rate (nothing to
    interpolate). A load that meets the target again above the first miss is ignored (the first crossing counts).

    `basis`: interpolated | measured (the last met load) | lower bound (every load met it: measure higher) | none
    (the lowest load already misses: measure lower)."""
    pts = sorted(loads, key=lambda p: p["offered_rate_rps"])
    if not pts:
        return {"rate_rps": None, "basis": "none", "how": "no loads measured"}
    if not _meets(pts[0], target_s):
        low = pts[0]
        how = f"the lowest load ({low['fraction']:g}x capacity) already misses: {_why_not(low, target_s)}"
        return {"rate_rps": None, "basis": "none", "how": how}
    last = next((i - 1 for i, p in enumerate(pts) if not _meets(p, target_s)), len(pts) - 1)
    lo = pts[last]
    if last == len(pts) - 1:
        how = f"every load met the target, up to the highest ({lo['fraction']:g}x capacity): measure higher ones"
        return {"rate_rps": lo["offered_rate_rps"], "basis": "lower bound", "how": how}
    hi = pts[last + 1]
    p_lo, p_hi = lo["latency_p99_s"], hi.get("latency_p99_s")
    if p_hi is None or p_hi <= target_s:
        how = f"measured at {lo['fraction']:g}x; the next load ({hi['fraction']:g}x) misses: {_why_not(hi, target_s)}"
        return {"rate_rps": lo["offered_rate_rps"], "basis": "measured", "how": how}
    r_lo, r_hi = lo["offered_rate_rps"], hi["offered_rate_rps"]
    rate = r_lo + (target_s - p_lo) / (p_hi - p_lo) * (r_hi - r_lo)
    how = (
        f"p99 linear in offered rate between {lo['fraction']:g}x (p99 {p_lo:.2f} s) and "
        f"{hi['fraction']:g}x (p99 {p_hi:.2f} s)"
    )
    return {"rate_rps": rate, "basis": "interpolated", "how": how}


def replicas_needed(target_rate_rps: float | None, per_replica_rps: float | None) -> int | None:
    if not target_rate_rps or not per_replica_rps:
        return None
    return math.ceil(round(target_rate_rps / per_replica_rps, 9))  # round: 0.3 / 0.1 is 2.9999999999999996


def capacity_plan(
    loads: list[dict],
    capacity_img_s: float,
    target_s: float,
    target_rate_rps: float | None,
    generator_replicas: int = 1,
) -> dict:
    """The plan for one variant and workload: the service's highest rate within the p99 target, that per Generator
    replica (the service's rate / its replicas), as a fraction of the measured capacity, and
    ceil(target rate / per-replica rate) replicas."""
    found = max_rate_within(loads, target_s)
    rate = found["rate_rps"]
    per_replica = rate / generator_replicas if rate is not None else None
    return {
        "p99_target_s": target_s,
        "capacity_img_s": capacity_img_s,
        "max_rate_rps": rate,
        "max_fraction_of_capacity": rate / capacity_img_s if rate is not None and capacity_img_s else None,
        "basis": found["basis"],
        "how": found["how"],
        "generator_replicas": generator_replicas,
        "per_replica_rate_rps": per_replica,
        "target_rate_rps": target_rate_rps,
        "replicas_needed": replicas_needed(target_rate_rps, per_replica),
    }
