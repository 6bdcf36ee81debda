"""Batch size from measured efficiency: per shape, the GPU seconds per image at each batch size, learnt from the
batches this replica runs, and the batch a policy picks from them.

Where batching buys no throughput (1024² on an H200: 0.806 s/img alone, 0.805 in batches of 12) a batch only makes
its first requests wait for the last; where it pays (512² on an H100: +58% img/s at batch 8) it is worth a wait.
`latency` runs the smallest batch whose seconds per image are within `tolerance` of the best batch the queue could
fill, and the best one outright when more requests of the shape wait than the largest batch takes (a backlog that
batches of the efficient size would not clear; where batching pays, a backlog tries every grid size up to the cap
first, so a single slow sample cannot keep the fastest size out of reach); `throughput` takes every waiting request
of the shape up to its cap (the classic dynamic batching).

Batch sizes are learnt on a grid (1, 2, 4, ... up to the cap, and the cap), climbing: the next grid size is tried
(`explore`) once the queue can fill it and the size before it beat its own predecessor by more than the tolerance.
So where batching buys nothing (1024² on an H200) only batches of 1 and 2 are ever run to learn it, not a batch of 12
that would hold its first request for 10 s; where it pays, the curve climbs to the cap. A size not run in the shape's
last `refresh` batches is tried again the same way, so a slow first run (a cold cache) is measured again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from deployments.options import BatchPolicy


def grid(cap: int) -> list[int]:
    """Batch sizes the curve is learnt at: powers of two below the cap, and the cap."""
    sizes, b = [], 1
    while b < cap:
        sizes.append(b)
        b *= 2
    return [*sizes, max(1, cap)]


@dataclass
class Curve:
    """Seconds per image by batch size for one shape: an exponentially weighted mean of the batches that ran."""

    s_per_image: dict[int, float] = field(default_factory=dict)
    batches: dict[int, int] = field(default_factory=dict)
    ran_at: dict[int, int] = field(default_factory=dict)  # batch size -> `runs` when it last ran
    runs: int = 0  # batches of this shape so far

    def observe(self, batch: int, seconds: float, weight: float) -> None:
        per = seconds / batch
        old = self.s_per_image.get(batch)
        self.s_per_image[batch] = per if old is None else old + weight * (per - old)
        self.batches[batch] = self.batches.get(batch, 0) + 1
        self.runs += 1
        self.ran_at[batch] = self.runs

    def stale(self, batch: int, refresh: int) -> bool:
        return batch not in self.s_per_image or self.runs - self.ran_at.get(batch, 0) >= refresh


@dataclass(frozen=True)
class Decision:
    batch: int
    reason: str  # "throughput" | "explore" | "efficient" (within tolerance of the best) | "best" | "backlog"
    queued: int
    cap: int


class EfficiencyModel:
    """Curves per shape key (task, width, height, steps) and the last decision for each; shown in /info."""

    def __init__(self, weight: float = 0.3, refresh: int = 64):
        self.weight, self.refresh = weight, refresh
        self.curves: dict[tuple, Curve] = {}
        self.decisions: dict[tuple, Decision] = {}
        self._lock = threading.Lock()  # observed from the GPU thread, read by the event loop

    def observe(self, key: tuple, batch: int, seconds: float) -> None:
        if batch >= 1 and seconds > 0:
            with self._lock:
                self.curves.setdefault(key, Curve()).observe(batch, seconds, self.weight)

    def choose(self, key: tuple, queued: int, cap: int, policy: BatchPolicy, tolerance: float) -> Decision:
        """How many of the `queued` requests of this shape (FIFO) the next batch takes, at most `cap`."""
        cap = max(1, cap)
        with self._lock:
            if policy is BatchPolicy.THROUGHPUT:
                decision = Decision(cap, "throughput", queued, cap)
            else:
                decision = self._latency(key, max(1, min(queued, cap)), queued, cap, tolerance)
            self.decisions[key] = decision
        return decision

    def _latency(self, key: tuple, fillable: int, queued: int, cap: int, tolerance: float) -> Decision:
        learnt = self.curves.get(key, Curve())
        curve, candidates = learnt.s_per_image, []
        for b in (b for b in grid(cap) if b <= fillable):
            if learnt.stale(b, self.refresh):
                return Decision(b, "explore", queued, cap)
            candidates.append(b)
            if len(candidates) > 1 and curve[b] > curve[candidates[-2]] * (1 - tolerance):
                break  # batching stopped paying here: larger sizes are neither tried nor chosen
        if queued > cap and len(candidates) > 1 and curve[2] < curve[1] * (1 - tolerance):
            # A backlog of a shape where batching pays: requests wait anyway, so every grid size up to the cap is
            # worth knowing (one slow sample must not stop the climb short of the fastest size) and the fastest runs.
            for b in grid(cap):
                if learnt.stale(b, self.refresh):
                    return Decision(b, "explore", queued, cap)
            candidates = grid(cap)
        best = min(curve[b] for b in candidates)
        if queued > cap:
            return Decision(next(b for b in candidates if curve[b] == best), "backlog", queued, cap)
        chosen = next(b for b in candidates if curve[b] <= best * (1 + tolerance))
        return Decision(chosen, "best" if curve[chosen] == best else "efficient", queued, cap)

    def as_dict(self) -> dict:
        """Per shape (`task WxH steps`): seconds per image by batch size, batches seen, the last decision."""
        out = {}
        with self._lock:
            keys = sorted(set(self.curves) | set(self.decisions), key=str)
            curves = {k: Curve(dict(c.s_per_image), dict(c.batches)) for k, c in self.curves.items()}
        for key in keys:
            curve, decision = curves.get(key, Curve()), self.decisions.get(key)
            out[label(key)] = {
                "s_per_image": {str(b): round(s, 4) for b, s in sorted(curve.s_per_image.items())},
                "batches": {str(b): n for b, n in sorted(curve.batches.items())},
                "last_decision": None if decision is None else vars(decision),
            }
        return out


def shape_key(batch_key: tuple) -> tuple:
    """The part of a request's batch key the GPU time depends on: task, width, height, steps."""
    return tuple(batch_key[:4])


def label(key: tuple) -> str:
    task, width, height, steps = key
    return f"{task} {width}x{height} {steps} steps"
