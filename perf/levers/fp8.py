"""FP8 (e4m3, per-row scales) for the DiT's big linear layers.

`fp8` is the service's opt-in FP8 (deployments.pipeline.fp8, `fp8_dit`). The `torchao_*` levers are the experiment it
replaced: torchao's FP8 tensor subclasses, same scheme. Their weights took 164 s to compile at batch 1 and did not
finish the batched graph in 8 minutes on an H100, which is why the service quantizes to plain fp8 buffers instead.
Small or odd-sized layers (adaLN's 256-wide input, the final projection) stay bf16 in both.
"""

from __future__ import annotations

import logging
import time

import torch

from deployments.config import MemoryMode
from deployments.pipeline.compilation import compile_dit, compile_transformer_blocks, compile_vae_decoder
from deployments.pipeline.fp8 import AMAX_FLOOR, MIN_FEATURES, is_big_linear
from deployments.pipeline.fp8 import quantize_dit_fp8 as quantize_rowwise
from deployments.pipeline.real_rope import use_real_rope
from perf.levers import lever

logger = logging.getLogger(__name__)


def _torchao_filter(module: torch.nn.Module, _fqn: str = "") -> bool:
    return is_big_linear(module, MIN_FEATURES)


def quantize_dit_torchao_fp8(transformer: torch.nn.Module) -> int:
    """Swap the DiT's big linear layers to torchao FP8 in place (before compile); returns how many were swapped."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    count = sum(1 for m in transformer.modules() if _torchao_filter(m))
    # the abs-max floor: torchao divides by amax/448, so an all-zero row would give 0/0 = NaN
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), activation_value_lb=AMAX_FLOOR)
    quantize_(transformer, config, filter_fn=_torchao_filter)
    logger.info("DiT: %d linear layers in FP8 via torchao (e4m3, per-row scales)", count)
    return count


@lever("fp8", gpu_only=True)
def fp8_service(session) -> None:
    """The service's opt-in FP8 DiT (deployments.pipeline.fp8), compiled with every kept lever (DiT and VAE)."""
    torch._dynamo.reset()
    session.add("fp8_linear_layers", quantize_rowwise(session.pipe.transformer))
    t0 = time.perf_counter()
    compile_dit(session.pipe, MemoryMode.GPU, None, vae=True)
    session.add("fp8_compile_call_s", time.perf_counter() - t0)


@lever("torchao_fp8", after=("runner", "compile"), gpu_only=True)
def torchao_fp8(session) -> None:
    """torchao FP8 on the DiT, then compiled with dynamic shapes (the RoPE installed by its prerequisites stays)."""
    torch._dynamo.reset()
    session.add("torchao_fp8_linear_layers", quantize_dit_torchao_fp8(session.pipe.transformer))
    compile_transformer_blocks(session.pipe.transformer)


@lever("torchao_fp8_static", gpu_only=True)
def torchao_fp8_static(session) -> None:
    """torchao FP8 + real RoPE + static-shape DiT + compiled VAE decoder (the dynamic torchao graph took > 6 min)."""
    torch._dynamo.reset()
    session.add("torchao_fp8_linear_layers", quantize_dit_torchao_fp8(session.pipe.transformer))
    use_real_rope(session.pipe.transformer)
    session.pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=False)
    compile_vae_decoder(session.pipe)


@lever("torchao_fp8_eager", gpu_only=True)
def torchao_fp8_eager(session) -> None:
    """torchao FP8 without compile: tells a numerics problem of FP8 from one of compiling it."""
    torch._dynamo.reset()
    session.add("torchao_fp8_linear_layers", quantize_dit_torchao_fp8(session.pipe.transformer))
