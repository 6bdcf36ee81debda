"""`python -m bench {run,sweep,capacity,baseline,report}`: argument parsing and wiring; the work is in the modules."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from bench import environment
from bench.arguments import build_parser, parse_grid, parse_size
from bench.results import RunFile, load_run, run_name

logger = logging.getLogger("bench")


@contextlib.contextmanager
def _sampler(args):
    from bench.telemetry import na_reasons, open_sampler

    sampler, reason = (None, "telemetry off (--telemetry off)") if args.telemetry == "off" else (None, None)
    if args.telemetry != "off":
        sampler, reason = open_sampler(args.telemetry_hz, args.gpu_index)
    holder = {"sampler": sampler, "na": lambda: na_reasons(sampler, reason)}
    try:
        yield holder
    finally:
        if sampler is not None:
            sampler.stop()


def _auth(args) -> dict:
    return {"Authorization": f"Bearer {args.api_key}"} if getattr(args, "api_key", None) else {}


def _control(args, stack: contextlib.ExitStack):
    """ServeControl of the service to reconfigure: launched here (`--launch`, stopped when `stack` closes), or the
    running one at `--url` through `--dashboard`."""
    from bench.launcher import launched_service
    from bench.serve_control import ServeControl

    if args.launch:
        svc = launched_service(
            args.launch,
            http_port=args.http_port,
            dashboard_port=args.dashboard_port,
            num_cpus=args.num_cpus,
            logs_to=args.out / "serve_logs",
        )
        control = stack.enter_context(svc).control
    else:
        import yaml

        cfg = yaml.safe_load(args.config.read_text()) if args.config else None
        control = ServeControl(args.dashboard, args.url, cfg)
    control.auth_headers = _auth(args)
    return control


def cmd_sweep(args) -> int:
    from bench.sweep import SweepPlan, run_sweep

    plan = SweepPlan(
        grid=parse_grid(args.grid),
        steps=args.steps,
        batches=args.batches,
        warmup_batches=args.warmup_batches,
        min_requests=args.min_requests,
        clients_per_batch=args.clients_per_batch,
        warmup_steps=args.warmup_steps,
        row_timeout_s=args.row_timeout_s,
        budget_s=args.budget_s,
        request_timeout_s=args.timeout_s,
        prompt_mode=args.prompt_mode,
        prompt=args.prompt,
        seed=args.seed,
        endpoint=args.endpoint,
        output_format=args.output_format,
        cooldown=not args.no_cooldown,
        user_config=dict(args.user_config),
    )
    with contextlib.ExitStack() as stack:
        control = _control(args, stack)
        tel = stack.enter_context(_sampler(args))
        info = control.info()
        settings = {**plan.describe(), "peak_tflops": args.peak_tflops, "config": str(args.launch or args.config)}
        run = RunFile(
            args.out / "serve_sweep.json",
            "serve_sweep",
            "served (Ray Serve, HTTP)",
            info.get("model_source", "unknown"),
            environment.capture(args.gpu_index),
            settings,
        )
        run.set(service=info)
        failed = False
        try:
            run_sweep(control, plan, run, tel["sampler"])
        except Exception:  # keep and report the rows measured so far
            logger.exception("sweep stopped early")
            failed = True
        finally:
            run.data["telemetry"]["na"] = tel["na"]()
            run.save()
    return _report_one(run.data, args.out) or int(failed)


def cmd_baseline(args) -> int:
    from bench.baseline import BaselinePlan, build_pipeline, run_baseline

    plan = BaselinePlan(
        grid=parse_grid(args.grid),
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        warmup_steps=args.warmup_steps,
        budget_s=args.budget_s,
        prompt=args.prompt,
        seed=args.seed,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
    )
    pipe, label, device = build_pipeline(plan)
    dtype = str(pipe.transformer.dtype).removeprefix("torch.")
    settings = {**plan.describe(), "device": device, "dtype": dtype, "peak_tflops": args.peak_tflops}
    run = RunFile(
        args.out / "baseline.json",
        "baseline",
        "in-process diffusers ZImagePipeline",
        label,
        environment.capture(args.gpu_index),
        settings,
    )
    failed = False
    with _sampler(args) as tel:
        try:
            run_baseline(plan, pipe, device, run, tel["sampler"])
        except Exception:  # keep and report the rows measured so far
            logger.exception("baseline stopped early")
            failed = True
        finally:
            run.data["telemetry"]["na"] = tel["na"]()
            run.save()
    return _report_one(run.data, args.out) or int(failed)


def _run_size(size: str | None, info: dict) -> tuple[int, int]:
    """`--size`, else the service's default size from /info, else 1024x1024."""
    if size:
        return parse_size(size)
    defaults = info.get("defaults") or {}
    if defaults.get("width") and defaults.get("height"):
        return int(defaults["width"]), int(defaults["height"])
    return 1024, 1024


