"""Per-row numbers from raw request records: counts that reconcile, latency percentiles, batches, throughput."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

ERROR_OUTCOMES = ("error", "timeout", "cancelled")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default, 'type 7'); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.fmean(vals) if vals else None


def count_outcomes(records: Sequence[dict]) -> dict:
    """sent = ok + rejected + errors, always (every record was sent; errors include timeouts and cancellations)."""
    ok = sum(r["outcome"] == "ok" for r in records)
    rejected = sum(r["outcome"] == "rejected" for r in records)
    errors = sum(r["outcome"] in ERROR_OUTCOMES for r in records)
    return {"sent": len(records), "ok": ok, "rejected": rejected, "errors": errors}


def distinct_batches(records: Sequence[dict]) -> list[tuple[int, float]]:
    """(batch size, inference ms) per pipeline call: requests of one batch share replica, size and inference time."""
    seen = {}
    for r in records:
        if r["outcome"] == "ok" and r.get("batch_size") and r.get("inference_ms") is not None:
            seen[(r.get("replica"), r["batch_size"], r["inference_ms"])] = (r["batch_size"], r["inference_ms"])
    return list(seen.values())


def steady_throughput(ok: Sequence[dict]) -> float | None:
    """Images per second from the first batch's answer to the last one's, without the first batch's images: the
    rate once batches run back to back. The plain window starts at the first send, so it also holds the ramp (a burst
    of clients reaches the replica over tens of ms and may first make a partial batch) and one HTTP round trip; rows
    of few batches understate the steady rate by that. A batch's answer = its last request's; a batch counts all its
    images (the last one may also hold unmeasured cooldown requests: they ran in the window too)."""
    done: dict[tuple, float] = {}
    for r in ok:
        if r.get("batch_size") and r.get("inference_ms") is not None and r.get("done_t") is not None:
            key = (r.get("replica"), r["batch_size"], r["inference_ms"])
            done[key] = max(done.get(key, 0.0), r["done_t"])
    batches = sorted((t, key[1]) for key, t in done.items())
    if len(batches) < 2 or batches[-1][0] <= batches[0][0]:
        return None
    return sum(n for _, n in batches[1:]) / (batches[-1][0] - batches[0][0])


def request_stats(records: Sequence[dict]) -> dict:
    """Row statistics over the measured phase (warm-up records must be filtered out by the caller)."""
    counts = count_outcomes(records)
    ok = [r for r in records if r["outcome"] == "ok"]
    images = sum(r.get("images", 1) for r in ok)  # 1 per HTTP request; bs per in-process baseline call
    lat = [r["latency_s"] for r in ok]
    start = min((r["scheduled_t"] for r in records), default=0.0)
    end = max((r["done_t"] for r in records if r.get("done_t") is not None), default=start)
    wall = end - start
    batches = distinct_batches(ok)
    images_in_batches = sum(b for b, _ in batches)
    gpu_ms = sum(ms for _, ms in batches)
    peaks = [r["peak_memory_mb"] for r in ok if r.get("peak_memory_mb")]  # the service reports 0 on CPU
    sends = sorted(r["scheduled_t"] for r in records)
    lags = [r["sent_t"] - r["scheduled_t"] for r in records]
    out = {
        **counts,
        "images": images,
        "window_start": start,
        "window_end": end,
        "wall_s": wall,
        "throughput_img_s": images / wall if wall > 0 else None,
        "steady_throughput_img_s": steady_throughput(ok),
        "s_per_image": wall / images if images else None,
        "offered_rate_rps": (len(sends) - 1) / (sends[-1] - sends[0]) if sends and sends[-1] > sends[0] else None,
        "latency_mean_s": _mean(lat),
        "latency_p50_s": percentile(lat, 50),
        "latency_p90_s": percentile(lat, 90),
        "latency_p99_s": percentile(lat, 99),
        "latency_max_s": max(lat) if lat else None,
        "send_lag_p99_s": percentile(lags, 99),
        "send_lag_max_s": max(lags) if lags else None,
        "queue_wait_p50_ms": percentile([r["queue_wait_ms"] for r in ok if r.get("queue_wait_ms") is not None], 50),
        "batches": len(batches),
        "mean_batch_size": images_in_batches / len(batches) if batches else None,
        "batch_latency_s": gpu_ms / len(batches) / 1e3 if batches else None,
        "gpu_s_per_image": gpu_ms / images_in_batches / 1e3 if images_in_batches else None,
        "peak_vram_torch_mb": max(peaks, default=None),
    }
    return out


def compute_efficiency(row: dict, dit_flops_per_image_step: float, steps: int, peak_tflops: float | None) -> dict:
    """DiT TFLOP/s (useful DiT work only: text encoder and VAE excluded), MFU and images per kJ."""
    thr = row.get("throughput_img_s")
    tflops = thr * steps * dit_flops_per_image_step / 1e12 if thr else None
    energy = row.get("energy_j")
    return {
        "dit_tflop_per_image": steps * dit_flops_per_image_step / 1e12,
        "dit_tflops": tflops,
        "mfu_pct": 100 * tflops / peak_tflops if tflops and peak_tflops else None,
        "images_per_kj": row["images"] / (energy / 1000) if energy and row.get("images") else None,
    }
