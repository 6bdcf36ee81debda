"""The Generator's autoscaling policy (deployments/autoscaling.py) as Serve's controller calls it, without a cluster:
Ray's own `AutoscalingContext` and `AutoscalingConfig`, and for the delays Ray's own wrapper around custom policies
on a fake clock. Figures are the H200's: 0.8 s of GPU per image at 1024², target wait 10 s."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import yaml
from ray.serve import autoscaling_policy as serve_policy
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from deployments.autoscaling import S_PER_IMAGE, QueueWaitPolicy, backlog_seconds_per_image, learnt_seconds_per_image

REPO = Path(__file__).resolve().parents[2]
CONFIG = AutoscalingConfig(
    min_replicas=1, max_replicas=4, target_ongoing_requests=16, upscale_delay_s=30, downscale_delay_s=600
)


def context(
    ongoing: float,
    s_per_image: dict | None = None,
    target: int = 1,
    state: dict | None = None,
    lo: int = 1,
    hi: int = 4,
    config: AutoscalingConfig = CONFIG,
) -> AutoscalingContext:
    """What the controller passes: `s_per_image` maps replica -> its reported figure; None = no custom metric at all."""
    return AutoscalingContext(
        deployment_id=None,
        deployment_name="Generator",
        app_name="zimage",
        current_num_replicas=target,
        target_num_replicas=target,
        running_replicas=[f"r{i}" for i in range(target)],
        total_num_requests=ongoing,
        total_queued_requests=0.0,
        aggregated_metrics=None if s_per_image is None else {S_PER_IMAGE: s_per_image},
        raw_metrics=None,
        capacity_adjusted_min_replicas=lo,
        capacity_adjusted_max_replicas=hi,
        policy_state=dict(state or {}),
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=0.0,
        config=config,
    )


H200 = {"r0": 0.8}
policy = QueueWaitPolicy(target_queue_wait_s=10, downscale_headroom=0.5)


def wanted(ongoing: float, s: dict | None = H200, target: int = 1, **kw) -> int:
    return policy(context(ongoing, s, target, **kw))[0]


def test_rising_load_adds_replicas_as_the_queue_wait_passes_the_target():
    # 12 ongoing x 0.8 s = 9.6 s of wait on one replica: under 10 s; 13 -> 10.4 s: two replicas
    assert [wanted(n) for n in (0, 5, 12, 13, 26, 40)] == [1, 1, 1, 2, 3, 4]
    count, state = policy(context(30, H200))
    assert count == 3 and state["basis"] == "queue_wait" and state["queue_wait_s"] == 24.0


def test_the_learnt_speed_sets_the_scale_not_the_request_count():
    """20 ongoing: at 0.8 s/img two replicas hold a 10 s wait; at 2048² (~3.2 s/img) it takes four; batched 512²
    (0.1 s/img) keeps one."""
    assert [wanted(20, {"r0": s}) for s in (0.1, 0.8, 3.2)] == [1, 2, 4]


def test_replicas_report_apart_and_the_policy_takes_their_mean():
    assert wanted(20, {"r0": 0.4, "r1": 1.2}, target=2) == 2  # mean 0.8: 16 s of work, 10 s target -> 2
    assert learnt_seconds_per_image({S_PER_IMAGE: {"r0": 0.4, "r1": 1.2}}) == pytest.approx(0.8)


def test_falling_load_removes_replicas_only_below_half_the_target():
    # 3 replicas, 20 ongoing x 0.8 = 16 s of work: 2 replicas would keep 8 s (< 10) but not under 5 s: stay at 3
    assert wanted(20, target=3) == 3
    assert wanted(12, target=3) == 2  # 9.6 s of work: 2 replicas keep it at 4.8 s
    assert wanted(6, target=3) == 1  # 4.8 s: one replica
    assert wanted(0, target=3) == 1  # idle: min_replicas


def test_load_around_the_target_holds_the_count():
    """Flapping inputs: 11 and 13 ongoing (8.8 s / 10.4 s of work) alternate; two replicas stay two, one stays one
    until the wait on it is over the target."""
    assert {wanted(n, target=2) for n in (11, 13, 11, 13, 7, 13)} == {2}
    assert {wanted(n, target=1) for n in (11, 12, 11, 12)} == {1}


def test_bounds_are_the_capacity_adjusted_ones():
    assert wanted(100, hi=3) == 3  # a full queue cannot ask beyond max (or target_capacity's share of it)
    assert wanted(0, target=2, lo=2) == 2
    assert wanted(0, lo=0) == 0  # min_replicas 0: an idle deployment may go to zero


@pytest.mark.parametrize(
    "metrics",
    [None, {}, {"r0": 0.0}, {"r0": math.nan}, {"r0": None}],
    ids=["no custom metric", "no replica reported", "nothing learnt", "nan", "none"],
)
def test_before_anything_is_learnt_serves_ongoing_request_formula_stands_in(metrics):
    """Missing metrics: 40 ongoing against target_ongoing_requests 16 -> 3 replicas, as Serve's default would."""
    count, state = policy(context(40, metrics))
    assert count == 3 and state["basis"] == "ongoing_requests" and state["queue_wait_s"] is None
    assert policy(context(20, metrics, target=3))[0] == 3  # dead band there too: 20 < 16 x 3 but > 8 x 2
    assert policy(context(5, metrics, target=3))[0] == 1


