"""Analytic FLOP count of one Z-Image DiT forward, and the bf16 dense peaks used for MFU.

Counted the way `torch.utils.flop_counter` counts: 2 FLOP per multiply-add in every Linear, and 4·L²·d per attention
layer (QKᵀ and PV). Elementwise work (norms, RoPE, SiLU) is not counted. Token counts follow diffusers'
`ZImageTransformer2DModel`: image tokens (H/16)·(W/16) and caption tokens are each padded to a multiple of 32; the
30 main layers see the concatenated sequence. For the released model this gives 55.1 TFLOP per image at 1024².
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from deployments.config import RandomArch
from deployments.pipeline.random_model import transformer_config

SEQ_MULTI_OF = 32  # diffusers transformer_z_image.SEQ_MULTI_OF
ADALN_EMBED_DIM = 256  # diffusers transformer_z_image.ADALN_EMBED_DIM
T_EMBED_FREQ, T_EMBED_MID = 256, 1024  # TimestepEmbedder(frequency_embedding_size=256, mid_size=1024)
VAE_SCALE = 8
# The stand-in tokenizer gives ~25 tokens for the article's prompt (chat template included); padded to 32.
DEFAULT_CAPTION_TOKENS = 32


def _pad(n: int) -> int:
    return n + (-n) % SEQ_MULTI_OF


@dataclass(frozen=True)
class DitArch:
    """The transformer dimensions FLOPs depend on; built from a config (`from_config`), never restated here."""

    dim: int
    n_layers: int
    n_refiner_layers: int
    n_heads: int
    n_kv_heads: int
    cap_feat_dim: int
    in_channels: int
    patch_size: int = 2  # diffusers' default `all_patch_size=(2,)`

    @classmethod
    def from_config(cls, cfg: Mapping) -> DitArch:
        """From `pipe.transformer.config` or the kwargs that built it; missing keys take diffusers' defaults."""
        patch = cfg.get("all_patch_size", (2,))
        kwargs = {k: int(cfg[k]) for k in cls.__dataclass_fields__ if k in cfg and k != "patch_size"}
        return cls(patch_size=int(patch[0]), **kwargs)

    @property
    def ffn_dim(self) -> int:
        return int(self.dim / 3 * 8)  # FeedForward(hidden_dim=int(dim / 3 * 8)), SwiGLU

    def image_tokens(self, width: int, height: int) -> int:
        side = VAE_SCALE * self.patch_size
        return _pad(math.ceil(height / side) * math.ceil(width / side))

    def linear_flops(self, width: int, height: int, caption_tokens: int = DEFAULT_CAPTION_TOKENS) -> int:
        """Matmul FLOPs of the Linear layers for one image (what FlopCounter reports without attention)."""
        d, a = self.dim, min(self.dim, ADALN_EMBED_DIM)
        head_dim = d // self.n_heads
        s_img, s_cap = self.image_tokens(width, height), _pad(caption_tokens)
        seq = s_img + s_cap
        patch_in = self.patch_size**2 * self.in_channels
        per_token_block = 2 * (d * (d + 2 * self.n_kv_heads * head_dim) + d * d + 3 * d * self.ffn_dim)
        adaln = 2 * a * 4 * d  # per modulated block, once per image
        flops = 2 * (T_EMBED_FREQ * T_EMBED_MID + T_EMBED_MID * a)  # timestep embedder
        flops += 2 * s_img * patch_in * d + 2 * s_cap * self.cap_feat_dim * d  # x / caption embedders
        flops += self.n_refiner_layers * (s_img * per_token_block + adaln)  # noise refiner (image tokens)
        flops += self.n_refiner_layers * s_cap * per_token_block  # context refiner (caption tokens, no adaLN)
        flops += self.n_layers * (seq * per_token_block + adaln)  # main layers (image + caption)
        flops += 2 * a * d + 2 * seq * d * patch_in  # final layer
        return flops

    def attention_flops(self, width: int, height: int, caption_tokens: int = DEFAULT_CAPTION_TOKENS) -> int:
        s_img, s_cap = self.image_tokens(width, height), _pad(caption_tokens)
        per_layer = lambda n: 4 * n * n * self.dim  # noqa: E731  QKᵀ + PV over all heads
        return self.n_refiner_layers * (per_layer(s_img) + per_layer(s_cap)) + self.n_layers * per_layer(s_img + s_cap)

    def forward_flops(self, width: int, height: int, caption_tokens: int = DEFAULT_CAPTION_TOKENS) -> int:
        """One DiT forward for one image (batching multiplies by the batch size)."""
        return self.linear_flops(width, height, caption_tokens) + self.attention_flops(width, height, caption_tokens)


FULL_ARCH = DitArch.from_config(transformer_config(RandomArch.FULL))  # the released architecture (6.15B parameters)


def arch_for_source(model_source: str) -> DitArch:
    """The architecture behind an `X-Model-Source` label: tiny for `random:tiny`, the released one otherwise."""
    if model_source == "random:tiny":
        return DitArch.from_config(transformer_config(RandomArch.TINY))
    return FULL_ARCH


# bf16 dense tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA datasheets, matched against the NVML name.
# Order matters: more specific names first.
GPU_BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM (NVML: "NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("H800", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
)


def gpu_peak_tflops(gpu_name: str | None) -> float | None:
    if not gpu_name:
        return None
    for key, peak in GPU_BF16_PEAK_TFLOPS:
        if key.lower() in gpu_name.lower():
            return peak
    return None
