"""The bench's GPU sampler on fake NVML.

FAKE: pynvml's device functions are replaced by stand-ins (no NVIDIA driver on the CI machine; the real path runs in
bench/run_gpu.sh on an H100). What is checked is our code around them: NVML readings at the sampling rate, GPM at
most every 200 ms (NVML wants >100 ms between GPM samples), a failing GPM read keeps the NVML readings and is
reported, and the window summary uses what was sampled.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pynvml
import pytest

from bench.telemetry import BenchGpuSampler, na_reasons, summarize_window


@pytest.fixture
def fake_nvml(monkeypatch):
    state = {"fail_gpm": False, "gpm_gets": [], "energy": 0}

    def energy(_h):
        state["energy"] += 50_000  # mJ per read
        return state["energy"]

    def metrics_get(req):
        if state["fail_gpm"]:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        for i in range(req.numMetrics):
            req.metrics[i].value = 40.0 + i
        return req

    fakes = {
        "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(used=30 * 2**30, total=80 * 2**30),
        "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=97),
        "nvmlDeviceGetPowerUsage": lambda h: 650_000,
        "nvmlDeviceGetTotalEnergyConsumption": energy,
        "nvmlGpmQueryDeviceSupport": lambda h: SimpleNamespace(isSupportedDevice=1),
        "nvmlGpmSampleAlloc": lambda: pynvml.c_nvmlGpmSample_t(),
        "nvmlGpmSampleGet": lambda h, s: state["gpm_gets"].append(time.monotonic()),
        "nvmlGpmMetricsGet": metrics_get,
    }
    for name, fn in fakes.items():
        monkeypatch.setattr(pynvml, name, fn)
    return state


def test_nvml_at_rate_gpm_spaced_and_failures_keep_nvml(fake_nvml):
    sampler = BenchGpuSampler("gpu0", hz=20).start()
    time.sleep(1.0)
    fake_nvml["fail_gpm"] = True
    time.sleep(0.5)
    sampler.stop()
    samples = list(sampler.samples)
    assert len(samples) >= 20 and all(s.util_pct == 97 for s in samples)  # NVML on every sample (20 Hz)
    gaps = [b - a for a, b in zip(fake_nvml["gpm_gets"], fake_nvml["gpm_gets"][1:], strict=False)]
    assert gaps and min(gaps) >= 0.19  # GPM never closer than 200 ms
    with_gpm = [s for s in samples if s.sm_activity_pct is not None]
    assert 3 <= len(with_gpm) < len(samples) and with_gpm[0].sm_activity_pct == 40.0
    assert with_gpm[0].tensor_activity_pct == 42.0  # third metric in deployments.observability.gpu_sampler._GPM_METRICS
    assert sampler.gpm_errors >= 1 and samples[-1].util_pct == 97 and samples[-1].sm_activity_pct is None
    assert "GPM reads failed" in na_reasons(sampler, None)["gpm"]
    summary = summarize_window(samples, samples[0].t, samples[-1].t)
    assert summary["gpu_util_pct"] == 97 and summary["sm_activity_pct"] == 40.0 and summary["power_mean_w"] == 650
