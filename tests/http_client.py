"""Small HTTP helpers for the service tests: concurrent posts over real HTTP and PNG decoding."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
from PIL import Image

from tests.serve_harness import BASE_URL


def post_concurrently(path: str, bodies: list, timeout_s: float = 180) -> list[httpx.Response]:
    """POST every body at once (one connection each) and return the responses in order."""

    async def go():
        limits = httpx.Limits(max_connections=len(bodies) + 1)
        async with httpx.AsyncClient(base_url=BASE_URL, timeout=timeout_s, limits=limits) as client:
            return await asyncio.gather(*(client.post(path, json=b) for b in bodies))

    return asyncio.run(go())


def post(path: str, body, timeout_s: float = 120) -> httpx.Response:
    return httpx.post(f"{BASE_URL}{path}", json=body, timeout=timeout_s)


def get_json(path: str, timeout_s: float = 60) -> dict:
    response = httpx.get(f"{BASE_URL}{path}", timeout=timeout_s)
    response.raise_for_status()
    return response.json()


def png_array(data: bytes) -> np.ndarray:
    """HxWx3 uint8 pixels of a PNG (exactly what the server encoded: PNG is lossless)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def b64_png_array(b64: str) -> np.ndarray:
    return png_array(base64.b64decode(b64))
