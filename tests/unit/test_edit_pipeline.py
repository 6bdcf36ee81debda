"""Edits on the tiny random model (CPU, no Ray): image-to-image and inpainting run diffusers' Z-Image edit pipelines
over the generation pipeline's own modules, keep each item's seed whatever the batch, and inpainting returns the
input's pixels outside the mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.config import AppConfig, MemoryMode, RandomArch
from deployments.messages import EditInput, GenerationSpec, LoraChoice
from deployments.pipeline.engine import ZImageEngine
from deployments.pipeline.random_model import build_random_pipeline
from deployments.pipeline.runner import Shape
from tests.batch_invariance import assert_same_image

SHAPE = Shape(64, 48, 8)


@pytest.fixture(scope="module")
def engine():
    tiny = lambda source, device, dtype: build_random_pipeline(RandomArch.TINY, device, dtype)  # noqa: E731
    eng = ZImageEngine(AppConfig(model="random:tiny"), tiny, "cpu", torch.float32, None)
    eng.load(MemoryMode.GPU, 4)
    return eng


def _input(seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (SHAPE.height, SHAPE.width, 3), dtype=np.uint8)


MASK = np.zeros((SHAPE.height, SHAPE.width), bool)
MASK[8:40, 16:48] = True  # repaint the middle


@pytest.mark.parametrize("mask", [None, MASK], ids=["img2img", "inpaint"])
def test_an_edit_is_the_same_alone_or_batched(engine, mask):
    edits = [EditInput(_input(i), mask, 0.75) for i in range(3)]
    prompts, seeds = ["a boat", "a tree", "a boat"], [11, 12, 13]
    batched = engine.run(prompts, seeds, SHAPE, edits).images
    for i in range(3):
        (alone,) = engine.run(prompts[i : i + 1], seeds[i : i + 1], SHAPE, edits[i : i + 1]).images
        assert_same_image(alone, batched[i])


def test_the_edit_pipelines_share_every_module_with_the_generation_pipeline(engine):
    edit = EditInput(_input(0), None, 0.5)
    engine.run(["x"], [0], SHAPE, [edit])
    engine.run(["x"], [0], SHAPE, [EditInput(_input(0), MASK, 1.0)])
    runner = engine.runner
    for edit_pipe in (runner._img2img, runner._inpaint):
        for name in ("transformer", "vae", "text_encoder"):
            assert getattr(edit_pipe, name) is getattr(runner.pipe, name)


def test_inpainting_keeps_the_input_outside_the_mask_and_repaints_inside(engine):
    src = _input(5)
    (out,) = engine.run(["a cat"], [3], SHAPE, [EditInput(src, MASK, 1.0)]).images
    assert np.array_equal(out[~MASK], src[~MASK])
    assert np.abs(out[MASK].astype(int) - src[MASK].astype(int)).mean() > 10


def test_strength_and_the_input_change_the_result(engine):
    src = _input(1)
    a = engine.run(["a cat"], [3], SHAPE, [EditInput(src, None, 0.5)]).images[0]
    b = engine.run(["a cat"], [3], SHAPE, [EditInput(src, None, 1.0)]).images[0]
    c = engine.run(["a cat"], [3], SHAPE, [EditInput(_input(2), None, 0.5)]).images[0]
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_batch_keys_separate_task_strength_and_adapters():
    def spec(**kw):
        return GenerationSpec(prompt="p", width=64, height=48, steps=8, seed=0, **kw)

    img = _input(0)
    keys = {
        spec().batch_key,
        spec(edit=EditInput(img, None, 0.5)).batch_key,
        spec(edit=EditInput(img, None, 0.6)).batch_key,
        spec(edit=EditInput(img, MASK, 0.5)).batch_key,
        spec(loras=(LoraChoice("ink", 1.0),)).batch_key,
        spec(loras=(LoraChoice("ink", 0.5),)).batch_key,
    }
    assert len(keys) == 6
    assert spec(edit=EditInput(img, None, 0.5)).batch_key == spec(edit=EditInput(_input(1), None, 0.5)).batch_key