def _edit_strength(task: str, strength: float | None, info: dict) -> float | None:
    """`--strength`, else the service's default for the task (its /info), so the run records what ran."""
    if task == "generate" or strength is not None:
        return strength
    default = (info.get("defaults") or {}).get("inpaint_strength" if task == "inpaint" else "edit_strength")
    if default is None:
        logger.warning("the service's default %s strength is unknown (no /info): DiT FLOPs count every step", task)
    return default


def cmd_run(args) -> int:
    import httpx

    from bench.loadgen import LoadSpec, run_load
    from bench.progress import request_bar
    from bench.stats import request_stats
    from bench.sweep import log_failures
    from bench.workload import Workload, prepare_edits

    if args.task == "generate" and args.strength is not None:
        logger.error("--strength is for --task edit or inpaint")
        return 2
    try:
        info = httpx.get(args.url.rstrip("/") + "/info", headers=_auth(args), timeout=30).json()
    except Exception as exc:
        logger.warning("could not read %s/info: %s", args.url, exc)
        info = {}
    w, h = _run_size(args.size, info)
    workload = Workload(
        w,
        h,
        args.steps,
        args.prompt_mode,
        args.prompt,
        args.seed,
        args.endpoint,
        args.output_format,
        task=args.task,
        loras=tuple(args.lora),
        strength=_edit_strength(args.task, args.strength, info),
    )
    if workload.is_edit:
        logger.info("%s: generating %d input image(s) at %dx%d through /generate", args.task, args.edit_inputs, w, h)
        workload = prepare_edits(args.url, workload, args.edit_inputs, _auth(args), args.timeout_s)
    spec = LoadSpec(
        mode=args.mode,
        concurrency=args.concurrency,
        rate=args.rate,
        requests=args.requests,
        duration_s=args.duration_s,
        drain_s=args.drain_s,
        warmup_requests=args.warmup_requests,
        warmup_steps=args.warmup_steps,
        timeout_s=args.timeout_s,
        arrival_seed=args.arrival_seed,
        cooldown=args.cooldown,
    )
    load = f"{args.mode} loop, " + (
        f"{args.concurrency} clients" if args.mode == "closed" else f"Poisson {args.rate}/s (latency from schedule)"
    )
    settings = {
        **workload.describe(),
        "load": load,
        "load_spec": vars(spec),
        "peak_tflops": args.peak_tflops,
        "url": args.url,
    }
    run = RunFile(
        args.out / "load.json",
        "load",
        f"load run ({load}; {workload.title()})",
        info.get("model_source", "unknown"),
        environment.capture(args.gpu_index),
        settings,
    )
    run.set(service=info)
    with _sampler(args) as tel:
        with request_bar(args.warmup_requests + args.requests, f"{w}x{h} {args.task}") as on_done:
            phases = run_load(args.url, workload, spec, on_done=on_done, headers=_auth(args))
        records = [r.as_dict() for p in phases.values() for r in p.records]
        stats = request_stats([r for r in records if r["phase"] == "measure"])
        samples = tel["sampler"].window(stats["window_start"], stats["window_end"]) if tel["sampler"] else []
        eff = ((info.get("generator") or {}).get("batching") or {}).get("effective_max_batch")
        key = {"width": w, "height": h, "steps": args.steps, "batch_size": eff, **workload.row_tags()}
        extra = {"load_mode": args.mode, "concurrency": args.concurrency, "rate_rps": args.rate}
        run.data["telemetry"]["na"] = tel["na"]()
        run.add_row(key, stats, samples, extra, records)
    log_failures([r for r in records if r["phase"] == "measure"])
    return _report_one(run.data, args.out)


