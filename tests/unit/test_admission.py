"""The ingress's own in-flight accounting (deployments/http/admission.py) and its use in GenerationClient.run (asyncio,
no Serve): the bound, all-or-nothing admission of a request's n images, places given back whatever ends a request
(answer, failure, cancellation), and the bound derived from the deployment options. The Serve-level effect (a burst's
fast 503s) is tests/reliability/test_overload.py::test_a_300_request_burst_is_refused_by_the_ingress_at_once."""

from __future__ import annotations

import asyncio
import random

import pytest
from ray.serve.exceptions import BackPressureError

from deployments.app import GENERATOR_DEFAULTS, INGRESS_DEFAULTS
from deployments.http.admission import InFlightImages, derived_bound
from deployments.http.errors import GenerationFailed, Overloaded
from deployments.http.serving import GenerationClient
from deployments.messages import GenerationResult, GenerationSpec
from tests.serve_harness import tiny_config

CFG = tiny_config(retry_after_s=5)


class _Counter:
    def __init__(self):
        self.tags: list[dict] = []

    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        self.tags.append(tags or {})


class _Metrics:
    def __init__(self):
        self.rejected = _Counter()


class _Generator:
    """Stands in for the Generator's DeploymentHandle: each `generate.remote(spec)` waits until `release()`, then
    answers, fails (`fail`: a failed result or an exception, by prompt) or raises Serve's back-pressure."""

    def __init__(self):
        self.generate, self.started = self, 0
        self._go = asyncio.Event()
        self.outcome: dict[str, object] = {}  # prompt -> "failed" | an exception to raise

    def remote(self, spec: GenerationSpec):
        async def result() -> GenerationResult:
            self.started += 1
            await self._go.wait()
            outcome = self.outcome.get(spec.prompt)
            if isinstance(outcome, BaseException):
                raise outcome
            error = "boom" if outcome == "failed" else None
            return GenerationResult(None, spec.seed, "random:tiny", "r", error=error, error_kind=error and "internal")

        return result()

    def release(self) -> None:
        self._go.set()


def specs(prompt: str, n: int = 1) -> list[GenerationSpec]:
    return [GenerationSpec(prompt, 256, 256, 1, seed, request_id=prompt) for seed in range(n)]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# ---- the counter ----------------------------------------------------------------------------------------------------
def test_admits_up_to_the_bound_and_a_release_makes_room():
    seen = []
    a = InFlightImages(4, on_change=seen.append)
    assert [a.try_acquire(1) for _ in range(5)] == [True, True, True, True, False]
    a.release(1)
    assert a.try_acquire(1) and not a.try_acquire(1)
    assert seen == [1, 2, 3, 4, 3, 4]  # every change reaches the gauge; a refusal changes nothing
    assert a.as_dict() == {"max_in_flight_images": 4, "in_flight_images": 4}


def test_a_request_is_admitted_with_all_its_images_or_not_at_all():
    a = InFlightImages(4)
    assert a.try_acquire(3)
    assert not a.try_acquire(2) and a.in_flight == 3  # 2 images do not fit: neither is taken
    assert a.try_acquire(1) and a.in_flight == 4


def test_a_request_larger_than_the_bound_runs_alone_instead_of_never():
    a = InFlightImages(2)
    assert a.try_acquire(4) and a.in_flight == 4
    assert not a.try_acquire(1)
    a.release(4)
    assert a.try_acquire(1) and not a.try_acquire(4)


def test_no_bound_still_counts_and_bad_arguments_are_refused():
    a = InFlightImages(None)
    assert all(a.try_acquire(4) for _ in range(100)) and a.in_flight == 400
    a.release(500)  # more than held: logged, clamped at 0
    assert a.in_flight == 0
    with pytest.raises(ValueError):
        InFlightImages(0)
    with pytest.raises(ValueError):
        a.try_acquire(0)


def test_the_derived_bound_is_what_serve_admits_per_ingress_replica():
    assert derived_bound(GENERATOR_DEFAULTS, INGRESS_DEFAULTS) == 32 + 64  # one Generator, one Ingress
    gen = {"max_ongoing_requests": 8, "max_queued_requests": 8}
    assert derived_bound(gen, {}) == 16
    assert derived_bound({**gen, "num_replicas": 3}, {"num_replicas": 2}) == 12 + 8  # ceil(3 x 8 / 2) + 8
    assert derived_bound({**gen, "autoscaling_config": {"min_replicas": 2, "max_replicas": 4}}, {}) == 24
    assert derived_bound({**gen, "autoscaling_config": {"min_replicas": 0}}, {}) == 16  # scale to zero: one replica
    assert derived_bound({**gen, "max_queued_requests": -1}, {}) is None  # Serve's queue unbounded: so is this
    assert CFG.ingress_max_in_flight is None and tiny_config(ingress_max_in_flight=7).ingress_max_in_flight == 7


