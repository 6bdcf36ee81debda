"""Batch caps per image area (deployments/batching/policy.py AreaMemoryModel, BatchingState; batching/executor.py;
pipeline/memory_probe.py) and the start-up warm-up size selection (pipeline/compilation.py warm_up_shapes). No Ray,
no model: a stub engine whose memory is a line in (batch x pixels)."""

from __future__ import annotations

from types import SimpleNamespace
from unittest.mock import MagicMock

import numpy as np
import pytest
import torch

from deployments.batching.executor import GroupExecutor
from deployments.batching.policy import AreaMemoryModel, BatchingState, MemoryClamp, oom_cap_for_area
from deployments.config import RequestLimits
from deployments.messages import GenerationSpec
from deployments.options import EmulatedMemory
from deployments.pipeline.compilation import warm_up_shapes
from deployments.pipeline.lora import AdapterLibrary
from deployments.pipeline.memory_probe import emulated_run_peaks, measure_area_memory, probe_sides
from deployments.pipeline.runner import BatchOutput
from deployments.presets import PRESETS

GB = 10**9
LIMITS = RequestLimits()  # production: sides 256..2048, 2048^2 pixels


def _model_24gb() -> AreaMemoryModel:
    """A 24 GB-like card: at 512^2 batch 1 peaks at 14 GB (+0.4 GB per image); at 2048^2 at 20 GB (+6 GB per image)."""
    budget = 23 * GB
    small = {"denoise": MemoryClamp(14 * GB, int(14.4 * GB), budget)}
    large = {"denoise": MemoryClamp(20 * GB, 26 * GB, budget)}
    return AreaMemoryModel(512**2, 2048**2, small, large)


def test_area_model_caps_large_images_and_lets_small_ones_batch():
    m = _model_24gb()
    assert m.max_batch(2048**2) == 1  # 20 + 6 > 23
    assert m.max_batch(512**2) == 1 + int((23 - 14) / 0.4)  # 23
    assert m.max_batch(256**2) >= m.max_batch(512**2)
    caps = [m.max_batch(a) for a in sorted({p.area for p in PRESETS})]
    assert caps == sorted(caps, reverse=True)  # more pixels, never a larger batch
    for area in (256**2, 1024**2, 1536**2, 2048**2):
        assert m.predicted_peak(area, m.max_batch(area)) <= 23 * GB


def test_area_model_from_one_measured_area_uses_that_line():
    clamp = {"decode": MemoryClamp(10 * GB, 12 * GB, 20 * GB)}
    m = AreaMemoryModel(1024**2, 1024**2, clamp, clamp)
    assert m.max_batch(1024**2) == clamp["decode"].max_batch == 6


def test_shape_cap_is_min_of_tier_memory_and_oom_for_its_area():
    st = BatchingState(desired_max_batch=12, memory_model=_model_24gb(), min_area=256**2, shown_shapes=((512, 512),))
    assert st.max_batch_for(512**2) == 12  # tier wins for small images
    assert st.max_batch_for(2048**2) == 1  # memory wins at 2048^2
    assert st.update_effective() == 12  # @serve.batch collects the smallest area's batch
    st.lower_after_oom(1024**2, smallest_failed=4, largest_ok=2)
    assert st.max_batch_for(1024**2) == 2 and st.max_batch_for(1536**2) <= 2  # that area and larger
    assert st.max_batch_for(512**2) == 12 and st.update_effective() == 12  # smaller areas keep their caps
    assert st.oom_caps == {1024**2: 2} and st.oom_cap == 2
    assert st.as_dict()["max_batch_by_shape"] == {"512x512": 12}


def test_oom_cap_for_area_bounds_larger_areas_only():
    caps = {100: 8, 400: 3}
    assert [oom_cap_for_area(caps, a) for a in (50, 100, 200, 400, 900)] == [None, 8, 8, 3, 3]


# ---- the executor: a same-shape group never runs above its shape's cap ----------------------------------------------
class StubEngine:
    """Records pipeline calls; runs out of memory when batch x pixels exceeds `oom_above_pixels`."""

    def __init__(self, oom_above_pixels: int | None = None):
        self.calls: list[tuple[int, int, int]] = []
        self.oom_above_pixels = oom_above_pixels
        self.cfg = SimpleNamespace(model=SimpleNamespace(label="stub"))
        self.adapters = AdapterLibrary(None, None, "cpu", None, None)  # no LoRA slots

    def run(self, prompts, seeds, shape, edits=None, loras=()):
        self.calls.append((len(prompts), shape.width, shape.height))
        if self.oom_above_pixels and len(prompts) * shape.width * shape.height > self.oom_above_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory (stub)")
        img = np.zeros((1, 1, 3), np.uint8)
        return BatchOutput(images=[img] * len(prompts))

    def release_cached_memory(self):
        pass


