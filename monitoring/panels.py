"""What the Z-Image dashboard shows: rows of panels, each a list of PromQL queries (the one place to edit PromQL).

Label conventions follow Ray's own dashboards, so the same JSON works on a laptop and on KubeRay: every selector
filters on `application` and `ray_io_cluster` (set by the KubeRay PodMonitor; absent locally, where the `Cluster`
variable's "All" value `.*` also matches the empty label), and per-replica metrics on `replica`.
Counters are `*_total`, Serve's latency histograms are in milliseconds, ours in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RATE = "$__rate_interval"
SEL = 'application=~"$Application", ray_io_cluster=~"$Cluster"'
REP = SEL + ', replica=~"$Replica"'
NO_HEALTH = 'route!~"/-/.*"'  # Serve's own /-/healthz and /-/routes probes
GEN_ROUTES = 'route=~"/generate|/v1/images/generations"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    heatmap: bool = False  # Prometheus `format: heatmap` (bucket series sorted by le)
    right_unit: str | None = None  # timeseries: this query on a right-hand axis in its own unit


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | heatmap
    width: int = 8
    min: float | None = 0
    max: float | None = None


@dataclass(frozen=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...] = field(default_factory=tuple)


def _rate(metric: str, sel: str = REP, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{sel}}}[{RATE}]))"


def _agg(op: str, metric: str, sel: str, by: str) -> str:
    """A gauge aggregated per `by`: e.g. `sum by (deployment) (metric{sel})`."""
    return f"{op} by ({by}) ({metric}{{{sel}}})"


def _mean(hist: str, sel: str = REP, by: str = "") -> str:
    """Exact mean over the rate window: rate(<hist>_exact_total) / rate(<hist>_count).

    Not `_sum / _count`: Ray 2.60 exports a histogram's `_sum` from bucket midpoints
    (deployments/observability/metrics.py).
    """
    return f"{_rate(hist + '_exact_total', sel, by)} / {_rate(hist + '_count', sel, by)}"


def _quantile(q: float, hist: str, sel: str, by: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le{', ' + by if by else ''}) (rate({hist}_bucket{{{sel}}}[{RATE}])))"


TRAFFIC = RowSpec(
    "Traffic and errors",
    (
        PanelSpec(
            "Images generated / s",
            "Images out of the pipeline (successful generations), total and per Generator replica.",
            (
                Query(_rate("ray_zimage_images_generated_total", by="application"), "total {{application}}"),
                Query(_rate("ray_zimage_images_generated_total", by="replica"), "replica {{replica}}"),
            ),
        ),
        PanelSpec(
            "HTTP requests / s by status code",
            "Every HTTP request through the Serve proxy, by route and status (4xx: bad requests, 503: overload).",
            (
                Query(
                    _rate("ray_serve_num_http_requests_total", f"{SEL}, {NO_HEALTH}", "route, status_code"),
                    "{{route}} {{status_code}}",
                ),
            ),
            unit="reqps",
        ),
        PanelSpec(
            "Errors / s by code and reason",
            "HTTP errors from the proxy by code; 503s the ingress gave without an image, by reason; generations "
            "that raised inside the Generator, by reason (oom: failed even alone after OOM splits).",
            (
                Query(
                    _rate("ray_serve_num_http_error_requests_total", f"{SEL}, {NO_HEALTH}", "route, error_code"),
                    "HTTP {{error_code}} {{route}}",
                ),
                Query(_rate("ray_zimage_requests_rejected_total", SEL, "reason"), "503 {{reason}}"),
                Query(_rate("ray_zimage_generation_failures_total", REP, "reason"), "generation failed: {{reason}}"),
            ),
            unit="reqps",
        ),
    ),
)

LATENCY = RowSpec(
    "Latency",
    (
        PanelSpec(
            "Request latency p50 / p90 / p99 (successful generations)",
            "Serve proxy latency of 200 responses on the generation routes. Buckets come from "
            "RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS (set it before the cluster starts; the defaults jump 10 s -> 60 s).",
            tuple(
                Query(
                    _quantile(q, "ray_serve_http_request_latency_ms", f'{SEL}, {GEN_ROUTES}, status_code="200"'),
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.9, 0.99)
            ),
            unit="ms",
        ),
        PanelSpec(
            "Where the time goes (means)",
            "Mean queue wait per request (arrival at the replica -> its batch starts), mean stage times per "
            "pipeline call, and the mean end-to-end latency of successful requests at the ingress.",
            (
                Query(_mean("ray_zimage_queue_wait_seconds"), "queue wait"),
                Query(_mean("ray_zimage_stage_seconds", by="stage"), "{{stage}} (per batch)"),
                Query(_mean("ray_zimage_request_latency_seconds", f'{SEL}, code="200"'), "end to end (ingress)"),
            ),
            unit="s",
        ),
        PanelSpec(
            "Ingress latency p99 by route and code",
            "Our own histogram at the ingress (seconds), split by route and response code.",
            (
                Query(
                    _quantile(0.99, "ray_zimage_request_latency_seconds", SEL, "route, code"),
                    "{{route}} {{code}}",
                ),
            ),
            unit="s",
        ),
    ),
)

BATCHING = RowSpec(
    "Queue and batching",
    (
        PanelSpec(
            "Queue length",
            "Requests waiting at handles for a replica slot (by deployment), waiting in a Generator replica's "
            "@serve.batch queue, ongoing at replicas (includes both queues), and waiting in a Generator replica "
            "for the running batch to end (the batch gate: the next batch forms when the GPU is free).",
            (
                Query(
                    _agg("sum", "ray_serve_deployment_queued_queries", SEL, "deployment"),
                    "waiting for a replica: {{deployment}}",
                ),
                Query(_agg("sum", "ray_serve_batch_queue_length", REP, "replica"), "in batch queue: {{replica}}"),
                Query(_agg("sum", "ray_serve_replica_processing_queries", SEL, "deployment"), "ongoing {{deployment}}"),
                Query(_agg("sum", "ray_zimage_batch_gate_waiting", REP, "replica"), "waiting for the GPU: {{replica}}"),
            ),
        ),
        PanelSpec(
            "Queue wait",
            "From arrival at the Generator replica to the start of the batch that serves the request; and Serve's "
            "own batch wait (time a batch waited to fill, at most batch_wait_timeout_s).",
            (
                Query(_quantile(0.5, "ray_zimage_queue_wait_seconds", REP), "p50 queue wait"),
                Query(_quantile(0.99, "ray_zimage_queue_wait_seconds", REP), "p99 queue wait"),
                Query(f"{_quantile(0.9, 'ray_serve_batch_wait_time_ms', REP)} / 1000", "p90 @serve.batch fill wait"),
            ),
            unit="s",
        ),
        PanelSpec(
            "Batch size vs max batch size",
            "Mean images per pipeline call (after grouping by shape), against each replica's current max batch "
            "size (VRAM tier, memory clamp, lowered after an OOM).",
            (
                Query(
                    f"{_rate('ray_zimage_images_generated_total')} / {_rate('ray_zimage_batch_size_count')}",
                    "mean images per pipeline call",
                ),
                Query(f"max by (replica) (ray_zimage_max_batch_size{{{REP}}})", "max batch size {{replica}}"),
            ),
        ),
        PanelSpec(
            "Batch size distribution",
            "Pipeline calls per batch size in each interval (bucket le=N.5 holds batches of N images).",
            (
                Query(
                    f"sum by (le) (increase(ray_zimage_batch_size_bucket{{{REP}}}[{RATE}]))",
                    "{{le}}",
                    heatmap=True,
                ),
            ),
            kind="heatmap",
        ),
        PanelSpec(
            "GPU seconds per image",
            "Pipeline wall time of a batch divided by its images (p50/p90 over batches; the mean weights every "
            "image). Falls as batches grow until the GPU is compute-bound.",
            (
                Query(_quantile(0.5, "ray_zimage_gpu_seconds_per_image", REP), "p50"),
                Query(_quantile(0.9, "ray_zimage_gpu_seconds_per_image", REP), "p90"),
                Query(
                    f"{_rate('ray_zimage_stage_seconds_exact_total')} / {_rate('ray_zimage_images_generated_total')}",
                    "mean per image",
                ),
            ),
            unit="s",
        ),
    ),
)

REPLICAS = RowSpec(
    "Replicas, memory mode and OOM",
    (
        PanelSpec(
            "Replicas: running vs target",
            "Healthy replicas per deployment, the autoscaler's target, and what its policy asked for before "
            "min/max_replicas: wanted above target for long means the deployment is pinned at max_replicas.",
            (
                Query(f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{SEL}}})", "running {{deployment}}"),
                Query(f"max by (deployment) (ray_serve_autoscaling_target_replicas{{{SEL}}})", "target {{deployment}}"),
                Query(
                    f"max by (deployment) (ray_serve_autoscaling_desired_replicas{{{SEL}}})",
                    "wanted (before min/max) {{deployment}}",
                ),
            ),
        ),
        PanelSpec(
            "VRAM tier and memory mode",
            "GPU memory (GB) each replica chose its tier from (0 on CPU), and its memory mode (1 = active).",
            (
                Query(f"max by (replica) (ray_zimage_tier_vram_gb{{{REP}}})", "{{replica}} tier GB"),
                Query(f"max by (replica, mode) (ray_zimage_memory_mode{{{REP}}}) == 1", "{{replica}} {{mode}}"),
            ),
            kind="stat",
            min=None,
        ),
        PanelSpec(
            "OOM splits and the batch cap",
            "CUDA OOMs that split a batch in halves (each lowers that replica's max batch size for good).",
            (
                Query(
                    f"sum by (replica) (increase(ray_zimage_oom_splits_total{{{REP}}}[{RATE}]))",
                    "OOM splits {{replica}}",
                ),
                Query(f"max by (replica) (ray_zimage_max_batch_size{{{REP}}})", "max batch size {{replica}}"),
            ),
        ),
    ),
)

GPU = RowSpec(
    "GPU (NVML and GPM, per Generator replica)",
    (
        PanelSpec(
            "GPU busy: NVML utilization vs SM and tensor activity",
            "NVML utilization is the share of time any kernel ran (near 100% even for a tiny kernel). GPM SM "
            "activity, occupancy and tensor-pipe activity (Hopper and newer) show how much of the chip worked.",
            (
                Query(f"avg by (replica) (ray_zimage_gpu_utilization_ratio{{{REP}}})", "NVML util {{replica}}"),
                Query(f"avg by (replica) (ray_zimage_gpu_sm_activity_ratio{{{REP}}})", "SM activity {{replica}}"),
                Query(f"avg by (replica) (ray_zimage_gpu_sm_occupancy_ratio{{{REP}}})", "SM occupancy {{replica}}"),
                Query(
                    f"avg by (replica) (ray_zimage_gpu_tensor_activity_ratio{{{REP}}})", "tensor activity {{replica}}"
                ),
            ),
            unit="percentunit",
            max=1,
        ),
        PanelSpec(
            "VRAM used / total",
            "NVML memory used (all processes on the GPU) and total, per replica.",
            (
                Query(f"sum by (replica) (ray_zimage_gpu_memory_used_bytes{{{REP}}})", "used {{replica}}"),
                Query(f"sum by (replica) (ray_zimage_gpu_memory_total_bytes{{{REP}}})", "total {{replica}}"),
            ),
            unit="bytes",
        ),
        PanelSpec(
            "Power",
            "NVML power draw per replica's GPU.",
            (Query(f"sum by (replica) (ray_zimage_gpu_power_watts{{{REP}}})", "{{replica}}"),),
            unit="watt",
        ),
        PanelSpec(
            "Images per kJ",
            "Images generated per kilojoule of GPU energy (NVML energy counter).",
            (
                Query(
                    f"{_rate('ray_zimage_images_generated_total')}"
                    f" / ({_rate('ray_zimage_gpu_energy_joules_total')} / 1000)",
                    "images / kJ",
                ),
            ),
        ),
    ),
)


def _images_by(label: str, title: str, description: str) -> PanelSpec:
    """Images out of the pipeline per second, one series per value of one of the counter's tags."""
    query = Query(_rate("ray_zimage_images_generated_total", by=label), "{{" + label + "}}")
    return PanelSpec(title, description, (query,), width=6)


