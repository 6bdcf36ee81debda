"""Emulate 12, 16 and 24 GB cards on a big GPU and prove each tier serves every size it allows at its batch caps.

For each card: deploy the real Serve app (random weights of the full architecture, eager bf16) with the production
limits (up to 2048 a side and 2048x2048 of area, or `--max-pixels`) and `emulate_vram_gb` (the replica caps torch's
allocator to that size). The replica measures its per-area memory model at start, or refuses to start when batch 1
at the largest area does not fit (recorded as the card's answer). Then, per size, read that shape's max batch from
the model in /info and send exactly that many concurrent requests; record status, batch sizes, peak memory and
seconds per image from the response headers, and the OOM splits after.

    python -m perf.emulate_tiers --out tiers.json [--cards 24.15 17.18 12.88] [--sizes 1024x1024 2048x2048]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import ray
from ray import serve

from deployments.app import make_app
from deployments.config import AppConfig

logger = logging.getLogger("perf.emulate_tiers")
PORT = 8000
URL = f"http://127.0.0.1:{PORT}"


async def burst(n: int, seed0: int, width: int = 1024, height: int = 1024) -> list[dict]:
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(i: int) -> dict:
            t0 = time.perf_counter()
            r = await client.post(
                f"{URL}/generate",
                json={"prompt": f"a red sports car {i}", "seed": seed0 + i, "width": width, "height": height},
            )
            h = r.headers
            return {
                "status": r.status_code,
                "latency_s": time.perf_counter() - t0,
                "batch_size": int(h.get("x-batch-size", 0) or 0),
                "inference_ms": float(h.get("x-inference-ms", 0) or 0),
                "peak_memory_mb": float(h.get("x-peak-memory-mb", 0) or 0),
                "error": None if r.status_code == 200 else r.text[:500],
            }

        return await asyncio.gather(*(one(i) for i in range(n)))


def max_batch_at(info: dict, width: int, height: int) -> int:
    """The shape's cap as /info lists it for squares; another shape takes the cap of the smallest listed square of at
    least its area (caps depend on the area only, and fall as it grows)."""
    listed = {tuple(map(int, k.split("x"))): v for k, v in info["batching"]["max_batch_by_shape"].items()}
    by_area = sorted(listed.items(), key=lambda kv: kv[0][0] * kv[0][1])
    fits = [cap for (w, h), cap in by_area if w * h >= width * height]
    return int(fits[0] if fits else min(listed.values()))


def run_card(gb: float, sizes: list[tuple[int, int]], max_pixels: int) -> dict:
    cfg = AppConfig.model_validate(
        {
            "model": "random:full",
            "device": "cuda",
            "dtype": "bfloat16",
            "testing": {"emulate_vram_gb": gb},
            "limits": {"max_side": 2048, "max_pixels": max_pixels},
        }
    )
    t0 = time.perf_counter()
    # the throughput policy: a burst of a shape's cap runs as one batch of that cap (what this proves fits)
    generator = {"max_ongoing_requests": 64, "user_config": {"batch_policy": "throughput"}}
    serve.run(make_app(cfg, generator_options=generator), name="zimage", route_prefix="/")
    ready_s = time.perf_counter() - t0
    info = httpx.get(f"{URL}/info", timeout=60).json()["generator"]
    per_size = []
    for w, h in sizes:
        bs = max_batch_at(info, w, h)
        t1 = time.perf_counter()
        reqs = asyncio.run(burst(bs, 1000 * len(per_size), w, h))
        ok = [q for q in reqs if q["status"] == 200]
        full = [q for q in ok if q["batch_size"] == bs]
        per_size.append(
            {
                "size": f"{w}x{h}",
                "max_batch": bs,
                "requests": len(reqs),
                "ok": len(ok),
                "batch_sizes": sorted({q["batch_size"] for q in ok}),
                "peak_memory_gb": max((q["peak_memory_mb"] for q in ok), default=0) * 2**20 / 1e9,
                "s_per_img_at_max_batch": (full[0]["inference_ms"] / 1e3 / bs) if full else None,
                "wall_s": time.perf_counter() - t1,
                "errors": [q["error"] for q in reqs if q["status"] != 200][:3],
            }
        )
        logger.info("card %s GB, %dx%d: %s", gb, w, h, {k: v for k, v in per_size[-1].items() if k != "errors"})
    info_after = httpx.get(f"{URL}/info", timeout=60).json()["generator"]
    serve.delete("zimage")
    return {
        "emulated_vram_gb": gb,
        "max_pixels": max_pixels,
        "ready_s": ready_s,
        "info": info,
        "info_after": info_after,
        "memory_mode": info["batching"]["memory_mode"],
        "tier_batch": info["batching"]["desired_max_batch"],
        "max_batch_by_shape": info["batching"]["max_batch_by_shape"],
        "sizes": per_size,
        "oom_splits_after": info_after["batching"]["oom_splits"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    # NVML totals (GB) of real cards: L4/A10G 24.15, "16 GB" (16 GiB) 17.18, "12 GB" (12 GiB) 12.88
    ap.add_argument("--cards", type=float, nargs="+", default=[24.15, 17.18, 12.88])
    ap.add_argument("--sizes", nargs="+", default=["1024x1024", "1536x1536", "2048x2048", "1152x2048"])
    ap.add_argument("--max-pixels", type=int, default=2048 * 2048, help="limits.max_pixels of every card")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    logging.basicConfig(level=logging.INFO)
    ray.init()
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    out = {"weights": "random:full (random weights of the full architecture)", "cards": []}
    for gb in args.cards:
        try:
            out["cards"].append(run_card(gb, sizes, args.max_pixels))
        except Exception as exc:
            logger.exception("card %s failed", gb)
            out["cards"].append({"emulated_vram_gb": gb, "error": repr(exc)})
            try:
                serve.delete("zimage")
            except Exception:
                pass
        Path(args.out).write_text(json.dumps(out, indent=2))
        logger.info(
            "card %s GB: %s",
            gb,
            {k: v for k, v in out["cards"][-1].items() if k not in ("info", "info_after", "sizes")},
        )


if __name__ == "__main__":
    main()
