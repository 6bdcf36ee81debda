"""Opt-in FP8 for the DiT: its large linear layers run as e4m3 GEMMs with per-row scales (`torch._scaled_mm`).

Why: once Inductor has fused the elementwise work, bf16 GEMMs at ~780 TFLOP/s are 2/3 of the DiT's time on an H100;
Hopper and Ada run FP8 GEMMs at twice the bf16 rate. Weights are quantized once (one scale per output row, halving
the DiT's weight memory); activations per token (one scale per row) at every call, which Inductor fuses into one
reduction kernel in front of the GEMM. It changes the numerics, so it is never the default (docs/performance.md).

Why not torchao's `Float8DynamicActivationFloat8WeightConfig`: the same scheme, but its tensor-subclass weights took
164 s to compile at batch 1 and did not finish compiling the batched graph in 8 minutes on the H100; plain fp8
buffers compile like the bf16 model.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
MIN_FEATURES = 1024  # below this a GEMM is too small for FP8 to pay for quantizing its input
# Lower bound of a row's abs-max: an all-zero row (a zero pad token, a zeroed sequence slot) would otherwise get scale
# 0 and 0/0 = NaN. Measured on the H100 with torchao before the floor: the first denoising step was all NaN.
AMAX_FLOOR = 1e-12


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values and fp32 scales (one per row, shape [rows, 1]) with x ~= values * scales."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=AMAX_FLOOR)
    scale = amax / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Float8RowwiseLinear(nn.Module):
    """Drop-in for an `nn.Linear` (bf16 in, bf16 out) that multiplies in FP8."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight, scale = quantize_rows(linear.weight.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_fp8", weight)  # [out, in]; `.t()` is the column-major operand _scaled_mm wants
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.out_dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        values, scale = quantize_rows(rows)
        out = torch._scaled_mm(
            values, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=self.out_dtype
        )
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 rowwise"


def is_big_linear(module: nn.Module, min_features: int) -> bool:
    """Large enough to gain, and shaped as FP8 GEMMs require (dimensions multiple of 16)."""
    return (
        isinstance(module, nn.Linear)
        and min(module.in_features, module.out_features) >= min_features
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def fp8_supported(device: torch.device | str) -> bool:
    """FP8 tensor cores: compute capability 8.9 (Ada) or newer. CPUs run `_scaled_mm` too (tests), slowly."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_dit_fp8(transformer: nn.Module, min_features: int | None = None) -> int:
    """Swap the big linear layers of the DiT's repeated blocks for FP8 ones in place (before compile); returns how many.

    Only inside the blocks that `compile_repeated_blocks` compiles: outside them the activation quantization would run
    unfused. Small or odd-sized layers (adaLN's 256-wide input) stay as they are."""
    min_features = MIN_FEATURES if min_features is None else min_features
    block_types = set(getattr(transformer, "_repeated_blocks", ()))
    blocks = [m for m in transformer.modules() if type(m).__name__ in block_types] or [transformer]
    count = 0
    for block in blocks:
        targets = [(name, m) for name, m in block.named_modules() if is_big_linear(m, min_features)]
        for name, linear in targets:
            parent_name, _, child = name.rpartition(".")
            setattr(block.get_submodule(parent_name) if parent_name else block, child, Float8RowwiseLinear(linear))
        count += len(targets)
    logger.info("DiT: %d linear layers in FP8 (e4m3, per-row scales)", count)
    return count