def _specs(n: int, side: int) -> list[GenerationSpec]:
    return [GenerationSpec(prompt="p", width=side, height=side, steps=1, seed=i, request_id=str(i)) for i in range(n)]


def _executor(engine, st: BatchingState) -> GroupExecutor:
    return GroupExecutor(
        engine,
        MagicMock(),
        "r",
        lambda failed, ok, area: st.lower_after_oom(area, failed, ok),
        st.max_batch_for,
    )


def test_a_2048_group_is_split_into_chunks_of_its_cap():
    st = BatchingState(desired_max_batch=12, memory_model=_model_24gb(), min_area=256**2)
    engine = StubEngine()
    results = _executor(engine, st).run_group(_specs(5, 2048))
    assert [r.seed for r in results] == [0, 1, 2, 3, 4] and all(r.error is None for r in results)
    assert [c[0] for c in engine.calls] == [1, 1, 1, 1, 1]
    engine.calls.clear()
    _executor(engine, st).run_group(_specs(12, 512))
    assert [c[0] for c in engine.calls] == [12]  # small images still batch to the tier


def test_an_oom_at_one_area_lowers_that_area_only():
    st = BatchingState(desired_max_batch=8, min_area=256**2)
    engine = StubEngine(oom_above_pixels=2 * 512**2)  # 512^2: 2 fit, 4 do not; 256^2: 8 fit
    ex = _executor(engine, st)
    assert all(r.error is None for r in ex.run_group(_specs(4, 512)))
    assert st.max_batch_for(512**2) == 2 and st.oom_caps == {512**2: 2}
    engine.calls.clear()
    assert all(r.error is None for r in ex.run_group(_specs(8, 256)))
    assert engine.calls == [(8, 256, 256)]  # 256^2 kept its cap: one call of 8
    engine.calls.clear()
    ex.run_group(_specs(5, 512))
    assert [c[0] for c in engine.calls] == [2, 2, 1]  # 512^2 now runs in chunks of its cap, no OOM


# ---- the start-up measurement -------------------------------------------------------------------------------------
def test_probe_measures_the_largest_square_and_512():
    assert probe_sides(LIMITS) == (512, 2048)
    assert probe_sides(RequestLimits(max_pixels=1536**2)) == (512, 1536)
    assert probe_sides(RequestLimits(max_side=512)) == (256, 512)
    assert probe_sides(RequestLimits(min_side=512, max_side=512)) == (512, 512)


def test_measure_area_memory_from_a_linear_memory_gives_the_exact_caps():
    mem = EmulatedMemory(fixed_bytes=4 * GB, bytes_per_pixel=1000, budget_bytes=20 * GB)
    model = measure_area_memory(emulated_run_peaks(mem), LIMITS, mem.budget_bytes, "test")
    for side in (256, 512, 1024, 1536, 2048):
        exact = (mem.budget_bytes - mem.fixed_bytes) // (side * side * 1000)
        assert model.max_batch(side * side) == max(1, exact), side


def test_measure_area_memory_caps_at_1_when_batch_2_runs_out_and_fails_when_batch_1_does():
    def run(batch, shape):
        if batch * shape.width * shape.height > 2048**2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"denoise": batch * shape.width * shape.height}

    model = measure_area_memory(run, LIMITS, 2048**2, "test")
    assert model.max_batch(2048**2) == 1 and model.max_batch(512**2) > 1
    with pytest.raises(RuntimeError, match="max_pixels"):
        measure_area_memory(lambda b, s: run(b * 2, s), LIMITS, 2048**2, "test")


