"""The compile path the GPU service takes, checked on CPU with the tiny model (same classes, toy sizes).

The H100 speed of these levers is measured in `perf/levers.py` (bench/results/h100-levers/); what CI can check is
that they do not change the images: the real-arithmetic RoPE matches diffusers' complex multiply, and the compiled
DiT blocks + compiled VAE decoder (real torch.compile, Inductor's CPU backend) match eager within float tolerance
across batch sizes without recompiling per batch size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor

from deployments.config import MemoryMode, RandomArch, RequestLimits
from deployments.pipeline.compilation import compile_dit, second_warm_up_side
from deployments.pipeline.random_model import build_random_pipeline
from deployments.pipeline.real_rope import RealRopeAttnProcessor, rotate
from deployments.pipeline.runner import Shape, ZImageRunner

SHAPE = Shape(128, 128, 2)
PROMPTS = ["a red sports car on a mountain road", "a cat"]


def _complex_rotate(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """diffusers' formulation (ZSingleStreamAttnProcessor.apply_rotary_emb)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis.unsqueeze(2)).flatten(3).type_as(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_rope_matches_the_complex_multiply(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 4, 32, generator=gen).to(dtype)
    angles = torch.rand(2, 40, 16, generator=gen) * 6.28
    freqs = torch.polar(torch.ones_like(angles), angles)
    torch.testing.assert_close(
        rotate(x, freqs), _complex_rotate(x, freqs), rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-2
    )


def test_compiled_dit_and_vae_match_eager_for_every_batch_size(tmp_path, monkeypatch):
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(var, "")  # compile_dit sets them; restored after the test
        monkeypatch.delenv(var)
    pipe = build_random_pipeline(RandomArch.TINY, "cpu", torch.float32)
    runner = ZImageRunner(pipe)
    eager = {bs: runner.run(PROMPTS[:bs], list(range(bs)), SHAPE).images for bs in (1, 2)}
    assert any(
        isinstance(m.processor, ZSingleStreamAttnProcessor)
        for m in pipe.transformer.modules()
        if hasattr(m, "processor")
    )

    assert compile_dit(pipe, MemoryMode.GPU, str(tmp_path / "inductor"))
    assert getattr(pipe.vae.decoder, "_compiled_call_impl", None) is not None
    processors = [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")]
    assert processors and all(isinstance(p, RealRopeAttnProcessor) for p in processors)
    torch._dynamo.utils.counters.clear()
    for bs in (1, 2, 2):
        compiled = runner.run(PROMPTS[:bs], list(range(bs)), SHAPE).images
        for a, b in zip(compiled, eager[bs], strict=True):
            diff = np.abs(a.astype(int) - b.astype(int))
            assert diff.max() <= 2, f"bs {bs}: compiled image differs from eager by up to {diff.max()} levels"
    assert (tmp_path / "inductor").is_dir() and any((tmp_path / "inductor").iterdir()), "Inductor cache not written"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])


def test_compile_is_skipped_when_the_dit_is_streamed():
    pipe = build_random_pipeline(RandomArch.TINY, "cpu", torch.float32)
    assert not compile_dit(pipe, MemoryMode.GROUP_OFFLOAD, None)
    assert not any(isinstance(getattr(m, "processor", None), RealRopeAttnProcessor) for m in pipe.transformer.modules())


def test_compile_vae_false_leaves_the_decoder_eager():
    """`compile_vae: false` (shorter cold start) compiles the DiT blocks only."""
    pipe = build_random_pipeline(RandomArch.TINY, "cpu", torch.float32)
    assert compile_dit(pipe, MemoryMode.GPU, None, vae=False)
    assert getattr(pipe.vae.decoder, "_compiled_call_impl", None) is None
    assert any(getattr(m, "_compiled_call_impl", None) is not None for m in pipe.transformer.modules())


@pytest.mark.parametrize(
    ("min_side", "max_side", "seen", "expected"),
    [(256, 1024, 1024, 256), (512, 512, 512, None), (256, 1024, 256, 1024)],
)
def test_second_warm_up_size_differs_from_the_first_when_it_can(min_side, max_side, seen, expected):
    """The replica warms a second size at start so the decoder's dynamic-shape recompile is not paid by a request."""
    limits = RequestLimits(min_side=min_side, max_side=max_side)
    assert second_warm_up_side(limits, seen) == expected
