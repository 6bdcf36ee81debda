"""Latency vs offered load, and a capacity plan, for one or more user_config variants of a running service.

Per variant: PUT its user_config change live (Serve REST API, `ServeControl.apply_user_config`), then per workload
(one shape, or a preset mix) measure capacity with a closed loop that keeps batches full, then run an open loop
(seeded Poisson arrivals) at each fraction of that capacity, and plan from the curve (`capacity_plan`). Every load
waits for its last answer before the next starts, so no load inherits another's queue. The deployed values come back
at the end.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from bench.capacity_plan import capacity_plan
from bench.load_curve import DEFAULT_LOADS, load_schedule, load_summary, variant_changes
from bench.loadgen import LoadSpec, run_load
from bench.progress import request_bar
from bench.results import RunFile
from bench.serve_control import ServeControl
from bench.shape_mix import ShapeMix
from bench.sweep import log_failures
from bench.telemetry import summarize_window

logger = logging.getLogger(__name__)


@dataclass
class CapacitySpec:
    variants: dict[str, dict] = field(default_factory=lambda: {"deployed": {}})  # name -> user_config overlay
    loads: tuple[float, ...] = DEFAULT_LOADS  # fractions of measured capacity (its own, or rates_from's)
    requests_per_load: int = 300
    capacity_requests: int = 64  # closed loop at saturation, measured
    capacity_clients: int | None = None  # None: 2 x the replica's effective max batch (one batch running, one queued)
    warmup_requests: int | None = None  # before each capacity run; None: one round of the clients
    warmup_steps: int | None = None
    p99_target_s: float = 10.0
    target_rate_rps: float | None = None
    arrival_seed: int = 0
    rates_from: str | None = None  # a variant whose capacity sets every variant's rates (the same arrivals for all)
    drain_s: float = 120.0  # after a load's last send, wait this long for answers (then cancel: errors)
    max_load_s: float | None = None  # stop sending a load's arrivals after this (None: its whole schedule)
    timeout_s: float = 600.0
    reconfigure_timeout_s: float = 180.0

    def describe(self) -> dict:
        return asdict(self)


class CapacityRun:
    """Drives the service through every variant and workload, saving each measured phase as a row of `run`."""

    def __init__(self, url: str, control: ServeControl | None, spec: CapacitySpec, run: RunFile, sampler=None):
        self.url, self.control, self.spec, self.run, self.sampler = url, control, spec, run, sampler
        self.headers = control.auth_headers if control else {}
        run.data.setdefault("variants", {})
        run.data.setdefault("plans", [])
        self._capacity: dict[tuple[str, str], float] = {}  # (variant, workload) -> measured img/s

    def execute(self, mixes: dict[str, ShapeMix], info: dict) -> None:
        current = (info.get("generator") or {}).get("user_config") or {}
        changes, original = variant_changes(current, self.spec.variants)
        basis = self.spec.rates_from
        if basis is not None:
            if basis not in changes:
                raise ValueError(f"rates_from {basis!r} is not one of the variants {sorted(changes)}")
            changes = {basis: changes.pop(basis), **changes}  # measured first: the others' rates come from it
        if original and self.control is None:
            raise ValueError("variants change user_config: they need the Ray dashboard (Serve REST API)")
        replicas = generator_replicas(self.control)
        try:
            for name, change in changes.items():
                gen = self._apply(change) if change else info["generator"]
                self.run.data["variants"][name] = {
                    "overlay": self.spec.variants[name],
                    "user_config": gen.get("user_config"),
                    "batching": gen.get("batching"),
                    "replica_restarted": gen.get("restarted", False),
                }
                for workload, mix in mixes.items():
                    self._curve(name, workload, mix, gen, replicas)
                self.run.data["variants"][name]["batching_after"] = self._batching_now()
        finally:
            if original:
                try:
                    self._apply(original)
                except Exception as exc:
                    logger.warning("could not restore user_config %s: %s", original, exc)

    def _batching_now(self) -> dict | None:
        """The replica's batching state after a variant's loads: learnt curves, decisions, GPU idle gaps (/info)."""
        if self.control is None:
            return None
        try:
            return (self.control.info().get("generator") or {}).get("batching")
        except Exception as exc:  # the run's figures stand without it
            logger.warning("could not read /info after the variant: %s", exc)
            return None

    def _apply(self, change: dict) -> dict:
        gen = self.control.apply_user_config(change, timeout_s=self.spec.reconfigure_timeout_s)
        logger.info("user_config %s applied (effective max batch %s)", change, gen["batching"]["effective_max_batch"])
        return gen

    def _curve(self, variant: str, workload: str, mix: ShapeMix, gen: dict, replicas: int) -> None:
        s = self.spec
        clients = s.capacity_clients or 2 * int(gen["batching"]["effective_max_batch"])
        warm = clients if s.warmup_requests is None else s.warmup_requests
        cap_spec = LoadSpec(
            mode="closed",
            concurrency=clients,
            requests=s.capacity_requests,
            duration_s=s.max_load_s or 3600.0,
            drain_s=s.drain_s,
            warmup_requests=warm,
            warmup_steps=s.warmup_steps,
            cooldown=True,
            timeout_s=s.timeout_s,
        )
        tags = {"variant": variant, "workload": workload}
        cap = self._phase({**tags, "phase": "capacity", "fraction": None, "concurrency": clients}, mix, cap_spec)
        capacity = cap["throughput_img_s"]
        if not capacity or cap["ok"] < cap["sent"]:
            self.run.skip(tags, f"capacity run failed: {cap['ok']}/{cap['sent']} ok, {capacity} img/s")
            return
        self._capacity[(variant, workload)] = capacity
        basis = capacity if s.rates_from is None else self._capacity.get((s.rates_from, workload))
        if basis is None:
            self.run.skip(tags, f"no capacity of {s.rates_from!r} for {workload}: its rates are unknown")
            return
        loads = []
        for point in load_schedule(basis, s.loads, s.requests_per_load, s.arrival_seed):
            bound = point.planned_s + 1.0 if s.max_load_s is None else min(s.max_load_s, point.planned_s + 1.0)
            spec = LoadSpec(
                mode="open",
                rate=point.rate_rps,
                requests=s.requests_per_load,
                duration_s=bound,
                drain_s=s.drain_s,
                timeout_s=s.timeout_s,
                arrival_seed=s.arrival_seed,
            )
            key = {**tags, "phase": "load", "fraction": point.fraction, "offered_rate_rps": point.rate_rps}
            loads.append(self._phase({**key, "planned_s": point.planned_s}, mix, spec))
        plan = capacity_plan(loads, capacity, s.p99_target_s, s.target_rate_rps, replicas)
        self.run.data["plans"].append({**tags, **plan})
        self.run.save()
        logger.info("%s / %s: %s", variant, workload, plan_line(plan))

    def _phase(self, key: dict, mix: ShapeMix, spec: LoadSpec) -> dict:
        what = f"{key['variant']} {key['workload']} " + (
            f"{key['fraction']:g}x" if key["fraction"] is not None else "capacity"
        )
        with request_bar(spec.warmup_requests + spec.requests, what) as on_done:
            phases = run_load(self.url, mix, spec, on_done=on_done, headers=self.headers)
        records = [_with_shape(r.as_dict(), mix) for p in phases.values() for r in p.records]
        measured = [r for r in records if r["phase"] == "measure"]
        summary = {**key, "steps": mix.base.steps, **load_summary(measured)}
        samples = self.sampler.window(summary["window_start"], summary["window_end"]) if self.sampler else []
        summary.update(summarize_window(samples, summary["window_start"], summary["window_end"]))
        row = {"summary": summary, "requests": records, "telemetry_samples": [x.as_dict() for x in samples]}
        self.run.data["rows"].append(row)
        self.run.save()
        log_failures(measured)
        logger.info("%s: %s", what, summary_line(summary))
        return summary


def _with_shape(record: dict, mix: ShapeMix) -> dict:
    """The record and the size it asked for (the mix's shape of its index): per-shape batches need it."""
    w, h = mix.shape(record["index"])
    return {**record, "width": w, "height": h}


def generator_replicas(control: ServeControl | None, app: str = "zimage", deployment: str = "Generator") -> int:
    """Running Generator replicas (Serve's details); 1 when they cannot be read (no dashboard)."""
    if control is None:
        return 1
    try:
        dep = control.details()["applications"][app]["deployments"][deployment]
        return max(1, sum(r.get("state") == "RUNNING" for r in dep.get("replicas") or []))
    except Exception as exc:  # an older/newer schema: plan for one replica and say so
        logger.warning("could not count %s replicas (%s): planning per service, as if 1", deployment, exc)
        return 1


def _f(v, fmt: str, unit: str = "") -> str:
    return "n/a" if v is None else format(v, fmt) + unit


def summary_line(s: dict) -> str:
    rate = ""
    if s.get("offered_rate_rps"):  # an open-loop load (a closed loop sends on answers: no rate of its own)
        rate = f"{s['offered_rate_rps']:.3f} req/s offered, {_f(s['sent_rate_rps'], '.3f')} sent, "
    return (
        f"{rate}{_f(s['throughput_img_s'], '.3f')} img/s answered; "
        f"{s['ok']}/{s['sent']} ok ({s['rejected']} rejected, {s['errors']} errors); p50/p90/p99 "
        f"{_f(s['latency_p50_s'], '.2f')}/{_f(s['latency_p90_s'], '.2f')}/{_f(s['latency_p99_s'], '.2f')} s; "
        f"queue wait p50 {_f(s['queue_wait_p50_ms'], '.0f', ' ms')}; mean batch {_f(s['mean_batch_size'], '.2f')}"
    )


def plan_line(p: dict) -> str:
    if p["max_rate_rps"] is None:
        return f"no measured load meets p99 <= {p['p99_target_s']:g} s ({p['how']})"
    need = (
        f"; {p['target_rate_rps']:g} req/s needs {p['replicas_needed']} replica(s)"
        if p.get("replicas_needed") is not None
        else ""
    )
    return (
        f"p99 <= {p['p99_target_s']:g} s up to {p['per_replica_rate_rps']:.3f} req/s per replica "
        f"({p['max_fraction_of_capacity']:.2f}x the measured {p['capacity_img_s']:.3f} img/s; {p['basis']}: "
        f"{p['how']}){need}"
    )
