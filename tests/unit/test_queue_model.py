"""The queueing model `bench.queue_model` that `bench capacity` runs are held against: hand-checkable arrivals."""

from __future__ import annotations

import pytest

from bench.queue_model import BatchTime, percentiles, poisson_arrivals, simulate
from deployments.options import BatchPolicy

LATENCY, THROUGHPUT = BatchPolicy.LATENCY, BatchPolicy.THROUGHPUT
FLAT = BatchTime(0.0, 0.8)  # 1024² on an H200: batching buys nothing


def test_batch_time_is_fitted_from_distinct_batches():
    t = BatchTime.fit([(1, 0.5), (2, 0.8), (4, 1.4)])
    assert (t.fixed_s, t.per_image_s) == pytest.approx((0.2, 0.3))
    assert BatchTime.fit([(4, 2.0), (4, 2.4)]).per_image_s == pytest.approx(0.55)


def test_spaced_arrivals_wait_for_nothing():
    r = simulate([0.0, 1.0, 2.0], FLAT, LATENCY, cap=12, batch_wait_s=0.05, overhead_s=0.1)
    assert r["latency_s"] == pytest.approx([0.9, 0.9, 0.9]) and r["batches"] == [1, 1, 1]


def test_a_burst_runs_one_by_one_under_latency_and_in_one_batch_under_throughput():
    burst = [0.0, 0.01, 0.02, 0.03]
    lat = simulate(burst, FLAT, LATENCY, cap=12, batch_wait_s=0.05)
    assert lat["batches"] == [1, 1, 1, 1]  # 1 and 2 learnt equal: never 4
    assert lat["latency_s"] == pytest.approx([0.8, 1.59, 2.38, 3.17])
    thr = simulate(burst, FLAT, THROUGHPUT, cap=12, batch_wait_s=0.05)
    assert thr["batches"] == [4]  # the batch stays open 50 ms: all four join
    assert thr["latency_s"] == pytest.approx([0.05 + 3.2 - t for t in burst])


def test_a_full_batch_starts_without_its_wait():
    thr = simulate([0.0, 0.01], FLAT, THROUGHPUT, cap=2, batch_wait_s=0.05)
    assert thr["batches"] == [2] and thr["latency_s"] == pytest.approx([1.61, 1.6])


def test_where_batching_pays_the_latency_policy_batches_a_backlog():
    paying = BatchTime(0.3, 0.1)  # 0.4 s alone, 0.15 s per image in a batch of 12
    backlog = [0.001 * i for i in range(30)]
    r = simulate(backlog, paying, LATENCY, cap=12, batch_wait_s=0.05)
    assert r["batches"][0] == 1 and max(r["batches"]) == 12  # alone while alone, the best batch once a backlog waits


def test_the_long_run_model_gives_lower_latency_for_latency_where_batching_buys_nothing():
    arrivals = poisson_arrivals(0.95, 20_000, seed=1)
    lat = percentiles(simulate(arrivals, BatchTime(0.0, 0.806), LATENCY, 12, 0.05)["latency_s"])
    thr = percentiles(simulate(arrivals, BatchTime(0.0, 0.806), THROUGHPUT, 12, 0.05)["latency_s"])
    assert lat["p50_s"] < 0.85 * thr["p50_s"] and lat["p99_s"] < 0.8 * thr["p99_s"]
