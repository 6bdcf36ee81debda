"""HTTP ingress (CPU replicas): a thin Serve shell over the FastAPI routes.

Routes: POST /v1/images/generations (OpenAI), POST /generate (image bytes), GET /v1/models, GET /info, GET /healthz.
Validation lives in deployments/http/validation.py, the call to the GPU deployment in deployments/http/serving.py.
"""

import asyncio
import os
import time
import uuid

from fastapi import Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.config import AppConfig
from deployments.http.errors import ApiError
from deployments.http.guards import configure_guard, current_guard
from deployments.http.image_encoding import MEDIA_TYPES, encode_b64, encode_image
from deployments.http.openapi import api, document_limits
from deployments.http.protocol import GenerateRequest, ImageData, ImagesRequest, ImagesResponse
from deployments.http.serving import GenerationClient, result_headers
from deployments.http.validation import output_encoding, specs_from_generate, specs_from_images
from deployments.observability.metrics import IngressMetrics
from deployments.observability.replica import replica_id
from deployments.presets import presets_info


@serve.ingress(api)
class Ingress:
    def __init__(self, app_config: dict, generator: DeploymentHandle):
        self.cfg = AppConfig.model_validate(app_config)
        self.generator = generator
        self.metrics = IngressMetrics()
        self.client = GenerationClient(self.cfg, generator, self.metrics)
        api_key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        if self.cfg.api_key_env and not api_key:
            raise RuntimeError(f"api_key_env={self.cfg.api_key_env} is configured but that variable is empty")
        configure_guard(self.cfg.limits.max_body_bytes, api_key)
        document_limits(api, self.cfg.limits)

    def _observe(self, route: str, start: float, code: int) -> None:
        self.metrics.latency.observe(time.perf_counter() - start, tags={"route": route, "code": str(code)})

    @api.post("/v1/images/generations", response_model=ImagesResponse)
    async def images_generations(self, body: ImagesRequest, response: Response) -> ImagesResponse:
        start, code = time.perf_counter(), 500
        try:
            fmt, quality = output_encoding(body)
            results = await self.client.run(specs_from_images(body, self.cfg, uuid.uuid4().hex))
            encoded = await asyncio.gather(*(asyncio.to_thread(encode_b64, r.image, fmt, quality) for r in results))
            response.headers.update(result_headers(results))
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
            (result,) = await self.client.run(specs_from_generate(body, self.cfg, uuid.uuid4().hex))
            data = await asyncio.to_thread(encode_image, result.image, fmt, quality)
            code = 200
            return Response(content=data, media_type=MEDIA_TYPES[fmt], headers=result_headers([result]))
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
            "presets": presets_info(self.cfg.limits),
            "auth": bool(guard and guard.api_key),
            "ingress": {"replica": replica_id(), "pid": os.getpid()},
            "generator": generator,
        }

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model_source": self.cfg.model.label}
