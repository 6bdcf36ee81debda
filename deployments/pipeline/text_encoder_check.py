"""Start-up check of the fast text-encoder path against the pipeline's own `encode_prompt`.

If a transformers upgrade changed the Qwen3 model, fall back (CUDA graphs -> the eager layer shortcut -> the pipeline's
full pass) rather than change images.
"""

from __future__ import annotations

import logging
import time

from deployments.pipeline.text_encoder import PromptEncoder

logger = logging.getLogger("ray.serve")
PROBE_PROMPT = "a lighthouse on a cliff in a storm, oil painting"
# relative L2 vs the pipeline's own pass: bf16 kernel numerics give 0.025 (H200, real length); one layer too many
# gives > 0.3 on the tiny model (tests/unit/test_text_encoding.py)
TOLERANCE = 0.05


def prepare_prompt_encoder(enc: PromptEncoder, pipe, max_batch: int) -> dict:
    """Capture the CUDA graphs now (not on a request), then verify; returns what /info shows."""
    start = time.perf_counter()
    if enc.cuda_graphs:
        try:
            enc.capture_all(max_batch)
        except Exception as exc:  # any capture failure: run eagerly rather than not at all
            logger.warning("text encoder CUDA graphs off: capture failed: %s", exc)
            enc.drop_graphs()
    deviation = 0.0
    while enc.shortcut:
        deviation = enc.deviation_from_pipeline(pipe, PROBE_PROMPT)
        if deviation <= TOLERANCE:
            break
        step = "CUDA graphs" if enc.cuda_graphs else "the layer shortcut"
        logger.warning("text encoder: %s off, deviation %.3g from the pipeline's own pass", step, deviation)
        if enc.cuda_graphs:
            enc.drop_graphs()
        else:
            enc.disable_shortcut()
    info = {
        "shortcut": enc.shortcut,
        "cuda_graphs": enc.cuda_graphs,
        "graphs": enc.graph_count,
        "deviation_from_pipeline": deviation,
        "prepare_s": round(time.perf_counter() - start, 3),
    }
    logger.info("text encoder: %s", info)
    return info
