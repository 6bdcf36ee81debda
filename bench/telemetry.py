"""GPU telemetry for the bench: a 10 Hz NVML/GPM sampler beside the service, summarised per row by time window.

A row's samples are those whose timestamp falls inside the row's measured window (first scheduled send -> last
answer), so warm-up, reconfiguration and idle time between rows are excluded. Without an NVIDIA GPU every telemetry
column is "n/a" and the reason is recorded.
"""

from __future__ import annotations

import logging
import statistics
import time

from deployments.observability.gpu_sampler import GpuSample, GpuSampler

logger = logging.getLogger(__name__)


class BenchGpuSampler(GpuSampler):
    """GpuSampler for the bench: NVML readings at `hz`, GPM at most every `gpm_min_interval_s`, and a failed GPM read
    keeps the NVML readings (the base class drops the whole sample).

    NVML documents that two GPM samples should be more than 100 ms apart (the counters' refresh rate), so at 10 Hz
    the SM/tensor activity comes from every other sample (200 ms intervals); window means skip the samples without.
    """

    def __init__(self, handle, hz: float = 10.0, gpm_min_interval_s: float = 0.2, **kwargs):
        super().__init__(handle, hz=hz, **kwargs)
        self.gpm_min_interval_s = gpm_min_interval_s
        self.gpm_errors = 0
        self.gpm_last_error: str | None = None
        self._gpm_last = time.monotonic()  # _Gpm took its first sample in the constructor

    def sample(self) -> GpuSample:
        gpm, self._gpm = self._gpm, None
        try:
            s = super().sample()
        finally:
            self._gpm = gpm
        now = time.monotonic()
        if gpm is not None and now - self._gpm_last >= self.gpm_min_interval_s:
            self._gpm_last = now
            try:
                for key, value in gpm.read().items():
                    setattr(s, key, value)
            except Exception as exc:  # keep util/memory/power even if GPM misbehaves
                self.gpm_errors += 1
                self.gpm_last_error = f"{type(exc).__name__}: {exc}"
        return s


def open_sampler(hz: float = 10.0, gpu_index: int = 0) -> tuple[BenchGpuSampler | None, str | None]:
    """(started sampler, None) on an NVIDIA GPU, else (None, why not)."""
    try:
        from deployments.observability.gpu_info import nvml_handle_for_visible_device

        handle = nvml_handle_for_visible_device(gpu_index)
        sampler = BenchGpuSampler(handle, hz=hz)
    except Exception as exc:
        return None, f"no NVIDIA GPU visible to NVML ({type(exc).__name__}: {exc})"
    if sampler.gpm_reason:
        logger.info("SM/tensor activity n/a: %s", sampler.gpm_reason)
    return sampler.start(), None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def summarize_window(samples: list[GpuSample], start: float, end: float) -> dict:
    """Means over the window; energy from the board's energy counter, scaled to the window length."""
    if not samples:
        return {"telemetry_samples": 0}
    duration = max(end - start, 1e-9)
    power = _mean([s.power_w for s in samples])
    span = samples[-1].t - samples[0].t
    delta_mj = samples[-1].energy_mj - samples[0].energy_mj
    if len(samples) >= 2 and span > 0 and delta_mj > 0:
        energy_j, energy_from = delta_mj / 1000 * duration / span, "energy counter"
    else:
        energy_j, energy_from = power * duration, "mean power x time"
    return {
        "telemetry_samples": len(samples),
        "telemetry_hz": (len(samples) - 1) / span if span > 0 else None,
        "gpu_util_pct": _mean([s.util_pct for s in samples]),
        "sm_activity_pct": _mean([s.sm_activity_pct for s in samples]),
        "sm_occupancy_pct": _mean([s.sm_occupancy_pct for s in samples]),
        "tensor_activity_pct": _mean([s.tensor_activity_pct for s in samples]),
        "dram_bw_pct": _mean([s.dram_bw_pct for s in samples]),
        "peak_vram_nvml_mb": max(s.mem_used_bytes for s in samples) / 2**20,
        "vram_total_mb": samples[0].mem_total_bytes / 2**20,
        "power_mean_w": power,
        "energy_j": energy_j,
        "energy_from": energy_from,
    }


def na_reasons(sampler: BenchGpuSampler | None, no_gpu_reason: str | None) -> dict:
    """Why telemetry columns are n/a, per group, for the report."""
    if sampler is None:
        reason = no_gpu_reason or "telemetry off"
        return {"gpu": reason, "gpm": reason}
    gpm = sampler.gpm_reason
    if gpm is None and sampler.gpm_errors:
        gpm = f"GPM reads failed {sampler.gpm_errors}x (last: {sampler.gpm_last_error})"
    return {"gpu": None, "gpm": gpm}
