"""`hadis experiment`, `hadis simulate` and `hadis compare`: a trace through the real services or
through the simulator, and the comparison of the runs that share a folder."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import get_args

import orjson

from shared.settings import Settings

POLICY_CHOICES = list(get_args(Settings.model_fields["controller_policy"].annotation))


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    for name, handler, help_text in (
            ("experiment", run_experiment, "replay a trace through the real services on emulated GPUs"),
            ("simulate", run_simulation, "replay a trace through the discrete-event simulator")):
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--trace", required=True, help="a trace file: arrival_ms,prompt_id per line")
        parser.add_argument("--policy", required=True, choices=POLICY_CHOICES)
        parser.add_argument("--gpus", type=int, required=True, help="emulated GPUs")
        parser.add_argument("--profile", required=True, help="a profile name under profiles/")
        parser.add_argument("--slo", type=float, required=True, help="latency objective, seconds")
        parser.add_argument("--out", required=True, help="the run's folder (report.json, timeseries.csv, plots)")
        parser.add_argument("--window", type=float, help="seconds per time-series window (default: the SLO)")
        parser.add_argument("--head", type=float, help="replay only the first SECONDS of the trace")
        parser.add_argument("--plan-period", type=float, help="seconds between plans (default: the SLO)")
        parser.add_argument("--dwell", type=float, help="least seconds between plan changes (default: 2 x the SLO)")
        parser.add_argument("--halflife", type=float, help="demand EWMA half-life, seconds (default: the SLO)")
        parser.add_argument("--margin", type=float, default=0.05, help="plan for demand x (1 + margin) (default 0.05)")
        parser.add_argument("--speed", type=float, default=1.0,
                            help="replay the trace this many times faster (with a profile and an SLO compressed as "
                                 "much: trace_1_6qps at 10 with paper-l40s-x10 and a 6 s SLO) (default 1)")
        if name == "simulate":
            parser.add_argument("--scale", type=int, default=1, help="multiply the trace's rate (default 1)")
            parser.add_argument("--worker-start", type=float, default=None,
                                help="seconds for a moved GPU's new worker to be ready (default: HADIS_WORKER_START_S, "
                                     "3, measured; each other worker starting at once adds HADIS_WORKER_START_EACH_S)")
            parser.add_argument("--worker-start-each", type=float, default=None,
                                help="seconds each other worker starting at once adds (default: "
                                     "HADIS_WORKER_START_EACH_S); the policy still prices switches with the settings'")
            parser.add_argument("--band", action="store_true",
                                help="also run the simulator over the plan period's phase and the spread of worker "
                                     "start times (12 runs in all) and write band.json: what an experiment, which "
                                     "controls neither, is compared with (shared/experiments/band.py)")
            parser.add_argument("--offset", type=float, default=0.0,
                                help="seconds the controller runs before the trace begins: the phase of its plan "
                                     "period (default 0; an experiment's is however long its first workers took)")
        parser.set_defaults(handler=handler)
    parser = subparsers.add_parser("compare", help="tables and figures of the runs in a folder")
    parser.add_argument("folder", help="a folder whose subfolders hold report.json")
    parser.add_argument("--against", help="another such folder (the same trace and policies, e.g. the simulator's): "
                                          "writes FOLDER/differences.md, this folder minus that one per policy")
    parser.set_defaults(handler=run_compare)


def prepare(args: argparse.Namespace):
    from shared.experiments.trace import load_trace
    from shared.settings import get_settings

    trace = load_trace(args.trace)
    if args.head:
        trace = trace.head(args.head)
    if args.speed != 1:
        trace = trace.compressed(args.speed)
    if getattr(args, "scale", 1) > 1:
        trace = trace.scaled(args.scale)
    # The controller's time constants scale with the SLO: it sets how long a burst can be
    # absorbed by the queue, and the real-time traces are the compressed ones at 10x the scale.
    overrides = {"plan_period_s": args.plan_period or args.slo, "plan_min_dwell_s": args.dwell or 2 * args.slo,
                 "demand_halflife_s": args.halflife or args.slo, "demand_margin": args.margin}
    return trace, get_settings(), overrides


def build(args: argparse.Namespace, mode: str, trace, outcomes, plans, wall_s: float, notes: dict):
    """The run's report and time series."""
    from shared.experiments.report import FidLookup, build_report
    from shared.policies.pareto import load_quality, load_table
    from shared.profiles import load_profile

    lookup = FidLookup(load_quality(load_table(args.profile).quality_table), load_profile(args.profile))
    return build_report(outcomes, plans, lookup, policy=args.policy, mode=mode, trace=trace.name,
                        profile=args.profile, slo_s=args.slo, gpus=args.gpus, window_s=args.window or args.slo,
                        duration_s=trace.duration_s, wall_s=wall_s, notes=notes)


