"""Measure throughput levers for Z-Image-Turbo on one GPU, side by side in one process (random weights, full arch).

Each lever is timed against the plain diffusers call a user would write (`pipe(prompt=[...]*bs, guidance_scale=0)`),
and the compiled variant is checked numerically against eager on identical inputs (max abs latent difference, PSNR of
decoded images). Dynamo recompiles and graph breaks are counted, to explain what compile does and does not fuse.

    python -m perf.levers --out results.json [--batch 1 4] [--levers runner compile_real_rope vae_fast profile fp8]

Levers apply cumulatively in the order given (each row = everything before it + that lever). `profile` adds no row
speed of its own: it records where the GPU time of one batch goes (GEMM / attention / fused Triton / other kernels).
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

from deployments.pipeline.compilation import compile_dit, compile_vae_decoder
from deployments.config import MemoryMode, ModelSource, RandomArch
from deployments.pipeline.loading import load_pipeline
from deployments.pipeline.random_model import build_random_pipeline
from deployments.pipeline.runner import Shape, ZImageRunner

logger = logging.getLogger("perf.levers")
PROMPT = "A realistic photo of a red sports car on a mountain road at sunset"
SHAPE = Shape(1024, 1024, 8)


def timed(fn, reps: int) -> tuple[float, list[float], object]:
    """Best of `reps` calls; the caller's first call was the warm-up (and compile)."""
    result, times = None, []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), times, result


KERNEL_CATEGORIES = (  # first match wins; names of cuBLAS/cuDNN/FlashAttention/Inductor kernels on Hopper
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "sm90_", "scaled_mm", "matmul")),
    ("conv", ("conv", "implicit", "winograd", "cudnn")),
    ("fused_triton", ("triton",)),
)


def first_nan_module(pipe, runner: ZImageRunner, embeds, seeds) -> dict:
    """Run one denoising step with hooks and name the first DiT module whose output has a NaN (and its input range)."""
    found: dict = {}

    def hook(module, inputs, output, name=""):
        if found or not isinstance(output, torch.Tensor) or not output.isnan().any():
            return
        x = next((i for i in inputs if isinstance(i, torch.Tensor)), None)
        found.update(module=name, type=type(module).__name__)
        if x is not None:
            found.update(input_nan=bool(x.isnan().any()), input_absmax=float(x.float().abs().nan_to_num(0).max()))

    handles = [
        m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, m in pipe.transformer.named_modules()
    ]
    try:
        runner.denoise(embeds, Shape(SHAPE.width, SHAPE.height, 1), seeds)
    finally:
        for h in handles:
            h.remove()
    return found or {"module": None}


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
        name = ev.key.lower()
        cat = next((c for c, keys in KERNEL_CATEGORIES if any(k in name for k in keys)), "other")
        by_cat[cat] = by_cat.get(cat, 0.0) + us / 1e6
        top.append((us / 1e6, ev.key[:120], cat))
    total = sum(by_cat.values())
    return {
        "kernel_s": total,
        "by_category_s": by_cat,
        "by_category_share": {c: v / total for c, v in by_cat.items()} if total else {},
        "top_kernels": [{"s": t, "name": n, "category": c} for t, n, c in sorted(top, reverse=True)[:25]],
    }


def cpu_time_breakdown(pipe, runner: ZImageRunner, bs: int) -> dict:
    """cProfile of one batch (top functions by own and cumulative time) and the cost of diffusers'
    `_execution_device` lookup, which walks every module of the pipeline."""
    import cProfile
    import io
    import pstats

    prompts, seeds = [PROMPT] * bs, list(range(bs))
    runner.run(prompts, seeds, SHAPE)
    t0 = time.perf_counter()
    devices = [pipe._execution_device for _ in range(20)]
    lookup_s = (time.perf_counter() - t0) / 20
    prof = cProfile.Profile()
    prof.enable()
    wall = timed(lambda: runner.run(prompts, seeds, SHAPE), 1)[0]
    prof.disable()
    tables = {}
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(30)
        tables[key] = buf.getvalue()
    logger.info("cpu profile bs=%d: wall %.3f s, _execution_device %.4f s (%s)", bs, wall, lookup_s, devices[0])
    return {"batch": bs, "wall_s_under_cprofile": wall, "execution_device_lookup_s": lookup_s, **tables}


