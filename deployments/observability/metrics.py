"""Custom Prometheus metrics of the service (Ray exports them with the `ray_` prefix and the tags
application/deployment/replica added by `ray.serve.metrics`; counters also get `_total`).

Names are the contract with monitoring/ (dashboards, recording rules, alerts): change them there too;
tests/unit/test_monitoring_dashboards.py checks that every `ray_zimage_*` name the dashboards use is declared here.
"""

from __future__ import annotations

import atexit
import logging
import threading

from ray.serve import metrics

from deployments.config import MemoryMode

logger = logging.getLogger(__name__)

# Diffusion requests take seconds: buckets that resolve 50 ms .. 10 min.
SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600]
# Half-integer bounds: bucket le="N.5" holds batches of exactly N (up to 16), and Ray's midpoint `_sum` is exact.
BATCH_BUCKETS = [n + 0.5 for n in range(17)] + [24.5, 32.5, 48.5, 64.5]


class ExactHistogram:
    """A histogram plus a counter `<name>_exact_total` of the exact sum of what it observed.

    Ray 2.60 exports a histogram's `_sum` from bucket midpoints (0.3 s in the (0.25, 0.5] bucket adds 0.375), so
    `_sum / _count` is off by up to half a bucket; `<name>_exact_total / <name>_count` is the true mean.
    """

    def __init__(self, name: str, description: str, boundaries: list[float], tag_keys: tuple[str, ...] = ()):
        self.histogram = metrics.Histogram(name, description=description, boundaries=boundaries, tag_keys=tag_keys)
        self.exact = metrics.Counter(f"{name}_exact", description=f"Exact sum of {name}.", tag_keys=tag_keys)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.histogram.observe(value, tags=dict(tags) if tags else None)
        if value > 0:  # Counter.inc rejects 0
            self.exact.inc(value, tags=dict(tags) if tags else None)


class StateGauge(metrics.Gauge):
    """A gauge for state that rarely changes (max batch size, tier, memory mode), re-recorded every `REFRESH_S`.

    Ray 2.60's metrics agent evicts gauge series that stop being recorded (`_gauge_metric_ttl_s` in
    ray/_private/telemetry/open_telemetry_metric_recorder.py; measured here: gone ~20 s after the last set with a
    2 s report interval), so a value set once at reconfigure() would vanish from Prometheus. A daemon thread
    re-records the last value of every tag set (tests/service/test_monitoring_integration.py checks 30 s later).
    The thread is stopped and joined at interpreter exit, before Ray's own exit handler shuts the worker down, so
    nothing records into Ray's native metrics code while it is torn down (a thread using Ray's API across
    ray.shutdown can segfault: ray-project/ray#31145).
    """

    REFRESH_S = 1.0  # below the shortest report interval Ray allows (1 s)
    _live: list[StateGauge] = []
    _lock = threading.Lock()
    _thread: threading.Thread | None = None
    _stop = threading.Event()

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None):
        super().__init__(name, description=description, tag_keys=tag_keys)
        self._last: dict[tuple, float] = {}
        cls = StateGauge
        with cls._lock:
            cls._live.append(self)
            if cls._thread is None:
                cls._thread = threading.Thread(
                    target=cls._refresh_forever, args=(cls._stop,), name="state-gauges", daemon=True
                )
                cls._thread.start()

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        with StateGauge._lock:
            self._last[tuple(sorted((tags or {}).items()))] = value
        super().set(value, tags=dict(tags) if tags else None)

    @classmethod
    def stop_refreshing(cls, timeout_s: float = 5.0) -> None:
        """Stop the re-recording thread and wait for it (at exit; a later StateGauge starts a new one)."""
        with cls._lock:
            thread, cls._thread = cls._thread, None
            stop, cls._stop = cls._stop, threading.Event()
        if thread is not None:
            stop.set()
            thread.join(timeout_s)

    @classmethod
    def _refresh_forever(cls, stop: threading.Event) -> None:
        while not stop.wait(cls.REFRESH_S):
            with cls._lock:
                pending = [(g, dict(k), v) for g in cls._live for k, v in g._last.items()]
            for gauge, tags, value in pending:
                try:
                    metrics.Gauge.set(gauge, value, tags=tags or None)
                except Exception:  # metrics must never take the replica down
                    logger.exception("re-recording a state gauge failed")


# Registered after `import ray` registered ray.shutdown: atexit runs handlers last-in first-out, so this one first.
atexit.register(StateGauge.stop_refreshing)


