"""Run one same-shape group of requests on the engine: OOM split-retry, per-request results, metrics.

Runs in the replica's single GPU thread. A request that fails alone gets its own error result; the others still run.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from deployments.batching.oom_split import is_oom, run_with_oom_split
from deployments.batching.policy import chunks_of
from deployments.messages import GenerationResult, GenerationSpec
from deployments.observability.metrics import GeneratorMetrics
from deployments.pipeline.engine import ZImageEngine
from deployments.pipeline.lora import AdapterError
from deployments.pipeline.runner import Shape

logger = logging.getLogger("ray.serve")


class GroupExecutor:
    def __init__(
        self,
        engine: ZImageEngine,
        metrics: GeneratorMetrics,
        replica: str,
        on_batch_too_large: Callable[[int, int, int], None],
        max_batch_for_area: Callable[[int], int] = lambda area: 1 << 30,
        on_batch: Callable[[tuple, int, float], None] = lambda key, size, seconds: None,
        work_waiting: Callable[[], bool] = lambda: False,
    ):
        """`on_batch_too_large(smallest_failed, largest_ok, area)`: a batch of `area`-pixel images hit OOM although
        its items fit in smaller ones. `max_batch_for_area(area)`: the largest batch one pipeline call of that area
        may hold (Serve's max_batch_size is one number for every shape; a group above its shape's cap runs in
        chunks). `on_batch(batch_key, size, seconds)`: a pipeline call of `size` images took `seconds` (all stages).
        """
        self.engine, self.metrics, self.replica = engine, metrics, replica
        self.on_batch = on_batch
        # The GPU's idle time between pipeline calls while requests wait (Python, scheduling, Serve's hand-off):
        # `work_waiting()` says whether any request waits for the GPU when a call ends.
        self.work_waiting = work_waiting
        self._idle_from: float | None = None  # end of the last call, if work was waiting then
        self._rest_of_group = False
        self.idle_gaps_s: deque[float] = deque(maxlen=1000)
        self.on_batch_too_large = on_batch_too_large
        self.max_batch_for_area = max_batch_for_area
        self.fatal: BaseException | None = None  # a sticky CUDA error: the replica must be replaced

    @property
    def model_source(self) -> str:
        return self.engine.cfg.model.label

    def run_group(self, specs: list[GenerationSpec]) -> list[GenerationResult]:
        """One group of the same batch key (shape, task, strength, adapters), in chunks of that shape's max batch
        (read again before each chunk: an OOM in one chunk lowers the next one's size)."""
        results: list[GenerationResult] = []
        area = specs[0].width * specs[0].height
        rest = list(specs)
        while rest:
            (chunk,) = chunks_of(rest, self.max_batch_for_area(area))[:1]
            rest = rest[len(chunk) :]
            self._rest_of_group = bool(rest)
            results += self._run_capped(chunk, area)
        return results

    def _run_capped(self, specs: list[GenerationSpec], area: int) -> list[GenerationResult]:
        try:
            self.engine.adapters.apply(specs[0].loras)
        except AdapterError as exc:  # an adapter removed live after these requests were accepted
            return [self.invalid(s, exc) for s in specs]
        try:
            outcome = run_with_oom_split(
                specs,
                self._run_chunk,
                on_oom=self.engine.release_cached_memory,
                on_fail_alone=lambda s, exc: self._failed([s], exc)[0],
            )
        except Exception as exc:
            return self._failed(specs, exc)
        if outcome.largest_failed is not None:  # only OOMs of batches whose items all fit alone lower the cap
            self.on_batch_too_large(outcome.largest_failed, max(outcome.sizes_run), area)
        if outcome.oom_splits:
            self.metrics.oom_splits.inc(outcome.oom_splits)
        return outcome.results

    def _run_chunk(self, chunk: list[GenerationSpec]) -> list[GenerationResult]:
        first = chunk[0]
        edits = [s.edit for s in chunk] if first.edit is not None else None
        if self._idle_from is not None:
            self.idle_gaps_s.append(time.perf_counter() - self._idle_from)
            self.metrics.idle_gap.observe(self.idle_gaps_s[-1])
        try:
            out = self.engine.run(
                [s.prompt for s in chunk], [s.seed for s in chunk], Shape(*first.shape), edits, first.loras
            )
        finally:
            waiting = self._rest_of_group or self.work_waiting()
            self._idle_from = time.perf_counter() if waiting else None
        t = out.times
        self.on_batch(first.batch_key, len(chunk), t.total_s)
        stage_s = {"encode": t.encode_s, "denoise": t.denoise_s, "decode": t.decode_s}
        work = {"task": first.task, "adapter": adapter_label(first)}
        self.metrics.batch_size.observe(len(chunk), tags=work)
        for stage, secs in stage_s.items():
            self.metrics.stage.observe(secs, tags={"stage": stage})
        self.metrics.gpu_seconds_per_image.observe(t.total_s / len(chunk), tags=work)
        self.metrics.images.inc(len(chunk), tags={"model_source": self.model_source, **work})
        peak = max(out.stage_peak_bytes.values(), default=0)
        made = dict(batch_size=len(chunk), inference_s=t.total_s, stage_s=stage_s, peak_memory_bytes=peak)
        return [self._result(s, image=img, **made) for s, img in zip(chunk, out.images, strict=True)]

    def _failed(self, specs: list[GenerationSpec], exc: BaseException) -> list[GenerationResult]:
        kind = "oom" if is_oom(exc) else "internal"
        if kind == "internal" and "CUDA error" in str(exc):
            self.fatal = exc  # a sticky CUDA error poisons the context: fail health checks so Serve replaces us
        logger.error("generation failed for %d request(s) (%s): %s", len(specs), kind, exc)
        self.metrics.failures.inc(len(specs), tags={"reason": kind})
        error = f"{type(exc).__name__}: {exc}"
        return [self._result(s, image=None, error=error, error_kind=kind) for s in specs]

    def invalid(self, spec: GenerationSpec, exc: AdapterError) -> GenerationResult:
        """The request names an adapter this replica does not serve (any more): a 422 at the ingress, not a 500."""
        names = self.engine.adapters.names()
        return self._result(
            spec, image=None, error=str(exc), error_kind="invalid", error_param=exc.param, error_limit=names
        )

    def _result(self, spec: GenerationSpec, **fields) -> GenerationResult:
        return GenerationResult(seed=spec.seed, model_source=self.model_source, replica=self.replica, **fields)


def gap_summary(gaps_s) -> dict:
    """/info: the GPU's idle gaps between pipeline calls while requests waited (the last 1000)."""
    gaps = sorted(gaps_s)
    if not gaps:
        return {"count": 0}
    return {
        "count": len(gaps),
        "mean_ms": round(1e3 * sum(gaps) / len(gaps), 2),
        "p99_ms": round(1e3 * gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))], 2),
        "max_ms": round(1e3 * gaps[-1], 2),
    }


def adapter_label(spec: GenerationSpec) -> str:
    """Metric tag: the adapter set by name (`none` for the base model); bounded by the configured adapters."""
    return "+".join(c.name for c in spec.loras) or "none"