# Added after the rows above, so their panel ids (links like ?viewPanel=N) stayed what they were.
WORK = RowSpec(
    "Tasks and LoRA adapters",
    (
        _images_by(
            "task",
            "Images / s by task",
            "Images out of the pipeline by task: generate (text to image), edit (image to image, POST "
            "/v1/images/edits without a mask), inpaint (with a mask).",
        ),
        _images_by(
            "adapter",
            "Images / s by LoRA adapter set",
            "Images out of the pipeline by the adapters their requests named (names joined by '+'; none: the base "
            "model).",
        ),
        PanelSpec(
            "GPU seconds per image by task",
            "Pipeline wall time of a batch divided by its images, p50 and p90 over batches, per task. An edit runs "
            "strength x steps of the DiT (plus a VAE encode); inpainting defaults to strength 1.",
            tuple(
                Query(_quantile(q, "ray_zimage_gpu_seconds_per_image", REP, "task"), f"p{round(q * 100)} {{{{task}}}}")
                for q in (0.5, 0.9)
            ),
            unit="s",
            width=6,
        ),
        PanelSpec(
            "Batch size by task and adapter set",
            "Mean images per pipeline call: requests share a call only with the same task, shape, strength and "
            "adapter set, so mixed traffic makes smaller batches than one kind alone.",
            (
                Query(
                    f"{_rate('ray_zimage_images_generated_total', by='task, adapter')}"
                    f" / {_rate('ray_zimage_batch_size_count', by='task, adapter')}",
                    "{{task}} {{adapter}}",
                ),
            ),
            width=6,
        ),
    ),
)

