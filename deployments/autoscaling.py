"""Generator autoscaling on the signal the batching learns: the queue wait a new request would see.

Serve's default policy holds ongoing requests per replica at a fixed `target_ongoing_requests`, but a request's cost
depends on its shape: 1024² on an H200 takes 0.8 s of GPU per image, an image of 4x the pixels at least 4x that, a
512² image in a batch of 8 on an H100 a fraction. One count is a different wait for every mix. So each Generator
replica reports the GPU seconds per image of its backlog, learnt per shape (`record_autoscaling_stats`,
deployments/batching/efficiency.py), and this policy turns Serve's own count of ongoing requests into seconds:

    work_s = ongoing x s_per_image    ongoing: Serve's count (running + queued at handles), a mean over
                                      look_back_period_s; s_per_image: the mean of the replicas' reports (0 = not
                                      learnt yet: left out)
    wait on N replicas ~ work_s / N   the router spreads requests, each replica drains its share
    up   to ceil(work_s / target)                        when that is more than the current target count
    down to ceil(work_s / (downscale_headroom x target))  when that is less; in between, stay

(the same as Serve's formula with a target of `target / s_per_image` ongoing requests, re-derived as the learnt speed
and the shape mix change). Before any replica has learnt a figure (its first batches), Serve's formula with
`target_ongoing_requests` stands in. Serve (2.60) wraps a custom policy with `upscale_delay_s` / `downscale_delay_s`
(a change must be wanted that long without a break), the scaling factors and min/max, so those stay in
`autoscaling_config`; the dead band between the two thresholds is this policy's own hysteresis.

Standard library only at run time: Serve pickles this module by value into its controller.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

logger = logging.getLogger("ray.serve")

S_PER_IMAGE = "s_per_image"  # the replica metric (record_autoscaling_stats) the policy reads


def backlog_seconds_per_image(efficiency: Mapping[str, Mapping[str, Any]], waiting: Iterable[tuple[str, int]]) -> float:
    """GPU seconds per image of one replica's backlog, from its learnt curves (`EfficiencyModel.as_dict()`: shape ->
    {"s_per_image": {batch: s}, "batches": {batch: n}}) and the shapes waiting for the GPU ((shape, count) pairs).

    Per waiting shape, the best learnt figure at a batch its queue could fill (the latency policy runs within its
    tolerance of that), weighted by how many wait. With nothing learnt waiting, the figure a lone request gets (the
    smallest learnt batch) averaged over the shapes weighted by the batches each ran: the mix this replica serves.
    0.0 before anything is learnt."""
    curves = {
        shape: {int(b): float(s) for b, s in entry.get("s_per_image", {}).items() if float(s) > 0}
        for shape, entry in efficiency.items()
    }
    curves = {shape: curve for shape, curve in curves.items() if curve}
    queued: dict[str, int] = {}
    for shape, n in waiting:
        queued[shape] = queued.get(shape, 0) + n
    weighted = [(n, _best_fillable(curves[s], n)) for s, n in queued.items() if n > 0 and s in curves]
    if not weighted:
        ran = {s: sum(int(n) for n in efficiency[s].get("batches", {}).values()) for s in curves}
        weighted = [(max(1, ran[s]), curve[min(curve)]) for s, curve in curves.items()]
    total = sum(n for n, _ in weighted)
    return sum(n * s for n, s in weighted) / total if total else 0.0


def _best_fillable(curve: dict[int, float], queued: int) -> float:
    fillable = [s for b, s in curve.items() if b <= queued]
    return min(fillable) if fillable else curve[min(curve)]


class QueueWaitPolicy:
    """Serve autoscaling policy (`autoscaling_config.policy.policy_function: deployments.autoscaling:QueueWaitPolicy`,
    `policy_kwargs` go to the constructor): keep the estimated queue wait under `target_queue_wait_s`."""

    def __init__(self, target_queue_wait_s: float = 10.0, downscale_headroom: float = 0.5):
        if not target_queue_wait_s > 0:
            raise ValueError(f"target_queue_wait_s must be > 0, got {target_queue_wait_s}")
        if not 0 < downscale_headroom <= 1:
            raise ValueError(f"downscale_headroom must be in (0, 1], got {downscale_headroom}")
        self.target_queue_wait_s = float(target_queue_wait_s)
        self.downscale_headroom = float(downscale_headroom)

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        current = ctx.target_num_replicas
        ongoing = max(0.0, float(ctx.total_num_requests or 0.0))
        speed = learnt_seconds_per_image(ctx.aggregated_metrics)
        if speed is not None:  # work in GPU seconds against the target wait
            work, up_per_replica, basis = ongoing * speed, self.target_queue_wait_s, "queue_wait"
        else:  # nothing learnt yet: ongoing requests against Serve's target_ongoing_requests
            work, up_per_replica, basis = ongoing, float(ctx.config.get_target_ongoing_requests()), "ongoing_requests"
        up = math.ceil(work / up_per_replica)
        down = math.ceil(work / (up_per_replica * self.downscale_headroom))
        wanted = up if up > current else down if down < current else current
        wanted = min(max(wanted, ctx.capacity_adjusted_min_replicas), ctx.capacity_adjusted_max_replicas)
        wait = work / max(1, ctx.current_num_replicas) if speed is not None else None
        state = {"wanted": wanted, "basis": basis, "queue_wait_s": None if wait is None else round(wait, 3)}
        if wanted != current and (ctx.policy_state or {}).get("wanted") != wanted:
            logger.info(
                "autoscaling %s: %s -> %s replicas wanted: %.1f ongoing x %s s/img -> queue wait %s s, target %s s",
                ctx.deployment_name,
                current,
                wanted,
                ongoing,
                "n/a" if speed is None else f"{speed:.3f}",
                "n/a" if wait is None else f"{wait:.1f}",
                self.target_queue_wait_s,
            )
        return wanted, state


def learnt_seconds_per_image(aggregated_metrics: Mapping[str, Mapping[Any, float]] | None) -> float | None:
    """The mean of the replicas' reported seconds per image, leaving out those that have learnt nothing yet (0) and
    any missing or non-finite value; None when no replica has a figure."""
    values = (aggregated_metrics or {}).get(S_PER_IMAGE) or {}
    known = [float(v) for v in values.values() if v is not None and math.isfinite(v) and v > 0]
    return sum(known) / len(known) if known else None
