"""The two references every other lever is measured against."""

from __future__ import annotations

from perf.levers import lever


@lever("pipe", after=())
def pipe(session) -> None:
    """The plain diffusers call a user would write: pipe(prompt=[...] * bs, guidance_scale=0), PIL output."""


@lever("runner", after=())
def runner(session) -> None:
    """The service's runner (real-length encode, per-image decode), eager: the numerics reference of later rows."""


@lever("cudnn_attention", rows=False, gpu_only=True)
def cudnn_attention(session) -> None:
    """Attention through cuDNN (`_native_cudnn`) instead of PyTorch's SDPA dispatch; reset after its rows."""
    session.pipe.transformer.set_attention_backend("_native_cudnn")
    session.rows("cudnn_attention")
    transformer = session.pipe.transformer
    if hasattr(transformer, "reset_attention_backend"):
        transformer.reset_attention_backend()
    else:
        transformer.set_attention_backend("native")