class GeneratorMetrics:
    """Metrics recorded by the GPU deployment."""

    def __init__(self) -> None:
        self.images = metrics.Counter(
            "zimage_images_generated",
            description="Images made, by task (generate, edit, inpaint) and LoRA adapter set (`none`: base model).",
            tag_keys=("model_source", "task", "adapter"),
        )
        self.batch_size = metrics.Histogram(
            "zimage_batch_size",
            description="Images per pipeline call (after grouping by shape, task and adapters).",
            boundaries=BATCH_BUCKETS,
            tag_keys=("task", "adapter"),
        )
        self.queue_wait = ExactHistogram(
            "zimage_queue_wait_seconds",
            description="Time from arrival at the replica to the start of its batch.",
            boundaries=SECONDS_BUCKETS,
        )
        self.stage = ExactHistogram(
            "zimage_stage_seconds",
            description="Wall time per pipeline stage per batch.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("stage",),
        )
        self.gpu_seconds_per_image = metrics.Histogram(
            "zimage_gpu_seconds_per_image",
            description="Batch pipeline time divided by its images, by task and adapter set.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("task", "adapter"),
        )
        self.idle_gap = metrics.Histogram(
            "zimage_gpu_idle_gap_seconds",
            description="Time between the end of one pipeline call and the start of the next while requests waited "
            "for the GPU (Python, scheduling and Serve's hand-off between batches).",
            boundaries=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
        )
        self.max_batch_size = StateGauge(
            "zimage_max_batch_size", description="Current effective max batch size of the replica."
        )
        self.max_batch_by_shape = StateGauge(
            "zimage_max_batch_by_shape",
            description="Max batch of one image shape: min(tier, memory cap and OOM cap for its area).",
            tag_keys=("shape",),
        )
        self.planned_batch = StateGauge(
            "zimage_planned_batch_size",
            description="The batch the policy last chose for a shape (`task WxH steps`): what its next batch takes.",
            tag_keys=("shape",),
        )
        self.seconds_per_image_by_batch = StateGauge(
            "zimage_learnt_seconds_per_image",
            description="Learnt GPU seconds per image of a shape at a batch size (mean of recent batches): the "
            "efficiency curve the latency policy reads.",
            tag_keys=("shape", "batch_size"),
        )
        self.tier_vram_gb = StateGauge(
            "zimage_tier_vram_gb", description="GPU memory (GB) the tier was chosen from (0 on CPU)."
        )
        self.memory_mode = StateGauge(
            "zimage_memory_mode", description="1 for the replica's memory mode.", tag_keys=("mode",)
        )
        self.gate_waiting = StateGauge(
            "zimage_batch_gate_waiting",
            description="Requests waiting for the running batch to end before they may join the next one.",
        )
        self.oom_splits = metrics.Counter(
            "zimage_oom_splits", description="CUDA OOM errors that split a batch in halves."
        )
        self.failures = metrics.Counter(
            "zimage_generation_failures", description="Requests whose generation raised.", tag_keys=("reason",)
        )

    def set_memory_mode(self, mode: MemoryMode | None) -> None:
        """1 for the replica's mode, 0 for the others; all 0 on a CPU replica (no GPU memory to place)."""
        for m in MemoryMode:
            if m is not MemoryMode.AUTO:
                self.memory_mode.set(1.0 if m is mode else 0.0, tags={"mode": m.value})


class GpuMetrics:
    """Per-replica GPU gauges sampled by `deployments.observability.gpu_sampler` in a background thread."""

    def __init__(self) -> None:
        def gauge(name: str, description: str) -> metrics.Gauge:  # gpu: NVML index, as ray_node_gpus_*{GpuIndex}
            return metrics.Gauge(name, description=description, tag_keys=("gpu",))

        self.utilization = gauge("zimage_gpu_utilization_ratio", "NVML utilization: share of time any kernel ran.")
        self.memory_used = gauge("zimage_gpu_memory_used_bytes", "NVML memory used.")
        self.memory_total = gauge("zimage_gpu_memory_total_bytes", "NVML memory total.")
        self.power = gauge("zimage_gpu_power_watts", "NVML power draw.")
        self.sm_activity = gauge("zimage_gpu_sm_activity_ratio", "NVML GPM SM activity (Hopper+).")
        self.sm_occupancy = gauge("zimage_gpu_sm_occupancy_ratio", "NVML GPM SM occupancy (Hopper+).")
        self.tensor_activity = gauge("zimage_gpu_tensor_activity_ratio", "NVML GPM tensor-pipe activity (Hopper+).")
        self.energy = metrics.Counter(
            "zimage_gpu_energy_joules", description="GPU energy used (NVML total energy).", tag_keys=("gpu",)
        )


class IngressMetrics:
    """Metrics recorded by the HTTP ingress (Serve's own ray_serve_http_* cover requests FastAPI rejects first)."""

    def __init__(self) -> None:
        self.latency = ExactHistogram(
            "zimage_request_latency_seconds",
            description="End-to-end latency at the ingress, by route and status.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("route", "code"),
        )
        self.rejected = metrics.Counter(
            "zimage_requests_rejected",
            description="Requests the ingress answered 503 without an image (ingress_full, overloaded, unavailable, "
            "replica_died).",
            tag_keys=("reason",),
        )
        self.in_flight = StateGauge(  # re-recorded: an idle ingress's 0 must not vanish from Prometheus
            "zimage_ingress_in_flight_images",
            description="Images this ingress replica has sent to the Generator and not yet got back; at its bound "
            "(/info ingress.max_in_flight_images) new requests get 503 (reason ingress_full).",
        )
