"""Load a `ZImagePipeline` from the configured source; a bad source fails loudly, naming the source."""

from __future__ import annotations

import logging
import time
from typing import Protocol

import torch
from diffusers import ZImagePipeline

from deployments.config import ModelSource
from deployments.pipeline.random_model import build_random_pipeline

logger = logging.getLogger(__name__)


class ModelSourceError(RuntimeError):
    """The configured model source could not be loaded (missing, unreachable or not a Z-Image pipeline)."""


class PipelineFactory(Protocol):
    """What the GPU deployment calls to get its pipeline; tests inject tiny or faulty ones."""

    def __call__(self, source: ModelSource, device: str, dtype: torch.dtype) -> ZImagePipeline: ...


def load_pipeline(source: ModelSource, device: str, dtype: torch.dtype) -> ZImagePipeline:
    """Random builds go straight to `device`; real weights load to CPU and are placed by the memory mode later."""
    start = time.perf_counter()
    if source.random is not None:
        return build_random_pipeline(source.random, device, dtype)
    if source.local_dir is not None:
        if not source.local_dir.is_dir():
            raise ModelSourceError(f"model source {source.label}: directory does not exist")
        if not (source.local_dir / "model_index.json").is_file():
            raise ModelSourceError(f"model source {source.label}: no model_index.json (not a diffusers pipeline dir)")
    try:
        pipe = ZImagePipeline.from_pretrained(
            str(source.local_dir or source.hub_id), revision=source.revision, dtype=dtype
        )
    except Exception as exc:  # from_pretrained raises many types (OSError, HTTP errors, ValueError)
        raise ModelSourceError(f"model source {source.label} could not be loaded: {exc}") from exc
    logger.info("loaded %s in %.1fs", source.label, time.perf_counter() - start)
    return pipe
