"""Performance experiments (not the service): `python -m perf list`, `python -m perf run <lever> --out X.json`.

Levers run in-process on one GPU (perf/levers/); the standalone experiments below have their own modules.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXPERIMENTS = {  # standalone experiments: name -> (what it measures, its command)
    "cold_start": (
        "replica cold start: build + compile + first 1024x1024 image (run twice: empty, then warm Inductor cache)",
        "python -m perf.cold_start --cache-dir /tmp/ic --out cold_start.json [--fp8]",
    ),
    "emulate_tiers": (
        "emulated 12/16/24 GB cards through real Serve: tier, memory mode, per-area batch caps, 1024x1024 to 2048x2048",
        "python -m perf.emulate_tiers --out tiers.json [--cards 24.15 17.18 12.88] [--sizes 1024x1024 2048x2048]",
    ),
    "png_cost": (
        "the ingress's image encoding cost per image (PNG, JPEG, WebP; noise and smooth images; CPU only)",
        "python -m perf.png_cost --out png_cost.json [--side 1024]",
    ),
}


def _list() -> None:
    from perf.levers import command, load_all

    print("Levers (in-process, cumulative; each runs after its prerequisites, `--after` overrides them):\n")
    for name, lv in load_all().items():
        after = " -> ".join(lv.after) or "-"
        gpu = " [GPU]" if lv.gpu_only else ""
        print(f"  {name:<22}{lv.doc}{gpu}\n  {'':<22}after: {after}\n  {'':<22}{command(name)}\n")
    print("Standalone experiments:\n")
    for name, (doc, cmd) in EXPERIMENTS.items():
        print(f"  {name:<22}{doc}\n  {'':<22}{cmd}\n")


def _run(args) -> int:
    from perf.levers import plan
    from perf.levers.session import Session

    try:
        order = plan(args.lever, args.after)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    session = Session(Path(args.out), args.batch, args.reps, args.profile_batch, args.smoke, args.model)
    session.out["levers"] = order
    for name in order:
        session.apply(name)
    session.finish()
    return 1 if session.out.get("errors") else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every lever and experiment, with its command")
    run = sub.add_parser("run", help="apply a lever after its prerequisites and time it")
    run.add_argument("lever")
    run.add_argument("--out", required=True, help="result JSON (rewritten after every row)")
    run.add_argument("--after", nargs="*", default=None, help="levers to apply first instead of the defaults")
    run.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    run.add_argument("--reps", type=int, default=2)
    run.add_argument("--profile-batch", type=int, default=4)
    run.add_argument("--smoke", action="store_true", help="tiny model on CPU at 256x256: checks the code, not speed")
    run.add_argument("--model", default=None, help="weights as serve_config's `model`; default random weights")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cmd == "list":
        _list()
        return 0
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
