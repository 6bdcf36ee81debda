"""HTTP ingress (CPU replicas): a thin Serve shell over the FastAPI routes.

Routes: POST /v1/images/generations and /v1/images/edits (OpenAI), POST /generate (image bytes), GET /v1/models,
GET /info, GET /healthz. Validation lives in deployments/http/validation.py (edits: deployments/http/edits.py), the
call to the GPU deployment in deployments/http/serving.py.
"""

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Request, Response
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.config import AppConfig
from deployments.http.admission import InFlightImages
from deployments.http.edits import EDITS_PATH, edit_request_body, edit_upload, read_form, specs_from_edit
from deployments.http.errors import ApiError
from deployments.http.guards import configure_guard, current_guard
from deployments.http.image_encoding import MEDIA_TYPES, ImageFormat, encode_b64, encode_image
from deployments.http.openapi import api, document_limits
from deployments.http.protocol import GenerateRequest, ImageData, ImagesParams, ImagesRequest, ImagesResponse
from deployments.http.serving import GenerationClient, result_headers
from deployments.http.validation import output_encoding, specs_from_generate, specs_from_images
from deployments.messages import GenerationSpec
from deployments.observability.metrics import IngressMetrics
from deployments.observability.replica import replica_id
from deployments.presets import presets_info


@serve.ingress(api)
class Ingress:
    def __init__(self, app_config: dict, generator: DeploymentHandle, max_in_flight: int | None):
        """`max_in_flight`: this replica's bound on images at the Generator (deployments/app.py resolves it)."""
        self.cfg = AppConfig.model_validate(app_config)
        self.generator = generator
        self.metrics = IngressMetrics()
        self.admission = InFlightImages(max_in_flight, on_change=self.metrics.in_flight.set)
        self.metrics.in_flight.set(0)
        self.client = GenerationClient(self.cfg, generator, self.metrics, self.admission)
        api_key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        if self.cfg.api_key_env and not api_key:
            raise RuntimeError(f"api_key_env={self.cfg.api_key_env} is configured but that variable is empty")
        # Edits upload images: their own, larger body limit; every other route takes small JSON bodies.
        configure_guard(self.cfg.limits.max_body_bytes, api_key, {EDITS_PATH: self.cfg.limits.max_edit_body_bytes})
        document_limits(api, self.cfg.limits)

    @contextmanager
    def _observed(self, route: str) -> Iterator[None]:
        """Latency by route and status: 200, an ApiError's status, 500 for anything else (or a cancelled request)."""
        start, code = time.perf_counter(), 500
        try:
            yield
            code = 200
        except ApiError as exc:
            code = exc.status
            raise
        finally:
            self.metrics.latency.observe(time.perf_counter() - start, tags={"route": route, "code": str(code)})

    async def _images(
        self, req: ImagesParams, specs: list[GenerationSpec], fmt: ImageFormat, quality: int | None, response: Response
    ) -> ImagesResponse:
        """OpenAI's images answer (generations and edits): b64 images encoded off the event loop, X-* headers."""
        results = await self.client.run(specs, [lora.name for lora in req.lora or ()])
        encoded = await asyncio.gather(*(asyncio.to_thread(encode_b64, r.image, fmt, quality) for r in results))
        response.headers.update(result_headers(results))
        return ImagesResponse(
            created=int(time.time()), data=[ImageData(b64_json=b) for b in encoded], output_format=fmt
        )

    @api.post("/v1/images/generations", response_model=ImagesResponse)
    async def images_generations(self, body: ImagesRequest, response: Response) -> ImagesResponse:
        with self._observed("/v1/images/generations"):
            fmt, quality = output_encoding(body)
            specs = specs_from_images(body, self.cfg, uuid.uuid4().hex)
            return await self._images(body, specs, fmt, quality, response)

    @api.post(EDITS_PATH, response_model=ImagesResponse, openapi_extra={"requestBody": edit_request_body()})
    async def images_edits(self, request: Request, response: Response) -> ImagesResponse:
        """OpenAI's images edit (multipart): image-to-image, or inpainting where the mask is transparent."""
        with self._observed(EDITS_PATH):
            self.client.refuse_if_full()  # before the upload is read: a full ingress buffers no images to refuse
            upload = edit_upload(await read_form(request))
            fmt, quality = output_encoding(upload.request)
            specs = await asyncio.to_thread(specs_from_edit, upload, self.cfg, uuid.uuid4().hex)  # decodes images
            return await self._images(upload.request, specs, fmt, quality, response)

    @api.post("/generate", response_class=Response, responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
    async def generate(self, body: GenerateRequest) -> Response:
        with self._observed("/generate"):
            fmt, quality = output_encoding(body)
            specs = specs_from_generate(body, self.cfg, uuid.uuid4().hex)
            (result,) = await self.client.run(specs, [lora.name for lora in body.lora or ()])
            data = await asyncio.to_thread(encode_image, result.image, fmt, quality)
            return Response(content=data, media_type=MEDIA_TYPES[fmt], headers=result_headers([result]))

    @api.get("/v1/models")
    async def models(self) -> dict:
        """The model, then one entry per LoRA adapter a generator replica has loaded (vLLM's shape)."""
        model = {"id": self.cfg.model_name, "object": "model", "owned_by": "tongyi-mai", "source": self.cfg.model.label}
        adapters = await self.generator.adapters.remote() if self.cfg.lora is not None else []
        entries = [
            {
                "id": a["name"],
                "object": "model",
                "owned_by": "zimage-serve",
                "parent": self.cfg.model_name,
                "root": a["source"],
            }
            for a in adapters
            if a.get("status", "loaded") == "loaded"  # one that failed to load is not served
        ]
        return {"object": "list", "data": [model, *entries]}

    @api.get("/info")
    async def info(self) -> dict:
        """Service configuration and one generator replica's batching state (tier, caps, memory mode). Under overload
        the generator's queue may refuse the call: /info still answers, with `generator.unavailable` saying why.
        The ingress's own counts are read on arrival: the generator call can wait behind a batch for seconds."""
        admission = self.admission.as_dict()
        try:
            generator = await self.generator.info.remote()
        except (BackPressureError, DeploymentUnavailableError) as exc:
            generator = {"unavailable": f"{type(exc).__name__}: the generator's queue is full or it has no replica"}
        guard = current_guard()  # what the middleware really enforces in this process
        return {
            "model_name": self.cfg.model_name,
            "model_source": self.cfg.model.label,
            "limits": self.cfg.limits.model_dump(),
            "defaults": self.cfg.defaults.model_dump(),
            "presets": presets_info(self.cfg.limits),
            "auth": bool(guard and guard.api_key),
            "ingress": {"replica": replica_id(), "pid": os.getpid(), **admission},
            "generator": generator,
        }

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model_source": self.cfg.model.label}
