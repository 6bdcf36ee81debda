"""ASGI middleware that rejects before any parsing: oversized bodies (413) and missing API keys (401)."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = frozenset({"/healthz"})


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
    def __init__(self, app: ASGIApp, max_body_bytes: int, api_key: str | None):
        self.app, self.max_body_bytes, self.api_key = app, max_body_bytes, api_key

    def _error(self, message: str, type_: str, param: str | None = None, limit: int | None = None) -> dict:
        err = {"message": message, "type": type_, "param": param, "code": None}
        if limit is not None:
            err["limit"] = limit
        return {"error": err}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self.api_key and path not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                return await _send_json(
                    send,
                    401,
                    self._error("missing or invalid API key (Authorization: Bearer)", "authentication_error"),
                    [(b"www-authenticate", b"Bearer")],
                )
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_json(
                send,
                413,
                self._error(
                    f"request body of {int(declared)} bytes exceeds {limit}", "invalid_request_error", "body", limit
                ),
            )
        # Bodies are small (JSON prompts): buffer up to the limit, then replay to the app.
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
                    self._error(f"request body exceeds {limit} bytes", "invalid_request_error", "body", limit),
                )
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
