"""Real LoRA adapters for tests: made with peft on the tiny random DiT and saved with diffusers' `save_lora_weights`,
the way a user's trained adapter reaches the server (a directory holding pytorch_lora_weights.safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ZImagePipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from deployments.config import RandomArch
from deployments.pipeline.random_model import build_random_pipeline

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def save_tiny_adapter(
    out_dir: Path, seed: int = 1, rank: int = 4, alpha: int = 8, targets: tuple[str, ...] = ATTENTION
) -> Path:
    """A random (non-zero: `init_lora_weights=False`) adapter for random:tiny's DiT; returns `out_dir`."""
    pipe = build_random_pipeline(RandomArch.TINY, "cpu", torch.float32)
    torch.manual_seed(seed)  # the adapter's own random init
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    pipe.transformer.add_adapter(config, adapter_name="trained")
    ZImagePipeline.save_lora_weights(
        out_dir,
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer, adapter_name="trained"),
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    return out_dir
