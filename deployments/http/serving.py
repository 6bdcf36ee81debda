"""Serving logic behind the routes: fan a request's images out to the GPU deployment, map failures to HTTP errors,
and describe how each image was made in X-* headers. Route functions (deployments/ingress.py) stay one-liners."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.config import AppConfig
from deployments.http.admission import InFlightImages
from deployments.http.errors import ApiError, GenerationFailed, InvalidRequest, Overloaded
from deployments.messages import GenerationResult, GenerationSpec
from deployments.observability.metrics import IngressMetrics

logger = logging.getLogger("ray.serve")


_LORA_PARAM = re.compile(r"^lora\[(\d+)\]")


def _request_param(param: str | None, spec: GenerationSpec, lora_names: Sequence[str]) -> str | None:
    """The replica names adapters by their place in `spec.loras` (sorted by name); the client wants its own order."""
    m = _LORA_PARAM.match(param or "")
    if m is None or int(m[1]) >= len(spec.loras) or spec.loras[int(m[1])].name not in lora_names:
        return param
    return f"lora[{list(lora_names).index(spec.loras[int(m[1])].name)}]" + param[m.end() :]


def result_headers(results: list[GenerationResult]) -> dict[str, str]:
    def join(values) -> str:
        return ",".join(str(v) for v in values)

    return {
        "X-Model-Source": results[0].model_source,
        "X-Seed": join(r.seed for r in results),
        "X-Batch-Size": join(r.batch_size for r in results),
        "X-Queue-Wait-Ms": join(f"{r.queue_wait_s * 1e3:.1f}" for r in results),
        "X-Inference-Ms": join(f"{r.inference_s * 1e3:.1f}" for r in results),
        "X-Stage-Ms": join(
            "/".join(f"{r.stage_s.get(k, 0) * 1e3:.1f}" for k in ("encode", "denoise", "decode")) for r in results
        ),
        "X-Peak-Memory-MB": join(f"{r.peak_memory_bytes / 2**20:.0f}" for r in results),
        "X-Replica": join(r.replica for r in results),
    }


class GenerationClient:
    """Calls the GPU deployment: past the ingress's own in-flight bound, overload and lost replicas become 503 +
    Retry-After; a replica that dies under a request is retried once on another (same seed, same image).
    `admission`: this process's in-flight images (deployments/http/admission.py); None counts without a bound."""

    def __init__(
        self,
        cfg: AppConfig,
        generator: DeploymentHandle,
        metrics: IngressMetrics,
        admission: InFlightImages | None = None,
    ):
        self.cfg, self.generator, self.metrics = cfg, generator, metrics
        self.admission = admission if admission is not None else InFlightImages(None)

    def _unavailable(self, reason: str, message: str, code: str | None = None) -> Overloaded:
        self.metrics.rejected.inc(tags={"reason": reason})
        return Overloaded(None, message, code=code or reason, headers={"Retry-After": str(self.cfg.retry_after_s)})

    async def one(self, spec: GenerationSpec, lora_names: Sequence[str] = ()) -> GenerationResult:
        for attempt in (1, 2):
            try:
                result: GenerationResult = await self.generator.generate.remote(spec)
            except BackPressureError as exc:
                message = f"server busy: the generation queue is full ({exc.message})"
                raise self._unavailable("overloaded", message, code="queue_full") from exc
            except DeploymentUnavailableError as exc:
                raise self._unavailable("unavailable", "no generator replica is available") from exc
            except RayActorError as exc:  # the replica process died while it held this request
                if attempt == 1:
                    logger.warning(
                        "request %s: generator replica died (%s); retrying once", spec.request_id, type(exc).__name__
                    )
                    continue
                message = "the generator replica serving this request died; retry"
                raise self._unavailable("replica_died", message) from exc
            if result.error is not None and result.error_kind == "invalid":  # e.g. an adapter this replica lacks
                param = _request_param(result.error_param, spec, lora_names)
                limit = result.error_limit
                if isinstance(limit, (set, frozenset, tuple)):  # JSON has lists only
                    limit = sorted(limit) if not isinstance(limit, tuple) else list(limit)
                raise InvalidRequest(param, result.error, limit=limit)
            if result.error is not None:
                raise GenerationFailed(
                    None, f"generation failed ({result.error_kind}): {result.error}", code=result.error_kind
                )
            return result
        raise AssertionError("unreachable")

    def refuse_if_full(self) -> None:
        """503 now if no request could be admitted: lets a route refuse before it reads a large body (an edit's
        images, up to 32 MiB), so a burst of uploads is not buffered only to be refused."""
        if self.admission.full():
            raise self._busy()

    def _busy(self) -> Overloaded:
        held, limit = self.admission.in_flight, self.admission.limit
        message = f"server busy: {held} of {limit} images already in flight at this ingress"
        return self._unavailable("ingress_full", message, code="queue_full")

    async def run(self, specs: list[GenerationSpec], lora_names: Sequence[str] = ()) -> list[GenerationResult]:
        """All images of one request, concurrently (they may land in one batch); the first error answers it.
        `lora_names`: the request's adapters in its own order, to name the one a replica refuses."""
        if self.cfg.log_prompts:
            logger.info("request %s: %r", specs[0].request_id, specs[0].prompt)
        # Decided here, before any await: under a burst the router's own back-pressure waits on the busy replica.
        if not self.admission.try_acquire(len(specs)):
            raise self._busy()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.one(s, lora_names)) for s in specs]
        except* ApiError as eg:
            raise eg.exceptions[0] from None
        finally:  # failed, refused or cancelled (client gone): the places come back
            self.admission.release(len(specs))
        return [t.result() for t in tasks]
