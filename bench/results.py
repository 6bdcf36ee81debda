"""The raw JSON of one bench run (every request, every telemetry sample, environment), saved after each row."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

from bench.flops import arch_for_source, gpu_peak_tflops
from bench.stats import compute_efficiency
from bench.telemetry import summarize_window

logger = logging.getLogger(__name__)
SCHEMA = "zimage-bench/1"
ATTRIBUTION = (
    "GPU samples (NVML + GPM, taken in the bench process beside the service) belong to a row when their timestamp "
    "lies in the row's measured window: first scheduled send of the measured phase -> last answer. Warm-up, "
    "reconfiguration and gaps between rows fall outside every window."
)


def weights_note(model_source: str) -> str:
    if model_source == "random:full":
        return f"{model_source} (random weights, real architecture: the real model's timing and memory; noise images)"
    if model_source.startswith("random:"):
        return f"{model_source} (random weights, toy-size architecture: exercises the code, timings mean nothing)"
    return f"{model_source} (trained weights)"


class RunFile:
    """Accumulates rows and rewrites `path` atomically after each, so a killed run still leaves its finished rows."""

    def __init__(self, path: Path, kind: str, label: str, model_source: str, environment: dict, settings: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        gpu_name = (environment.get("gpu") or {}).get("name")
        peak = settings.get("peak_tflops") or gpu_peak_tflops(gpu_name)
        self.data = {
            "schema": SCHEMA,
            "kind": kind,
            "label": label,
            "model_source": model_source,
            "weights": weights_note(model_source),
            "environment": environment,
            "settings": settings,
            "gpu_peak_tflops": peak,
            "gpu_peak_note": (
                "bf16 dense datasheet peak"
                if peak
                else (f"unknown bf16 peak for {gpu_name!r}; pass --peak-tflops" if gpu_name else "no GPU")
            ),
            "telemetry": {"attribution": ATTRIBUTION},
            "rows": [],
            "skipped": [],
        }
        self.arch = arch_for_source(model_source)

    def set(self, **fields) -> None:
        self.data.update(fields)

    def add_row(self, key: dict, stats: dict, samples: list, extra: dict, requests: list[dict]) -> dict:
        """key: width/height/steps/batch_size (and `dit_steps` when an edit runs fewer DiT forwards than `steps`);
        stats: from stats.request_stats (or the baseline equivalent)."""
        summary = {**key, **extra, **stats}
        summary.update(summarize_window(samples, stats["window_start"], stats["window_end"]))
        flops = self.arch.forward_flops(key["width"], key["height"])
        steps = key.get("dit_steps") or key["steps"]
        summary.update(compute_efficiency(summary, flops, steps, self.data["gpu_peak_tflops"]))
        row = {"summary": summary, "requests": requests, "telemetry_samples": [s.as_dict() for s in samples]}
        self.data["rows"].append(row)
        self.save()
        return summary

    def skip(self, key: dict, reason: str) -> None:
        self.data["skipped"].append({**key, "reason": reason})
        logger.warning("skipped %s: %s", key, reason)
        self.save()

    def save(self) -> None:
        """A `.gz` path is written gzip-compressed (what gets committed; `read_json` reads both)."""
        tmp = self.path.with_suffix(".tmp")
        text = json.dumps(self.data, indent=1, default=str)
        if self.path.suffix == ".gz":
            tmp.write_bytes(gzip.compress(text.encode(), mtime=0))
        else:
            tmp.write_text(text)
        os.replace(tmp, self.path)


def read_json(path: str | Path):
    """JSON from `path`, gzip-compressed or not (committed results are stored as .json.gz)."""
    path = Path(path)
    if path.suffix == ".gz":
        return json.loads(gzip.decompress(path.read_bytes()))
    return json.loads(path.read_text())


def run_name(path: str | Path) -> str:
    """`serve_sweep` for serve_sweep.json and serve_sweep.json.gz alike."""
    name = Path(path).name
    for suffix in (".gz", ".json"):
        name = name.removesuffix(suffix)
    return name


def load_run(path: str | Path) -> dict:
    data = read_json(path)
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a {SCHEMA} result (schema={data.get('schema')!r})")
    return data
