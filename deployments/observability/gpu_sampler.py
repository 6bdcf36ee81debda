"""Background NVML sampler: utilization, memory, power, energy and - on Hopper and newer - GPM SM/tensor activity.

NVML "utilization" is the share of time any kernel ran; it reads ~100% even for a one-thread kernel. GPM
(`nvmlGpmSampleGet` twice + `nvmlGpmMetricsGet`) measures how much of the chip works: SM activity, occupancy and
tensor-pipe activity. Sampling runs in a daemon thread so it never blocks generation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pynvml

logger = logging.getLogger(__name__)


@dataclass
class GpuSample:
    t: float  # time.time()
    util_pct: float
    mem_used_bytes: int
    mem_total_bytes: int
    power_w: float
    energy_mj: int  # total energy since driver load, millijoules
    sm_activity_pct: float | None = None
    sm_occupancy_pct: float | None = None
    tensor_activity_pct: float | None = None
    dram_bw_pct: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


_GPM_METRICS = {
    "sm_activity_pct": "NVML_GPM_METRIC_SM_UTIL",
    "sm_occupancy_pct": "NVML_GPM_METRIC_SM_OCCUPANCY",
    "tensor_activity_pct": "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "dram_bw_pct": "NVML_GPM_METRIC_DRAM_BW_UTIL",
}


def gpm_unavailable_reason(handle) -> str | None:
    """None if GPM works on this GPU, else why not (pre-Hopper, MIG, old driver)."""
    try:
        if not pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
            return "GPU does not support NVML GPM (needs Hopper or newer)"
    except (pynvml.NVMLError, AttributeError) as exc:
        return f"NVML GPM query failed: {exc}"
    return None


class _Gpm:
    """Two GPM samples taken `interval` apart give the metrics for that interval."""

    def __init__(self, handle):
        self.handle = handle
        self.prev = pynvml.nvmlGpmSampleAlloc()
        self.cur = pynvml.nvmlGpmSampleAlloc()
        pynvml.nvmlGpmSampleGet(handle, self.prev)

    def read(self) -> dict[str, float]:
        pynvml.nvmlGpmSampleGet(self.handle, self.cur)
        req = pynvml.c_nvmlGpmMetricsGet_t()
        req.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        req.sample1, req.sample2 = self.prev, self.cur
        req.numMetrics = len(_GPM_METRICS)
        for i, const in enumerate(_GPM_METRICS.values()):
            req.metrics[i].metricId = getattr(pynvml, const)
        pynvml.nvmlGpmMetricsGet(req)
        self.prev, self.cur = self.cur, self.prev
        return {key: float(req.metrics[i].value) for i, key in enumerate(_GPM_METRICS)}


class GpuSampler:
    """Samples one GPU at `hz` into a bounded ring buffer; `on_sample` (e.g. gauge updates) runs in the thread."""

    def __init__(
        self, handle, hz: float = 10.0, keep: int = 100_000, on_sample: Callable[[GpuSample], None] | None = None
    ):
        self.handle = handle
        self.period = 1.0 / hz
        self.samples: deque[GpuSample] = deque(maxlen=keep)
        self.on_sample = on_sample
        self.gpm_reason = gpm_unavailable_reason(handle)
        self._gpm = None
        if self.gpm_reason is None:
            try:
                self._gpm = _Gpm(handle)
            except pynvml.NVMLError as exc:
                self.gpm_reason = f"NVML GPM sampling failed: {exc}"
        self.gpm_failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)

    def start(self) -> GpuSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def sample(self) -> GpuSample:
        h = self.handle
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        s = GpuSample(
            t=time.time(),
            util_pct=float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
            mem_used_bytes=int(mem.used),
            mem_total_bytes=int(mem.total),
            power_w=pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
            energy_mj=int(pynvml.nvmlDeviceGetTotalEnergyConsumption(h)),
        )
        if self._gpm is not None:
            try:  # a failed GPM read must not drop the NVML readings of this sample
                for key, value in self._gpm.read().items():
                    setattr(s, key, value)
            except pynvml.NVMLError as exc:
                self.gpm_failures += 1
                logger.debug("GPM read failed: %s", exc)
        return s

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                s = self.sample()
                self.samples.append(s)
                if self.on_sample is not None:
                    self.on_sample(s)
            except Exception:  # a flaky read must not kill the sampler
                logger.exception("GPU sample failed")
            next_t += self.period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def window(self, start: float, end: float) -> list[GpuSample]:
        """Samples taken in [start, end] (time.time()), for attributing telemetry to a benchmark row."""
        return [s for s in list(self.samples) if start <= s.t <= end]