def cmd_capacity(args) -> int:
    from bench.capacity import CapacityRun, CapacitySpec
    from bench.capacity_report import print_capacity_summary, write_capacity_report
    from bench.shape_mix import mix_for
    from bench.workload import Workload

    variants = dict(args.variant) or {"deployed": {}}
    if len(variants) < len(args.variant):
        logger.error("variant names must differ: %s", [name for name, _ in args.variant])
        return 2
    spec = CapacitySpec(
        variants=variants,
        loads=tuple(args.loads),
        requests_per_load=args.requests_per_load,
        capacity_requests=args.capacity_requests,
        capacity_clients=args.capacity_clients,
        warmup_requests=args.warmup_requests,
        warmup_steps=args.warmup_steps,
        p99_target_s=args.p99_target_s,
        target_rate_rps=args.target_rate,
        arrival_seed=args.arrival_seed,
        rates_from=args.rates_from,
        drain_s=args.drain_s,
        max_load_s=args.max_load_s,
        timeout_s=args.timeout_s,
    )
    with contextlib.ExitStack() as stack:
        control = _control(args, stack)
        tel = stack.enter_context(_sampler(args))
        info = control.info()
        w, h = _run_size(args.size, info)
        base = Workload(w, h, args.steps, args.prompt_mode, args.prompt, args.seed, args.endpoint, args.output_format)
        mixes, notes = {}, {}
        for name in args.workload:
            mixes[name], notes[name] = mix_for(name, base, info, args.arrival_seed, tuple(args.shapes))
        settings = {
            **spec.describe(),
            "steps": args.steps,
            "workload_shapes": notes,
            "workloads": {name: mix.describe() for name, mix in mixes.items()},
            "url": control.url,
            "peak_tflops": args.peak_tflops,
        }
        label = "latency vs offered load, " + " vs ".join(variants)
        run = RunFile(
            args.out / "capacity.json.gz",
            "capacity",
            label,
            info.get("model_source", "unknown"),
            environment.capture(args.gpu_index),
            settings,
        )
        run.set(service=info)
        failed = False
        try:
            CapacityRun(control.url, control, spec, run, tel["sampler"]).execute(mixes, info)
        except Exception:  # keep and report what was measured
            logger.exception("capacity run stopped early")
            failed = True
        finally:
            run.data["telemetry"]["na"] = tel["na"]()
            run.save()
    paths = write_capacity_report(run.data, args.out)
    print_capacity_summary(run.data)
    logger.info("wrote %s", ", ".join(str(p) for p in [run.path, *paths.values()]))
    complete = len(run.data["plans"]) == len(variants) * len(mixes)
    return 0 if complete and not failed else 1


def cmd_report(args) -> int:
    from bench.report import write_comparison, write_run_report

    if not (args.runs or args.serve or args.baseline):
        logger.error("nothing to report: give raw JSON files and/or --serve/--baseline")
        return 2
    for path in args.runs:
        run = load_run(path)
        if run["kind"] == "capacity":
            from bench.capacity_report import print_capacity_summary, write_capacity_report

            write_capacity_report(run, args.out, run_name(path))
            print_capacity_summary(run)
            continue
        write_run_report(run, args.out, run_name(path))
        print_summary(run)
    if args.serve and args.baseline:
        paths = write_comparison(load_run(args.serve), load_run(args.baseline), args.out)
        logger.info("comparison: %s", paths["report"])
    else:
        for path in (args.serve, args.baseline):
            if path:
                run = load_run(path)
                write_run_report(run, args.out, run["kind"])
                print_summary(run)
    return 0


def _report_one(run: dict, out: Path) -> int:
    from bench.report import write_run_report

    paths = write_run_report(run, out)
    print_summary(run)
    logger.info("wrote %s", ", ".join(str(p) for p in [out / f"{run['kind']}.json", *paths.values()]))
    ok = bool(run["rows"]) and all(r["summary"]["ok"] > 0 for r in run["rows"])
    return 0 if ok else 1


def print_summary(run: dict) -> None:
    """The readable end-of-run table (rich), key columns only; the markdown file has them all."""
    from rich.console import Console
    from rich.table import Table

    from bench.report import COLUMNS, _fmt, summaries

    keys = {
        "batch_size",
        "s_per_image",
        "batch_latency_s",
        "gpu_util_pct",
        "sm_activity_pct",
        "peak_vram_nvml_mb",
        "peak_vram_torch_mb",
        "throughput_img_s",
        "steady_throughput_img_s",
        "latency_p50_s",
        "latency_p99_s",
        "mfu_pct",
        "counts",
    }
    cols = [c for c in COLUMNS if c[0] in keys]
    table = Table(title=f"{run['label']} | {run['weights']}", title_justify="left")
    table.add_column("Size")
    for _, header, _ in cols:
        table.add_column(header, justify="right")
    for s in summaries(run):
        table.add_row(f"{s['width']}x{s['height']}", *(_fmt(s.get(k), f) for k, _, f in cols))
    console = Console(file=sys.stdout, width=200)
    console.print(table)
    for skipped in run.get("skipped", []):
        console.print(f"skipped {skipped['width']}x{skipped['height']} bs={skipped['batch_size']}: {skipped['reason']}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "sweep": cmd_sweep, "capacity": cmd_capacity, "baseline": cmd_baseline}
    handler = {**handlers, "report": cmd_report}[args.cmd]
    return handler(args)
