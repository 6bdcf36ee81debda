"""Opt-in FP8 for the DiT: e4m3 weights and activations with per-row scales on its large linear layers (torchao).

Hopper and Ada run FP8 GEMMs at twice the bf16 rate, and GEMMs are most of the DiT's time once Inductor has fused
the elementwise work. It changes the numerics, so it is never the default (`dit_precision: fp8`; deviation measured
in the README). Small or odd-sized layers (adaLN's 256-wide input, the final projection) stay bf16.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)
MIN_FEATURES = 1024  # below this a GEMM is too small for FP8 to pay for its activation quantization
# Lower bound on a row's abs-max when computing its scale: torchao divides by amax/448, so an all-zero row (a zero
# pad token, a zeroed sequence slot) would give 0/0 = NaN. Measured on the H100: without it the first step is NaN.
ACTIVATION_AMAX_FLOOR = 1e-12


class Fp8Unavailable(RuntimeError):
    """FP8 was asked for on hardware or software that cannot run it."""


def is_big_linear(module: torch.nn.Module, _fqn: str = "") -> bool:
    return (
        isinstance(module, torch.nn.Linear)
        and min(module.in_features, module.out_features) >= MIN_FEATURES
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def check_fp8_supported(device: torch.device) -> None:
    if device.type != "cuda":
        raise Fp8Unavailable("dit_precision=fp8 needs a CUDA GPU (compute capability >= 8.9: Ada, Hopper or newer)")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise Fp8Unavailable(f"dit_precision=fp8 needs compute capability >= 8.9; this GPU has {major}.{minor}")
    try:
        import torchao  # noqa: F401
    except ImportError as exc:
        raise Fp8Unavailable("dit_precision=fp8 needs torchao: pip install 'zimage-serve[fp8]'") from exc


def quantize_dit_fp8(transformer: torch.nn.Module) -> int:
    """Swap the DiT's big linear layers to FP8 in place (before compile); returns how many were swapped."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    count = sum(1 for m in transformer.modules() if is_big_linear(m))
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), activation_value_lb=ACTIVATION_AMAX_FLOOR)
    quantize_(transformer, config, filter_fn=is_big_linear)
    logger.info("DiT: %d linear layers in FP8 (e4m3, per-row scales)", count)
    return count
