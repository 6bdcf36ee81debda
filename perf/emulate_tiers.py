"""Emulate 12, 16 and 24 GB cards on a big GPU and prove each tier serves 1024x1024 at its chosen batch size.

For each card: deploy the real Serve app (random weights of the full architecture) with `emulate_vram_gb` (the
replica caps torch's allocator to that size), read the tier, memory mode and measured clamp from /info, then send
exactly `effective_max_batch` concurrent 1024x1024 requests (plus one more round) and record status, batch sizes,
peak memory and seconds per image from the response headers.

    python -m perf.emulate_tiers --out tiers.json [--cards 12 16 24]
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


async def burst(n: int, seed0: int) -> list[dict]:
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(i: int) -> dict:
            t0 = time.perf_counter()
            r = await client.post(
                f"{URL}/generate",
                json={"prompt": f"a red sports car {i}", "seed": seed0 + i, "width": 1024, "height": 1024},
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


def run_card(gb: float) -> dict:
    cfg = AppConfig.model_validate(
        {
            "model": "random:full",
            "device": "cuda",
            "dtype": "bfloat16",
            "testing": {"emulate_vram_gb": gb},
            "limits": {"max_side": 1024},
        }
    )
    t0 = time.perf_counter()
    serve.run(make_app(cfg, generator_options={"max_ongoing_requests": 64}), name="zimage", route_prefix="/")
    ready_s = time.perf_counter() - t0
    info = httpx.get(f"{URL}/info", timeout=60).json()["generator"]
    bs = info["batching"]["effective_max_batch"]
    rounds = []
    for r in range(2):
        t1 = time.perf_counter()
        reqs = asyncio.run(burst(bs, 1000 * r))
        rounds.append({"wall_s": time.perf_counter() - t1, "requests": reqs})
    info_after = httpx.get(f"{URL}/info", timeout=60).json()["generator"]
    serve.delete("zimage")
    ok = [q for rd in rounds for q in rd["requests"] if q["status"] == 200]
    last = rounds[-1]
    full = [q for q in last["requests"] if q["batch_size"] == bs]
    return {
        "emulated_vram_gb": gb,
        "ready_s": ready_s,
        "info": info,
        "info_after": info_after,
        "chosen_batch": bs,
        "memory_mode": info["batching"]["memory_mode"],
        "requests": sum(len(rd["requests"]) for rd in rounds),
        "ok": len(ok),
        "oom_splits_after": info_after["batching"]["oom_splits"],
        "peak_memory_gb": max((q["peak_memory_mb"] for q in ok), default=0) * 2**20 / 1e9,
        "s_per_img_at_chosen_batch": (full[0]["inference_ms"] / 1e3 / bs) if full else None,
        "rounds": rounds,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    # NVML totals (GB) of real cards: L4/A10G 24.15, "16 GB" (16 GiB) 17.18, "12 GB" (12 GiB) 12.88
    ap.add_argument("--cards", type=float, nargs="+", default=[24.15, 17.18, 12.88])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    ray.init()
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    out = {"weights": "random:full (random weights of the full architecture)", "cards": []}
    for gb in args.cards:
        try:
            out["cards"].append(run_card(gb))
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
            {k: v for k, v in out["cards"][-1].items() if k not in ("info", "info_after", "rounds")},
        )


if __name__ == "__main__":
    main()
