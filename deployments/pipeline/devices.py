"""Resolve the configured device and dtype against what this replica can see."""

from __future__ import annotations

import torch


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was configured but no CUDA GPU is visible to this replica")
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    if setting == "auto":  # bf16 on GPU (fp16 gives NaN/black images with Z-Image), fp32 on CPU
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, setting)