# Added last, for the same reason.
POLICY = RowSpec(
    "Batch policy, GPU idle gaps and ingress admission",
    (
        PanelSpec(
            "Planned batch by shape",
            "The batch the batch policy last chose for each shape (task WxH steps), largest over the selected "
            "Generator replicas, against each image size's cap (tier, memory model, OOM cap). Below the cap while "
            "requests queue: the latency policy found no gain in a bigger batch. A shape keeps its last plan until it "
            "is requested again.",
            (
                Query(_agg("max", "ray_zimage_planned_batch_size", REP, "shape"), "planned {{shape}}"),
                Query(_agg("max", "ray_zimage_max_batch_by_shape", REP, "shape"), "cap {{shape}}"),
            ),
            width=6,
        ),
        PanelSpec(
            "Learnt seconds per image by shape and batch size",
            "The efficiency curve the latency policy reads: learnt GPU seconds per image of a shape at each batch "
            "size it ran (mean of recent batches; averaged over the selected replicas). Lines that stay together: "
            "bigger batches buy no throughput at that shape.",
            (
                Query(
                    _agg("avg", "ray_zimage_learnt_seconds_per_image", REP, "shape, batch_size"),
                    "{{shape}} x{{batch_size}}",
                ),
            ),
            unit="s",
            width=6,
        ),
        PanelSpec(
            "GPU idle gap while work waits",
            "Time between the end of one pipeline call and the start of the next while requests waited for the GPU "
            "(Python, scheduling, Serve's hand-off between batches), p50 and p99 over gaps. Buckets 1 ms to 1 s: "
            "a quantile at 1 s means 1 s or more.",
            tuple(
                Query(_quantile(q, "ray_zimage_gpu_idle_gap_seconds", REP), f"p{round(q * 100)}") for q in (0.5, 0.99)
            ),
            unit="s",
            width=6,
        ),
        PanelSpec(
            "Ingress in-flight images vs rejections",
            "Images each Ingress replica has sent to the Generator and not yet got back (left axis; at its bound, "
            "ingress_max_in_flight, /info ingress.max_in_flight_images, it answers 503 itself), against the 503s the "
            "ingress gave without an image, by reason (right axis; ingress_full: that bound).",
            (
                Query(_agg("sum", "ray_zimage_ingress_in_flight_images", SEL, "replica"), "in flight {{replica}}"),
                Query(_rate("ray_zimage_requests_rejected_total", SEL, "reason"), "503 {{reason}}", right_unit="reqps"),
            ),
            width=6,
        ),
    ),
)

