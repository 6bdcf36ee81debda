"""GPU deployment: one Z-Image pipeline per replica behind `@serve.batch`.

The batch size starts from the VRAM tier (user_config), is capped by a measurement at the largest allowed resolution,
and drops for good after a CUDA OOM (the batch is split and retried, so no request that would succeed alone fails).
GPU work runs in a single worker thread so the replica's event loop keeps queueing the next batch and answering
health checks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import torch
from ray import serve

from deployments.batch_gate import BatchGate
from deployments.batch_planning import MemoryClamp, group_by_shape, is_oom, run_with_oom_split, select_tier
from deployments.compilation import compile_dit, second_warm_up_side
from deployments.config import AppConfig, GeneratorUserConfig, MemoryMode, Tier
from deployments.fp8 import fp8_supported, quantize_dit_fp8
from deployments.gpu_info import GpuInfo, probe_gpu
from deployments.memory_modes import place_pipeline
from deployments.metrics import GeneratorMetrics
from deployments.pipeline_factory import PipelineFactory, load_pipeline
from deployments.replica_gpu_metrics import start_replica_gpu_metrics
from deployments.runner import Shape, ZImageRunner
from deployments.schemas import GenerationResult, GenerationSpec

logger = logging.getLogger("ray.serve")
ENCODER_PROBE_PROMPT = "a lighthouse on a cliff in a storm, oil painting"
# relative L2 vs the pipeline's own pass: bf16 kernel numerics give 0.025 (H200, real length) to 0.027 (vs the padded
# pass); one layer too many gives > 0.3 on the tiny model (tests/test_text_encoding.py)
ENCODER_TOLERANCE = 0.05


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was configured but no CUDA GPU is visible to this replica")
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    if setting == "auto":  # bf16 on GPU (fp16 gives NaN/black images with Z-Image), fp32 on CPU
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, setting)


@dataclass
class BatchingState:
    """Why the replica runs the batch size it runs (shown in /info and logged)."""

    vram_gb: float | None = None
    emulated: bool = False
    tier: Tier | None = None
    memory_mode: MemoryMode | None = None
    desired_max_batch: int = 1
    memory_cap: int | None = None
    oom_cap: int | None = None
    effective_max_batch: int = 1
    batch_wait_timeout_s: float = 0.05
    clamp: dict[str, MemoryClamp] = field(default_factory=dict)  # per pipeline stage
    oom_splits: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tier"] = self.tier.model_dump(mode="json") if self.tier else None
        d["memory_mode"] = self.memory_mode.value if self.memory_mode else None
        if self.clamp:
            d["predicted_peak_at_effective_bytes"] = max(
                c.predicted_peak(self.effective_max_batch) for c in self.clamp.values()
            )
        return d


class ZImageGenerator:
    def __init__(self, app_config: dict, pipeline_factory: PipelineFactory | None = None):
        self.cfg = AppConfig.model_validate(app_config)
        self.factory = pipeline_factory or load_pipeline
        self.device = resolve_device(self.cfg.device)
        self.dtype = resolve_dtype(self.cfg.dtype, self.device)
        self.gpu: GpuInfo | None = probe_gpu() if self.device == "cuda" else None
        self.replica = _replica_name()
        self.metrics = GeneratorMetrics()
        self.gate = BatchGate(  # batches form when the GPU is free (deployments/batch_gate.py)
            lambda: self.state.effective_max_batch,
            lambda: self.state.batch_wait_timeout_s,
            lambda n: self.metrics.gate_waiting.set(n),
        )
        self.state = BatchingState()
        self.runner: ZImageRunner | None = None
        self.user_config: GeneratorUserConfig | None = None
        self.fatal: BaseException | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zimage-gpu")
        self.started_at = time.time()
        self.ready_s: float | None = None
        self.fp8_layers = 0
        self.encoder_info: dict = {}
        if self.gpu is not None:
            self.state.vram_gb = self.gpu.total_gb
            if self.cfg.emulate_vram_gb:
                self._emulate_vram(self.cfg.emulate_vram_gb)
            self.gpu_sampler = start_replica_gpu_metrics()
        else:
            self.gpu_sampler = None

    # ---- configuration -------------------------------------------------------------------------------------------
    def _emulate_vram(self, gb: float) -> None:
        """Cap torch's allocator so a big GPU behaves like a `gb` card (tier, clamp and OOMs follow the cap)."""
        fraction = min(1.0, gb * 1e9 / self.gpu.total_bytes)
        torch.cuda.set_per_process_memory_fraction(fraction)
        self.state.vram_gb, self.state.emulated = gb, True
        logger.info("emulating a %.0f GB GPU: torch allocator capped at %.3f of %s", gb, fraction, self.gpu.name)

    def reconfigure(self, user_config: dict) -> None:
        uc = GeneratorUserConfig.model_validate(user_config or {})
        st = self.state
        if self.gpu is not None:
            st.tier = select_tier(st.vram_gb, uc.tiers)
            mode = uc.memory_mode if uc.memory_mode is not MemoryMode.AUTO else st.tier.memory_mode
            desired = uc.max_batch_size or st.tier.max_batch_size
        else:
            st.tier, mode = None, MemoryMode.GPU
            desired = uc.max_batch_size or uc.cpu_max_batch_size
        if self.runner is None or mode is not st.memory_mode:
            self._load(mode, desired)
        st.desired_max_batch = desired
        st.batch_wait_timeout_s = uc.batch_wait_timeout_s
        self.user_config = uc
        self._apply_batch_size()
        self.generate_batch.set_batch_wait_timeout_s(uc.batch_wait_timeout_s)
        logger.info(
            "batching: vram=%s GB%s tier=%s mode=%s desired=%d memory_cap=%s oom_cap=%s"
            " -> max_batch_size=%d wait=%.3fs",
            f"{st.vram_gb:.1f}" if st.vram_gb else "n/a (cpu)",
            " (emulated)" if st.emulated else "",
            st.tier.max_vram_gb if st.tier else None,
            st.memory_mode.value,
            desired,
            st.memory_cap,
            st.oom_cap,
            st.effective_max_batch,
            uc.batch_wait_timeout_s,
        )

    def _apply_batch_size(self) -> None:
        st = self.state
        caps = [c for c in (st.desired_max_batch, st.memory_cap, st.oom_cap) if c is not None]
        st.effective_max_batch = max(1, min(caps))
        self.generate_batch.set_max_batch_size(st.effective_max_batch)
        self.metrics.max_batch_size.set(st.effective_max_batch)
        self.metrics.tier_vram_gb.set(st.vram_gb or 0.0)

    def _load(self, mode: MemoryMode, max_batch: int) -> None:
        start = time.perf_counter()
        self.runner = None
        if self.device == "cuda":
            torch.cuda.empty_cache()
        # Random builds construct straight on the GPU when everything stays there; real weights load to CPU first.
        build_on = self.device if (mode is MemoryMode.GPU or self.cfg.model.is_random) else "cpu"
        if self.cfg.emulate_vram_gb and mode is not MemoryMode.GPU:
            torch.cuda.set_per_process_memory_fraction(1.0)  # emulation: build, then offload, then re-apply the cap
        pipe = self.factory(self.cfg.model, build_on, self.dtype)
        place_pipeline(pipe, mode, self.device)
        if self.cfg.emulate_vram_gb:
            self._emulate_vram(self.cfg.emulate_vram_gb)
        resident = mode is MemoryMode.GPU  # offload modes stream the text encoder through its own forward's hooks
        self.runner = ZImageRunner(
            pipe,
            batch_encode=self.device == "cuda",
            encoder_shortcut=resident,
            encoder_cuda_graphs=resident and self.cfg.text_encoder_cuda_graphs,
        )
        self.fp8_layers = self._quantize_fp8(pipe, mode) if self.cfg.fp8_dit else 0
        if self.cfg.compile and self.device == "cuda":
            compile_dit(pipe, mode, self.cfg.compile_cache_dir, vae=self.cfg.compile_vae)
        self._prepare_prompt_encoder(pipe, max_batch)
        self.state.memory_mode = mode
        for m in MemoryMode:
            if m is not MemoryMode.AUTO:
                self.metrics.memory_mode.set(1.0 if m is mode else 0.0, tags={"mode": m.value})
        self._measure_memory()
        if self.cfg.compile and self.device == "cuda":
            self._warm_second_size()
        self.ready_s = time.perf_counter() - start
        logger.info(
            "%s ready on %s (%s, %s) in %.1fs", self.cfg.model.label, self.device, self.dtype, mode.value, self.ready_s
        )

    def _prepare_prompt_encoder(self, pipe, max_batch: int) -> None:
        """Capture the text encoder's CUDA graphs now (not on a request), then check the encoder against the
        pipeline's own pass at the prompt's real length: if a transformers upgrade changed the Qwen3 model, fall back
        (graphs -> the eager shortcut -> the pipeline's full pass) rather than change images."""
        enc = self.runner.prompt_encoder
        start = time.perf_counter()
        if enc.cuda_graphs:
            try:
                enc.capture_all(max_batch)
            except Exception as exc:  # any capture failure: run eagerly rather than not at all
                logger.warning("text encoder CUDA graphs off: capture failed: %s", exc)
                enc.drop_graphs()
        deviation = 0.0
        while enc.shortcut:
            deviation = enc.deviation_from_pipeline(pipe, ENCODER_PROBE_PROMPT)
            if deviation <= ENCODER_TOLERANCE:
                break
            step = "CUDA graphs" if enc.cuda_graphs else "the layer shortcut"
            logger.warning("text encoder: %s off, deviation %.3g from the pipeline's own pass", step, deviation)
            if enc.cuda_graphs:
                enc.drop_graphs()
            else:
                enc.shortcut = False
        self.encoder_info = {
            "shortcut": enc.shortcut,
            "cuda_graphs": enc.cuda_graphs,
            "graphs": len(enc._graphs),
            "deviation_from_pipeline": deviation,
            "prepare_s": round(time.perf_counter() - start, 3),
        }
        logger.info("text encoder: %s", self.encoder_info)

    def _warm_second_size(self) -> None:
        """Compiled code first specializes to the one image size it has seen; the next size makes Dynamo recompile
        with dynamic height/width, once. Doing it here (one step at the smallest allowed size) keeps that recompile
        out of the first request at a new size (README "Throughput levers": new-size first-request cost)."""
        lim, d = self.cfg.limits, self.cfg.defaults
        side = second_warm_up_side(lim, seen=lim.max_side if self.cfg.measure_memory else d.width)
        if side is None:
            return
        start = time.perf_counter()
        self.runner.run(["warm-up"], [0], Shape(side, side, 1))
        logger.info("warmed up a second image size (%dx%d) in %.1fs", side, side, time.perf_counter() - start)

    def _quantize_fp8(self, pipe, mode: MemoryMode) -> int:
        """Opt-in FP8 DiT (before compile); refuses GPUs without FP8 tensor cores rather than running slower."""
        if mode is MemoryMode.GROUP_OFFLOAD:
            logger.warning("fp8_dit ignored in group_offload mode: the streamed DiT is not compiled")
            return 0
        if not fp8_supported(self.device):
            raise RuntimeError(
                f"fp8_dit needs FP8 tensor cores (compute capability >= 8.9: Ada, Hopper, Blackwell); "
                f"{self.gpu.name if self.gpu else self.device} has {torch.cuda.get_device_capability()}"
            )
        return quantize_dit_fp8(pipe.transformer)

    def _measure_memory(self) -> None:
        """Warm up, and on a GPU run batch 1 and 2 at the largest allowed size to cap the batch by peak memory."""
        lim, d = self.cfg.limits, self.cfg.defaults
        if self.device != "cuda" or not self.cfg.measure_memory:
            self.runner.run(["warm-up"], [0], Shape(d.width, d.height, 1))
            return
        shape = Shape(lim.max_side, lim.max_side, 2)  # peak memory does not depend on the step count
        peaks: list[dict[str, int] | None] = []
        for b in (1, 2):
            torch.cuda.empty_cache()
            try:
                peaks.append(self.runner.run(["warm-up"] * b, list(range(b)), shape).stage_peak_bytes)
            except Exception as exc:
                if not is_oom(exc) or b == 1:
                    raise RuntimeError(
                        f"{self.cfg.model.label}: batch {b} at {lim.max_side}x{lim.max_side} failed in mode "
                        f"{self.state.memory_mode.value}: {exc}"
                    ) from exc
                peaks.append(None)
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        if self.state.emulated:
            # what the emulated card would have: its size minus what is not torch's (CUDA context, other processes)
            outside_torch = total - free - torch.cuda.memory_reserved()
            capacity = int(self.state.vram_gb * 1e9) - outside_torch
        else:
            capacity = free + torch.cuda.memory_reserved()
        budget = capacity - int(self.cfg.memory_margin_gb * 1e9)
        if peaks[1] is None:
            self.state.memory_cap, self.state.clamp = 1, {}
        else:
            # peak(b) = max over stages of a line fitted per stage; the cap keeps every stage under the budget
            self.state.clamp = {k: MemoryClamp(peaks[0][k], peaks[1][k], budget) for k in peaks[0]}
            self.state.memory_cap = min(c.max_batch for c in self.state.clamp.values())
        logger.info(
            "memory clamp at %dx%d: stage peaks GB @1 %s, @2 %s; budget %.2f GB (capacity %.2f - margin %.2f)"
            " -> cap %d",
            lim.max_side,
            lim.max_side,
            {k: round(v / 1e9, 2) for k, v in peaks[0].items()},
            {k: round(v / 1e9, 2) for k, v in peaks[1].items()} if peaks[1] else "OOM",
            budget / 1e9,
            capacity / 1e9,
            self.cfg.memory_margin_gb,
            self.state.memory_cap,
        )

    # ---- requests ------------------------------------------------------------------------------------------------
    async def generate(self, spec: GenerationSpec) -> GenerationResult:
        if self.runner is None:
            self.reconfigure({})
        arrival = time.perf_counter()
        async with self.gate.slot():  # joins a batch only while the GPU is free (deployments/batch_gate.py)
            return await self.generate_batch((spec, arrival))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def generate_batch(self, items: list[tuple[GenerationSpec, float]]) -> list[GenerationResult]:
        batch_start = time.perf_counter()
        specs = [spec for spec, _ in items]
        results: list[GenerationResult | None] = [None] * len(items)
        loop = asyncio.get_running_loop()
        for _, idxs in group_by_shape(specs, lambda s: s.shape).items():
            group = [specs[i] for i in idxs]
            group_results = await loop.run_in_executor(self.executor, self._run_group, group)
            for i, res in zip(idxs, group_results, strict=True):
                res.queue_wait_s = batch_start - items[i][1]
                self.metrics.queue_wait.observe(res.queue_wait_s)
                results[i] = res
        return results

    def _run_group(self, specs: list[GenerationSpec]) -> list[GenerationResult]:
        """One shape, any number of prompts/seeds; runs in the GPU thread."""
        shape = Shape(specs[0].width, specs[0].height, specs[0].steps)

        def run_chunk(chunk: list[GenerationSpec]) -> list[GenerationResult]:
            out = self.runner.run([s.prompt for s in chunk], [s.seed for s in chunk], shape)
            t = out.times
            self.metrics.batch_size.observe(len(chunk))
            for stage, secs in (("encode", t.encode_s), ("denoise", t.denoise_s), ("decode", t.decode_s)):
                self.metrics.stage.observe(secs, tags={"stage": stage})
            self.metrics.gpu_seconds_per_image.observe(t.total_s / len(chunk))
            self.metrics.images.inc(len(chunk), tags={"model_source": self.cfg.model.label})
            peak = max(out.stage_peak_bytes.values(), default=0)
            stage_s = {"encode": t.encode_s, "denoise": t.denoise_s, "decode": t.decode_s}
            return [
                GenerationResult(
                    image=img,
                    seed=s.seed,
                    model_source=self.cfg.model.label,
                    replica=self.replica,
                    batch_size=len(chunk),
                    inference_s=t.total_s,
                    stage_s=stage_s,
                    peak_memory_bytes=peak,
                )
                for s, img in zip(chunk, out.images, strict=True)
            ]

        try:
            outcome = run_with_oom_split(
                specs, run_chunk, on_oom=self._after_oom, on_fail_alone=lambda s, exc: self._failed([s], exc)[0]
            )
        except Exception as exc:
            return self._failed(specs, exc)
        if outcome.largest_failed is not None:  # only OOMs of batches whose items all fit alone lower the cap
            self._lower_after_oom(outcome.largest_failed, max(outcome.sizes_run))
        if outcome.oom_splits:
            self.metrics.oom_splits.inc(outcome.oom_splits)
        return outcome.results

    def _after_oom(self) -> None:
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def _lower_after_oom(self, smallest_failed: int, largest_ok: int) -> None:
        st = self.state
        st.oom_splits += 1
        new_cap = max(1, min(largest_ok, smallest_failed - 1))
        st.oom_cap = new_cap if st.oom_cap is None else min(st.oom_cap, new_cap)
        before = st.effective_max_batch
        self._apply_batch_size()
        logger.warning(
            "CUDA OOM at batch %d: max batch size %d -> %d for the rest of this replica's life",
            smallest_failed,
            before,
            st.effective_max_batch,
        )

    def _failed(self, specs: list[GenerationSpec], exc: BaseException) -> list[GenerationResult]:
        kind = "oom" if is_oom(exc) else "internal"
        if kind == "internal" and "CUDA error" in str(exc):
            self.fatal = exc  # a sticky CUDA error poisons the context: fail health checks so Serve replaces us
        logger.error("generation failed for %d request(s) (%s): %s", len(specs), kind, exc)
        self.metrics.failures.inc(len(specs), tags={"reason": kind})
        return [
            GenerationResult(
                image=None,
                seed=s.seed,
                model_source=self.cfg.model.label,
                replica=self.replica,
                error=f"{type(exc).__name__}: {exc}",
                error_kind=kind,
            )
            for s in specs
        ]

    # ---- introspection -------------------------------------------------------------------------------------------
    def info(self) -> dict:
        uc = self.user_config
        return {
            "model_source": self.cfg.model.label,
            "random_weights": self.cfg.model.is_random,
            "replica": self.replica,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "gpu": {"name": self.gpu.name, "total_gb": round(self.gpu.total_gb, 2)} if self.gpu else None,
            "batching": {**self.state.as_dict(), "waiting_for_gpu": self.gate.waiting},
            "user_config": uc.model_dump(mode="json") if uc else None,
            "compile": self.cfg.compile,
            "compile_vae": self.cfg.compile and self.cfg.compile_vae,
            "fp8_dit": {"enabled": self.cfg.fp8_dit, "fp8_linear_layers": self.fp8_layers},
            "text_encoder": self.encoder_info,
            "ready_s": self.ready_s,
            "pid": os.getpid(),
        }

    def check_health(self) -> None:
        if self.fatal is not None:
            raise RuntimeError(f"replica unhealthy after CUDA error: {self.fatal}")


def _replica_name() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside Serve (unit tests, in-process baseline)
        return f"local-{os.getpid()}"
