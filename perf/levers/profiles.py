"""Where the time goes: GPU kernel profile, CPU-side profile, recompiles at new sizes, and NaN hunting."""

from __future__ import annotations

import logging
import time

import torch

from deployments.pipeline.runner import Shape
from perf.levers import lever
from perf.levers.session import PROMPT, timed

logger = logging.getLogger("perf.levers")

KERNEL_CATEGORIES = (  # first match wins; names of cuBLAS/cuDNN/FlashAttention/Inductor kernels on Hopper
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "sm90_", "scaled_mm", "matmul")),
    ("conv", ("conv", "implicit", "winograd", "cudnn")),
    ("fused_triton", ("triton",)),
)


def kernel_time_breakdown(fn) -> dict:
    """GPU kernel time of one call, grouped by kind: shows what compile left on the table."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    by_cat: dict[str, float] = {}
    top = []
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", 0) or getattr(ev, "cuda_time_total", 0)
        if us <= 0 or ev.key.startswith("ProfilerStep"):
            continue
        cat = next((c for c, keys in KERNEL_CATEGORIES if any(k in ev.key.lower() for k in keys)), "other")
        by_cat[cat] = by_cat.get(cat, 0.0) + us / 1e6
        top.append((us / 1e6, ev.key[:120], cat))
    total = sum(by_cat.values())
    return {
        "kernel_s": total,
        "by_category_s": by_cat,
        "by_category_share": {c: v / total for c, v in by_cat.items()} if total else {},
        "top_kernels": [{"s": t, "name": n, "category": c} for t, n, c in sorted(top, reverse=True)[:25]],
    }


@lever("profile", after=("runner", "compile"), rows=False, gpu_only=True)
def profile(session) -> None:
    """GPU kernel time of one batch (--profile-batch) by kind: GEMM / attention / conv / fused Triton / other."""
    bs = session.profile_batch
    call = session.batch_call("runner", bs)
    call()  # warm (compiles the shape if new)
    breakdown = kernel_time_breakdown(call)
    session.add("profiles", {"batch": bs, **breakdown}, append=True)
    logger.info("profile bs=%d: %s", bs, breakdown["by_category_share"])


@lever("cpu_profile", rows=False)
def cpu_profile(session) -> None:
    """cProfile of one batch (top functions) and the cost of diffusers' `_execution_device` module walk."""
    import cProfile
    import io
    import pstats

    bs, pipe = session.profile_batch, session.pipe
    call = session.batch_call("runner", bs)
    call()
    t0 = time.perf_counter()
    devices = [pipe._execution_device for _ in range(20)]
    lookup_s = (time.perf_counter() - t0) / 20
    prof = cProfile.Profile()
    prof.enable()
    wall = timed(call, 1)[0]
    prof.disable()
    tables = {}
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(30)
        tables[key] = buf.getvalue()
    logger.info("cpu profile bs=%d: wall %.3f s, _execution_device %.4f s (%s)", bs, wall, lookup_s, devices[0])
    result = {"batch": bs, "wall_s_under_cprofile": wall, "execution_device_lookup_s": lookup_s, **tables}
    session.add("cpu_profiles", result, append=True)


@lever("new_sizes", after=("runner", "compile", "vae_compile"), rows=False)
def new_sizes(session) -> None:
    """First and second 1-step request at sizes not seen yet: what a new size pays in recompiles (`new_graphs`)."""
    from torch._dynamo.utils import counters

    sizes = ((256, 256), (128, 128)) if session.smoke else ((1024, 1024), (512, 512), (768, 1280), (1280, 768))
    rows = []
    for width, height in (*sizes, sizes[0]):
        shape = Shape(width, height, 1)
        before = counters["stats"]["unique_graphs"]
        first = timed(lambda s=shape: session.runner.run([PROMPT], [0], s), 1)[0]
        best, _, result = timed(lambda s=shape: session.runner.run([PROMPT], [0], s), 2)
        new_graphs = counters["stats"]["unique_graphs"] - before
        rows.append(
            dict(width=width, height=height, first_s=first, steady_s=best, new_graphs=new_graphs)
            | {"steady_stages_s": result.times.__dict__}
        )
        logger.info("new size %dx%d: first %.2f s, steady %.3f s", width, height, first, best)
    session.add("new_sizes", {"rows": rows}, append=True)


def first_nan_module(session, embeds, seeds) -> dict:
    """Run one denoising step with hooks and name the first DiT module whose output has a NaN (and its input range)."""
    found: dict = {}

    def hook(module, inputs, output, name=""):
        if found or not isinstance(output, torch.Tensor) or not output.isnan().any():
            return
        x = next((i for i in inputs if isinstance(i, torch.Tensor)), None)
        found.update(module=name, type=type(module).__name__)
        if x is not None:
            found.update(input_nan=bool(x.isnan().any()), input_absmax=float(x.float().abs().nan_to_num(0).max()))

    modules = session.pipe.transformer.named_modules()
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, m in modules]
    try:
        session.runner.denoise(embeds, Shape(session.shape.width, session.shape.height, 1), seeds)
    finally:
        for h in handles:
            h.remove()
    return found or {"module": None}
