"""Batch-size sweep against a running deployment: reconfigure max_batch_size live, fill batches, measure a row.

Each row: PUT the Serve config with the new user_config, wait until /info shows it, warm up (one batch per warm-up
batch, optionally with fewer steps: same shapes), then a closed loop with `clients_per_batch` x batch size clients
(one batch running, one queued: the GPU never waits for HTTP round trips) for `batches` full batches, kept full to the
end by unmeasured cooldown requests (`cooldown`). `user_config` (e.g. batch_wait_timeout_s) is applied before the first
row and, like max_batch_size, restored at the end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

from bench.loadgen import LoadSpec, run_load
from bench.progress import request_bar
from bench.results import RunFile
from bench.serve_control import ServeControl
from bench.stats import request_stats
from bench.workload import ARTICLE_PROMPT, ARTICLE_SEED, Workload

logger = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 2


@dataclass
class SweepPlan:
    grid: list[tuple[int, int, list[int]]] = field(default_factory=lambda: [(1024, 1024, [1, 2, 4, 6, 8])])
    steps: int = 8
    batches: int = 3  # measured full batches per row
    warmup_batches: int = 1
    min_requests: int = 4  # at small batch sizes measure at least this many requests
    clients_per_batch: int = 2
    warmup_steps: int | None = None  # None: same as steps
    row_timeout_s: float = 300.0  # bound on a row's measured phase
    budget_s: float | None = None  # skip rows that would not finish within this (whole sweep)
    request_timeout_s: float = 600.0
    prompt_mode: str = "article"
    prompt: str = ARTICLE_PROMPT
    seed: int = ARTICLE_SEED
    endpoint: str = "generate"
    output_format: str | None = None  # png | jpeg | webp (None: the service default, png)
    cooldown: bool = True  # keep the queue full until the last measured request is answered (no partial tail)
    user_config: dict = field(default_factory=dict)  # other Generator user_config for the whole sweep
    reconfigure_timeout_s: float = 180.0

    def requests(self, bs: int) -> tuple[int, int]:
        """(warm-up, measured) request counts for batch size bs."""
        return self.warmup_batches * bs, max(self.min_requests, self.batches * bs)

    def describe(self) -> dict:
        d = asdict(self)
        d["grid"] = [{"width": w, "height": h, "batch_sizes": b} for w, h, b in self.grid]
        return d


class _Budget:
    """Predicts a row's time from the last measured s/img (scaled by pixels across sizes) and the time left."""

    def __init__(self, plan: SweepPlan):
        self.plan = plan
        self.start = time.monotonic()
        self.s_per_px: dict[int, float] = {}  # pixels -> seconds per image per pixel

    def record(self, w: int, h: int, s_per_image: float | None) -> None:
        if s_per_image:
            self.s_per_px[w * h] = s_per_image / (w * h)

    def estimate(self, w: int, h: int, bs: int) -> float | None:
        if not self.s_per_px:
            return None
        px = w * h
        per_px = self.s_per_px.get(px) or self.s_per_px[min(self.s_per_px, key=lambda p: abs(p - px))]
        warm, measured = self.plan.requests(bs)
        warm_frac = (self.plan.warmup_steps or self.plan.steps) / self.plan.steps
        return per_px * px * (measured + warm * max(warm_frac, 0.3))

    def why_skip(self, w: int, h: int, bs: int) -> str | None:
        if self.plan.budget_s is None:
            return None
        left = self.plan.budget_s - (time.monotonic() - self.start)
        est = self.estimate(w, h, bs)
        if left <= 0 or (est is not None and est > left):
            return f"time budget: ~{est or 0:.0f}s needed, {max(left, 0):.0f}s of {self.plan.budget_s:.0f}s left"
        return None


def run_sweep(control: ServeControl, plan: SweepPlan, run: RunFile, sampler=None) -> None:
    current = control.info()["generator"].get("user_config") or {}
    original = {k: current.get(k) for k in ("max_batch_size", *plan.user_config)}
    budget = _Budget(plan)
    failures = 0
    try:
        if plan.user_config:
            control.apply_user_config(plan.user_config, timeout_s=plan.reconfigure_timeout_s)
            logger.info("user_config for this sweep: %s (was %s)", plan.user_config, original)
        for w, h, sizes in plan.grid:
            for bs in sizes:
                key = {"width": w, "height": h, "steps": plan.steps, "batch_size": bs}
                reason = budget.why_skip(w, h, bs)
                if reason:
                    run.skip(key, reason)
                    continue
                try:
                    summary = _row(control, plan, run, sampler, key)
                except Exception as exc:  # one bad row must not cost the others; two in a row: the service is gone
                    logger.exception("row %s failed", key)
                    run.skip(key, f"row failed: {type(exc).__name__}: {exc}"[:500])
                    failures += 1
                    if failures >= MAX_CONSECUTIVE_FAILURES:
                        raise RuntimeError(f"{failures} rows in a row failed; stopping the sweep") from exc
                    continue
                failures = 0
                budget.record(w, h, summary.get("s_per_image"))
    finally:
        try:
            control.apply_user_config(original, timeout_s=plan.reconfigure_timeout_s)
        except Exception as exc:
            logger.warning("could not restore user_config %s: %s", original, exc)


