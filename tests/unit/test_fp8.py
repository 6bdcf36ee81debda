"""The opt-in FP8 DiT (`fp8_dit`), checked on CPU: PyTorch runs `torch._scaled_mm` on CPUs too, so the quantization,
the layer swap and the compiled FP8 DiT are the real code; only the speed needs the H100 (perf/levers.py,
bench/results/h100-levers/run6*). The tiny model's layers are below the production size threshold, so the tests lower
it (`min_features`) to swap them.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from deployments.config import AppConfig, MemoryMode, RandomArch
from deployments.generator import ZImageGenerator
from deployments.pipeline import fp8
from deployments.pipeline.compilation import compile_dit
from deployments.pipeline.fp8 import Float8RowwiseLinear, fp8_supported, quantize_dit_fp8, quantize_rows
from deployments.pipeline.random_model import build_random_pipeline
from deployments.pipeline.runner import Shape, ZImageRunner
from tests.serve_harness import tiny_config


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_rows_round_trip_within_e4m3_precision_and_zero_rows_stay_finite():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=gen) * torch.logspace(-3, 3, 64).unsqueeze(1)  # rows of very different scale
    x[5] = 0.0  # a zero pad-token row: abs-max 0 would give 0/0 = NaN without the floor
    values, scale = quantize_rows(x)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    back = values.float() * scale
    assert torch.isfinite(back).all() and (back[5] == 0).all()
    # e4m3 keeps 3 mantissa bits: per-element relative error <= 2^-4 for values in the normal range
    big = x.abs() > x.abs().amax(dim=1, keepdim=True) / 64
    assert ((back - x).abs()[big] <= x.abs()[big] * 2**-4 + 1e-12).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_matches_the_linear_it_replaces(dtype):
    gen = torch.Generator().manual_seed(1)
    linear = nn.Linear(256, 128, bias=True).to(dtype)
    x = torch.randn(2, 48, 256, generator=gen).to(dtype)
    layer = Float8RowwiseLinear(linear)
    assert layer.weight_fp8.dtype == torch.float8_e4m3fn and layer.weight_fp8.shape == (128, 256)
    out = layer(x)
    assert out.shape == (2, 48, 128) and out.dtype == dtype
    assert _rel_err(out, linear(x)) < 0.05  # FP8 rounding of both operands, averaged over K=256 products


def test_only_big_well_shaped_linears_are_swapped():
    model = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 1024), nn.Linear(256, 1024), nn.Linear(1024, 1000))
    assert quantize_dit_fp8(model) == 2
    assert [type(m).__name__ for m in model] == ["Float8RowwiseLinear", "Float8RowwiseLinear", "Linear", "Linear"]


def test_tiny_dit_in_fp8_stays_close_to_the_original_and_compiles(tmp_path, monkeypatch):
    """The swapped DiT through the runner (encode -> 2 steps -> decode), eager and then compiled the way the service
    compiles it; images compared with the original model's on the same seeds."""
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    shape, prompts = Shape(128, 128, 2), ["a red sports car on a mountain road", "a cat"]
    pipe = build_random_pipeline(RandomArch.TINY, "cpu", torch.float32)
    runner = ZImageRunner(pipe)
    embeds = runner.encode(prompts)
    reference = runner.denoise(embeds, shape, [0, 1])

    assert quantize_dit_fp8(pipe.transformer) == 0  # toy sizes are below the production threshold
    swapped = quantize_dit_fp8(pipe.transformer, min_features=16)
    assert swapped == sum(isinstance(m, Float8RowwiseLinear) for m in pipe.transformer.modules()) > 0
    eager_fp8 = runner.denoise(embeds, shape, [0, 1])
    assert torch.isfinite(eager_fp8).all()
    assert 0 < _rel_err(eager_fp8, reference) < 0.05  # differs (it is FP8), but only by rounding

    assert compile_dit(pipe, MemoryMode.GPU, str(tmp_path / "inductor"), vae=False)
    compiled_fp8 = runner.denoise(embeds, shape, [0, 1])
    torch.testing.assert_close(compiled_fp8, eager_fp8, rtol=0, atol=2e-2)


def test_fp8_needs_compile_and_says_so():
    with pytest.raises(ValidationError, match="fp8_dit needs compile"):
        AppConfig(model="random:tiny", fp8_dit=True, compile=False)
    assert AppConfig(model="random:tiny", fp8_dit=True, compile=True).fp8_dit


@pytest.mark.parametrize(("capability", "ok"), [((8, 0), False), ((8, 6), False), ((8, 9), True), ((9, 0), True)])
def test_fp8_is_refused_on_gpus_without_fp8_tensor_cores(monkeypatch, capability, ok):
    monkeypatch.setattr(fp8.torch.cuda, "get_device_capability", lambda device=None: capability)
    assert fp8_supported("cuda") is ok
    assert fp8_supported("cpu")


def test_generator_quantizes_before_serving_and_reports_it(monkeypatch):
    """A real ZImageGenerator outside Serve (CPU: compile is GPU-only, FP8 is not): /info reports the swap and
    generation runs through the FP8 layers."""
    monkeypatch.setattr(fp8, "MIN_FEATURES", 16)  # toy sizes
    gen = ZImageGenerator(tiny_config(compile=True, fp8_dit=True).model_dump(mode="json"))
    gen.reconfigure({})
    info = gen.info()["fp8_dit"]
    layers = sum(isinstance(m, Float8RowwiseLinear) for m in gen.engine.runner.pipe.transformer.modules())
    assert info == {"enabled": True, "fp8_linear_layers": layers} and layers > 0
    out = gen.engine.runner.run(["a cat"], [0], Shape(128, 128, 2))
    assert out.images[0].shape == (128, 128, 3)


def test_generator_refuses_fp8_on_a_gpu_without_fp8_tensor_cores(monkeypatch):
    monkeypatch.setattr(fp8.torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    gen = ZImageGenerator(tiny_config(compile=True, fp8_dit=True).model_dump(mode="json"))
    gen.engine.device = "cuda"  # what the replica would resolve on an A100
    pipe = build_random_pipeline(RandomArch.TINY, "cpu", torch.float32)
    with pytest.raises(RuntimeError, match=r"fp8_dit needs FP8 tensor cores .*\(8, 0\)"):
        gen.engine._quantize_fp8(pipe, MemoryMode.GPU)
    assert gen.engine._quantize_fp8(pipe, MemoryMode.GROUP_OFFLOAD) == 0  # streamed DiT is not compiled: FP8 skipped