def encode_padding_times(pipe, runner: ZImageRunner, batches: list[int], reps: int) -> list[dict]:
    """Text encoding as the pipeline does it (every prompt padded to 512 tokens) vs the runner (real length)."""
    rows = []
    for bs in batches:
        prompts = [PROMPT] * bs

        def padded(p=prompts):
            return pipe.encode_prompt(list(p), device=runner.device, do_classifier_free_guidance=False)

        def real(p=prompts):
            return runner.encode(list(p))

        row = {"batch": bs, "prompt_tokens": len(runner.prompt_encoder.token_ids(PROMPT))}
        for name, fn in (("padded_512_s", padded), ("real_length_s", real)):
            fn()
            row[name] = timed(fn, reps)[0]
        rows.append(row)
        logger.info("encode bs=%d: %s", bs, row)
    return rows


def compile_text_encoder(pipe) -> int:
    """Compile the Qwen3 text encoder's decoder layers (one graph for all 36: same code, dynamic sequence length).

    A prompt is tens of tokens, so the eager pass is bound by kernel launches. `forward`, not the module call:
    transformers collects hidden states with hooks that read a ContextVar (a graph break inside each layer).
    Not shipped: run8 (bench/results/h100-2026-11-25b/levers) measured encode 87 -> 63 ms at batch 1, no gain per
    image end to end, and slower at batch 12."""
    encoder = pipe.text_encoder
    layers = getattr(encoder, "model", encoder).layers  # Qwen3Model (diffusers) or a ForCausalLM wrapper
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    logger.info("text encoder: %d decoder layers compiled (dynamic sequence length)", len(layers))
    return len(layers)


def text_encoder_compile_times(pipe, runner: ZImageRunner, batches: list[int], reps: int) -> dict:
    """The encode stage eager, then with the text encoder's layers compiled (deployments.pipeline.compilation), same prompts:
    time, first-call (compile) time, and the largest embedding difference."""
    prompts = {bs: [PROMPT] * bs for bs in batches}
    eager = {}
    for bs in batches:
        runner.encode(prompts[bs])
        best, _, embeds = timed(lambda bs=bs: runner.encode(prompts[bs]), reps)
        eager[bs] = (best, embeds)
    layers = compile_text_encoder(pipe)
    rows = []
    for bs in batches:
        t0 = time.perf_counter()
        runner.encode(prompts[bs])
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        best, _, embeds = timed(lambda bs=bs: runner.encode(prompts[bs]), reps)
        diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(embeds, eager[bs][1], strict=True))
        rows.append(
            {"batch": bs, "eager_s": eager[bs][0], "compiled_s": best, "first_call_s": first, "max_abs_diff": diff}
        )
        logger.info("text encoder bs=%d: %s", bs, rows[-1])
    return {"layers": layers, "prompt_tokens": len(runner.prompt_encoder.token_ids(PROMPT)), "rows": rows}


def text_encoder_graph_times(pipe, runner: ZImageRunner, batches: list[int], reps: int) -> dict:
    """The encode stage three ways, same prompts: the pipeline's own pass at the real length (the runner before
    deployments/pipeline/text_encoder.py), the shortcut eagerly, the shortcut replayed as CUDA graphs (left on for the rows
    after this lever); capture cost and each one's deviation from the pipeline's 512-token pass."""
    enc = runner.prompt_encoder
    n = len(enc.token_ids(PROMPT))
    reps = max(reps, 5)
    on_gpu = runner.device.type == "cuda"  # --smoke on CPU: the graph rows repeat the eager pass
    rows = []
    for bs in batches:
        prompts = [PROMPT] * bs

        def pipeline_pass(p=prompts):
            return pipe.encode_prompt(
                list(p), device=runner.device, do_classifier_free_guidance=False, max_sequence_length=n
            )

        def encode(p=prompts):
            return runner.encode(list(p))

        enc.drop_graphs()
        pipeline_pass()
        row: dict = {"batch": bs, "pipeline_real_length_s": timed(pipeline_pass, reps)[0]}
        encode()
        row["shortcut_eager_s"], _, eager = timed(encode, reps)
        enc.cuda_graphs = on_gpu
        row["graph_shape"] = enc.padded_shape(bs, n)
        row["first_call_with_capture_s"] = timed(encode, 1)[0]
        row["graph_s"], _, graphed = timed(encode, reps)
        row["max_abs_diff_graph_vs_eager"] = max(
            (a.float() - b.float()).abs().max().item() for a, b in zip(graphed, eager, strict=True)
        )
        rows.append(row)
        logger.info("text encoder bs=%d: %s", bs, row)
    deviation = {"graphs": enc.deviation_from_pipeline(pipe, PROMPT, padded_to_512=True)}
    real_length = {"graphs": enc.deviation_from_pipeline(pipe, PROMPT)}
    t0 = time.perf_counter()
    graphs = enc.capture_all(max(batches))
    capture_all_s = time.perf_counter() - t0
    enc.cuda_graphs = False
    deviation["shortcut_eager"] = enc.deviation_from_pipeline(pipe, PROMPT, padded_to_512=True)
    real_length["shortcut_eager"] = enc.deviation_from_pipeline(pipe, PROMPT)
    enc.cuda_graphs = on_gpu
    return {
        "prompt_tokens": n,
        "graphs_after_capture_all": graphs,
        "capture_all_s": capture_all_s,
        "deviation_from_pipeline_512": deviation,
        "deviation_from_pipeline_real_length": real_length,
        "rows": rows,
    }


