"""ASGI middleware that rejects before any parsing: oversized bodies (413; the limit is per path, edits upload images)
and missing API keys (401).

The Ingress constructor calls `configure_guard()` in its replica process; the middleware reads those settings on every
request. They live in this module on purpose: Serve pickles a `@serve.ingress` class *by value*, so a global of
deployments/ingress.py that the constructor sets is a copy, not the object the middleware reads (that bug once left
the API key unchecked). This module is imported by reference on both sides. Until configured, requests get 503:
the guard fails closed.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.http.errors import error_body

OPEN_PATHS = frozenset({"/healthz"})


@dataclass
class GuardSettings:
    max_body_bytes: int  # every path but those in path_limits (JSON routes: small)
    api_key: str | None = None
    path_limits: dict[str, int] = field(default_factory=dict)  # e.g. multipart uploads: larger

    def body_limit(self, scope: Scope) -> int:
        """The limit of the route this request goes to (the path without a route prefix or a trailing slash)."""
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return self.path_limits.get(path.rstrip("/"), self.max_body_bytes)


_SETTINGS: GuardSettings | None = None  # this process's settings, set by configure_guard()


def configure_guard(max_body_bytes: int, api_key: str | None, path_limits: dict[str, int] | None = None) -> None:
    global _SETTINGS
    _SETTINGS = GuardSettings(max_body_bytes, api_key or None, dict(path_limits or {}))


def current_guard() -> GuardSettings | None:
    return _SETTINGS


async def _send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class GuardMiddleware:
    """`settings=None`: use this process's settings from `configure_guard()` (503 until then)."""

    def __init__(self, app: ASGIApp, settings: GuardSettings | None = None):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = self.settings or _SETTINGS
        if settings is None:
            return await _send_json(
                send, 503, error_body("overloaded", "service is starting (request guard not configured)")
            )
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if settings.api_key and path not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode("latin-1"), settings.api_key.encode()):
                return await _send_json(
                    send,
                    401,
                    error_body("authentication_error", "missing or invalid API key (Authorization: Bearer)"),
                    [(b"www-authenticate", b"Bearer")],
                )
        limit = settings.body_limit(scope)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_json(
                send,
                413,
                error_body(
                    "invalid_request_error",
                    f"request body of {int(declared)} bytes exceeds {limit}",
                    "body",
                    limit=limit,
                ),
            )
        # Buffer up to this path's limit (JSON prompts: 64 KiB; an edit's images: MiBs), then replay to the app.
        chunks, received, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # disconnect: let the app see it
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            more = message.get("more_body", False)
            if received > limit:
                return await _send_json(
                    send,
                    413,
                    error_body("invalid_request_error", f"request body exceeds {limit} bytes", "body", limit=limit),
                )
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
