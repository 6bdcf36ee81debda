"""Measure throughput levers for Z-Image-Turbo on one GPU, side by side in one process (random weights, full arch).

Each lever is timed against the plain diffusers call a user would write (`pipe(prompt=[...]*bs, guidance_scale=0)`),
and the compiled variant is checked numerically against eager on identical inputs (max abs latent difference, PSNR of
decoded images). Dynamo recompiles and graph breaks are counted, to explain what compile does and does not fuse.

    python -m perf.levers --out results.json [--batch 1 4] [--levers eager runner cudnn compile]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import traceback
from pathlib import Path

import torch

from deployments.compilation import compile_dit
from deployments.config import MemoryMode, RandomArch
from deployments.random_model import build_random_pipeline
from deployments.runner import Shape, ZImageRunner

logger = logging.getLogger("perf.levers")
PROMPT = "A realistic photo of a red sports car on a mountain road at sunset"
SHAPE = Shape(1024, 1024, 8)


def timed(fn, reps: int) -> tuple[float, list[float]]:
    fn()  # warm-up (and compile)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), times


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def dynamo_counters() -> dict:
    from torch._dynamo.utils import counters

    return {k: dict(v) for k, v in counters.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--levers", nargs="+", default=["pipe", "runner", "cudnn", "compile"])
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU at 256x256: checks the script, not speed")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    global SHAPE
    arch, device, dtype = RandomArch.FULL, "cuda", torch.bfloat16
    if args.smoke:
        arch, device, dtype, SHAPE = RandomArch.TINY, "cpu", torch.float32, Shape(256, 256, 8)
        torch.cuda.synchronize = lambda *a, **k: None
        torch.cuda.max_memory_allocated = lambda *a, **k: 0
    out: dict = {
        "weights": f"random:{arch.value} (random weights of the {arch.value} architecture)",
        "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": SHAPE.__dict__,
        "rows": [],
    }
    import diffusers

    out["diffusers"] = diffusers.__version__

    def save() -> None:
        Path(args.out).write_text(json.dumps(out, indent=2))

    t0 = time.perf_counter()
    pipe = build_random_pipeline(arch, device, dtype)
    out["build_s"] = time.perf_counter() - t0
    runner = ZImageRunner(pipe)
    pipe.set_progress_bar_config(disable=True)
    reference = {}

    def record(lever: str, bs: int, best: float, times: list[float], **extra) -> None:
        row = {
            "lever": lever,
            "batch": bs,
            "best_s": best,
            "times_s": times,
            "s_per_img": best / bs,
            "img_per_s": bs / best,
            **extra,
        }
        out["rows"].append(row)
        logger.info("%s bs=%d: %.3f s/img (%.3f img/s)", lever, bs, best / bs, bs / best)
        save()

    for lever in args.levers:
        try:
            if lever == "compile":  # what DESIGN.md tried: static shapes, one recompile per new batch size
                torch._dynamo.reset()
                pipe.transformer.compile_repeated_blocks(fullgraph=True)
            if lever == "compile_dynamic":  # dynamic shapes, diffusers' complex-multiply RoPE
                torch._dynamo.reset()
                compile_dit(pipe, MemoryMode.GPU, None, real_rope=False)
            if lever == "compile_real_rope":  # what the service does (deployments.compilation)
                torch._dynamo.reset()
                compile_dit(pipe, MemoryMode.GPU, None, real_rope=True)
            if lever == "cudnn":
                pipe.transformer.set_attention_backend("_native_cudnn")
            for bs in args.batch:
                seeds = list(range(bs))  # noqa: B023 (fn is called within this iteration)
                if lever == "pipe":

                    def fn():
                        return pipe(
                            prompt=[PROMPT] * bs,
                            height=SHAPE.height,
                            width=SHAPE.width,
                            num_inference_steps=SHAPE.steps,
                            guidance_scale=0.0,
                            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                            output_type="pil",
                        )
                else:

                    def fn():
                        return runner.run([PROMPT] * bs, seeds, SHAPE)

                first = time.perf_counter()
                result = fn()
                torch.cuda.synchronize()
                first_s = time.perf_counter() - first
                best, times = timed(fn, args.reps)
                extra = {"first_call_s": first_s}
                if lever != "pipe":
                    extra["stages_s"] = result.times.__dict__
                    embeds = runner.encode([PROMPT] * bs)
                    lat = runner.denoise(embeds, SHAPE, seeds).float()
                    img = torch.stack([torch.from_numpy(i) for i in runner.decode(lat.to(dtype))])
                    if lever == "runner":
                        reference[bs] = (lat, img)
                    elif bs in reference:
                        ref_lat, ref_img = reference[bs]
                        extra["max_abs_latent_diff_vs_eager"] = (lat - ref_lat).abs().max().item()
                        extra["psnr_db_vs_eager"] = psnr(img, ref_img)
                if lever.startswith("compile"):
                    extra["dynamo_counters"] = dynamo_counters()
                record(lever, bs, best, times, **extra)
            if lever == "cudnn":
                pipe.transformer.reset_attention_backend() if hasattr(
                    pipe.transformer, "reset_attention_backend"
                ) else pipe.transformer.set_attention_backend("native")
        except Exception as exc:
            out.setdefault("errors", []).append({"lever": lever, "error": repr(exc), "tb": traceback.format_exc()})
            logger.error("lever %s failed: %s", lever, exc)
            save()
    out["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
    save()


if __name__ == "__main__":
    main()
