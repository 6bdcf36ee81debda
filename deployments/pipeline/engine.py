"""The model on one replica: load, place for the memory mode, quantize/compile, warm up, measure memory; then run
same-shape batches. The Serve deployment (deployments/generator.py) owns batching; this owns the GPU."""

from __future__ import annotations

import logging
import time

import torch

from deployments.batching.policy import MemoryClamp
from deployments.config import AppConfig, MemoryMode
from deployments.observability.gpu_info import GpuInfo
from deployments.pipeline.compilation import compile_dit, second_warm_up_side
from deployments.pipeline.fp8 import fp8_supported, quantize_dit_fp8
from deployments.pipeline.loading import PipelineFactory
from deployments.pipeline.memory_modes import place_pipeline
from deployments.pipeline.memory_probe import measure_memory_clamp
from deployments.pipeline.runner import BatchOutput, Shape, ZImageRunner
from deployments.pipeline.text_encoder_check import prepare_prompt_encoder

logger = logging.getLogger("ray.serve")


class ZImageEngine:
    def __init__(self, cfg: AppConfig, factory: PipelineFactory, device: str, dtype: torch.dtype, gpu: GpuInfo | None):
        self.cfg, self.factory, self.device, self.dtype, self.gpu = cfg, factory, device, dtype, gpu
        self.runner: ZImageRunner | None = None
        self.mode: MemoryMode | None = None
        self.fp8_layers = 0
        self.encoder_info: dict = {}
        self.ready_s: float | None = None
        self.memory_clamp: dict[str, MemoryClamp] = {}
        self.memory_cap: int | None = None
        self.vram_gb = gpu.total_gb if gpu else None
        self.emulated_vram_gb = cfg.testing.emulate_vram_gb if gpu else None
        if self.emulated_vram_gb:
            self._cap_allocator()

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"

    def _cap_allocator(self) -> None:
        """Cap torch's allocator so a big GPU behaves like a smaller card (tier, clamp and OOMs follow the cap)."""
        gb = self.emulated_vram_gb
        fraction = min(1.0, gb * 1e9 / self.gpu.total_bytes)
        torch.cuda.set_per_process_memory_fraction(fraction)
        self.vram_gb = gb
        logger.info("emulating a %.0f GB GPU: torch allocator capped at %.3f of %s", gb, fraction, self.gpu.name)

    def load(self, mode: MemoryMode, max_batch: int) -> None:
        """(Re)build the pipeline for `mode`; ready to serve when it returns."""
        start = time.perf_counter()
        self.runner = None
        if self.on_gpu:
            torch.cuda.empty_cache()
        # Random builds construct straight on the GPU when everything stays there; real weights load to CPU first.
        build_on = self.device if (mode is MemoryMode.GPU or self.cfg.model.is_random) else "cpu"
        if self.emulated_vram_gb and mode is not MemoryMode.GPU:
            torch.cuda.set_per_process_memory_fraction(1.0)  # emulation: build, then offload, then re-apply the cap
        pipe = self.factory(self.cfg.model, build_on, self.dtype)
        place_pipeline(pipe, mode, self.device)
        if self.emulated_vram_gb:
            self._cap_allocator()
        resident = mode is MemoryMode.GPU  # offload modes stream the text encoder through its own forward's hooks
        self.runner = ZImageRunner(
            pipe,
            batch_encode=self.on_gpu,
            encoder_shortcut=resident,
            encoder_cuda_graphs=resident and self.cfg.text_encoder_cuda_graphs,
        )
        self.mode = mode
        self.fp8_layers = self._quantize_fp8(pipe, mode) if self.cfg.fp8_dit else 0
        compiled = self.cfg.compile and self.on_gpu
        if compiled:
            compile_dit(pipe, mode, self.cfg.compile_cache_dir, vae=self.cfg.compile_vae)
        self.encoder_info = prepare_prompt_encoder(self.runner.prompt_encoder, pipe, max_batch)
        self._warm_up_and_measure()
        if compiled:
            self._warm_second_size()
        self.ready_s = time.perf_counter() - start
        logger.info(
            "%s ready on %s (%s%s) in %.1fs",
            self.cfg.model.label,
            self.device,
            self.dtype,
            f", memory mode {mode.value}" if self.on_gpu else "",
            self.ready_s,
        )

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

    def _warm_up_and_measure(self) -> None:
        """On a GPU the memory probe is the warm-up (it runs the largest size); elsewhere one default-size batch."""
        lim, d = self.cfg.limits, self.cfg.defaults
        if not self.on_gpu or not self.cfg.testing.measure_memory:
            self.memory_clamp, self.memory_cap = {}, None
            self.runner.run(["warm-up"], [0], Shape(d.width, d.height, 1))
            return
        what = f"{self.cfg.model.label} in mode {self.mode.value}"
        self.memory_clamp, self.memory_cap = measure_memory_clamp(
            self.runner, lim.max_side, self.cfg.memory_margin_gb, self.emulated_vram_gb, what
        )

    def _warm_second_size(self) -> None:
        """Compiled code first specializes to the one image size it has seen; the next size makes Dynamo recompile
        with dynamic height/width, once. Doing it here (one step at another allowed size) keeps that recompile out of
        the first request at a new size."""
        lim, d = self.cfg.limits, self.cfg.defaults
        side = second_warm_up_side(lim, seen=lim.max_side if self.cfg.testing.measure_memory else d.width)
        if side is None:
            return
        start = time.perf_counter()
        self.runner.run(["warm-up"], [0], Shape(side, side, 1))
        logger.info("warmed up a second image size (%dx%d) in %.1fs", side, side, time.perf_counter() - start)

    def run(self, prompts: list[str], seeds: list[int], shape: Shape) -> BatchOutput:
        return self.runner.run(prompts, seeds, shape)

    def release_cached_memory(self) -> None:
        """After an OOM: give the allocator's cached blocks back so the smaller retry can fit."""
        if self.on_gpu:
            torch.cuda.empty_cache()
