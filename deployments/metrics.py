"""Custom Prometheus metrics of the service (Ray exports them with the `ray_` prefix and the tags
application/deployment/replica added by `ray.serve.metrics`; counters also get `_total`).

Names are the contract with monitoring/ (dashboards, recording rules, alerts): change them there too;
tests/test_monitoring_dashboards.py checks that every `ray_zimage_*` name the dashboards use is declared here.
"""

from __future__ import annotations

from ray.serve import metrics

# Diffusion requests take seconds: buckets that resolve 50 ms .. 10 min.
SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600]
BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64]


class GeneratorMetrics:
    """Metrics recorded by the GPU deployment."""

    def __init__(self) -> None:
        self.images = metrics.Counter(
            "zimage_images_generated", description="Images generated.", tag_keys=("model_source",)
        )
        self.batch_size = metrics.Histogram(
            "zimage_batch_size",
            description="Images per pipeline call (after grouping by shape).",
            boundaries=BATCH_BUCKETS,
        )
        self.queue_wait = metrics.Histogram(
            "zimage_queue_wait_seconds",
            description="Time from arrival at the replica to the start of its batch.",
            boundaries=SECONDS_BUCKETS,
        )
        self.stage = metrics.Histogram(
            "zimage_stage_seconds",
            description="Wall time per pipeline stage per batch.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("stage",),
        )
        self.gpu_seconds_per_image = metrics.Histogram(
            "zimage_gpu_seconds_per_image",
            description="Batch pipeline time divided by its images.",
            boundaries=SECONDS_BUCKETS,
        )
        self.max_batch_size = metrics.Gauge(
            "zimage_max_batch_size", description="Current effective max batch size of the replica."
        )
        self.tier_vram_gb = metrics.Gauge(
            "zimage_tier_vram_gb", description="GPU memory (GB) the tier was chosen from (0 on CPU)."
        )
        self.memory_mode = metrics.Gauge(
            "zimage_memory_mode", description="1 for the replica's memory mode.", tag_keys=("mode",)
        )
        self.oom_splits = metrics.Counter(
            "zimage_oom_splits", description="CUDA OOM errors that split a batch in halves."
        )
        self.failures = metrics.Counter(
            "zimage_generation_failures", description="Requests whose generation raised.", tag_keys=("reason",)
        )


class GpuMetrics:
    """Per-replica GPU gauges sampled by `deployments.gpu_telemetry` in a background thread."""

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
        self.latency = metrics.Histogram(
            "zimage_request_latency_seconds",
            description="End-to-end latency at the ingress, by route and status.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("route", "code"),
        )
        self.rejected = metrics.Counter(
            "zimage_requests_rejected",
            description="Requests the ingress answered 503 without an image (overloaded, unavailable, replica_died).",
            tag_keys=("reason",),
        )
