"""Edits and LoRA adapters on one GPU through real Serve (random weights of the full architecture), in one command:

1. two random LoRA adapters for the full DiT (rank 32 and 16, attention and feed-forward layers, saved with diffusers'
   `save_lora_weights`), served through the adapter slots (`lora` settings, user_config `loras`), deployed as
   production deploys (a Serve config with `import_path`);
2. s/img at 1024^2 per workload, closed loop, full batches: generation (base, one adapter, two adapters), image-to-image
   (strength 0.6) and inpainting (a mask over the middle, strength 1.0) of a generated image;
3. adapters switching under load: open loop over a mix of base / one / two adapters / an edit with an adapter, and a
   third adapter added live through user_config mid-way: every status, slot switches, and Dynamo's compiled-graph
   count before and after (no recompile);
4. a request alone vs the same request inside a batch (edit and adapter): the largest pixel difference on the GPU.

    timeout 580 python -m perf.edits_lora_gpu --out $OUT/edits_lora.json        (< 9 min on an H200)
    python -m perf.edits_lora_gpu --smoke --out /tmp/edits_lora.json            (CPU, tiny model: the script itself)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import ray
import torch
from PIL import Image
from ray import serve
from ray.serve._private.api import serve_start
from ray.serve.schema import ServeDeploySchema

from deployments.config import RandomArch
from deployments.pipeline.random_model import transformer_config

logger = logging.getLogger("perf.edits_lora_gpu")
PORT = 8000
BASE = f"http://127.0.0.1:{PORT}"
PROMPT = "A realistic photo of a lighthouse on a cliff at sunset, waves, golden light"
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")


def make_adapter(out_dir: Path, arch: RandomArch, rank: int, seed: int) -> Path:
    """A random adapter with the real DiT's layer shapes (read from the model built on the meta device: no memory)."""
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    with torch.device("meta"):
        dit = ZImageTransformer2DModel(**transformer_config(arch))
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, mod in dit.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in TARGETS):
            a = torch.randn(rank, mod.in_features, generator=gen) / mod.in_features**0.5
            b = torch.randn(mod.out_features, rank, generator=gen) * 0.02
            state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = a.to(torch.bfloat16), b.to(torch.bfloat16)
    meta = {"r": rank, "lora_alpha": rank, "target_modules": list(TARGETS), "peft_type": "LORA"}
    ZImagePipeline.save_lora_weights(out_dir, transformer_lora_layers=state, transformer_lora_adapter_metadata=meta)
    return out_dir


def args_for(smoke: bool, cache_dir: str) -> dict:
    if smoke:
        return {
            "model": "random:tiny",
            "device": "cpu",
            "dtype": "float32",
            "limits": {"max_side": 512, "max_steps": 16, "max_images_per_request": 4},
            "defaults": {"width": 256, "height": 256, "num_inference_steps": 8},
            "lora": {},
        }
    return {
        "model": "random:full",
        "device": "cuda",
        "dtype": "bfloat16",
        "compile": True,
        "compile_cache_dir": cache_dir,
        "warm_up_sizes": ["1024x1024"],
        "limits": {"max_side": 2048, "max_pixels": 2048 * 2048, "max_steps": 16, "max_images_per_request": 4},
        "defaults": {"width": 1024, "height": 1024, "num_inference_steps": 8},
        "lora": {},  # the defaults: 2 slots of rank 64 on attention and feed-forward
    }


def deploy(args: dict, loras: dict, smoke: bool, wait: bool = False) -> None:
    """What `serve deploy` sends: a user_config-only change is applied live by reconfigure(). `wait`: until the app
    runs (Serve gives up after 60 s: not for a start that compiles; `wait_ready` polls /info then)."""
    generator = {
        "name": "Generator",
        "num_replicas": 1,
        "max_ongoing_requests": 48,
        "max_queued_requests": 256,
        "health_check_timeout_s": 120,
        "user_config": {"batch_wait_timeout_s": 0.1, "loras": loras},
    }
    if not smoke:
        generator["ray_actor_options"] = {"num_gpus": 1}
    schema = {
        "http_options": {"host": "127.0.0.1", "port": PORT},
        "applications": [
            {
                "name": "zimage",
                "route_prefix": "/",
                "import_path": "deployments.app:build_app",
                "args": args,
                "deployments": [generator],
            }
        ],
    }
    serve_start(http_options={"host": "127.0.0.1", "port": PORT}).deploy_apps(
        ServeDeploySchema.model_validate(schema), _blocking=wait
    )


def wait_ready(timeout_s: float = 480, until=lambda info: True) -> dict:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        try:
            r = httpx.get(f"{BASE}/info", timeout=30)
            if r.status_code == 200 and until(r.json()):
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"service not ready after {timeout_s} s")


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(w: int, h: int) -> bytes:
    """OpenAI's convention: transparent pixels (alpha 0) are repainted; here the middle half of each side."""
    rgba = np.full((h, w, 4), 255, np.uint8)
    rgba[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4, 3] = 0
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


