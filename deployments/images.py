"""PNG encoding on the ingress (CPU replicas), never on the GPU replica's path."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

# zlib level 1: ~5x faster than Pillow's default at ~10% larger files for 1024x1024 images.
PNG_COMPRESS_LEVEL = 1


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def encode_png_b64(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")
