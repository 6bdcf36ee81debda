"""A queueing model of one replica's batching: what the measured per-batch GPU times predict for a policy's latency,
to hold a `bench capacity` run's figures against.

The model: one GPU, one shape, requests in arrival order. When the GPU is free and requests wait, a batch starts the
way the service starts one (deployments/batching/gate.py): the policy plans its size from the queue
(deployments.batching.efficiency, the service's own code, learning from the simulated batches as the replica learns
from real ones); a batch planned larger than the queue (`throughput`) stays open for late arrivals until
`batch_wait_s` after it started. A batch of b images takes T(b) = fixed + per_image x b seconds (least squares over
the run's batches: X-Inference-Ms by X-Batch-Size). A request's latency = its wait for the batch start + T(b) +
overhead, the overhead being the run's median of latency - queue wait - inference (HTTP, ingress, JPEG, transfer).

    python -m bench.queue_model out/capacity/capacity.json.gz --out out/capacity/model.json

For each variant and load of the file (single-shape workloads): the prediction for the run's own arrivals (its
schedule, `due_s`), the same for a long Poisson run at that rate (--poisson-requests, default 2e5: the steady state
a 300-request sample scatters around), and the measured figures beside them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployments.batching.efficiency import EfficiencyModel, grid
from deployments.options import BatchPolicy

logger = logging.getLogger("bench.queue_model")
SHAPE = ("t2i", 0, 0, 0)  # the one shape the model runs; the key only names the curve


@dataclass(frozen=True)
class BatchTime:
    """T(b) = fixed_s + per_image_s * b."""

    fixed_s: float
    per_image_s: float

    def __call__(self, batch: int) -> float:
        return self.fixed_s + self.per_image_s * batch

    @classmethod
    def fit(cls, batches: list[tuple[int, float]]) -> BatchTime:
        """Least squares over (batch size, seconds) of distinct batches; one size only: a line through the origin."""
        sizes = np.array([b for b, _ in batches], dtype=float)
        secs = np.array([s for _, s in batches], dtype=float)
        if len(set(sizes.tolist())) < 2:
            return cls(0.0, float(np.mean(secs / sizes)))
        per, fixed = np.polyfit(sizes, secs, 1)
        return cls(float(fixed), float(per))


def simulate(
    arrivals: list[float],
    batch_time: BatchTime,
    policy: BatchPolicy,
    cap: int,
    batch_wait_s: float,
    tolerance: float = 0.03,
    overhead_s: float = 0.0,
) -> dict:
    """Latency per request (same order as `arrivals`, which must be sorted) and the batches run."""
    model = EfficiencyModel()
    for b in grid(cap):  # the replica has run every grid size before a measured load (the capacity run's batches)
        model.observe(SHAPE, b, batch_time(b))
    n, i, free_at = len(arrivals), 0, 0.0
    latency, batches = [0.0] * n, []
    while i < n:
        start = max(free_at, arrivals[i])
        queued = sum(1 for t in arrivals[i : i + cap + 1] if t <= start)  # at most cap + 1 are needed
        planned = model.choose(SHAPE, queued, cap, policy, tolerance).batch
        members = min(queued, planned)
        if planned > members:  # open for late arrivals until the batch wait passes (or it is full)
            close = start + batch_wait_s
            while members < planned and i + members < n and arrivals[i + members] <= close:
                members += 1
            start = close if members < planned else max(start, arrivals[i + members - 1])
        seconds = batch_time(members)
        model.observe(SHAPE, members, seconds)
        for j in range(i, i + members):
            latency[j] = start - arrivals[j] + seconds + overhead_s
        batches.append(members)
        free_at, i = start + seconds, i + members
    return {"latency_s": latency, "batches": batches}


def percentiles(latency: list[float]) -> dict:
    p50, p90, p99 = np.percentile(latency, [50, 90, 99])
    return {"p50_s": float(p50), "p90_s": float(p90), "p99_s": float(p99), "mean_s": float(np.mean(latency))}


def poisson_arrivals(rate: float, n: int, seed: int) -> list[float]:
    return np.cumsum(np.random.default_rng(seed).exponential(1 / rate, n)).tolist()


def _distinct_batches(records: list[dict]) -> list[tuple[int, float]]:
    """One (size, seconds) per pipeline call: the requests of a batch share its X-Inference-Ms."""
    seen = {(r["batch_size"], r["inference_ms"]) for r in records if r.get("inference_ms") and r.get("batch_size")}
    return [(b, ms / 1000) for b, ms in seen]


def model_run(data: dict, poisson_requests: int = 200_000, seed: int = 0) -> list[dict]:
    """Every single-shape load of a `bench capacity` file, modelled under its variant's policy and settings."""
    rows = [r for r in data["rows"] if r["summary"].get("workload") == "single"]
    ok = [q for r in rows for q in r["requests"] if q.get("outcome") == "ok"]
    batch_time = BatchTime.fit(_distinct_batches(ok))
    out = []
    for row in rows:
        s = row["summary"]
        if s.get("phase") != "load":
            continue
        variant = data["variants"][s["variant"]]
        uc = variant.get("user_config") or {}
        policy = BatchPolicy(uc.get("batch_policy", "latency"))
        cap = int((variant.get("batching") or {}).get("effective_max_batch") or uc.get("max_batch_size") or 1)
        measured = [q for q in row["requests"] if q["phase"] == "measure" and q.get("outcome") == "ok"]
        overhead = statistics.median(
            q["latency_s"] - q["queue_wait_ms"] / 1000 - q["inference_ms"] / 1000 for q in measured
        )
        settings = dict(
            batch_time=batch_time,
            policy=policy,
            cap=cap,
            batch_wait_s=float(uc.get("batch_wait_timeout_s", 0.05)),
            tolerance=float(uc.get("batch_efficiency_tolerance", 0.03)),
            overhead_s=overhead,
        )
        trace = simulate(sorted(q["due_s"] for q in measured), **settings)
        poisson = simulate(poisson_arrivals(s["offered_rate_rps"], poisson_requests, seed), **settings)
        lat = [q["latency_s"] for q in measured]
        calls = _distinct_batches(measured)
        out.append(
            {
                "variant": s["variant"],
                "fraction": s["fraction"],
                "offered_rate_rps": s["offered_rate_rps"],
                "requests": len(measured),
                "policy": policy.value,
                "cap": cap,
                "batch_time": vars(batch_time),
                "overhead_s": overhead,
                "measured": {**percentiles(lat), "mean_batch": float(np.mean([b for b, _ in calls]))},
                "model_trace": {**percentiles(trace["latency_s"]), "mean_batch": float(np.mean(trace["batches"]))},
                "model_poisson": {
                    **percentiles(poisson["latency_s"]),
                    "mean_batch": float(np.mean(poisson["batches"])),
                    "requests": poisson_requests,
                },
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("capacity_json", type=Path, help="a `bench capacity` result (.json or .json.gz)")
    ap.add_argument("--poisson-requests", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the rows here as JSON")
    args = ap.parse_args(argv)
    opener = gzip.open if args.capacity_json.suffix == ".gz" else open
    with opener(args.capacity_json, "rt") as f:
        rows = model_run(json.load(f), args.poisson_requests, args.seed)
    for r in rows:
        m, t, p = r["measured"], r["model_trace"], r["model_poisson"]
        logger.info(
            "%s %.2fx (%.3f req/s, %d req): measured p50/p90/p99 %.2f/%.2f/%.2f s, batch %.2f | model, same arrivals"
            " %.2f/%.2f/%.2f s, batch %.2f | model, Poisson x%d %.2f/%.2f/%.2f s",
            r["variant"], r["fraction"], r["offered_rate_rps"], r["requests"],
            m["p50_s"], m["p90_s"], m["p99_s"], m["mean_batch"],
            t["p50_s"], t["p90_s"], t["p99_s"], t["mean_batch"],
            p["requests"], p["p50_s"], p["p90_s"], p["p99_s"],
        )  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