class Workloads:
    def __init__(self, size: tuple[int, int], source_png: bytes):
        self.w, self.h = size
        self.source = source_png
        self.mask = mask_png(self.w, self.h)

    async def send(self, client: httpx.AsyncClient, kind: str, seed: int, lora: list | None = None) -> dict:
        t0 = time.perf_counter()
        if kind == "generate":
            body = {"prompt": PROMPT, "width": self.w, "height": self.h, "seed": seed, "output_format": "png"}
            if lora:
                body["lora"] = lora
            r = await client.post("/generate", json=body)
            image = r.content if r.status_code == 200 else None
        else:
            files = {"image": ("in.png", self.source, "image/png")}
            if kind == "inpaint":
                files["mask"] = ("mask.png", self.mask, "image/png")
            data = {"prompt": PROMPT, "size": f"{self.w}x{self.h}", "seed": str(seed), "output_format": "png"}
            data["strength"] = "1.0" if kind == "inpaint" else "0.6"
            if lora:
                data["lora"] = json.dumps(lora)
            r = await client.post("/v1/images/edits", data=data, files=files)
            image = base64.b64decode(r.json()["data"][0]["b64_json"]) if r.status_code == 200 else None
        rec = {"kind": kind, "lora": "+".join(x["name"] for x in lora or []) or "none", "status": r.status_code}
        rec["latency_s"] = round(time.perf_counter() - t0, 3)
        if r.status_code == 200:
            rec["batch"] = int(r.headers["X-Batch-Size"])
            rec["inference_s"] = float(r.headers["X-Inference-Ms"]) / 1000
            rec["image"] = image
        else:
            rec["error"] = r.text[:300]
        return rec


def decode(png_bytes: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB")).astype(int)


def strip(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "image"} for r in recs]


