"""The FastAPI app of the ingress: error handlers, request guards, and an OpenAPI schema that documents the error
bodies the service really sends (OpenAI's `{"error": {...}}` for 401/413/422/500/503, not FastAPI's `{"detail"}`).

Interactive docs (/docs, /redoc) are off: they load Swagger/ReDoc from a CDN and are blank on an offline cluster.
The schema is at /openapi.json; any OpenAPI viewer reads it.
"""

from __future__ import annotations

from fastapi import FastAPI

from deployments.http.errors import install_error_handlers
from deployments.http.guards import GuardMiddleware
from deployments.http.protocol import ErrorResponse


def _error(description: str, retry_after: bool = False) -> dict:
    doc: dict = {"model": ErrorResponse, "description": description}
    if retry_after:
        doc["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        }
    return doc


ERROR_RESPONSES: dict[int | str, dict] = {
    401: _error("Missing or invalid API key (only when the service is configured with one)."),
    413: _error("Request body larger than `limits.max_body_bytes`."),
    422: _error("Invalid request: `param` names the field, `limit` the bound it broke."),
    500: _error("Generation failed (e.g. out of memory even at batch 1)."),
    503: _error(
        "Overloaded (queue full) or no replica available; retry after `Retry-After` seconds.", retry_after=True
    ),
}

api = FastAPI(
    title="Z-Image-Turbo on Ray Serve",
    description="Text-to-image with Z-Image-Turbo; OpenAI-compatible images API plus a plain image endpoint.",
    version="0.2.0",
    responses=ERROR_RESPONSES,
    docs_url=None,
    redoc_url=None,
)
install_error_handlers(api)
api.add_middleware(GuardMiddleware)  # settings: configure_guard() in Ingress.__init__ (see guards.py for why)
