"""Where a result came from: versions, GPU, driver, host, git commit - stored with every raw JSON."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "diffusers", "transformers", "ray", "httpx", "nvidia-ml-py", "numpy")


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "bench", "deployments"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:
        return None


def gpu_environment(gpu_index: int = 0) -> dict:
    try:
        import pynvml

        from deployments.observability.gpu_info import nvml_handle_for_visible_device

        h = nvml_handle_for_visible_device(gpu_index)

        def s(v):
            return v.decode() if isinstance(v, bytes) else str(v)

        return {
            "name": s(pynvml.nvmlDeviceGetName(h)),
            "driver": s(pynvml.nvmlSystemGetDriverVersion()),
            "memory_total_mb": pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20,
            "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
            "uuid": s(pynvml.nvmlDeviceGetUUID(h)),
        }
    except Exception as exc:
        return {"name": None, "reason": f"{type(exc).__name__}: {exc}"}


def capture(gpu_index: int = 0) -> dict:
    try:
        import torch

        torch_cuda = torch.version.cuda
    except Exception:
        torch_cuda = None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "packages": {p: _version(p) for p in PACKAGES},
        "torch_cuda": torch_cuda,
        "gpu": gpu_environment(gpu_index),
        "git_commit": _git_commit(),
        "argv": sys.argv,
    }
