"""Every official preset on one GPU through real Serve (random weights of the full architecture), in one command:

1. cold start with an EMPTY Inductor cache: `serve.run` -> ready (the replica's start-up: build, compile, memory
   probe at 512^2 and the largest area, warm-up of `warm_up_sizes`);
2. first request at every preset after ready (concurrency 1, 8 steps), then the same again = steady; ratio per preset
   (goal <= 1.2) and steady s/img per preset class;
3. a mixed-preset load of all three classes (concurrent, batched per shape): every status, batch sizes per class,
   OOM splits (goal: all 200, no OOM);
4. the replica restarted with the now WARM cache: cold start again, and the first request at a few presets.

    timeout 560 python -m perf.presets_gpu --out $OUT/presets.json       (< 9 min on an H200)
    python -m perf.presets_gpu --warm-up-sizes none --skip-warm-restart --out $OUT/presets_no_warm_up.json

Writes one JSON (and `--out` with .log next to it is up to the caller). Stops optional phases when `--budget-s` runs
low, and says so in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path

import httpx
import ray
from ray import serve

from deployments.app import make_app
from deployments.config import AppConfig
from deployments.presets import PRESETS

PORT = 8000
BASE = f"http://127.0.0.1:{PORT}"
PROMPT = "A realistic photo of a lighthouse on a cliff at sunset, waves, golden light"


def smoke_config() -> AppConfig:
    """CPU smoke test of this script: the tiny model, presets scaled down 4x (see `scaled`)."""
    return AppConfig.model_validate(
        {
            "model": "random:tiny",
            "device": "cpu",
            "dtype": "float32",
            "limits": {"min_side": 128, "max_side": 512, "max_steps": 16, "max_images_per_request": 4},
            "defaults": {"width": 256, "height": 256, "num_inference_steps": 2},
        }
    )


def scaled(presets, factor: int):
    """Presets with both sides divided by `factor` (on the 16 grid): the smoke test's sizes."""
    from deployments.presets import Preset  # noqa: PLC0415

    return [
        Preset(p.size_class, max(128, p.width // factor // 16 * 16), max(128, p.height // factor // 16 * 16), p.ratio)
        for p in presets
    ]


def app_config(cache_dir: str, warm_up_sizes: str, fp8: bool) -> AppConfig:
    return AppConfig.model_validate(
        {
            "model": "random:full",
            "device": "cuda",
            "dtype": "bfloat16",
            "memory_margin_gb": 1.0,
            "compile": True,
            "fp8_dit": fp8,
            "compile_cache_dir": cache_dir,
            "warm_up_sizes": warm_up_sizes,
            "limits": {"max_side": 2048, "max_pixels": 2048 * 2048, "max_steps": 16, "max_images_per_request": 4},
            "defaults": {"width": 1024, "height": 1024, "num_inference_steps": 8},
        }
    )


GENERATOR = {
    "num_replicas": 1,
    "max_ongoing_requests": 48,
    "max_queued_requests": 256,
    "health_check_timeout_s": 120,
    "user_config": {"batch_wait_timeout_s": 0.1},
}


def start(cfg: AppConfig) -> dict:
    t0 = time.perf_counter()
    serve.run(make_app(cfg, generator_options=GENERATOR), name="zimage", route_prefix="/", blocking=False)
    while True:
        try:
            r = httpx.get(f"{BASE}/info", timeout=30)
            if r.status_code == 200:
                info = r.json()
                return {"ready_s": time.perf_counter() - t0, "info": info}
        except httpx.HTTPError:
            pass
        if time.perf_counter() - t0 > 480:
            raise TimeoutError("service not ready after 480 s")
        time.sleep(1)


def one(client: httpx.Client, w: int, h: int, seed: int) -> dict:
    t0 = time.perf_counter()
    r = client.post(
        "/generate", json={"prompt": PROMPT, "width": w, "height": h, "seed": seed, "output_format": "jpeg"}
    )
    out = {"status": r.status_code, "latency_s": round(time.perf_counter() - t0, 3)}
    if r.status_code == 200:
        out["inference_ms"] = float(r.headers.get("X-Inference-Ms", "nan"))
        out["batch"] = int(r.headers.get("X-Batch-Size", "0"))
    else:
        out["error"] = r.text[:300]
    return out


def first_and_steady(presets) -> list[dict]:
    rows = []
    with httpx.Client(base_url=BASE, timeout=300) as c:
        for p in presets:
            first = one(c, p.width, p.height, 1)
            steady = one(c, p.width, p.height, 2)
            ratio = first["latency_s"] / steady["latency_s"] if steady["status"] == 200 else None
            rows.append(
                {
                    "class": p.size_class,
                    "size": p.size,
                    "ratio": p.ratio,
                    "first": first,
                    "steady": steady,
                    "first_over_steady": round(ratio, 3) if ratio else None,
                }
            )
            print(f"{p.size:>10}  first {first['latency_s']:.2f}s  steady {steady['latency_s']:.2f}s", flush=True)
    return rows


async def mixed_load(presets, seconds: float, concurrency: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    records: list[dict] = []
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            p = rng.choice(presets)
            t0 = time.perf_counter()
            r = await client.post(
                "/generate",
                json={
                    "prompt": PROMPT,
                    "width": p.width,
                    "height": p.height,
                    "seed": rng.randrange(2**31),
                    "output_format": "jpeg",
                },
            )
            rec = {
                "class": p.size_class,
                "size": p.size,
                "status": r.status_code,
                "latency_s": time.perf_counter() - t0,
            }
            if r.status_code == 200:
                rec["batch"] = int(r.headers["X-Batch-Size"])
                rec["inference_s"] = float(r.headers["X-Inference-Ms"]) / 1000
            records.append(rec)

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=BASE, timeout=600, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    by_class: dict[str, dict] = defaultdict(lambda: {"n": 0, "batches": [], "gpu_s_per_img": []})
    for r in records:
        d = by_class[r["class"]]
        d["n"] += 1
        if r["status"] == 200:
            d["batches"].append(r["batch"])
            d["gpu_s_per_img"].append(r["inference_s"] / r["batch"])
    summary = {
        k: {
            "n": v["n"],
            "max_batch": max(v["batches"], default=0),
            "mean_batch": round(sum(v["batches"]) / max(len(v["batches"]), 1), 2),
            "mean_gpu_s_per_img": round(sum(v["gpu_s_per_img"]) / max(len(v["gpu_s_per_img"]), 1), 3),
        }
        for k, v in sorted(by_class.items())
    }
    statuses: dict[int, int] = defaultdict(int)
    for r in records:
        statuses[r["status"]] += 1
    return {
        "seconds": wall,
        "concurrency": concurrency,
        "requests": len(records),
        "statuses": dict(statuses),
        "img_per_s": round(sum(r["status"] == 200 for r in records) / wall, 3),
        "by_class": summary,
        "records": records,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache-dir", default="/tmp/zimage-presets-cache")
    ap.add_argument("--warm-up-sizes", default="presets", help="presets | none (the AppConfig knob)")
    ap.add_argument("--fp8", action="store_true")
    ap.add_argument("--mixed-s", type=float, default=75.0)
    ap.add_argument("--concurrency", type=int, default=24)
    ap.add_argument("--budget-s", type=float, default=530.0, help="skip optional phases past this")
    ap.add_argument("--keep-cache", action="store_true", help="do not empty the cache first")
    ap.add_argument("--skip-warm-restart", action="store_true")
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument(
        "--smoke", action="store_true", help="CPU check of this script: tiny model, 6 presets scaled 4x down"
    )
    args = ap.parse_args()
    global BASE
    BASE = f"http://127.0.0.1:{args.port}"
    t_start = time.perf_counter()
    out: dict = {"warm_up_sizes": args.warm_up_sizes, "fp8_dit": args.fp8, "weights": "random:full", "skipped": []}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        path.write_text(json.dumps(out, indent=2))

    if not args.keep_cache:
        shutil.rmtree(args.cache_dir, ignore_errors=True)
    cfg = smoke_config() if args.smoke else app_config(args.cache_dir, args.warm_up_sizes, args.fp8)
    presets = scaled(PRESETS[::6], 4) if args.smoke else list(PRESETS)
    ray.init(address="local", num_gpus=0 if args.smoke else 1, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    try:
        cold = start(cfg)
        gen = cold["info"]["generator"]
        out["cold_start_empty_cache"] = {
            "serve_run_to_ready_s": round(cold["ready_s"], 1),
            "replica_ready_s": gen["ready_s"],
            "warm_up": gen["warm_up"],
        }
        out["batching"] = gen["batching"]
        out["gpu"] = gen["gpu"]
        save()
        rows = first_and_steady(presets)
        out["presets"] = rows
        ok = [r for r in rows if r["first_over_steady"]]
        out["first_over_steady_max"] = max((r["first_over_steady"] for r in ok), default=None)
        out["steady_s_per_img_by_class"] = {
            c: round(
                sum(r["steady"]["latency_s"] for r in ok if r["class"] == c) / max(sum(r["class"] == c for r in ok), 1),
                3,
            )
            for c in ("1024", "1280", "1536")
        }
        save()
        out["mixed_load"] = asyncio.run(mixed_load(presets, args.mixed_s, args.concurrency))
        out["batching_after_mixed"] = httpx.get(f"{BASE}/info", timeout=30).json()["generator"]["batching"]
        save()
        if args.skip_warm_restart:
            out["skipped"].append("warm restart (flag)")
        elif time.perf_counter() - t_start > args.budget_s - 150:
            out["skipped"].append("warm restart (time budget)")
        else:
            serve.delete("zimage")
            warm = start(cfg)
            gen = warm["info"]["generator"]
            out["cold_start_warm_cache"] = {
                "serve_run_to_ready_s": round(warm["ready_s"], 1),
                "replica_ready_s": gen["ready_s"],
                "warm_up": gen["warm_up"],
            }
            save()
            few = [p for p in presets if p.ratio in ("1:1", "9:21")]
            if time.perf_counter() - t_start < args.budget_s - 40:
                out["presets_after_warm_restart"] = first_and_steady(few)
            else:
                out["skipped"].append("presets after warm restart (time budget)")
    finally:
        save()
        serve.shutdown()
        ray.shutdown()
    print(json.dumps({k: v for k, v in out.items() if k not in ("presets", "mixed_load", "batching")}, indent=2)[:4000])


if __name__ == "__main__":
    main()
