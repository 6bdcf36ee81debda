"""HTTP ingress (CPU replicas): validate, fan out to the GPU deployment, encode PNGs, answer with timing headers.

Routes: POST /v1/images/generations (OpenAI), POST /generate (PNG bytes), GET /v1/models, GET /info, GET /healthz.
Overload (the GPU deployment's bounded queue is full) is a 503 with Retry-After; a replica that dies under a request
is retried once on another (same seed, same image), then reported as 503.
"""

import asyncio
import logging
import os
import time
import uuid

from fastapi import FastAPI, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.api_models import (
    GenerateRequest,
    ImageData,
    ImagesRequest,
    ImagesResponse,
    output_encoding,
    specs_from_generate,
    specs_from_images,
)
from deployments.config import AppConfig
from deployments.errors import ApiError, GenerationFailed, Overloaded, install_error_handlers
from deployments.http_guards import GuardMiddleware, configure_guard, current_guard
from deployments.images import MEDIA_TYPES, encode_b64, encode_image
from deployments.metrics import IngressMetrics
from deployments.schemas import GenerationResult, GenerationSpec

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="Z-Image-Turbo on Ray Serve",
    description="Text-to-image with Z-Image-Turbo; OpenAI-compatible images API plus a plain image endpoint.",
    version="0.1.0",
)
install_error_handlers(api)
api.add_middleware(GuardMiddleware)  # settings: configure_guard() in Ingress.__init__ (see http_guards.py for why)


def _headers(results: list[GenerationResult]) -> dict[str, str]:
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


# Route methods run from a copy of `api` that @serve.ingress pickles *by value when this module is imported*: every
# global they use must be defined above this point, and mutable module state set at run time is not shared with them.
def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside Serve
        return f"local-{os.getpid()}"


@serve.ingress(api)
class Ingress:
    def __init__(self, app_config: dict, generator: DeploymentHandle):
        self.cfg = AppConfig.model_validate(app_config)
        self.generator = generator
        self.metrics = IngressMetrics()
        api_key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        if self.cfg.api_key_env and not api_key:
            raise RuntimeError(f"api_key_env={self.cfg.api_key_env} is configured but that variable is empty")
        configure_guard(self.cfg.limits.max_body_bytes, api_key)

    # ---- plumbing ------------------------------------------------------------------------------------------------
    async def _one(self, spec: GenerationSpec) -> GenerationResult:
        for attempt in (1, 2):
            try:
                result: GenerationResult = await self.generator.generate.remote(spec)
            except BackPressureError as exc:
                self.metrics.rejected.inc(tags={"reason": "overloaded"})
                raise Overloaded(
                    None,
                    f"server busy: the generation queue is full ({exc.message})",
                    code="queue_full",
                    headers={"Retry-After": str(self.cfg.retry_after_s)},
                ) from exc
            except DeploymentUnavailableError as exc:
                self.metrics.rejected.inc(tags={"reason": "unavailable"})
                raise Overloaded(
                    None,
                    "no generator replica is available",
                    code="unavailable",
                    headers={"Retry-After": str(self.cfg.retry_after_s)},
                ) from exc
            except RayActorError as exc:  # the replica process died while it held this request
                if attempt == 1:
                    logger.warning(
                        "request %s: generator replica died (%s); retrying once", spec.request_id, type(exc).__name__
                    )
                    continue
                self.metrics.rejected.inc(tags={"reason": "replica_died"})
                raise Overloaded(
                    None,
                    "the generator replica serving this request died; retry",
                    code="replica_died",
                    headers={"Retry-After": str(self.cfg.retry_after_s)},
                ) from exc
            if result.error is not None:
                raise GenerationFailed(
                    None, f"generation failed ({result.error_kind}): {result.error}", code=result.error_kind
                )
            return result
        raise AssertionError("unreachable")

    async def _run(self, specs: list[GenerationSpec]) -> list[GenerationResult]:
        if self.cfg.log_prompts:
            logger.info("request %s: %r", specs[0].request_id, specs[0].prompt)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._one(s)) for s in specs]
        except* ApiError as eg:
            raise eg.exceptions[0] from None
        return [t.result() for t in tasks]

    def _observe(self, route: str, start: float, code: int) -> None:
        self.metrics.latency.observe(time.perf_counter() - start, tags={"route": route, "code": str(code)})

    # ---- routes --------------------------------------------------------------------------------------------------
    @api.post("/v1/images/generations", response_model=ImagesResponse)
    async def images_generations(self, body: ImagesRequest, response: Response) -> ImagesResponse:
        start, code = time.perf_counter(), 500
        try:
            fmt, quality = output_encoding(body)
            specs = specs_from_images(body, self.cfg, uuid.uuid4().hex)
            results = await self._run(specs)
            encoded = await asyncio.gather(*(asyncio.to_thread(encode_b64, r.image, fmt, quality) for r in results))
            response.headers.update(_headers(results))
            code = 200
            return ImagesResponse(
                created=int(time.time()), data=[ImageData(b64_json=b) for b in encoded], output_format=fmt
            )
        except ApiError as exc:
            code = exc.status
            raise
        finally:
            self._observe("/v1/images/generations", start, code)

    @api.post("/generate", response_class=Response, responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
    async def generate(self, body: GenerateRequest) -> Response:
        start, code = time.perf_counter(), 500
        try:
            fmt, quality = output_encoding(body)
            (result,) = await self._run(specs_from_generate(body, self.cfg, uuid.uuid4().hex))
            data = await asyncio.to_thread(encode_image, result.image, fmt, quality)
            code = 200
            return Response(content=data, media_type=MEDIA_TYPES[fmt], headers=_headers([result]))
        except ApiError as exc:
            code = exc.status
            raise
        finally:
            self._observe("/generate", start, code)

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {"id": self.cfg.model_name, "object": "model", "owned_by": "tongyi-mai", "source": self.cfg.model.label}
            ],
        }

    @api.get("/info")
    async def info(self) -> dict:
        """Service configuration and one generator replica's batching state (tier, caps, memory mode)."""
        generator = await self.generator.info.remote()
        guard = current_guard()  # what the middleware really enforces in this process
        return {
            "model_name": self.cfg.model_name,
            "model_source": self.cfg.model.label,
            "limits": self.cfg.limits.model_dump(),
            "defaults": self.cfg.defaults.model_dump(),
            "auth": bool(guard and guard.api_key),
            "ingress": {"replica": _replica_id(), "pid": os.getpid()},
            "generator": generator,
        }

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model_source": self.cfg.model.label}
