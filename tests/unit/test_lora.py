"""LoRA adapter slots on the tiny random DiT (CPU, no Ray): adapters made with peft and saved with diffusers'
`save_lora_weights` are read by the replica's loader and applied by copying into fixed slots. The reference for
"correct" is peft itself: the same adapter loaded the usual way (`load_lora_weights` + `set_adapters`) must give the
same image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.config import AppConfig, LoraAdapter, MemoryMode, RandomArch
from deployments.messages import LoraChoice
from deployments.pipeline.engine import ZImageEngine
from deployments.pipeline.lora import AdapterError
from deployments.pipeline.random_model import build_random_pipeline
from deployments.pipeline.runner import Shape, ZImageRunner
from tests.lora_adapters import save_tiny_adapter

SHAPE = Shape(64, 64, 4)


def _tiny(source, device, dtype):
    return build_random_pipeline(RandomArch.TINY, device, dtype)


def _engine(**lora) -> ZImageEngine:
    eng = ZImageEngine(AppConfig(model="random:tiny", lora=lora), _tiny, "cpu", torch.float32, None)
    eng.load(MemoryMode.GPU, 4)
    return eng


def _diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {
        "ink": save_tiny_adapter(root / "ink", seed=1),
        "film": save_tiny_adapter(root / "film", seed=2, rank=8, alpha=8, targets=("to_q", "to_v", "w1", "w2")),
        "big": save_tiny_adapter(root / "big", seed=3, rank=16),
        "embedder": save_tiny_adapter(root / "embedder", seed=4, targets=("mlp.0",)),
    }


def _peft_reference(adapters: dict, weights: dict[str, float]) -> np.ndarray:
    """The image diffusers + peft make with these adapters at these scales (no slots involved)."""
    pipe = _tiny(None, "cpu", torch.float32)
    for name in weights:
        pipe.load_lora_weights(str(adapters[name]), adapter_name=name)
    pipe.set_adapters(list(weights), list(weights.values()))
    return ZImageRunner(pipe).run(["a red fox"], [7], SHAPE).images[0]


@pytest.fixture(scope="module")
def engine(adapters):
    eng = _engine(max_rank=8)
    eng.adapters.sync({n: LoraAdapter(source=str(adapters[n])) for n in ("ink", "film", "big", "embedder")})
    return eng


def _image(engine, *choices: LoraChoice) -> np.ndarray:
    return engine.run(["a red fox"], [7], SHAPE, loras=tuple(choices)).images[0]


def test_slots_give_the_image_peft_gives(engine, adapters):
    assert _diff(_image(engine, LoraChoice("ink", 1.0)), _peft_reference(adapters, {"ink": 1.0})) <= 1
    assert _diff(_image(engine, LoraChoice("ink", 0.5)), _peft_reference(adapters, {"ink": 0.5})) <= 1
    both = _image(engine, LoraChoice("film", 0.7), LoraChoice("ink", 1.2))
    assert _diff(both, _peft_reference(adapters, {"film": 0.7, "ink": 1.2})) <= 1


def test_an_adapter_changes_the_image_and_scale_zero_is_the_base_model(engine):
    base = _image(engine)
    assert _diff(_image(engine, LoraChoice("ink", 1.0)), base) > 20
    assert _diff(_image(engine, LoraChoice("ink", 0.0)), base) == 0
    assert _diff(_image(engine), base) == 0  # switching back zeroes the slots exactly


def test_unchanged_adapter_sets_copy_nothing(engine):
    slots = engine.adapters.slots
    _image(engine, LoraChoice("ink", 1.0))
    before = slots.switches
    _image(engine, LoraChoice("ink", 1.0))
    assert slots.switches == before
    _image(engine, LoraChoice("ink", 0.9))
    assert slots.switches == before + 1


def test_adapters_that_cannot_fit_are_refused_with_the_reason_and_the_rest_serve(engine):
    rows = {r["name"]: r for r in engine.adapters.describe()}
    assert rows["ink"]["status"] == rows["film"]["status"] == "loaded"
    assert (
        rows["big"]["status"] == "failed" and "rank 16" in rows["big"]["error"] and "max_rank=8" in rows["big"]["error"]
    )
    assert rows["embedder"]["status"] == "failed" and "target_modules" in rows["embedder"]["error"]
    with pytest.raises(AdapterError, match="failed to load") as err:
        engine.adapters.resolve((LoraChoice("big", 1.0),))
    assert err.value.param == "lora[0].name"


def test_resolve_fills_default_scales_and_names_the_unknown_entry(engine):
    assert engine.adapters.resolve((LoraChoice("ink"),)) == (LoraChoice("ink", 1.0),)
    with pytest.raises(AdapterError, match="unknown LoRA adapter 'nope'") as err:
        engine.adapters.resolve((LoraChoice("ink", 1.0), LoraChoice("nope", 1.0)))
    assert err.value.param == "lora[1].name"


def test_live_sync_adds_changes_and_removes(adapters):
    eng = _engine()
    lib = eng.adapters
    lib.sync({"ink": LoraAdapter(source=str(adapters["ink"]))})
    first = lib.loaded["ink"]
    lib.sync({"ink": LoraAdapter(source=str(adapters["ink"])), "film": LoraAdapter(source=str(adapters["film"]))})
    assert lib.loaded["ink"] is first  # unchanged: not read again
    lib.sync({"ink": LoraAdapter(source=str(adapters["ink"]), scale=0.5)})
    assert lib.names() == ["ink"] and lib.loaded["ink"] is not first and lib.loaded["ink"].spec.scale == 0.5
    with pytest.raises(AdapterError, match="unknown"):
        lib.apply((LoraChoice("film", 1.0),))  # removed live after a request named it


def test_missing_source_is_reported(tmp_path):
    eng = _engine()
    eng.adapters.sync({"ghost": LoraAdapter(source=str(tmp_path / "nothing-here"))})
    (row,) = eng.adapters.describe()
    assert row["status"] == "failed" and "cannot read" in row["error"]


def test_without_lora_settings_adapters_are_refused():
    eng = ZImageEngine(AppConfig(model="random:tiny"), _tiny, "cpu", torch.float32, None)
    eng.load(MemoryMode.GPU, 4)
    with pytest.raises(ValueError, match="no `lora` settings"):
        eng.adapters.sync({"ink": LoraAdapter(source="/x")})
    with pytest.raises(AdapterError, match="serves no LoRA"):
        eng.adapters.apply((LoraChoice("ink", 1.0),))
