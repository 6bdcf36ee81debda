"""torch.compile variants of the DiT and the VAE decoder. `compile` is what the service does
(deployments.pipeline.compilation.compile_dit: real RoPE, dynamic shapes); the others are the alternatives it was
chosen over."""

from __future__ import annotations

import torch

from deployments.config import MemoryMode
from deployments.pipeline.compilation import compile_dit, compile_transformer_blocks, compile_vae_decoder
from deployments.pipeline.real_rope import use_real_rope
from perf.levers import lever


@lever("compile_static", gpu_only=True)
def compile_static(session) -> None:
    """Repeated blocks compiled with static shapes: one recompile per new batch size (what was tried first)."""
    torch._dynamo.reset()
    session.pipe.transformer.compile_repeated_blocks(fullgraph=True)


@lever("compile_complex_rope", gpu_only=True)
def compile_complex_rope(session) -> None:
    """Dynamic shapes, diffusers' complex-multiply RoPE (Inductor cannot fuse it): the service minus real RoPE."""
    torch._dynamo.reset()
    compile_transformer_blocks(session.pipe.transformer)


@lever("compile", gpu_only=True)
def compile_service(session) -> None:
    """The DiT compiled as the service does (real RoPE, dynamic shapes), VAE decoder eager."""
    torch._dynamo.reset()
    compile_dit(session.pipe, MemoryMode.GPU, None, vae=False)


@lever("compile_autotune", gpu_only=True)
def compile_autotune(session) -> None:
    """Real RoPE, dynamic shapes, mode=max-autotune-no-cudagraphs: Inductor tries Triton GEMMs against cuBLAS."""
    torch._dynamo.reset()
    use_real_rope(session.pipe.transformer)
    session.pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=True, mode="max-autotune-no-cudagraphs")


@lever("vae_cudnn_tuning", after=("runner", "compile"), gpu_only=True)
def vae_cudnn_tuning(session) -> None:
    """VAE convolutions with cudnn.benchmark (timed algorithm choice) and channels_last (tensor cores' layout)."""
    torch.backends.cudnn.benchmark = True
    session.pipe.vae.to(memory_format=torch.channels_last)


@lever("vae_compile", after=("runner", "compile"), gpu_only=True)
def vae_compile(session) -> None:
    """The VAE decoder compiled as the service does (fuses GroupNorm statistics and SiLU/add)."""
    compile_vae_decoder(session.pipe)