def finish(args: argparse.Namespace, report, series, plans) -> int:
    from shared.experiments.report import write_run

    write_run(Path(args.out), report, series, plans)
    sys.stdout.write(orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if report.lost == 0 else 1


def run_simulation(args: argparse.Namespace) -> int:
    from shared.experiments.runner import Progress
    from shared.experiments.simulator import simulate
    from shared.settings import Settings

    trace, base, overrides = prepare(args)
    settings = Settings(**{**base.model_dump(), "profile": args.profile, "slo_s": args.slo,
                           "controller_policy": args.policy, "emulated_gpus": args.gpus, "backend": "emulated",
                           "judge_backend": "emulated", **overrides})
    progress = Progress(len(trace), trace.duration_s, f"simulate {args.policy}")
    outcomes, plans, wall_s = simulate(settings, trace, worker_start_s=args.worker_start,
                                       worker_start_each_s=args.worker_start_each, offset_s=args.offset,
                                       progress=lambda t, arrived, ended: show(progress, t, arrived, ended))
    progress.submitted = progress.ended = len(trace)
    progress.show(trace.duration_s, force=True)
    progress.close()
    notes = {"scale": args.scale, "worker_start_s": settings.worker_start_s if args.worker_start is None
             else args.worker_start, "worker_start_each_s": settings.worker_start_each_s
             if args.worker_start_each is None else args.worker_start_each, "offset_s": args.offset, **overrides}
    report, series = build(args, "simulate", trace, outcomes, plans, wall_s, notes)
    if args.band:
        write_band(args, trace, settings, report)
    return finish(args, report, series, plans)


def write_band(args: argparse.Namespace, trace, settings, nominal) -> None:
    """band.json in the run's folder: the nominal run and the other perturbations'."""
    from dataclasses import replace

    from shared.experiments.band import Band, perturbations, points_of
    from shared.experiments.simulator import simulate

    start = settings.worker_start_s if args.worker_start is None else args.worker_start
    each = settings.worker_start_each_s if args.worker_start_each is None else args.worker_start_each
    grid = [replace(p, offset_s=args.offset + p.offset_s) for p in perturbations(settings.plan_period_s, start, each)]
    reports = [nominal.model_dump(mode="json")]
    for perturbation in grid[1:]:
        outcomes, plans, wall_s = simulate(settings, trace, worker_start_s=perturbation.worker_start_s,
                                           worker_start_each_s=perturbation.worker_start_each_s,
                                           offset_s=perturbation.offset_s)
        reports.append(build(args, "simulate", trace, outcomes, plans, wall_s, {})[0].model_dump(mode="json"))
    band = Band.of(points_of(reports))
    rows = [{"offset_s": p.offset_s, "worker_start_s": p.worker_start_s,
             "worker_start_each_s": p.worker_start_each_s, "slo_violation_ratio": r["slo_violation_ratio"],
             "mean_fid": r["mean_fid"]}
            for p, r in zip(grid, reports, strict=True)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "band.json").write_bytes(orjson.dumps({**band.to_json(), "perturbations": rows}, option=orjson.OPT_INDENT_2))


def show(progress, trace_s: float, arrived: int, ended: int) -> None:
    progress.submitted, progress.ended = arrived, ended
    progress.show(trace_s)


def run_experiment(args: argparse.Namespace) -> int:
    import time

    from shared.experiments.runner import Experiment, experiment_settings

    trace, base, overrides = prepare(args)
    settings = experiment_settings(base, policy=args.policy, profile=args.profile, gpus=args.gpus, slo_s=args.slo,
                                   **overrides)
    started = time.perf_counter()
    outcomes, plans, notes = asyncio.run(Experiment(settings, trace, Path(args.out)).run())
    report, series = build(args, "experiment", trace, outcomes, plans, time.perf_counter() - started,
                           {**notes, **overrides})
    return finish(args, report, series, plans)


def run_compare(args: argparse.Namespace) -> int:
    try:
        from shared.experiments.plots import differences_table, plot_comparison
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":
            raise
        sys.stderr.write("hadis compare draws figures with matplotlib: pip install 'hadis[experiments]'\n")
        return 2
    paths = plot_comparison(Path(args.folder))
    if args.against:
        paths.append(differences_table(Path(args.folder), Path(args.against)))
    for path in paths:
        sys.stdout.write(f"{path}\n")
    return 0