def new_size_times(runner: ZImageRunner) -> list[dict]:
    """First and second 1-step request at sizes the compiled DiT/decoder have not seen: what a request at a new size
    pays in recompiles (`new_graphs`), e.g. the first 512x512 request on a replica warmed up at 1024x1024."""
    from torch._dynamo.utils import counters

    rows = []
    for width, height in ((1024, 1024), (512, 512), (768, 1280), (1280, 768), (1024, 1024)):
        shape = Shape(width, height, 1)
        before = counters["stats"]["unique_graphs"]
        first = timed(lambda s=shape: runner.run([PROMPT], [0], s), 1)[0]
        best, _, result = timed(lambda s=shape: runner.run([PROMPT], [0], s), 2)
        rows.append(
            {
                "width": width,
                "height": height,
                "first_s": first,
                "steady_s": best,
                "steady_stages_s": result.times.__dict__,
                "new_graphs": counters["stats"]["unique_graphs"] - before,
            }
        )
        logger.info("new size %dx%d: first %.2f s, steady %.3f s (%s)", width, height, first, best, rows[-1])
    return rows


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
    ap.add_argument("--profile-batch", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU at 256x256: checks the script, not speed")
    ap.add_argument(
        "--model",
        default=None,
        help="weights as serve_config's `model` (Hub id, local dir); default random weights. With real weights the "
        "numerics rows (latent difference, PSNR vs eager) are those of the real model.",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    global SHAPE
    arch, device, dtype = RandomArch.FULL, "cuda", torch.bfloat16
    if args.smoke:
        arch, device, dtype, SHAPE = RandomArch.TINY, "cpu", torch.float32, Shape(256, 256, 8)
        torch.cuda.synchronize = lambda *a, **k: None
        torch.cuda.max_memory_allocated = lambda *a, **k: 0
    out: dict = {
        "weights": args.model or f"random:{arch.value} (random weights of the {arch.value} architecture)",
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
    if args.model:
        pipe = load_pipeline(ModelSource.parse(args.model), device, dtype).to(device)
    else:
        pipe = build_random_pipeline(arch, device, dtype)
    out["build_s"] = time.perf_counter() - t0
    runner = ZImageRunner(pipe, batch_encode=True)  # as the service runs on a GPU
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
                compile_dit(pipe, MemoryMode.GPU, None, real_rope=False, vae=False)
            if lever == "compile_real_rope":  # what the service does (deployments.pipeline.compilation)
                torch._dynamo.reset()
                compile_dit(pipe, MemoryMode.GPU, None, real_rope=True, vae=False)
            if lever == "cudnn":
                pipe.transformer.set_attention_backend("_native_cudnn")
            if lever == "vae_fast":  # cuDNN picks conv algorithms by timing them; NHWC is the tensor cores' layout
                torch.backends.cudnn.benchmark = True
                pipe.vae.to(memory_format=torch.channels_last)
            if lever == "vae_compile":
                compile_vae_decoder(pipe)
            if lever == "fp8":  # opt-in mode: quantize the bf16 DiT's big linears, then compile as the service does
                from perf.fp8 import quantize_dit_fp8

                torch._dynamo.reset()
                out["fp8_linear_layers"] = quantize_dit_fp8(pipe.transformer)
                # real RoPE was installed by compile_real_rope; the compiled VAE decoder recompiles after the reset
                compile_dit(pipe, MemoryMode.GPU, None, real_rope=False, vae=False)
            if lever == "fp8_static":  # FP8 + every kept lever, static shapes (the dynamic FP8 graph took > 6 min)
                from deployments.pipeline.real_rope import use_real_rope
                from perf.fp8 import quantize_dit_fp8

                torch._dynamo.reset()
                out["fp8_linear_layers"] = quantize_dit_fp8(pipe.transformer)
                use_real_rope(pipe.transformer)
                pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=False)
                compile_vae_decoder(pipe)
            if lever == "fp8_rowwise":  # the service's opt-in FP8 (deployments.pipeline.fp8) on top of every kept lever
                from deployments.pipeline.fp8 import quantize_dit_fp8 as quantize_rowwise

                torch._dynamo.reset()  # the compiled VAE decoder recompiles on its next call
                out["fp8_rowwise_linear_layers"] = quantize_rowwise(pipe.transformer)
                t_compile = time.perf_counter()
                compile_dit(pipe, MemoryMode.GPU, None, real_rope=True, vae=True)  # as the service: every kept lever
                out["fp8_rowwise_compile_call_s"] = time.perf_counter() - t_compile
            if lever == "encode_padding":
                out["encode_padding"] = encode_padding_times(pipe, runner, args.batch, args.reps)
                save()
                continue
            if lever == "te_graphs":  # then a row: everything before + the text encoder replayed as CUDA graphs
                out["te_graphs"] = text_encoder_graph_times(pipe, runner, args.batch, args.reps)
                save()
            if lever == "te_compile":  # then a row: everything before + the compiled text encoder
                out["te_compile"] = text_encoder_compile_times(pipe, runner, args.batch, args.reps)
                save()
            if lever == "new_sizes":
                sizes = new_size_times(runner)
                out.setdefault("new_sizes", []).append({"after": out["rows"][-1]["lever"], "rows": sizes})
                save()
                continue
            if lever == "fp8_eager":  # FP8 without compile: tells a numerics problem of FP8 from one of compiling it
                from perf.fp8 import quantize_dit_fp8

                torch._dynamo.reset()
                out["fp8_linear_layers"] = quantize_dit_fp8(pipe.transformer)
            if lever == "compile_autotune":  # Inductor tries Triton GEMM templates against cuBLAS per shape
                from deployments.pipeline.real_rope import use_real_rope

                torch._dynamo.reset()
                use_real_rope(pipe.transformer)
                pipe.transformer.compile_repeated_blocks(
                    fullgraph=True, dynamic=True, mode="max-autotune-no-cudagraphs"
                )
            if lever == "cpu_profile":  # where a batch's wall time goes on the CPU side (Python), beyond its kernels
                out.setdefault("cpu_profiles", []).append(
                    {"after": out["rows"][-1]["lever"], **cpu_time_breakdown(pipe, runner, args.profile_batch)}
                )
                save()
                continue
            if lever == "profile":
                bs = args.profile_batch
                runner.run([PROMPT] * bs, list(range(bs)), SHAPE)  # warm (compiles the shape if new)
                breakdown = kernel_time_breakdown(lambda bs=bs: runner.run([PROMPT] * bs, list(range(bs)), SHAPE))
                out.setdefault("profiles", []).append({"after": out["rows"][-1]["lever"], "batch": bs, **breakdown})
                logger.info("profile bs=%d: %s", bs, breakdown["by_category_share"])
                save()
                continue
            for bs in args.batch:
                seeds = list(range(bs))
                if lever == "pipe":

                    def fn(bs=bs, seeds=seeds):
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

                    def fn(bs=bs, seeds=seeds):
                        return runner.run([PROMPT] * bs, seeds, SHAPE)

                first = time.perf_counter()
                result = fn()
                torch.cuda.synchronize()
                first_s = time.perf_counter() - first
                best, times, result = timed(fn, args.reps)
                extra = {"first_call_s": first_s}
                if lever != "pipe":
                    extra["stages_s"] = result.times.__dict__  # of the last timed call
                    embeds = runner.encode([PROMPT] * bs)
                    lat = runner.denoise(embeds, SHAPE, seeds).float()
                    img = torch.stack([torch.from_numpy(i) for i in runner.decode(lat.to(dtype))])
                    if lever == "runner":
                        reference[bs] = (lat, img)
                    elif bs in reference:
                        ref_lat, ref_img = reference[bs]
                        extra["max_abs_latent_diff_vs_eager"] = (lat - ref_lat).abs().max().item()
                        extra["psnr_db_vs_eager"] = psnr(img, ref_img)
                    extra["nan_latents"] = int(lat.isnan().sum())
                    if extra["nan_latents"]:
                        extra["first_nan_module"] = first_nan_module(pipe, runner, embeds, seeds)
                if lever.startswith(("compile", "fp8")):
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
