"""Feed the replica's GPU gauges (deployments.metrics.GpuMetrics) from a background NVML sampler."""

from __future__ import annotations

import logging

from deployments.gpu_info import nvml_handle_for_visible_device
from deployments.gpu_telemetry import GpuSample, GpuSampler
from deployments.metrics import GpuMetrics

logger = logging.getLogger(__name__)


def start_replica_gpu_metrics(hz: float = 2.0) -> GpuSampler | None:
    """2 Hz is plenty for a 10-15 s Prometheus scrape; the bench samples at 10+ Hz beside the service."""
    try:
        handle = nvml_handle_for_visible_device()
    except Exception as exc:
        logger.info("GPU metrics off: %s", exc)
        return None
    gauges = GpuMetrics()
    last_energy: list[int] = []

    def publish(s: GpuSample) -> None:
        tags = {"gpu": "0"}
        gauges.utilization.set(s.util_pct / 100, tags=tags)
        gauges.memory_used.set(s.mem_used_bytes, tags=tags)
        gauges.memory_total.set(s.mem_total_bytes, tags=tags)
        gauges.power.set(s.power_w, tags=tags)
        for gauge, value in (
            (gauges.sm_activity, s.sm_activity_pct),
            (gauges.sm_occupancy, s.sm_occupancy_pct),
            (gauges.tensor_activity, s.tensor_activity_pct),
        ):
            if value is not None:
                gauge.set(value / 100, tags=tags)
        if last_energy:
            gauges.energy.inc(max(0, s.energy_mj - last_energy[0]) / 1000, tags=tags)
        last_energy[:] = [s.energy_mj]

    sampler = GpuSampler(handle, hz=hz, keep=64, on_sample=publish)
    if sampler.gpm_reason:
        logger.info("SM/tensor activity gauges off: %s", sampler.gpm_reason)
    return sampler.start()