ROWS: tuple[RowSpec, ...] = (TRAFFIC, LATENCY, BATCHING, REPLICAS, GPU, WORK, POLICY)

# ---- DCGM variant: the same GPU questions answered by NVIDIA's dcgm-exporter (GPU operator) -------------------------
# dcgm-exporter labels each GPU's series with the pod using it: `pod`/`namespace` when Prometheus honours the
# exporter's labels, `exported_pod`/`exported_namespace` when it does not (a ServiceMonitor without honorLabels: the
# target's own pod/namespace win). Every query reads both and reports `pod`. "All" pods means this RayService's GPU
# workers (KubeRay names them <rayservice>-<hash>-<group>-worker-<hash>).
DCGM_POD_ALL = "zimage-.*-worker-.*"
_DCGM_OWN = 'namespace=~"$Namespace", pod=~"$Pod", exported_pod=""'
_DCGM_EXPORTED = 'exported_namespace=~"$Namespace", exported_pod=~"$Pod"'


def _dcgm(metric: str, rate: bool = False) -> str:
    """One series per (pod, gpu) from either labelling; `rate`: of a counter, per second."""

    def sel(labels: str) -> str:
        return f"rate({metric}{{{labels}}}[{RATE}])" if rate else f"{metric}{{{labels}}}"

    return (
        f"max by (pod, gpu) ({sel(_DCGM_OWN)}"
        f' or label_replace({sel(_DCGM_EXPORTED)}, "pod", "$1", "exported_pod", "(.+)"))'
    )


