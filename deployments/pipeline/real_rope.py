"""Z-Image attention with RoPE in real arithmetic, so torch.compile can fuse it.

diffusers' `ZSingleStreamAttnProcessor` rotates q/k with a complex multiply (`view_as_complex(x) * freqs_cis`);
Inductor has no code generation for complex operators ("Performance may be worse than eager") and leaves the rotation,
its fp32 casts and reshapes as separate kernels. Writing the same product as (x0*cos - x1*sin, x0*sin + x1*cos) in fp32
gives the same numbers and lets the rotation fuse with the surrounding QK-norm and casts.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor


def rotate(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """x: (B, S, H, D) any float dtype; freqs_cis: (B, S, D/2) complex64. Returns x rotated, in x's dtype."""
    f = torch.view_as_real(freqs_cis).unsqueeze(2)  # (B, S, 1, D/2, 2)
    cos, sin = f[..., 0], f[..., 1]
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class RealRopeAttnProcessor(ZSingleStreamAttnProcessor):
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
        query = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(-1, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(-1, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if freqs_cis is not None:
            query, key = rotate(query, freqs_cis), rotate(key, freqs_cis)
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = attention_mask[:, None, None, :]
        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        output = attn.to_out[0](hidden_states)
        if len(attn.to_out) > 1:
            output = attn.to_out[1](output)
        return output


def use_real_rope(transformer: torch.nn.Module) -> int:
    """Swap every Z-Image attention processor for the real-arithmetic one; returns how many were swapped."""
    swapped = 0
    for module in transformer.modules():
        if isinstance(getattr(module, "processor", None), ZSingleStreamAttnProcessor):
            module.set_processor(RealRopeAttnProcessor())
            swapped += 1
    return swapped
