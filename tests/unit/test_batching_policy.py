"""The batch-size arithmetic of deployments/batching/policy.py (no Ray, no model): the effective size is the smallest
of what is wanted, what memory allows and what OOMs taught; an OOM cap only ever falls; /info's `batching` block."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deployments.batching.policy import BatchingState, MemoryClamp, cap_after_oom, effective_batch_size
from deployments.config import DEFAULT_TIERS, MemoryMode

caps = st.one_of(st.none(), st.integers(-2, 64))


@pytest.mark.parametrize(
    ("desired", "memory_cap", "oom_cap", "expected"),
    [
        (12, None, None, 12),
        (12, 5, None, 5),
        (12, None, 3, 3),
        (12, 5, 3, 3),
        (2, 5, 3, 2),
        (12, 0, None, 1),  # never below 1: batch 1 ran during the measurement
        (0, None, None, 1),
    ],
)
def test_effective_batch_size_is_the_smallest_cap(desired, memory_cap, oom_cap, expected):
    assert effective_batch_size(desired, memory_cap, oom_cap) == expected


@given(desired=st.integers(-2, 64), memory_cap=caps, oom_cap=caps)
def test_effective_batch_size_never_exceeds_a_cap_and_is_at_least_one(desired, memory_cap, oom_cap):
    size = effective_batch_size(desired, memory_cap, oom_cap)
    assert size >= 1
    for cap in (desired, memory_cap, oom_cap):
        if cap is not None and cap >= 1:
            assert size <= cap


@pytest.mark.parametrize(
    ("oom_cap", "smallest_failed", "largest_ok", "expected"),
    [
        (None, 4, 2, 2),  # 4 failed, 2 ran: 2 (3 was never tried)
        (None, 4, 3, 3),
        (None, 4, 8, 3),  # 8 ran elsewhere (another shape) but 4 failed: below 4
        (None, 1, 1, 1),  # floor
        (2, 8, 4, 2),  # an earlier, lower cap stays
        (6, 4, 3, 3),
    ],
)
def test_cap_after_oom(oom_cap, smallest_failed, largest_ok, expected):
    assert cap_after_oom(oom_cap, smallest_failed, largest_ok) == expected


@given(oom_cap=st.one_of(st.none(), st.integers(1, 64)), failed=st.integers(1, 64), ok=st.integers(1, 64))
def test_cap_after_oom_only_falls_and_never_allows_the_failed_size(oom_cap, failed, ok):
    cap = cap_after_oom(oom_cap, failed, ok)
    assert cap >= 1
    assert cap < failed or failed == 1
    if oom_cap is not None:
        assert cap <= oom_cap


def test_batching_state_update_and_as_dict_is_what_info_shows():
    st_ = BatchingState(vram_gb=80.0, tier=DEFAULT_TIERS[-1], memory_mode=MemoryMode.GPU, desired_max_batch=12)
    st_.memory_cap, st_.oom_cap = 9, None
    assert st_.update_effective() == 9 == st_.effective_max_batch
    st_.oom_cap = cap_after_oom(st_.oom_cap, 6, 5)
    assert st_.update_effective() == 5
    d = st_.as_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON: served as is by /info
    assert d["tier"] == {"max_vram_gb": DEFAULT_TIERS[-1].max_vram_gb, "max_batch_size": 12, "memory_mode": "gpu"}
    assert d["memory_mode"] == "gpu"
    assert (d["desired_max_batch"], d["memory_cap"], d["oom_cap"], d["effective_max_batch"]) == (12, 9, 5, 5)
    assert d["vram_gb"] == 80.0 and d["emulated"] is False and d["oom_splits"] == 0
    assert "predicted_peak_at_effective_bytes" not in d  # no clamp measured


def test_batching_state_with_a_clamp_predicts_the_peak_at_the_effective_size():
    clamp = {
        "denoise": MemoryClamp(peak_batch1_bytes=10, peak_batch2_bytes=14, budget_bytes=100),
        "decode": MemoryClamp(peak_batch1_bytes=20, peak_batch2_bytes=21, budget_bytes=100),
    }
    st_ = BatchingState(desired_max_batch=4, clamp=clamp)
    st_.update_effective()
    d = st_.as_dict()
    assert d["predicted_peak_at_effective_bytes"] == max(10 + 3 * 4, 20 + 3 * 1) == 23
    assert d["clamp"]["denoise"] == {"peak_batch1_bytes": 10, "peak_batch2_bytes": 14, "budget_bytes": 100}


def test_cpu_batching_state_reports_no_tier_and_no_memory_mode():
    d = BatchingState(desired_max_batch=8).as_dict()
    assert d["tier"] is None and d["memory_mode"] is None and d["vram_gb"] is None
    assert d["effective_max_batch"] == 1  # until update_effective() runs