# ---- GenerationClient.run: the decision, and places given back -------------------------------------------------------
def client(limit: int | None) -> tuple[GenerationClient, _Generator, _Metrics]:
    gen, metrics = _Generator(), _Metrics()
    return GenerationClient(CFG, gen, metrics, InFlightImages(limit)), gen, metrics


def test_over_the_bound_is_a_typed_503_decided_without_calling_the_generator():
    async def go():
        c, gen, metrics = client(3)
        held = asyncio.create_task(c.run(specs("held", 2)))
        await settle()
        assert (c.admission.in_flight, gen.started) == (2, 2)
        with pytest.raises(Overloaded) as info:
            await c.run(specs("too many", 2))  # 2 + 2 > 3: refused whole, at once
        assert gen.started == 2 and c.admission.in_flight == 2
        gen.release()
        assert len(await held) == 2 and c.admission.in_flight == 0
        return info.value, metrics

    err, metrics = asyncio.run(go())
    assert (err.status, err.type, err.code) == (503, "overloaded", "queue_full")
    assert err.headers == {"Retry-After": "5"} and "busy" in err.message
    assert metrics.rejected.tags == [{"reason": "ingress_full"}]


def test_a_full_ingress_refuses_before_a_body_is_read():
    """`refuse_if_full` (called by the edits route before it reads the upload) refuses exactly when `run` would refuse
    any request: the bound reached; never when there is room, nor for the lone oversized request it admits."""

    async def go():
        c, gen, metrics = client(2)
        c.refuse_if_full()  # empty: room
        held = asyncio.create_task(c.run(specs("held", 1)))
        await settle()
        c.refuse_if_full()  # 1 of 2: room for one more
        second = asyncio.create_task(c.run(specs("second", 1)))
        await settle()
        with pytest.raises(Overloaded) as info:
            c.refuse_if_full()  # 2 of 2
        gen.release()
        await asyncio.gather(held, second)
        c.refuse_if_full()  # room again
        return info.value, metrics

    err, metrics = asyncio.run(go())
    assert (err.status, err.code) == (503, "queue_full") and err.headers == {"Retry-After": "5"}
    assert metrics.rejected.tags == [{"reason": "ingress_full"}]
    alone = InFlightImages(2)
    assert alone.try_acquire(5) and alone.full()  # an oversized request alone holds it: the next is refused
    assert not InFlightImages(None).full()


def test_cancelled_and_failed_requests_give_their_places_back():
    async def go():
        c, gen, _ = client(8)
        gen.outcome = {"failed": "failed", "raises": RuntimeError("lost"), "busy": BackPressureError(64, 64)}
        tasks = {p: asyncio.create_task(c.run(specs(p, 2))) for p in ("cancelled", "failed", "raises", "busy")}
        await settle()
        assert c.admission.in_flight == 8 and not c.admission.try_acquire(1)
        tasks["cancelled"].cancel()  # the client went away while its images were at the generator
        await settle()
        assert c.admission.in_flight == 6
        gen.release()
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
        return c, dict(zip(tasks, outcomes, strict=True))

    c, out = asyncio.run(go())
    assert isinstance(out["cancelled"], asyncio.CancelledError)
    assert isinstance(out["failed"], GenerationFailed)
    assert isinstance(out["raises"], ExceptionGroup)  # not an ApiError: the route answers 500
    assert isinstance(out["busy"], Overloaded) and out["busy"].code == "queue_full"  # Serve's bound, still mapped
    assert c.admission.in_flight == 0


def test_concurrent_requests_never_exceed_the_bound_and_leave_nothing_behind():
    """200 requests of 1-4 images at once against a bound of 10: at every moment at most 10 images are held; each
    request is admitted whole or refused whole; answers, failures and cancellations all end at 0."""
    rng = random.Random(17)

    async def go():
        gen, metrics = _Generator(), _Metrics()
        peak = [0]
        admission = InFlightImages(10, on_change=lambda v: peak.__setitem__(0, max(peak[0], v)))
        c = GenerationClient(CFG, gen, metrics, admission)
        plan = [(f"r{i}", rng.randint(1, 4), rng.choice(["ok", "failed", "cancel"])) for i in range(200)]
        gen.outcome = {p: "failed" for p, _, how in plan if how == "failed"}
        tasks = [asyncio.create_task(c.run(specs(p, n))) for p, n, _ in plan]
        await settle()
        admitted = admission.in_flight
        for task, (_, _, how) in zip(tasks, plan, strict=True):
            if how == "cancel":
                task.cancel()
        await settle()
        gen.release()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        return admission, peak[0], admitted, outcomes, metrics

    admission, peak, admitted, outcomes, metrics = asyncio.run(go())
    assert 7 <= admitted <= 10 and peak <= 10  # full up to the last request that fit
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert refused and len(refused) == len(metrics.rejected.tags)
    assert admission.in_flight == 0