async def closed_loop(wl: Workloads, kind: str, lora: list | None, clients: int, per_client: int) -> dict:
    records: list[dict] = []

    async def worker(client, i):
        for j in range(per_client):
            records.append(await wl.send(client, kind, 1000 * i + j, lora))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=BASE, timeout=600, limits=httpx.Limits(max_connections=clients + 2)) as c:
        await asyncio.gather(*(worker(c, i) for i in range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in records if r["status"] == 200]
    return {
        "kind": kind,
        "lora": "+".join(x["name"] for x in lora or []) or "none",
        "requests": len(records),
        "ok": len(ok),
        "wall_s": round(wall, 2),
        "img_per_s": round(len(ok) / wall, 3),
        "mean_batch": round(sum(r["batch"] for r in ok) / max(len(ok), 1), 2),
        "gpu_s_per_img": round(sum(r["inference_s"] / r["batch"] for r in ok) / max(len(ok), 1), 4),
        "records": strip(records),
    }


MIX = [
    ("generate", None),
    ("generate", [{"name": "ink", "scale": 0.8}]),
    ("generate", [{"name": "film", "scale": 1.0}]),
    ("generate", [{"name": "film", "scale": 0.5}, {"name": "ink", "scale": 0.5}]),
    ("edit", [{"name": "ink", "scale": 1.0}]),
]


async def switching_under_load(wl: Workloads, rate: float, seconds: float, add_at_s: float, args, loras, smoke):
    rng = random.Random(7)
    records: list[dict] = []
    tasks = []
    mix = list(MIX)
    t0 = time.perf_counter()
    added = {}

    async def add_adapter():
        await asyncio.sleep(add_at_s)
        t = time.perf_counter()
        await asyncio.to_thread(deploy, args, loras, smoke, True)  # loras now includes "late"
        added["s"] = round(time.perf_counter() - t, 2)
        added["at_s"] = round(t - t0, 2)
        mix.append(("generate", [{"name": "late", "scale": 1.0}]))

    async with httpx.AsyncClient(base_url=BASE, timeout=600, limits=httpx.Limits(max_connections=64)) as c:
        adder = asyncio.create_task(add_adapter())
        due = 0.0
        while due < seconds:
            due += rng.expovariate(rate)
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            kind, lora = rng.choice(mix)
            tasks.append(asyncio.create_task(wl.send(c, kind, rng.randrange(2**31), lora)))
        records = list(await asyncio.gather(*tasks))
        await adder
    return {
        "rate_hz": rate,
        "seconds": seconds,
        "requests": len(records),
        "statuses": dict(Counter(r["status"] for r in records)),
        "by_workload": dict(Counter(f"{r['kind']}:{r['lora']}" for r in records)),
        "late_adapter": {**added, "requests_after": sum(r["lora"] == "late" for r in records)},
        "records": strip(records),
    }


async def alone_vs_batched(wl: Workloads, kind: str, lora: list | None, companions: int) -> dict:
    """The same request (seed 5) alone, then with `companions` others in flight (one batch)."""
    async with httpx.AsyncClient(base_url=BASE, timeout=600, limits=httpx.Limits(max_connections=32)) as c:
        alone = await wl.send(c, kind, 5, lora)
        batch = await asyncio.gather(*(wl.send(c, kind, 5 + i, lora) for i in range(companions + 1)))
    a, b = decode(alone["image"]), decode(batch[0]["image"])
    diff = np.abs(a - b)
    return {
        "kind": kind,
        "lora": "+".join(x["name"] for x in lora or []) or "none",
        "alone_batch": alone["batch"],
        "batched_batch": batch[0]["batch"],
        "max_abs_diff": int(diff.max()),
        "mean_abs_diff": round(float(diff.mean()), 4),
        "pixels_differing_pct": round(100 * float((diff > 0).any(axis=-1).mean()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, small sizes: checks the script")
    ap.add_argument("--cache-dir", default="/tmp/zimage-edits-cache")
    ap.add_argument("--rate", type=float, default=1.0, help="switching phase: open-loop requests per second")
    ap.add_argument("--seconds", type=float, default=60.0, help="switching phase length")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--budget-s", type=float, default=560, help="skip the no-slots baseline when time runs short")
    a = ap.parse_args()
    global PORT, BASE
    PORT, BASE = a.port, f"http://127.0.0.1:{a.port}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    arch = RandomArch.TINY if a.smoke else RandomArch.FULL
    size = (256, 256) if a.smoke else (1024, 1024)
    clients, per_client = (4, 2) if a.smoke else (12, 2)
    root = Path("/tmp/zimage-loras")
    adapters = {n: make_adapter(root / n, arch, r, s) for n, r, s in (("ink", 32, 1), ("film", 16, 2), ("late", 8, 3))}
    loras = {n: {"source": str(adapters[n])} for n in ("ink", "film")}
    args = args_for(a.smoke, a.cache_dir)
    out: dict = {"size": f"{size[0]}x{size[1]}", "adapters": {n: str(p) for n, p in adapters.items()}}
    ray.init(address="local", num_gpus=0 if a.smoke else 1, include_dashboard=False)
    try:
        t0 = time.perf_counter()
        deploy(args, loras, a.smoke)
        info = wait_ready()
        out["ready_s"] = round(time.perf_counter() - t0, 1)
        out["info_at_ready"] = info
        graphs0 = info["generator"]["compiled_graphs"]

        async def phases():
            async with httpx.AsyncClient(base_url=BASE, timeout=600) as c:
                first = await Workloads(size, b"").send(c, "generate", 1)
            wl = Workloads(size, first["image"])
            runs = []
            for kind, lora in [
                ("generate", None),
                ("generate", [{"name": "ink", "scale": 1.0}]),
                ("generate", [{"name": "film", "scale": 0.7}, {"name": "ink", "scale": 0.7}]),
                ("edit", None),
                ("inpaint", None),
                ("edit", [{"name": "ink", "scale": 1.0}]),
            ]:
                run = await closed_loop(wl, kind, lora, clients, per_client)
                logger.info(
                    "%s %s: %.3f img/s, %.3f s/img GPU, batch %.1f",
                    kind,
                    run["lora"],
                    run["img_per_s"],
                    run["gpu_s_per_img"],
                    run["mean_batch"],
                )
                runs.append(run)
            out["closed_loop"] = runs
            out["graphs_after_closed_loop"] = httpx.get(f"{BASE}/info", timeout=30).json()["generator"][
                "compiled_graphs"
            ]
            out["alone_vs_batched"] = [
                await alone_vs_batched(wl, "edit", None, 3),
                await alone_vs_batched(wl, "inpaint", None, 3),
                await alone_vs_batched(wl, "generate", [{"name": "ink", "scale": 1.0}], 3),
            ]
            with_late = {**loras, "late": {"source": str(adapters["late"])}}
            out["switching"] = await switching_under_load(
                wl, a.rate, a.seconds, a.seconds / 3, args, with_late, a.smoke
            )

        asyncio.run(phases())
        info = httpx.get(f"{BASE}/info", timeout=30).json()
        out["info_at_end"] = info
        out["compiled_graphs"] = {"at_ready": graphs0, "at_end": info["generator"]["compiled_graphs"]}
        logger.info("compiled graphs: at ready %s, at end %s", graphs0, out["compiled_graphs"]["at_end"])
        left = a.budget_s - (time.perf_counter() - t0)
        if left < 200:
            out["baseline_without_slots"] = f"skipped: {left:.0f} s of the budget left"
        else:  # the same model without adapter slots (an args change: a new replica, compiled again)
            t1 = time.perf_counter()
            deploy({k: v for k, v in args.items() if k != "lora"}, {}, a.smoke)
            wait_ready(until=lambda info: info["generator"]["lora"]["settings"] is None)
            ready_s = round(time.perf_counter() - t1, 1)
            run = asyncio.run(closed_loop(Workloads(size, b""), "generate", None, clients, per_client))
            out["baseline_without_slots"] = {"ready_s": ready_s, **run}
            logger.info("no slots: %.3f img/s, %.3f s/img GPU", run["img_per_s"], run["gpu_s_per_img"])
    finally:
        Path(a.out).write_text(json.dumps(out, indent=1, default=str))
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
