"""Feed the replica's GPU gauges (deployments.observability.metrics.GpuMetrics) from a background NVML sampler.

The sampler thread calls `publish` at `hz`; Ray exports the last value at its own interval (10 s by default), so
2 Hz is plenty for a 10-15 s Prometheus scrape. The bench samples at 10+ Hz beside the service instead.
"""

from __future__ import annotations

import logging

import pynvml

from deployments.observability.gpu_info import nvml_handle_for_visible_device
from deployments.observability.gpu_sampler import GpuSample, GpuSampler
from deployments.observability.metrics import GpuMetrics

logger = logging.getLogger(__name__)


class GpuGaugePublisher:
    """Turns one `GpuSample` into gauge values; energy becomes a counter of joules since the first sample."""

    def __init__(self, gauges: GpuMetrics, gpu_index: str):
        self.gauges = gauges
        self.tags = {"gpu": gpu_index}
        self._last_energy_mj: int | None = None

    def __call__(self, s: GpuSample) -> None:
        g, tags = self.gauges, self.tags
        g.utilization.set(s.util_pct / 100, tags=tags)
        g.memory_used.set(s.mem_used_bytes, tags=tags)
        g.memory_total.set(s.mem_total_bytes, tags=tags)
        g.power.set(s.power_w, tags=tags)
        for gauge, pct in (
            (g.sm_activity, s.sm_activity_pct),
            (g.sm_occupancy, s.sm_occupancy_pct),
            (g.tensor_activity, s.tensor_activity_pct),
        ):
            if pct is not None:  # None: no GPM on this GPU (pre-Hopper, MIG): leave the series absent, not 0
                gauge.set(pct / 100, tags=tags)
        if self._last_energy_mj is not None:
            joules = (s.energy_mj - self._last_energy_mj) / 1000
            if joules > 0:  # Counter.inc rejects 0; the NVML energy counter can repeat a value between reads
                g.energy.inc(joules, tags=tags)
        self._last_energy_mj = s.energy_mj


def start_replica_gpu_metrics(hz: float = 2.0) -> GpuSampler | None:
    """Start the sampler for this replica's GPU, or return None (logged) when NVML has no GPU for us."""
    try:
        handle = nvml_handle_for_visible_device()
        gpu_index = str(pynvml.nvmlDeviceGetIndex(handle))  # NVML index: matches ray_node_gpus_*{GpuIndex}
    except Exception as exc:
        logger.info("GPU metrics off: %s", exc)
        return None
    sampler = GpuSampler(handle, hz=hz, keep=64, on_sample=GpuGaugePublisher(GpuMetrics(), gpu_index))
    if sampler.gpm_reason:
        logger.info("SM/tensor activity gauges off: %s", sampler.gpm_reason)
    return sampler.start()
