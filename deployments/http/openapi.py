"""The FastAPI app of the ingress: error handlers, request guards, and an OpenAPI schema that documents the error
bodies the service really sends (OpenAI's `{"error": {...}}` for 401/413/422/500/503, not FastAPI's `{"detail"}`).

Interactive docs (/docs, /redoc) are off: they load Swagger/ReDoc from a CDN and are blank on an offline cluster.
The schema is at /openapi.json; any OpenAPI viewer reads it.
"""

from __future__ import annotations

from fastapi import FastAPI

from deployments.config import RequestLimits
from deployments.http.edits import EDITS_PATH
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
    413: _error(
        "Request body larger than the route's limit: `limits.max_edit_body_bytes` for POST /v1/images/edits, "
        "`limits.max_body_bytes` for the others (`x-max-body-bytes` on each operation)."
    ),
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


def document_limits(app: FastAPI, limits: RequestLimits) -> None:
    """Put this deployment's size and body limits and the allowed presets into /openapi.json (the pydantic models
    cannot carry them: limits come from serve_config.yaml)."""
    from deployments.presets import PRESETS  # noqa: PLC0415 (keeps the module import light)

    allowed = [p.size for p in PRESETS if limits.allows(p.width, p.height)]
    side = {"minimum": limits.min_side, "maximum": limits.max_side, "multipleOf": limits.side_multiple}
    area = f"width x height <= {limits.max_pixels} pixels"
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        comps = schema.get("components", {}).get("schemas", {})
        for name in ("width", "height"):
            prop = comps.get("GenerateRequest", {}).get("properties", {}).get(name)
            if prop is not None:
                prop.setdefault("description", "")
                prop["description"] = f"Pixels: a multiple of {limits.side_multiple} in [{limits.min_side}, " + (
                    f"{limits.max_side}]; {area}."
                )
                prop["x-limits"] = side
        paths = schema.get("paths", {})
        edit_form = paths.get(EDITS_PATH, {}).get("post", {}).get("requestBody", {}).get("content", {})
        edit_form = edit_form.get("multipart/form-data", {}).get("schema", {})
        for form, auto in ((comps.get("ImagesRequest", {}), "the default size"), (edit_form, "the input's size")):
            size = form.get("properties", {}).get("size")
            if size is None:
                continue
            size["description"] = (
                f"`WIDTHxHEIGHT` (sides multiples of {limits.side_multiple} in [{limits.min_side}, {limits.max_side}], "
                f"{area}), a preset label such as `832x1248 ( 2:3 )`, or `auto` ({auto}). A size outside the limits "
                "gets a 422 naming the nearest valid size. Official presets allowed here: "
                + (", ".join(allowed) or "none")
            )
            size["examples"] = allowed[:3] or ["auto"]
        for path, ops in paths.items():
            if "post" in ops:
                big = path == EDITS_PATH
                ops["post"]["x-max-body-bytes"] = limits.max_edit_body_bytes if big else limits.max_body_bytes
        if EDITS_PATH in paths:
            paths[EDITS_PATH]["post"]["description"] = (
                "OpenAI's images edit (multipart/form-data): image-to-image, or inpainting where the mask is fully "
                f"transparent. Body at most {limits.max_edit_body_bytes} bytes (`limits.max_edit_body_bytes`; "
                f"JSON routes: {limits.max_body_bytes}); the image and mask at most {limits.max_input_pixels} pixels "
                "each (`limits.max_input_pixels`), PNG, JPEG or WebP; the output size follows the same limits as "
                "generations."
            )
        schema.setdefault("info", {})["x-limits"] = {**limits.model_dump(), "presets": allowed}
        app.openapi_schema = schema
        return schema

    app.openapi_schema = None
    app.openapi = openapi