DCGM_GPU = RowSpec(
    "GPU (dcgm-exporter, per GPU worker pod)",
    (
        PanelSpec(
            "GPU busy (DCGM): utilization vs SM and tensor activity",
            "DCGM_FI_DEV_GPU_UTIL is the share of time any kernel ran; the profiling fields SM active, SM occupancy "
            "and tensor-pipe active (DCGM_FI_PROF_*, datacenter GPUs) show how much of the chip worked.",
            (
                Query(f"{_dcgm('DCGM_FI_DEV_GPU_UTIL')} / 100", "util {{pod}} gpu {{gpu}}"),
                Query(_dcgm("DCGM_FI_PROF_SM_ACTIVE"), "SM active {{pod}} gpu {{gpu}}"),
                Query(_dcgm("DCGM_FI_PROF_SM_OCCUPANCY"), "SM occupancy {{pod}} gpu {{gpu}}"),
                Query(_dcgm("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"), "tensor active {{pod}} gpu {{gpu}}"),
            ),
            unit="percentunit",
            max=1,
        ),
        PanelSpec(
            "VRAM used / total (DCGM)",
            "Framebuffer used and used + free (dcgm-exporter reports MiB), all processes on the GPU.",
            (
                Query(f"{_dcgm('DCGM_FI_DEV_FB_USED')} * 1048576", "used {{pod}} gpu {{gpu}}"),
                Query(
                    f"({_dcgm('DCGM_FI_DEV_FB_USED')} + {_dcgm('DCGM_FI_DEV_FB_FREE')}) * 1048576",
                    "total {{pod}} gpu {{gpu}}",
                ),
            ),
            unit="bytes",
        ),
        PanelSpec(
            "Power (DCGM)",
            "Power draw (DCGM_FI_DEV_POWER_USAGE) and the average over the interval from the energy counter "
            "(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, mJ).",
            (
                Query(_dcgm("DCGM_FI_DEV_POWER_USAGE"), "now {{pod}} gpu {{gpu}}"),
                Query(f"{_dcgm('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION', rate=True)} / 1000", "avg {{pod}} gpu {{gpu}}"),
            ),
            unit="watt",
        ),
        PanelSpec(
            "Temperature (DCGM)",
            "GPU die temperature (DCGM_FI_DEV_GPU_TEMP): sustained heat throttles clocks and throughput.",
            (Query(_dcgm("DCGM_FI_DEV_GPU_TEMP"), "{{pod}} gpu {{gpu}}"),),
            unit="celsius",
        ),
    ),
)

DCGM_ROWS: tuple[RowSpec, ...] = (DCGM_GPU,)
