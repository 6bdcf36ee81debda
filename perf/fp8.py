"""torchao's FP8 for the DiT (the experiment of runs 4a-5, kept so they can be reproduced; not the service's FP8):
e4m3 weights and activations with per-row scales on its large linear layers.

Its tensor-subclass weights took 164 s to compile at batch 1 and did not finish the batched graph in 8 minutes on
the H100, so the service's opt-in FP8 (`fp8_dit`) is `deployments/pipeline/fp8.py`: the same scheme on plain fp8 buffers.
Small or odd-sized layers (adaLN's 256-wide input, the final projection) stay bf16."""

from __future__ import annotations

import logging

import torch

from deployments.pipeline.fp8 import AMAX_FLOOR, MIN_FEATURES, is_big_linear

logger = logging.getLogger(__name__)


def _torchao_filter(module: torch.nn.Module, _fqn: str = "") -> bool:
    return is_big_linear(module, MIN_FEATURES)


def quantize_dit_fp8(transformer: torch.nn.Module) -> int:
    """Swap the DiT's big linear layers to torchao FP8 in place (before compile); returns how many were swapped."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    count = sum(1 for m in transformer.modules() if _torchao_filter(m))
    # the abs-max floor: torchao divides by amax/448, so an all-zero row would give 0/0 = NaN (measured, run4c)
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), activation_value_lb=AMAX_FLOOR)
    quantize_(transformer, config, filter_fn=_torchao_filter)
    logger.info("DiT: %d linear layers in FP8 via torchao (e4m3, per-row scales)", count)
    return count
