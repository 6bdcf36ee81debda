"""Typed JSON errors (OpenAI's shape: {"error": {message, type, param, code}}) and the handlers that emit them."""

from __future__ import annotations

from typing import Any, get_args

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    status = 500
    type = "server_error"

    def __init__(
        self,
        param: str | None,
        message: str,
        *,
        code: str | None = None,
        limit: Any = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.param, self.message, self.code, self.limit, self.headers = param, message, code, limit, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.type, self.message, self.param, self.code, self.limit, self.headers)


class InvalidRequest(ApiError):
    status, type = 422, "invalid_request_error"


class Unauthorized(ApiError):
    status, type = 401, "authentication_error"


class Overloaded(ApiError):
    status, type = 503, "overloaded"


class GenerationFailed(ApiError):
    status, type = 500, "server_error"


def error_body(type_: str, message: str, param: str | None = None, code: str | None = None, limit: Any = None) -> dict:
    """The one place that shapes an error body: `{"error": {message, type, param, code[, limit]}}`."""
    body: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    if limit is not None:
        body["limit"] = limit
    return {"error": body}


def error_response(
    status: int,
    type_: str,
    message: str,
    param: str | None = None,
    code: str | None = None,
    limit: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(type_, message, param, code, limit), status_code=status, headers=headers)


# pydantic type errors carry no ctx: the limit is the JSON type the field takes
_EXPECTED_TYPE = {
    "int_parsing": "integer",
    "int_type": "integer",
    "int_from_float": "integer",
    "float_parsing": "number",
    "float_type": "number",
    "bool_parsing": "boolean",
    "bool_type": "boolean",
    "string_type": "string",
    "string_unicode": "string",
    "model_attributes_type": "a JSON object",
    "model_type": "a JSON object",
    "dict_type": "a JSON object",
    "list_type": "a JSON list",
}


def _param_of(loc: tuple, error_type: str | None) -> str:
    """Field path as clients write it (`lora[0].name`); `body` for errors about the body as a whole (not JSON, not an
    object, empty)."""
    parts = [p for p in loc if p != "body"]
    if error_type == "json_invalid" or not parts:  # json_invalid's loc carries a character offset, not a field
        return "body"
    path = ""
    for p in parts:
        path += f"[{p}]" if isinstance(p, int) else f".{p}" if path else str(p)
    return path


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `Model`, `Model | None`, `list[Model] | None`."""
    stack = [annotation]
    while stack:
        t = stack.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
        stack.extend(get_args(t))
    return None


def _known_fields(model: type[BaseModel] | None, loc: tuple) -> list[str] | None:
    """Field names of the (nested) model an `extra_forbidden` field was found in."""
    for part in [p for p in loc if p != "body"][:-1]:
        if model is None:
            return None
        if not isinstance(part, int):
            field = model.model_fields.get(part)
            model = _inner_model(field.annotation) if field is not None else None
    return sorted(model.model_fields) if model is not None else None


def invalid_from_validation(errors: list[dict], model: type[BaseModel] | None = None) -> InvalidRequest:
    """pydantic's first error as our 422 (field, limit): the same body whether FastAPI or a route validated it."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = tuple(first.get("loc", ()))
    param = _param_of(loc, first.get("type"))
    ctx = {k: v for k, v in (first.get("ctx") or {}).items() if isinstance(v, (int, float, str))}
    message = f"{param}: {first['msg']}"
    limit = ctx or _EXPECTED_TYPE.get(first.get("type"))
    if first.get("type") == "json_invalid":  # the decoder's reason is part of the message
        message, limit = f"body: {first['msg']} ({ctx.get('error', 'malformed')})", "a JSON object"
    elif first.get("type") == "extra_forbidden":  # the limit is the set of fields the model knows
        limit = _known_fields(model, loc)
    elif first.get("type") == "missing":
        limit = "required"
    return InvalidRequest(param, message, code=first.get("type"), limit=limit)


def _body_model(request: Request) -> type[BaseModel] | None:
    route = request.scope.get("route")
    body_field = getattr(route, "body_field", None)
    model = getattr(getattr(body_field, "field_info", None), "annotation", None) or getattr(body_field, "type_", None)
    return _inner_model(model) if model is not None else None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_from_validation(list(exc.errors()), _body_model(request)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "invalid_request_error", str(exc.detail), headers=exc.headers)
