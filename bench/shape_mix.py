"""Which image sizes a capacity run sends: one shape, a mix of the official presets the service allows, or a mix of
sizes given on the command line (`--shapes`).

Request i's shape is a function of i alone (a seeded shuffle of the shapes, reshuffled each round), so a record's
shape is known from its index and every shape is sent about as often as the others, even in short runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from bench.workload import Workload, WorkloadRequest
from deployments.presets import PRESETS

WORKLOADS = ("single", "presets", "mix")


@dataclass(frozen=True)
class ShapeMix:
    """A Workload whose request i is at `shape(i)`; everything else (prompt, steps, endpoint) comes from `base`."""

    base: Workload
    shapes: tuple[tuple[int, int], ...]
    seed: int = 0

    def __post_init__(self):
        if not self.shapes:
            raise ValueError("a shape mix needs at least one shape")

    def shape(self, i: int) -> tuple[int, int]:
        n = len(self.shapes)
        order = random.Random(f"{self.seed}:{i // n}").sample(range(n), n)
        return self.shapes[order[i % n]]

    def request(self, i: int, steps: int | None = None) -> WorkloadRequest:
        w, h = self.shape(i)
        return replace(self.base, width=w, height=h).request(i, steps)

    def describe(self) -> dict:
        return {
            **self.base.describe(),
            "width": None,
            "height": None,
            "shapes": [f"{w}x{h}" for w, h in self.shapes],
            "shape_order": "seeded shuffle per round of len(shapes) requests",
        }


def fits(limits: dict, w: int, h: int) -> bool:
    """The service's RequestLimits.allows, from /info's `limits`."""
    lo, hi, mult = limits.get("min_side", 256), limits.get("max_side", 2048), limits.get("side_multiple", 16)
    sides_ok = all(lo <= v <= hi and v % mult == 0 for v in (w, h))
    return sides_ok and w * h <= limits.get("max_pixels", 2048 * 2048)


def _scaled(w: int, h: int, factor: int, limits: dict) -> tuple[int, int]:
    mult, lo = limits.get("side_multiple", 16), limits.get("min_side", 256)
    smallest = -(-lo // mult) * mult  # min_side, up to the grid
    return tuple(max(smallest, v // factor // mult * mult) for v in (w, h))


def preset_shapes(info: dict) -> tuple[tuple[tuple[int, int], ...], str]:
    """The presets /info marks allowed; when it allows none (a CPU service: sides <= 512), every preset scaled down by
    the smallest whole factor that fits the limits (sides on the 16 grid, at least min_side). Returns the distinct
    shapes in preset order and a note saying which of the two it is."""
    limits = info.get("limits") or {}
    listed = [p for group in (info.get("presets") or {}).values() for p in group]
    allowed = [tuple(int(v) for v in p["size"].split("x")) for p in listed if p.get("allowed")]
    if allowed:
        return tuple(dict.fromkeys(allowed)), f"{len(allowed)} of {len(listed)} presets the service allows"
    for factor in range(2, 17):
        shapes = tuple(dict.fromkeys(_scaled(p.width, p.height, factor, limits) for p in PRESETS))
        if all(fits(limits, w, h) for w, h in shapes):
            return shapes, f"no preset fits the service's limits: all {len(PRESETS)} scaled down {factor}x"
    raise ValueError(f"no scaling of the presets fits the service's limits {limits}")


def mix_for(
    workload: str, base: Workload, info: dict, seed: int, shapes: tuple[tuple[int, int], ...] = ()
) -> tuple[ShapeMix, str]:
    """`single`: the base workload's size; `presets`: preset_shapes(info); `mix`: `shapes`, in seeded turns."""
    if workload == "single":
        return ShapeMix(base, ((base.width, base.height),), seed), f"{base.width}x{base.height}"
    if workload == "presets":
        shapes, note = preset_shapes(info)
        return ShapeMix(base, shapes, seed), note
    if workload == "mix":
        if not shapes:
            raise ValueError("the mix workload needs --shapes WxH [WxH ...]")
        return ShapeMix(base, tuple(dict.fromkeys(shapes)), seed), f"{len(set(shapes))} shapes given"
    raise ValueError(f"unknown workload {workload!r} ({' | '.join(WORKLOADS)})")
