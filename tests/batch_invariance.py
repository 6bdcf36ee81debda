"""Whether this host's CPU GEMMs give a row the same bits whatever the number of rows computed with it.

The equality tests compare a request's image alone and inside a batch. That holds bit for bit only if every matrix
product is batch-invariant. With MKL's strict reproducibility mode (`MKL_CBWR`, set for the Ray workers by
`tests.serve_harness.WORKER_ENV`) it is on Intel CPUs; on an AMD EPYC host (seen 2026-12-02, torch 2.13.0+cpu) a
1-row product still takes another kernel than an 8-row one (row 0 differs by ~4e-7), which flips a few uint8 pixels by
one after 8 denoising steps. The probe runs in a subprocess with the workers' environment, so the tests assert
bit-identity where the host can give it and a rounding-only difference elsewhere."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np

from tests.serve_harness import WORKER_ENV

_PROBE = """
import torch
torch.manual_seed(0)
ok = True
for k, n in ((256, 64), (64, 256), (32, 2048)):
    w, x = torch.randn(n, k), torch.randn(8, k)
    full = torch.nn.functional.linear(x, w)
    ok &= all(torch.equal(torch.nn.functional.linear(x[:m], w), full[:m]) for m in (1, 2, 3, 4))
print(int(ok))
"""
ROUNDING_SHARE = 0.001  # at most this share of uint8 values may differ (by one) where the host is not invariant


@functools.cache
def cpu_gemm_is_batch_invariant() -> bool:
    env = {**os.environ, **WORKER_ENV}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().endswith("1")


def assert_same_image(a: np.ndarray, b: np.ndarray, what: str = "") -> None:
    """Bit-identical where the host's GEMMs are batch-invariant; elsewhere rounding only: a few values off by one.
    A wrong seed, prompt or image order changes almost every value (tests check that separately)."""
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    diff = np.abs(a.astype(int) - b.astype(int))
    detail = f"{what}: {int((diff > 0).sum())} of {diff.size} values differ, max {diff.max()}"
    if cpu_gemm_is_batch_invariant():
        assert diff.max() == 0, detail
    else:
        assert diff.max() <= 1 and (diff > 0).mean() <= ROUNDING_SHARE, detail