def _row(control: ServeControl, plan: SweepPlan, run: RunFile, sampler, key: dict) -> dict:
    w, h, bs = key["width"], key["height"], key["batch_size"]
    t0 = time.monotonic()
    gen = control.set_max_batch_size(bs, timeout_s=plan.reconfigure_timeout_s)
    eff = gen["batching"]["effective_max_batch"]
    logger.info("max_batch_size=%d applied in %.1fs (effective %s)", bs, time.monotonic() - t0, eff)
    workload = Workload(w, h, plan.steps, plan.prompt_mode, plan.prompt, plan.seed, plan.endpoint, plan.output_format)
    warm, measured = plan.requests(bs)
    spec = LoadSpec(
        mode="closed",
        concurrency=plan.clients_per_batch * bs,
        requests=measured,
        duration_s=plan.row_timeout_s,
        drain_s=max(60.0, plan.row_timeout_s / 2),
        warmup_requests=warm,
        warmup_steps=plan.warmup_steps,
        timeout_s=plan.request_timeout_s,
        cooldown=plan.cooldown,
    )
    with request_bar(warm + measured, f"{w}x{h} bs={bs}") as on_done:
        phases = run_load(control.url, workload, spec, on_done=on_done, headers=control.auth_headers)
    records = [r.as_dict() for p in phases.values() for r in p.records]
    measured_records = [r for r in records if r["phase"] == "measure"]
    stats = request_stats(measured_records)
    samples = sampler.window(stats["window_start"], stats["window_end"]) if sampler else []
    b = gen["batching"]
    extra = {
        "load_mode": "closed",
        "concurrency": spec.concurrency,
        "effective_max_batch": b.get("effective_max_batch"),
        "memory_cap": b.get("memory_cap"),
        "replica_restarted": gen.get("restarted"),
        "warmup_requests": warm,
        "warmup_ok": sum(r["outcome"] == "ok" for r in records if r["phase"] == "warmup"),
        "cooldown_requests": sum(r["phase"] == "cooldown" for r in records),
    }
    summary = run.add_row(key, stats, samples, extra, records)
    log_row(summary)
    log_failures(measured_records)
    return summary


def log_failures(records: list[dict]) -> None:
    """Name what went wrong (status, error) so a failed GPU run can be read from its log."""
    kinds: dict[tuple, int] = {}
    for r in records:
        if r["outcome"] != "ok":
            k = (r["outcome"], r["status"], (r.get("error") or "")[:160])
            kinds[k] = kinds.get(k, 0) + 1
    for (outcome, status, error), n in kinds.items():
        logger.warning("%d request(s) %s (HTTP %s): %s", n, outcome, status, error)


def log_row(s: dict) -> None:
    def f(v, fmt, unit=""):
        return "n/a" if v is None else format(v, fmt) + unit

    logger.info(
        "%dx%d bs=%d: %d/%d ok (%d rejected, %d errors), mean batch %s, %s img/s, %s s/img, batch %s s, "
        "p50 %s, p99 %s, NVML util %s, SM %s, VRAM %s (torch %s), MFU %s",
        s["width"],
        s["height"],
        s["batch_size"],
        s["ok"],
        s["sent"],
        s["rejected"],
        s["errors"],
        f(s.get("mean_batch_size"), ".2f"),
        f(s.get("throughput_img_s"), ".3f"),
        f(s.get("s_per_image"), ".3f"),
        f(s.get("batch_latency_s"), ".2f"),
        f(s.get("latency_p50_s"), ".2f", " s"),
        f(s.get("latency_p99_s"), ".2f", " s"),
        f(s.get("gpu_util_pct"), ".0f", "%"),
        f(s.get("sm_activity_pct"), ".0f", "%"),
        f(s.get("peak_vram_nvml_mb"), ".0f", " MB"),
        f(s.get("peak_vram_torch_mb"), ".0f", " MB"),
        f(s.get("mfu_pct"), ".1f", "%"),
    )