def test_a_fresh_replica_that_has_learnt_nothing_is_left_out():
    assert wanted(26, {"r0": 0.8, "r1": 0.0}, target=2) == 3


def test_state_says_why_and_is_plain_data():
    count, state = policy(context(13, H200))
    assert (count, state) == (2, {"wanted": 2, "basis": "queue_wait", "queue_wait_s": 10.4})


@pytest.mark.parametrize("kwargs", [{"target_queue_wait_s": 0}, {"downscale_headroom": 0}, {"downscale_headroom": 2}])
def test_nonsense_kwargs_fail_when_serve_builds_the_policy(kwargs):
    with pytest.raises(ValueError):
        QueueWaitPolicy(**kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def test_serve_applies_the_configured_delays_to_this_policy(monkeypatch):
    """Ray 2.60 wraps every custom policy (`_apply_autoscaling_config`, what the controller calls) with
    upscale_delay_s / downscale_delay_s: a wish must hold that long without a break. So the policy does not implement
    its own timers; this test fails if a Ray upgrade stops doing that."""
    clock = Clock()
    monkeypatch.setattr(serve_policy, "time", types.SimpleNamespace(time=clock.time))
    wrapped = serve_policy._apply_autoscaling_config(policy)
    target, state = 1, {}

    def tick(ongoing: float, seconds: float = 1.0) -> int:
        nonlocal target, state
        clock.now += seconds
        target, state = wrapped(context(ongoing, H200, target, state))
        return target

    # flapping: over the target every other second for two minutes never scales (each dip resets the delay)
    assert {tick(13 if i % 2 == 0 else 11) for i in range(120)} == {1}
    # rising: a sustained wait over the target scales after upscale_delay_s (30 s), not before
    assert [tick(40) for _ in range(30)] == [1] * 30
    assert tick(40) == 4
    # falling: short lulls do not give replicas back; 600 s of low load does
    assert {tick(0, 60.0) if i % 5 != 4 else tick(40, 60.0) for i in range(20)} == {4}
    assert [tick(0, 60.0) for _ in range(10)][-1] == 4
    assert tick(0, 60.0) == 1


def test_backlog_seconds_per_image_from_the_learnt_curves():
    curves = {
        "t2i 1024x1024 8 steps": {"s_per_image": {"1": 0.8, "2": 0.81}, "batches": {"1": 30, "2": 2}},
        "t2i 512x512 8 steps": {"s_per_image": {"1": 0.6, "2": 0.4, "4": 0.2}, "batches": {"1": 2, "2": 1, "4": 5}},
        "t2i 2048x2048 8 steps": {"s_per_image": {}, "batches": {}},  # seen, never run
    }
    assert backlog_seconds_per_image({}, []) == 0.0
    assert backlog_seconds_per_image(curves, [("t2i 512x512 8 steps", 2)]) == pytest.approx(0.4)  # a batch of 2
    assert backlog_seconds_per_image(curves, [("t2i 512x512 8 steps", 9)]) == pytest.approx(0.2)
    # two batch keys of one shape (e.g. two adapter sets) add up; shapes weigh by how many wait
    mixed = [("t2i 512x512 8 steps", 2), ("t2i 512x512 8 steps", 2), ("t2i 1024x1024 8 steps", 4)]
    assert backlog_seconds_per_image(curves, mixed) == pytest.approx((4 * 0.2 + 4 * 0.8) / 8)
    # nothing learnt waits: a lone request's figure, over the shapes weighted by the batches each ran (32 vs 8)
    assert backlog_seconds_per_image(curves, [("t2i 2048x2048 8 steps", 3)]) == pytest.approx((32 * 0.8 + 8 * 0.6) / 40)


@pytest.mark.parametrize("config_file", ["serve_config.yaml", "serve_config.cpu.yaml"])
def test_serve_config_uses_the_policy_and_its_controller_copy_loads(config_file):
    """Both shipped configs' Generator names this policy; Serve pickles it by value for the controller, and that copy
    builds with the file's kwargs."""
    config = yaml.safe_load((REPO / config_file).read_text())
    generator = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Generator")
    auto = AutoscalingConfig(**generator["autoscaling_config"])
    assert auto.policy.policy_function == "deployments.autoscaling:QueueWaitPolicy"
    built = auto.policy.get_policy()(**auto.policy.policy_kwargs)
    assert (built.target_queue_wait_s, built.downscale_headroom) == (10.0, 0.5)
    assert built(context(13, H200, config=auto))[0] == 2
