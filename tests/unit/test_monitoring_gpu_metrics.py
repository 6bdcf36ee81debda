"""The replica's NVML samples become the right gauge values (deployments/observability/replica_gpu_metrics.py).

No GPU or NVML here, so `GpuSample`s are built by hand and the gauges are stand-ins that record calls and, like
Ray's Counter, reject increments <= 0. The dashboards' GPU queries are checked against the metric names statically
in test_monitoring_dashboards.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deployments.observability.gpu_sampler import GpuSample
from deployments.observability.replica_gpu_metrics import GpuGaugePublisher


class _Gauge:
    def __init__(self):
        self.calls: list[tuple[float, dict]] = []

    def set(self, value, tags=None):
        self.calls.append((value, tags))


class _Counter(_Gauge):
    def inc(self, value, tags=None):
        if value <= 0:  # ray.util.metrics.Counter.inc raises the same way
            raise ValueError(f"value must be >0, got {value}")
        self.calls.append((value, tags))


def _gauges():
    names = ("utilization", "memory_used", "memory_total", "power", "sm_activity", "sm_occupancy", "tensor_activity")
    return SimpleNamespace(**{n: _Gauge() for n in names}, energy=_Counter())


def _sample(energy_mj: int, gpm: float | None = None) -> GpuSample:
    return GpuSample(
        t=0.0,
        util_pct=97.0,
        mem_used_bytes=40 * 2**30,
        mem_total_bytes=80 * 2**30,
        power_w=650.5,
        energy_mj=energy_mj,
        sm_activity_pct=gpm,
        sm_occupancy_pct=None if gpm is None else gpm / 2,
        tensor_activity_pct=None if gpm is None else gpm / 4,
    )


def test_ratios_bytes_watts_and_gpu_tag():
    g = _gauges()
    GpuGaugePublisher(g, "3")(_sample(1_000, gpm=80.0))
    tags = {"gpu": "3"}
    assert g.utilization.calls == [(0.97, tags)]
    assert g.memory_used.calls == [(40 * 2**30, tags)] and g.memory_total.calls == [(80 * 2**30, tags)]
    assert g.power.calls == [(650.5, tags)]
    assert g.sm_activity.calls == [(0.8, tags)]
    assert g.sm_occupancy.calls == [(0.4, tags)] and g.tensor_activity.calls == [(0.2, tags)]


def test_no_gpm_leaves_activity_series_absent():
    g = _gauges()
    GpuGaugePublisher(g, "0")(_sample(1_000, gpm=None))
    assert g.sm_activity.calls == g.sm_occupancy.calls == g.tensor_activity.calls == []
    assert g.utilization.calls  # NVML utilization still published


def test_energy_counts_joules_between_samples_and_never_incs_by_zero():
    g = _gauges()
    publish = GpuGaugePublisher(g, "0")
    for mj in (5_000, 5_000, 7_500, 7_500, 12_500):  # the NVML counter can repeat between reads
        publish(_sample(mj))
    assert [v for v, _ in g.energy.calls] == pytest.approx([2.5, 5.0])
    assert len(g.power.calls) == 5  # a repeated energy reading did not abort the rest of the sample
