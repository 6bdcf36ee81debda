"""GPU deployment: a thin Serve shell over one `ZImageEngine` per replica, behind `@serve.batch`.

The batch size starts from the VRAM tier (user_config), is capped by a measurement at the largest allowed resolution,
and drops for good after a CUDA OOM (the batch is split and retried, so no request that would succeed alone fails).
GPU work runs in a single worker thread so the replica's event loop keeps queueing the next batch and answering
health checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from deployments.autoscaling import S_PER_IMAGE, backlog_seconds_per_image
from deployments.batching.efficiency import EfficiencyModel, label, shape_key
from deployments.batching.executor import GroupExecutor, gap_summary
from deployments.batching.gate import BatchGate, Place
from deployments.batching.policy import BatchingState, group_by_shape, select_tier
from deployments.config import AppConfig, GeneratorUserConfig, MemoryMode
from deployments.messages import GenerationResult, GenerationSpec
from deployments.observability.gpu_info import probe_gpu
from deployments.observability.metrics import GeneratorMetrics
from deployments.observability.replica import replica_id
from deployments.observability.replica_gpu_metrics import start_replica_gpu_metrics
from deployments.pipeline.compilation import compiled_graphs
from deployments.pipeline.devices import resolve_device, resolve_dtype
from deployments.pipeline.engine import ZImageEngine
from deployments.pipeline.loading import PipelineFactory, load_pipeline
from deployments.pipeline.lora import AdapterError
from deployments.presets import shown_shapes

logger = logging.getLogger("ray.serve")


class ZImageGenerator:
    def __init__(self, app_config: dict, pipeline_factory: PipelineFactory | None = None):
        self.cfg = AppConfig.model_validate(app_config)
        device = resolve_device(self.cfg.device)
        gpu = probe_gpu() if device == "cuda" else None
        self.engine = ZImageEngine(
            self.cfg, pipeline_factory or load_pipeline, device, resolve_dtype(self.cfg.dtype, device), gpu
        )
        self.replica = replica_id()
        self.metrics = GeneratorMetrics()
        self.state = BatchingState(
            vram_gb=self.engine.vram_gb,
            emulated=bool(self.engine.emulated_vram_gb),
            min_area=self.cfg.limits.min_area,
            shown_shapes=shown_shapes(self.cfg),
        )
        self.efficiency = EfficiencyModel()  # seconds per image by shape and batch size, from the batches run
        self.executor = GroupExecutor(
            self.engine,
            self.metrics,
            self.replica,
            self._lower_after_oom,
            self.state.max_batch_for,
            on_batch=self._observed_batch,
            work_waiting=lambda: self.gate.waiting > 0,
        )
        self.gate = BatchGate(  # one shape per batch, formed when the GPU is free (deployments/batching/gate.py)
            self._plan_batch,
            lambda: self.state.batch_wait_timeout_s,
            lambda n: self.metrics.gate_waiting.set(n),
        )
        self.user_config: GeneratorUserConfig | None = None
        self.gpu_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zimage-gpu")
        self.gpu_sampler = start_replica_gpu_metrics() if gpu is not None else None

    # ---- configuration (Serve calls this with user_config, at start and live) ------------------------------------
    def reconfigure(self, user_config: dict) -> None:
        uc = GeneratorUserConfig.model_validate(user_config or {})
        st = self.state
        if self.engine.on_gpu:
            st.tier = select_tier(st.vram_gb, uc.tiers)
            mode = uc.memory_mode if uc.memory_mode is not MemoryMode.AUTO else st.tier.memory_mode
            desired = uc.max_batch_size or st.tier.max_batch_size
        else:  # memory modes place weights on a GPU; on a CPU replica there is none to report
            st.tier, mode = None, MemoryMode.GPU
            desired = uc.max_batch_size or uc.cpu_max_batch_size
        if self.engine.runner is None or mode is not self.engine.mode:
            self.engine.load(mode, desired)
            st.memory_mode = mode if self.engine.on_gpu else None
            st.clamp, st.memory_cap = self.engine.memory_clamp, self.engine.memory_cap
            st.memory_model = self.engine.memory_model
            self.metrics.set_memory_mode(st.memory_mode)
        self.engine.adapters.sync(uc.loras)  # live: new adapters read, removed ones dropped, the rest untouched
        st.desired_max_batch = desired
        st.batch_wait_timeout_s = uc.batch_wait_timeout_s
        self.user_config = uc
        self._apply_batch_size()
        self.generate_batch.set_batch_wait_timeout_s(uc.batch_wait_timeout_s)
        logger.info(
            "batching: vram=%s GB%s tier=%s mode=%s desired=%d memory_cap=%s (largest area) oom_cap=%s"
            " -> max_batch_size=%d (smallest area) wait=%.3fs; per shape %s",
            f"{st.vram_gb:.1f}" if st.vram_gb else "n/a (cpu)",
            " (emulated)" if st.emulated else "",
            st.tier.max_vram_gb if st.tier else None,
            st.memory_mode.value if st.memory_mode else "n/a (cpu)",
            desired,
            st.memory_cap,
            st.oom_cap,
            st.effective_max_batch,
            uc.batch_wait_timeout_s,
            st.max_batch_by_shape(),
        )

    def _apply_batch_size(self) -> None:
        size = self.state.update_effective()
        self.generate_batch.set_max_batch_size(size)
        self.metrics.max_batch_size.set(size)
        self.metrics.tier_vram_gb.set(self.state.vram_gb or 0.0)
        for shape, cap in self.state.max_batch_by_shape().items():
            self.metrics.max_batch_by_shape.set(cap, tags={"shape": shape})

    def _plan_batch(self, key: tuple, queued: int) -> int:
        """The next batch: `queued` requests of batch key `key` wait; the policy picks how many go (at most the
        shape's memory/OOM cap), and Serve's batch is sized to close the moment they are in."""
        uc = self.user_config or GeneratorUserConfig()
        cap = self.state.max_batch_for(key[1] * key[2])
        decision = self.efficiency.choose(shape_key(key), queued, cap, uc.batch_policy, uc.batch_efficiency_tolerance)
        self.generate_batch.set_max_batch_size(decision.batch)
        self.metrics.planned_batch.set(decision.batch, tags={"shape": label(shape_key(key))})
        return decision.batch

    def _observed_batch(self, key: tuple, size: int, seconds: float) -> None:
        """A pipeline call ran (GPU thread): the shape's efficiency curve learns its seconds per image."""
        shape = shape_key(key)
        self.efficiency.observe(shape, size, seconds)
        per_image = self.efficiency.curves[shape].s_per_image[size]
        self.metrics.seconds_per_image_by_batch.set(per_image, tags={"shape": label(shape), "batch_size": str(size)})

    def _lower_after_oom(self, smallest_failed: int, largest_ok: int, area: int | None = None) -> None:
        """A batch of `smallest_failed` images of `area` pixels each ran out of memory: that area (and every larger
        one) never batches that many again; smaller areas keep their caps. `area` None: every area."""
        st = self.state
        st.oom_splits += 1
        area = st.min_area if area is None else area
        before = st.max_batch_for(area)
        st.lower_after_oom(area, smallest_failed, largest_ok)
        self._apply_batch_size()
        logger.warning(
            "CUDA OOM at batch %d of %d px images: max batch for that area (and larger) %d -> %d for the rest of this"
            " replica's life",
            smallest_failed,
            area,
            before,
            st.max_batch_for(area),
        )

    # ---- requests ------------------------------------------------------------------------------------------------
    async def generate(self, spec: GenerationSpec) -> GenerationResult:
        if self.engine.runner is None:
            self.reconfigure({})
        if spec.loras:
            try:  # names checked here, before the queue; scales None -> the adapter's default
                spec = dataclasses.replace(spec, loras=self.engine.adapters.resolve(spec.loras))
            except AdapterError as exc:
                return self.executor.invalid(spec, exc)
        arrival = time.perf_counter()
        async with self.gate.slot(spec.batch_key) as place:  # joins a batch of its own key, only while the GPU is free
            return await self.generate_batch((spec, arrival, place))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def generate_batch(self, items: list[tuple[GenerationSpec, float, Place]]) -> list[GenerationResult]:
        batch_start = time.perf_counter()
        specs = [spec for spec, _, _ in items]
        results: list[GenerationResult | None] = [None] * len(items)
        loop = asyncio.get_running_loop()
        for _, idxs in group_by_shape(specs, lambda s: s.batch_key).items():
            group = [specs[i] for i in idxs]
            group_results = await loop.run_in_executor(self.gpu_thread, self.executor.run_group, group)
            for i, res in zip(idxs, group_results, strict=True):
                res.queue_wait_s = batch_start - items[i][1]
                self.metrics.queue_wait.observe(res.queue_wait_s)
                results[i] = res
        for _, _, place in items:  # the GPU is free: the next batch is admitted while these answers go back
            place.release()
        return results

    # ---- introspection -------------------------------------------------------------------------------------------
    def adapters(self) -> list[dict]:
        """LoRA adapters of this replica: name, source, default scale, rank, status (`loaded` or `failed` + error)."""
        return self.engine.adapters.describe()

    def info(self) -> dict:
        uc, eng = self.user_config, self.engine
        return {
            "model_source": self.cfg.model.label,
            "random_weights": self.cfg.model.is_random,
            "replica": self.replica,
            "device": eng.device,
            "dtype": str(eng.dtype).removeprefix("torch."),
            "gpu": {"name": eng.gpu.name, "total_gb": round(eng.gpu.total_gb, 2)} if eng.gpu else None,
            "batching": {
                **self.state.as_dict(),
                "policy": (uc or GeneratorUserConfig()).batch_policy.value,
                "waiting_for_gpu": self.gate.waiting,
                "waiting_by_shape": {label(shape_key(k)): n for k, n in self.gate.waiting_by_key().items()},
                "efficiency": self.efficiency.as_dict(),
                "gpu_idle_gaps_while_waiting": gap_summary(self.executor.idle_gaps_s),
            },
            "user_config": uc.model_dump(mode="json") if uc else None,
            "compile": self.cfg.compile and eng.on_gpu,
            "compiled_graphs": compiled_graphs(),
            "compile_vae": self.cfg.compile and self.cfg.compile_vae and eng.on_gpu,
            "fp8_dit": {"enabled": self.cfg.fp8_dit, "fp8_linear_layers": eng.fp8_layers},
            "text_encoder": eng.encoder_info,
            "warm_up": eng.warm_up_info,
            "lora": {
                "settings": self.cfg.lora.model_dump(mode="json") if self.cfg.lora else None,
                "adapters": self.adapters(),
                "slot_switches": eng.adapters.slots.switches if eng.adapters.slots else 0,
            },
            "ready_s": eng.ready_s,
            "pid": os.getpid(),
        }

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's autoscaling metric (deployments/autoscaling.py): the learnt GPU seconds per image of this replica's
        backlog, which turns Serve's ongoing-request count into a queue wait. Async: it reads the gate on its loop."""
        waiting = [(label(shape_key(key)), n) for key, n in self.gate.waiting_by_key().items()]
        return {S_PER_IMAGE: backlog_seconds_per_image(self.efficiency.as_dict(), waiting)}

    def check_health(self) -> None:
        if self.executor.fatal is not None:
            raise RuntimeError(f"replica unhealthy after CUDA error: {self.executor.fatal}")
