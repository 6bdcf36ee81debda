"""The model on one replica: load, place for the memory mode, quantize/compile, warm up, measure memory; then run
same-shape batches. The Serve deployment (deployments/generator.py) owns batching; this owns the GPU."""

from __future__ import annotations

import logging
import time

import torch

from deployments.batching.policy import AreaMemoryModel, MemoryClamp
from deployments.config import AppConfig, MemoryMode
from deployments.messages import EditInput, LoraChoice
from deployments.observability.gpu_info import GpuInfo
from deployments.pipeline.compilation import compile_dit, warm_up_shapes
from deployments.pipeline.fp8 import fp8_supported, quantize_dit_fp8
from deployments.pipeline.loading import PipelineFactory
from deployments.pipeline.lora import AdapterLibrary, LoraSlots
from deployments.pipeline.memory_modes import place_pipeline
from deployments.pipeline.memory_probe import (
    emulated_run_peaks,
    measure_area_memory,
    measure_memory_model,
    probe_sides,
)
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
        self.memory_cap: int | None = None  # at the largest allowed area
        self.memory_model: AreaMemoryModel | None = None  # per image area
        self.warm_up_info: dict = {}
        self.adapters = AdapterLibrary(None, None, device, dtype, cfg.lora)
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
        self.adapters = self._install_lora_slots(pipe, mode)
        self.fp8_layers = self._quantize_fp8(pipe, mode) if self.cfg.fp8_dit else 0
        compiled = self.cfg.compile and self.on_gpu
        if compiled:
            compile_dit(pipe, mode, self.cfg.compile_cache_dir, vae=self.cfg.compile_vae)
        self.encoder_info = prepare_prompt_encoder(self.runner.prompt_encoder, pipe, max_batch)
        seen = self._warm_up_and_measure()
        if compiled:
            self._warm_up_sizes(seen)
        self.ready_s = time.perf_counter() - start
        logger.info(
            "%s ready on %s (%s%s) in %.1fs",
            self.cfg.model.label,
            self.device,
            self.dtype,
            f", memory mode {mode.value}" if self.on_gpu else "",
            self.ready_s,
        )

    def _install_lora_slots(self, pipe, mode: MemoryMode) -> AdapterLibrary:
        """Adapter slots go in before FP8 (which then quantizes only the base layers) and compile (they are part of
        the graph). The library starts empty: the generator syncs it with user_config after every load."""
        settings = self.cfg.lora
        if settings is None:
            return AdapterLibrary(None, None, self.device, self.dtype, None)
        if mode is MemoryMode.GROUP_OFFLOAD:
            raise RuntimeError(
                "lora: adapter slots are not supported in memory mode group_offload (the DiT is streamed block by "
                "block); use a card of >= 16 GB or drop `lora`"
            )
        slots = LoraSlots.install(pipe.transformer, settings)
        dit = next(pipe.transformer.parameters())
        return AdapterLibrary(slots, type(pipe), dit.device, dit.dtype, settings)

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

    def _warm_up_and_measure(self) -> set[tuple[int, int]]:
        """On a GPU the memory probe is the warm-up (batch 1 and 2 at the largest and a small area); elsewhere one
        default-size batch. Returns the sizes that ran."""
        lim, d = self.cfg.limits, self.cfg.defaults
        what = f"{self.cfg.model.label} in mode {self.mode.value}"
        self.memory_clamp, self.memory_cap, self.memory_model = {}, None, None
        emulated = self.cfg.testing.emulate_memory
        if self.on_gpu and self.cfg.testing.measure_memory and emulated is None:
            model = measure_memory_model(self.runner, lim, self.cfg.memory_margin_gb, self.emulated_vram_gb, what)
            self._set_memory_model(model)
            return {(s, s) for s in probe_sides(lim)}
        self.runner.run(["warm-up"], [0], Shape(d.width, d.height, 1))
        if emulated is not None:  # tests: the per-area cap from a linear memory model, nothing measured
            self._set_memory_model(measure_area_memory(emulated_run_peaks(emulated), lim, emulated.budget_bytes, what))
        return {(d.width, d.height)}

    def _set_memory_model(self, model: AreaMemoryModel) -> None:
        self.memory_model = model
        self.memory_clamp = dict(model.large)
        self.memory_cap = model.max_batch(model.large_area)

    def _warm_up_sizes(self, seen: set[tuple[int, int]]) -> None:
        """Compiled code specializes to the sizes it has seen; a new size makes Dynamo recompile (the VAE decoder at
        least once, with dynamic height/width). Running each size of `warm_up_sizes` once here (batch 1, 1 step)
        keeps those compiles out of the requests."""
        shapes = warm_up_shapes(self.cfg.warm_up_sizes, self.cfg.limits, seen)
        start = time.perf_counter()
        per_size = {}
        for w, h in shapes:
            t0 = time.perf_counter()
            self.runner.run(["warm-up"], [0], Shape(w, h, 1))
            per_size[f"{w}x{h}"] = round(time.perf_counter() - t0, 3)
        total = time.perf_counter() - start
        self.warm_up_info = {"setting": self.cfg.warm_up_sizes, "seconds": round(total, 2), "per_size_s": per_size}
        logger.info("warmed up %d image sizes in %.1fs: %s", len(shapes), total, per_size)

    def run(
        self,
        prompts: list[str],
        seeds: list[int],
        shape: Shape,
        edits: list[EditInput] | None = None,
        loras: tuple[LoraChoice, ...] = (),
    ) -> BatchOutput:
        """One batch: same shape, task, strength and adapter set (deployments/messages.py `batch_key`)."""
        self.adapters.apply(loras)
        return self.runner.run(prompts, seeds, shape, edits)

    def release_cached_memory(self) -> None:
        """After an OOM: give the allocator's cached blocks back so the smaller retry can fit."""
        if self.on_gpu:
            torch.cuda.empty_cache()
