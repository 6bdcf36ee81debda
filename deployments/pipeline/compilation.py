"""torch.compile of the DiT's repeated transformer blocks, with a persistent Inductor cache.

Eager Z-Image spends ~half of the DiT's GPU time in unfused elementwise kernels (fp32 casts, RMSNorm, adaLN, RoPE);
Inductor fuses them (and the VAE decoder's GroupNorm/SiLU). `dynamic=True` gives one graph for batch 1 (Dynamo
specializes size-1 dims) and one for all larger batches and caption lengths, instead of a recompile per new shape
(with static shapes every new batch size or caption length pays ~10 s, and after the recompile limit Dynamo silently
falls back to eager). The replica's start-up measurement runs batch 1 and 2, which compiles both before traffic
arrives.
"""

from __future__ import annotations

import logging
import os

from diffusers import ZImagePipeline

from deployments.config import MemoryMode, RequestLimits
from deployments.pipeline.real_rope import use_real_rope
from deployments.presets import PRESETS

logger = logging.getLogger(__name__)


def compile_dit(pipe: ZImagePipeline, mode: MemoryMode, cache_dir: str | None, vae: bool = True) -> bool:
    """Compile in place (and the VAE decoder with `vae`); False where it does not apply (DiT streamed by groups)."""
    if mode is MemoryMode.GROUP_OFFLOAD:
        logger.info("compile skipped: the DiT is streamed block by block in group_offload mode")
        return False
    use_inductor_cache(cache_dir)
    use_real_rope(pipe.transformer)  # Inductor cannot fuse the complex-multiply RoPE
    compile_transformer_blocks(pipe.transformer)
    logger.info("DiT repeated blocks compiled (dynamic shapes; cache %s)", cache_dir or "default")
    if vae:
        compile_vae_decoder(pipe)
    return True


def use_inductor_cache(cache_dir: str | None) -> None:
    """FX graph + autotune caches in `cache_dir` persist across replicas (a volume makes the next cold start warm)."""
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def compile_transformer_blocks(transformer) -> None:
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)


def compile_vae_decoder(pipe: ZImagePipeline) -> None:
    """The FLUX VAE decoder in eager spends most of its time in GroupNorm statistics and separate SiLU/add kernels;
    Inductor fuses them: decode 98 -> 44 ms per 1024^2 image on an H100. Decoding
    is one image (or one tile) at a time, so shapes repeat; a new image size compiles once more."""
    pipe.vae.decoder.compile()


def second_warm_up_side(limits: RequestLimits, seen: int) -> int | None:
    """A square size other than the one already warmed up (`seen`), as cheap as allowed: the smallest side; None
    where only one size is allowed.

    The compiled VAE decoder specializes to the first size; the second one recompiles it with dynamic height/width
    (46 s on an H100 with an empty cache), after which no size recompiles."""
    side = limits.min_side if limits.min_side != seen else limits.max_side
    return None if side == seen else side


def warm_up_shapes(
    setting: str | list[str], limits: RequestLimits, seen: set[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The sizes a compiled replica runs once at start-up, in order, without those already run (`seen`):

    - `presets`: every official preset (deployments/presets.py) the limits allow;
    - a list of `WIDTHxHEIGHT`: those the limits allow;
    - `none`: only a second size (the compiled VAE decoder's one recompile to dynamic height/width).

    Whatever the setting, a second size is included when only one was seen, so the decoder's recompile never lands
    on a request."""
    if setting == "presets":
        wanted = [(p.width, p.height) for p in PRESETS]
    elif setting == "none":
        wanted = []
    else:
        wanted = [tuple(int(v) for v in size.split("x")) for size in setting]
    out = list(dict.fromkeys(s for s in wanted if limits.allows(*s) and s not in seen))
    if not out and len(seen) == 1:
        ((w, _),) = seen
        side = second_warm_up_side(limits, w)
        if side is not None and (side, side) not in seen:
            out.append((side, side))
    return out


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (each recompile adds one): /info shows it, so an operator (or
    the GPU bench) can see that serving, adapter switches included, compiles nothing after the warm-up."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
