"""torchao's FP8 for the DiT (the experiment of runs 4a-5, kept so they can be reproduced; not the service's FP8):
e4m3 weights and activations with per-row scales on its large linear layers.

Its tensor-subclass weights took 164 s to compile at batch 1 and did not finish the batched graph in 8 minutes on
the H100, so the service's opt-in FP8 (`fp8_dit`) is `deployments/fp8.py`: the same scheme on plain fp8 buffers.
Small or odd-sized layers (adaLN's 256-wide input, the final projection) stay bf16."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)
MIN_FEATURES = 1024  # below this a GEMM is too small for FP8 to pay for its activation quantization
# Lower bound on a row's abs-max when computing its scale: torchao divides by amax/448, so an all-zero row (a zero
# pad token, a zeroed sequence slot) would give 0/0 = NaN. Measured on the H100: without it the first step is NaN.
ACTIVATION_AMAX_FLOOR = 1e-12


def is_big_linear(module: torch.nn.Module, _fqn: str = "") -> bool:
    return (
        isinstance(module, torch.nn.Linear)
        and min(module.in_features, module.out_features) >= MIN_FEATURES
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def quantize_dit_fp8(transformer: torch.nn.Module) -> int:
    """Swap the DiT's big linear layers to FP8 in place (before compile); returns how many were swapped."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    count = sum(1 for m in transformer.modules() if is_big_linear(m))
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), activation_value_lb=ACTIVATION_AMAX_FLOOR)
    quantize_(transformer, config, filter_fn=is_big_linear)
    logger.info("DiT: %d linear layers in FP8 (e4m3, per-row scales)", count)
    return count
