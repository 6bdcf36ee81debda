"""Throughput levers for Z-Image-Turbo, measured in one process on one GPU (experiments, not the service).

A lever is a small function registered by name: it changes the pipeline (compile, FP8, an attention backend, ...)
and/or records a measurement in the session's output. Unless it says otherwise, a timed row per batch size follows
(seconds per image, stage times, and for every row after `runner` the numerics against that eager reference).

    python -m perf list                                   # every lever and its command
    python -m perf run <lever> --out <lever>.json         # the lever after its default prerequisites
    python -m perf run <lever> --after runner compile --out x.json   # ... after levers of your choice

Levers apply cumulatively: each row is everything before it plus that lever.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Lever:
    name: str
    doc: str
    apply: Callable  # (Session) -> None
    after: tuple[str, ...] = ("runner",)  # default prerequisites, applied first (each with its own row)
    rows: bool = True  # time a row per batch size after `apply`
    gpu_only: bool = False  # meaningless (or impossible) on CPU: skipped by --smoke


LEVERS: dict[str, Lever] = {}


def lever(name: str, after: tuple[str, ...] = ("runner",), rows: bool = True, gpu_only: bool = False):
    """Register `fn(session)` as lever `name`; its docstring's first paragraph is what `python -m perf list` shows."""

    def register(fn: Callable) -> Callable:
        if name in LEVERS:
            raise ValueError(f"lever {name!r} registered twice")
        doc = " ".join(line.strip() for line in (fn.__doc__ or "").strip().split("\n\n")[0].splitlines())
        LEVERS[name] = Lever(name, doc, fn, after, rows, gpu_only)
        return fn

    return register


def load_all() -> dict[str, Lever]:
    """Import the lever modules (each registers its levers) and return the registry."""
    from perf.levers import compiling, fp8, pipelines, profiles, text_encoder  # noqa: F401

    return LEVERS


def command(name: str) -> str:
    return f"python -m perf run {name} --out {name}.json"


def plan(name: str, after: list[str] | None = None) -> list[str]:
    """The levers to apply, in order: the prerequisites (default or `after`), then `name`."""
    levers = load_all()
    if name not in levers:
        raise KeyError(f"unknown lever {name!r}; `python -m perf list` lists them")
    before = list(levers[name].after if after is None else after)
    unknown = [n for n in before if n not in levers]
    if unknown:
        raise KeyError(f"unknown lever(s) {unknown}")
    return [n for n in before if n != name] + [name]
