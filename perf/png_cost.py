"""What the ingress's image encoding costs per image, for an incompressible (noise, what random weights produce) and a
smooth image: the part of HTTP latency that depends on image content. PNG (the default) and the OpenAI
`output_format` alternatives JPEG and WebP at two `output_compression` qualities.

    python -m perf.png_cost --out png_cost.json [--side 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from deployments.http.image_encoding import PNG_COMPRESS_LEVEL, encode_image


def images(side: int) -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:side, 0:side]
    smooth = np.stack([(x // 4) % 256, (y // 4) % 256, ((x + y) // 8) % 256], -1).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return {"noise": noise, "smooth_gradient": smooth}


ENCODINGS = (("png", None), ("jpeg", 100), ("jpeg", 90), ("webp", 100), ("webp", 90))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    rows, formats = {}, {}
    for name, img in images(args.side).items():
        for fmt, quality in ENCODINGS:
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                data = encode_image(img, fmt, quality)
                times.append(time.perf_counter() - t0)
            row = {"best_s": min(times), "times_s": times, "bytes": len(data)}
            if fmt == "png":
                rows[name] = {**row, "png_bytes": len(data)}
            else:
                formats.setdefault(name, {})[f"{fmt}_q{quality}"] = row
    out = {
        "side": args.side,
        "zlib_level": PNG_COMPRESS_LEVEL,
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "rows": rows,
        "other_formats": formats,
    }
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
