"""What GPU this process got, read through NVML (total memory decides the batch-size tier)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pynvml

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_bytes: int
    uuid: str

    @property
    def total_gb(self) -> float:
        return self.total_bytes / 1e9


def nvml_handle_for_visible_device(ordinal: int = 0):
    """NVML handle of the process's `ordinal`-th visible GPU (NVML ignores CUDA_VISIBLE_DEVICES, Ray sets it)."""
    pynvml.nvmlInit()
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible:
        ident = visible[ordinal]
        if ident.startswith(("GPU-", "MIG-")):
            return pynvml.nvmlDeviceGetHandleByUUID(ident)
        return pynvml.nvmlDeviceGetHandleByIndex(int(ident))
    return pynvml.nvmlDeviceGetHandleByIndex(ordinal)


def probe_gpu(ordinal: int = 0) -> GpuInfo | None:
    """The visible GPU's name and total memory, or None without a GPU/driver."""
    try:
        handle = nvml_handle_for_visible_device(ordinal)
        name = pynvml.nvmlDeviceGetName(handle)
        total = pynvml.nvmlDeviceGetMemoryInfo(handle).total
        uuid = pynvml.nvmlDeviceGetUUID(handle)
    except (pynvml.NVMLError, IndexError, ValueError) as exc:
        logger.info("no GPU visible through NVML (%s)", exc)
        return None
    return GpuInfo(name=name if isinstance(name, str) else name.decode(), total_bytes=int(total), uuid=str(uuid))