def test_when_batch_2_runs_out_at_the_largest_area_a_middle_one_is_measured_so_mid_sizes_still_batch():
    """A 16 GB-like card: batch 1 at 2048² fits, batch 2 does not. A line from 512² to that OOM would cap 1024² at 1
    too; the probe measures 1024² and batches up to it from the 512²-1024² line, and runs larger areas alone."""
    budget = 15 * GB

    def run(batch, shape):
        peak = 12 * GB + batch * shape.width * shape.height * 500
        if peak > budget:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"denoise": peak}

    calls = []
    model = measure_area_memory(lambda b, s: calls.append((b, s.width)) or run(b, s), LIMITS, budget, "test")
    assert calls == [(1, 2048), (2, 2048), (1, 512), (2, 512), (1, 1024), (2, 1024)]
    exact_1024 = (budget - 12 * GB) // (1024**2 * 500)  # 5
    assert model.max_batch(1024**2) == exact_1024 and model.max_batch(512**2) == (budget - 12 * GB) // (512**2 * 500)
    assert model.max_batch(1024 * 1040) == 1 and model.max_batch(2048**2) == 1  # above the middle: alone
    assert model.as_dict()["batch_1_above_area"] == 1024**2
    for area in (256**2, 512**2, 768**2, 1024**2):  # never above the budget where it batches
        assert 12 * GB + model.max_batch(area) * area * 500 <= budget


# ---- warm-up sizes -------------------------------------------------------------------------------------------------
def test_warm_up_presets_within_limits_without_those_already_run():
    seen = {(512, 512), (2048, 2048)}
    shapes = warm_up_shapes("presets", LIMITS, seen)
    assert len(shapes) == 33 and set(shapes) == {(p.width, p.height) for p in PRESETS}
    small = RequestLimits(max_pixels=1280**2)
    assert all(w * h <= 1280**2 for w, h in warm_up_shapes("presets", small, seen))
    assert (1024, 1024) not in warm_up_shapes("presets", LIMITS, {(1024, 1024)})


def test_warm_up_a_list_none_and_the_second_size_fallback():
    assert warm_up_shapes(["832x1248", "1024x1024", "832x1248"], LIMITS, {(1024, 1024)}) == [(832, 1248)]
    assert warm_up_shapes("none", LIMITS, {(512, 512), (2048, 2048)}) == []  # two sizes ran: decoder is dynamic
    assert warm_up_shapes("none", LIMITS, {(2048, 2048)}) == [(256, 256)]  # one size ran: one more, the smallest
    assert warm_up_shapes("presets", RequestLimits(max_side=512), {(512, 512)}) == [(256, 256)]  # no preset fits


# ---- the engine's start-up sequence on a "GPU" (stub runner; the measurement and the warm-up order are real) --------
def test_gpu_start_up_measures_two_areas_then_warms_every_other_preset(monkeypatch):
    from deployments.config import AppConfig, MemoryMode
    from deployments.pipeline import engine as engine_mod

    class Runner:
        def __init__(self):
            self.shapes = []

        def run(self, prompts, seeds, shape, edits=None):
            self.shapes.append((len(prompts), shape.width, shape.height, shape.steps))
            n = len(prompts) * shape.width * shape.height
            return BatchOutput(images=[], stage_peak_bytes={"denoise": 10 * GB + n * 1000})

    def fake_measure(runner, limits, margin_gb, emulated, what):  # the GPU path minus torch.cuda
        run = lambda b, s: runner.run(["w"] * b, list(range(b)), s).stage_peak_bytes  # noqa: E731
        return measure_area_memory(run, limits, 139 * GB, what)

    monkeypatch.setattr(engine_mod, "measure_memory_model", fake_measure)
    cfg = AppConfig(compile=True)  # production-like limits: 2048 a side, 2048^2 pixels; warm_up_sizes: presets
    eng = engine_mod.ZImageEngine(cfg, None, "cuda", torch.bfloat16, None)
    eng.runner, eng.mode = Runner(), MemoryMode.GPU
    seen = eng._warm_up_and_measure()
    eng._warm_up_sizes(seen)
    probe = eng.runner.shapes[:4]
    assert probe == [(1, 2048, 2048, 2), (2, 2048, 2048, 2), (1, 512, 512, 2), (2, 512, 512, 2)]
    warmed = eng.runner.shapes[4:]
    assert all(b == 1 and steps == 1 for b, _, _, steps in warmed)
    assert {(w, h) for _, w, h, _ in warmed} == {(p.width, p.height) for p in PRESETS}
    assert eng.memory_cap == eng.memory_model.max_batch(2048**2) == 1 + (129 * GB - 2048**2 * 1000) // (2048**2 * 1000)
    assert len(eng.warm_up_info["per_size_s"]) == 33
