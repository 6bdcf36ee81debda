"""The ingress's own bound on the images it has at the generator (sent, not yet answered), per ingress process.

Why: Serve's `max_queued_requests` is enforced by the handle's router, which first probes the busy generator replica
for its queue length; on a loaded CPU box those probes time out (`Failed to get queue length ... within 0.1s`) and a
burst's 503s took seconds. This counter decides at once, from what this process itself has sent, before any await;
Serve's bound stays behind it as the second line of defense.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

logger = logging.getLogger("ray.serve")


class InFlightImages:
    """Images this ingress process has sent to the generator and not yet got back, at most `limit`.

    `try_acquire(n)` admits all n images of a request or none, in O(1) and without awaiting, so concurrent requests on
    the event loop cannot interleave inside a decision. A request larger than the whole bound is admitted only when
    nothing else is in flight (it would otherwise never fit). `limit=None`: no bound, still counted.
    """

    def __init__(self, limit: int | None, on_change: Callable[[int], None] | None = None):
        if limit is not None and limit < 1:
            raise ValueError(f"in-flight bound must be >= 1, got {limit}")
        self.limit, self.in_flight, self._on_change = limit, 0, on_change

    def try_acquire(self, n: int) -> bool:
        if n < 1:
            raise ValueError(f"a request holds at least one image, got {n}")
        if self.limit is not None and self.in_flight + n > self.limit and self.in_flight > 0:
            return False
        self._set(self.in_flight + n)
        return True

    def full(self) -> bool:
        """No request of any size would be admitted now: the bound (>= 1) is reached."""
        return self.limit is not None and self.in_flight >= self.limit

    def release(self, n: int) -> None:
        if n > self.in_flight:  # a release without its acquire: a bug, but never let the count go negative
            logger.error("in-flight images: releasing %d with only %d held", n, self.in_flight)
        self._set(max(0, self.in_flight - n))

    def _set(self, value: int) -> None:
        self.in_flight = value
        if self._on_change is not None:
            self._on_change(value)

    def as_dict(self) -> dict:
        return {"max_in_flight_images": self.limit, "in_flight_images": self.in_flight}


def _replicas(options: Mapping) -> int:
    """Replicas a deployment is sure to have: `num_replicas`, or its autoscaling minimum (at least 1)."""
    if isinstance(options.get("num_replicas"), int):
        return max(1, options["num_replicas"])
    autoscaling = options.get("autoscaling_config") or {}
    if isinstance(autoscaling, Mapping):
        return max(1, int(autoscaling.get("min_replicas", 1)))
    return max(1, int(getattr(autoscaling, "min_replicas", 1)))  # an AutoscalingConfig object


def derived_bound(generator: Mapping, ingress: Mapping) -> int | None:
    """What Serve itself admits per ingress replica: each of N generator replicas takes `max_ongoing_requests`
    (shared by the M ingress replicas), and each ingress's handle queues `max_queued_requests` more.
    None when Serve's queue is unbounded (`max_queued_requests: -1`)."""
    queued = generator["max_queued_requests"]
    if queued == -1:
        return None
    n, m = _replicas(generator), _replicas(ingress)
    return -(-n * generator["max_ongoing_requests"] // m) + queued
