"""Replica cold start with torch.compile: build (random full weights) + compile + first 1024x1024 image.

Run twice with the same TORCHINDUCTOR_CACHE_DIR: the second process shows what a scale-up pays with a warm
persistent cache.   python -m perf.cold_start --cache-dir /tmp/ic --out cold1.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from deployments.config import MemoryMode, RandomArch
from deployments.pipeline.compilation import compile_dit
from deployments.pipeline.fp8 import quantize_dit_fp8
from deployments.pipeline.random_model import build_random_pipeline
from deployments.pipeline.runner import Shape, ZImageRunner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fp8", action="store_true", help="the opt-in FP8 DiT (fp8_dit: true)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    pipe = build_random_pipeline(RandomArch.FULL, "cuda", torch.bfloat16)
    torch.cuda.synchronize()
    t_build = time.perf_counter()
    if args.fp8:
        quantize_dit_fp8(pipe.transformer)
    compile_dit(pipe, MemoryMode.GPU, args.cache_dir)
    runner = ZImageRunner(pipe, batch_encode=True)
    runner.run(["warm-up"], [0], Shape(1024, 1024, 8))
    torch.cuda.synchronize()
    t_first = time.perf_counter()
    runner.run(["warm-up"], [0], Shape(256, 256, 1))  # the service's second-size warm-up (dynamic H/W recompile)
    torch.cuda.synchronize()
    t_second_size = time.perf_counter()
    runner.run(["A realistic photo of a red sports car on a mountain road at sunset"], [42], Shape(1024, 1024, 8))
    torch.cuda.synchronize()
    t_second = time.perf_counter()
    Path(args.out).write_text(
        json.dumps(
            {
                "weights": "random:full",
                "build_s": t_build - t0,
                "compile_and_first_image_s": t_first - t_build,
                "cold_start_total_s": t_first - t0,
                "second_size_warm_up_s": t_second_size - t_first,
                "steady_image_s": t_second - t_second_size,
                "fp8_dit": args.fp8,
                "cache_dir": args.cache_dir,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
