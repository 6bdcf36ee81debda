"""`python -m bench` command-line arguments: one parser, the grid/size/user-config syntax checked at parse time."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from bench.load_curve import DEFAULT_LOADS
from bench.shape_mix import WORKLOADS
from bench.workload import ARTICLE_PROMPT, ARTICLE_SEED, EDIT_INPUTS, TASKS, Lora


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def parse_grid(items: list[str]) -> list[tuple[int, int, list[int]]]:
    """`1024=1,2,4,8` or `768x1024=1,2` -> [(1024, 1024, [1, 2, 4, 8]), ...]"""
    grid = []
    for item in items:
        size, sep, sizes = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"grid entry {item!r} must look like 1024=1,2,4")
        w, h = parse_size(size)
        grid.append((w, h, [int(b) for b in sizes.split(",") if b.strip()]))
    return grid


def user_config_item(text: str) -> tuple[str, object]:
    """`batch_wait_timeout_s=0` -> ("batch_wait_timeout_s", 0); the value is a YAML scalar (number, true, null)."""

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} must look like KEY=VALUE")
    if key.strip() == "max_batch_size":
        raise argparse.ArgumentTypeError("max_batch_size is set per row by --grid")
    return key.strip(), yaml.safe_load(value)


def lora_item(text: str) -> Lora:
    """`ink` or `ink:0.8` -> Lora("ink", 0.8)."""
    try:
        return Lora.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def strength_value(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1]")
    return value


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        choices=TASKS,
        default="generate",
        help="edit / inpaint: POST /v1/images/edits with images the service generates first (inpaint: plus a mask "
        "transparent in the middle)",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        type=lora_item,
        metavar="NAME[:SCALE]",
        help="a LoRA adapter every request names (repeat to combine; no scale: the adapter's configured one)",
    )
    p.add_argument(
        "--strength",
        type=strength_value,
        default=None,
        help="edit / inpaint strength in (0, 1] (default: the service's, from its /info)",
    )
    p.add_argument("--edit-inputs", type=int, default=EDIT_INPUTS, help="edit / inpaint: distinct input images")


def _workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prompt-mode", choices=["article", "varied"], default="article")
    p.add_argument("--prompt", default=ARTICLE_PROMPT)
    p.add_argument("--seed", type=int, default=ARTICLE_SEED)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--telemetry", choices=["auto", "off"], default="auto", help="NVML/GPM sampling in this process")
    p.add_argument("--telemetry-hz", type=float, default=10.0)
    p.add_argument("--gpu-index", type=int, default=0, help="which visible GPU the sampler watches")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for MFU (default: by GPU name)")


def variant_item(text: str) -> tuple[str, dict]:
    """`old={"batch_policy": "throughput"}` -> ("old", {...}): JSON, or YAML flow (`{max_batch_size: 1}`)."""
    name, sep, value = text.partition("=")
    overlay = yaml.safe_load(value) if sep else None
    if not name.strip() or not isinstance(overlay, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must look like NAME='{{\"key\": value}}'")
    return name.strip(), overlay


def _capacity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        type=variant_item,
        metavar="NAME=JSON",
        help="a Generator user_config overlay applied live before its measurements (repeat; default: the deployed "
        "config as it is)",
    )
    p.add_argument(
        "--workload", nargs="+", choices=WORKLOADS, default=["single"], help="one shape, presets, or --shapes"
    )
    p.add_argument("--size", default=None, help="single: 1024 or WxH; default: the service's default size (its /info)")
    p.add_argument("--shapes", nargs="+", type=parse_size, default=[], metavar="WxH", help="mix: the sizes, in turns")
    p.add_argument("--loads", nargs="+", type=float, default=list(DEFAULT_LOADS), help="fractions of capacity")
    p.add_argument("--requests-per-load", type=int, default=300)
    p.add_argument("--capacity-requests", type=int, default=64, help="measured requests of the closed loop")
    p.add_argument("--capacity-clients", type=int, default=None, help="default: 2 x the effective max batch")
    p.add_argument("--warmup-requests", type=int, default=None, help="before each capacity run (default: clients)")
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--p99-target-s", type=float, default=10.0)
    p.add_argument("--target-rate", type=float, default=None, help="req/s the plan sizes replicas for")
    p.add_argument("--arrival-seed", type=int, default=0, help="Poisson arrivals and the preset order")
    p.add_argument(
        "--rates-from",
        default=None,
        metavar="VARIANT",
        help="open-loop rates of every variant from this variant's measured capacity, which is measured first "
        "(default: each variant's own)",
    )
    p.add_argument("--drain-s", type=float, default=120.0, help="after a load's last send, wait for answers")
    p.add_argument("--max-load-s", type=float, default=None, help="cut each load's sending after this")


def _http_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", choices=["generate", "openai"], default="generate")
    p.add_argument("--output-format", choices=["png", "jpeg", "webp"], default=None, help="default: png")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per request")
    p.add_argument("--api-key", default=os.environ.get("ZIMAGE_API_KEY"), help="bearer key if the service needs one")


def _target_args(p: argparse.ArgumentParser) -> None:
    """The service to reconfigure live: one this process launches, or one deployed from a config file."""
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--launch", type=Path, help="start a private Ray cluster and deploy this Serve config")
    target.add_argument("--url", help="a running service (deployed from a config file) ...")
    p.add_argument("--dashboard", default="http://127.0.0.1:8265", help="... and its Ray dashboard (Serve REST API)")
    p.add_argument("--config", type=Path, help="with --url: the config it was deployed with (default: ask Serve)")
    p.add_argument("--http-port", type=int, default=None, help="with --launch: override the config's port")
    p.add_argument("--dashboard-port", type=int, default=8265, help="with --launch")
    p.add_argument("--num-cpus", type=int, default=None, help="with --launch: logical CPUs of the private cluster")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark Z-Image-Turbo: load a running service (run, sweep), latency vs offered load and a "
        "capacity plan (capacity), plain diffusers in-process (baseline), tables and plots (report).",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="one load run (closed or open loop) against a running service")
    p.add_argument("--url", required=True)
    p.add_argument("--mode", choices=["closed", "open"], default="closed")
    p.add_argument("--concurrency", type=int, default=1, help="closed loop: clients")
    p.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    p.add_argument("--requests", type=int, default=16, help="measured requests (upper bound)")
    p.add_argument("--duration-s", type=float, default=300.0, help="bound on the measured phase")
    p.add_argument("--drain-s", type=float, default=120.0, help="then wait this long for answers in flight")
    p.add_argument("--warmup-requests", type=int, default=0)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--size", default=None, help="1024 or WxH; default: the service's default size (its /info)")
    p.add_argument("--arrival-seed", type=int, default=0)
    p.add_argument(
        "--cooldown", action="store_true", help="closed loop: keep sending (unmeasured) until the measured requests end"
    )
    _task_args(p)
    _workload_args(p)
    _http_args(p)

    p = sub.add_parser("sweep", help="batch-size sweep, reconfiguring a running deployment live")
    _target_args(p)
    p.add_argument("--grid", action="append", required=True, help="SIZE=BS,BS,... (repeat for more sizes)")
    p.add_argument("--batches", type=int, default=3, help="measured full batches per row")
    p.add_argument("--warmup-batches", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=None, help="warm-up steps (same shapes; default: --steps)")
    p.add_argument("--min-requests", type=int, default=4)
    p.add_argument("--clients-per-batch", type=int, default=2)
    p.add_argument("--row-timeout-s", type=float, default=300.0)
    p.add_argument("--budget-s", type=float, default=None, help="skip rows that would end the sweep after this")
    p.add_argument(
        "--no-cooldown", action="store_true", help="stop sending at the last measured request (partial last batches)"
    )
    p.add_argument(
        "--user-config",
        action="append",
        default=[],
        type=user_config_item,
        metavar="KEY=VALUE",
        help="Generator user_config for the whole sweep, e.g. batch_wait_timeout_s=0 (restored after)",
    )
    _workload_args(p)
    _http_args(p)

    p = sub.add_parser(
        "capacity",
        help="latency vs offered load (open loop at fractions of measured capacity) and a capacity plan, per "
        "user_config variant",
    )
    _target_args(p)
    _capacity_args(p)
    _workload_args(p)
    _http_args(p)

    p = sub.add_parser("baseline", help="in-process diffusers ZImagePipeline at the same batch sizes (no server)")
    p.add_argument("--model", default="random:full", help="random:full | random:tiny | hub id | local dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--grid", action="append", required=True)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=None)
    _workload_args(p)

    p = sub.add_parser("report", help="tables and plots from raw JSON; --serve + --baseline adds the comparison")
    p.add_argument("runs", nargs="*", type=Path, help="raw JSON files (each gets its own table and plots)")
    p.add_argument("--serve", type=Path)
    p.add_argument("--baseline", type=Path)
    p.add_argument("--out", type=Path, required=True)
    return ap
