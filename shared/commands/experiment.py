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
# Not controller policies: bounds that only the simulator computes (shared/experiments/best_static.py
# sweeps fixed plans; shared/experiments/oracle.py solves a relaxation and simulates nothing).
SIMULATE_ONLY = ["best-static", "oracle"]


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    for name, handler, help_text in (
            ("experiment", run_experiment, "replay a trace through the real services on emulated GPUs"),
            ("simulate", run_simulation, "replay a trace through the discrete-event simulator")):
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--trace", required=True, help="a trace file: arrival_ms,prompt_id per line")
        parser.add_argument("--policy", required=True,
                            choices=POLICY_CHOICES + (SIMULATE_ONLY if name == "simulate" else []))
        parser.add_argument("--static-demand", type=float, metavar="QPS",
                            help="the demand planned-static plans for, once (required with --policy planned-static)")
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
        add_batch_arguments(parser)
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
            parser.add_argument("--batch-mode", choices=["classes", "fifo"], default="classes",
                                help="classes: the service classes (docs/classes.md); fifo: the baseline without "
                                     "them, batch jobs as ordinary jobs in the tier queues, counted as demand "
                                     "(shared/experiments/fifo_sim.py) (default classes)")
            parser.add_argument("--no-oracle", action="store_true",
                                help="leave the oracle's bound out of the report (oracle_fid, oracle_gain_share "
                                     "empty): a sweep of many traces then takes minutes, not half an hour")
            parser.add_argument("--offset", type=float, default=0.0,
                                help="seconds the controller runs before the trace begins: the phase of its plan "
                                     "period (default 0; an experiment's is however long its first workers took)")
        parser.set_defaults(handler=handler, command_parser=parser)
    parser = subparsers.add_parser("compare", help="tables and figures of the runs in a folder")
    parser.add_argument("folder", help="a folder whose subfolders hold report.json")
    parser.add_argument("--against", help="another such folder (the same trace and policies, e.g. the simulator's): "
                                          "writes FOLDER/differences.md, this folder minus that one per policy")
    parser.set_defaults(handler=run_compare)


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """A batch backlog beside the trace (docs/classes.md): the report then has each class's figures."""
    parser.add_argument("--batch-jobs", type=int, default=0, metavar="N",
                        help="also submit N batch-class jobs (priority batch) at --batch-at (default 0: none)")
    parser.add_argument("--batch-slo-s", type=float, metavar="S",
                        help="the batch jobs' objective, seconds (default: HADIS_BATCH_SLO_S, 900)")
    parser.add_argument("--batch-at", type=float, default=0.0, metavar="T",
                        help="when the batch jobs are submitted, seconds into the trace (default 0: its start)")
    parser.add_argument("--batch-yield", choices=["pause", "step", "finish"],
                        help="how a running batch-class batch gives way to interactive work (default: "
                             "HADIS_BATCH_YIELD, pause)")
    parser.add_argument("--batch-colocate", choices=["on", "off"],
                        help="whether light GPUs serve heavy batch work with the heavy model beside their own "
                             "(default: HADIS_BATCH_COLOCATE, on)")


def batch_overrides(args: argparse.Namespace) -> dict:
    """The settings the batch options set."""
    overrides: dict = {}
    if args.batch_slo_s is not None:
        overrides["batch_slo_s"] = args.batch_slo_s
    if args.batch_yield is not None:
        overrides["batch_yield"] = args.batch_yield
    if args.batch_colocate is not None:
        overrides["batch_colocate"] = args.batch_colocate == "on"
    return overrides


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
    if args.static_demand is not None:
        overrides["static_demand_qps"] = args.static_demand
    return trace, get_settings(), {**overrides, **batch_overrides(args)}


def check_args(args: argparse.Namespace) -> None:
    """What argparse alone cannot check: --static-demand goes with planned-static, and only with it."""
    parser = args.command_parser
    if args.policy == "planned-static" and args.static_demand is None:
        parser.error("--policy planned-static needs --static-demand QPS (the demand it plans for)")
    if args.policy != "planned-static" and args.static_demand is not None:
        parser.error("--static-demand is for --policy planned-static")
    if args.static_demand is not None and args.static_demand < 0:
        parser.error("--static-demand must be >= 0")
    if args.policy == "oracle" and getattr(args, "band", False):
        parser.error("--band perturbs a simulation; the oracle simulates nothing")
    if args.policy == "oracle" and getattr(args, "no_oracle", False):
        parser.error("--no-oracle leaves out the bound that --policy oracle computes")
    if args.batch_jobs < 0 or args.batch_at < 0:
        parser.error("--batch-jobs and --batch-at must be >= 0")
    if args.batch_slo_s is not None and not 0 < args.batch_slo_s <= 3600:
        parser.error("--batch-slo-s must be > 0 and at most 3600 (HADIS_BATCH_SLO_S's bounds)")
    if getattr(args, "batch_mode", "classes") == "fifo" and (
            not args.batch_jobs or args.batch_yield is not None or args.batch_colocate is not None):
        parser.error("--batch-mode fifo needs --batch-jobs, and has no --batch-yield or --batch-colocate (no classes)")
    if args.batch_jobs and (getattr(args, "band", False) or args.policy in SIMULATE_ONLY):
        parser.error("--batch-jobs runs one simulation of a controller policy: not with --band, best-static or oracle")


def build(args: argparse.Namespace, mode: str, trace, outcomes, plans, wall_s: float, notes: dict):
    """The run's report and time series."""
    from shared.experiments.report import FidLookup, build_report
    from shared.policies.pareto import load_quality, load_table
    from shared.profiles import load_profile

    lookup = FidLookup(load_quality(load_table(args.profile).quality_table), load_profile(args.profile))
    report, series = build_report(outcomes, plans, lookup, policy=args.policy, mode=mode, trace=trace.name,
                                  profile=args.profile, slo_s=args.slo, gpus=args.gpus,
                                  window_s=args.window or args.slo, duration_s=trace.duration_s, wall_s=wall_s,
                                  notes=notes)
    return with_oracle(args, trace, report), series


def with_oracle(args: argparse.Namespace, trace, report):
    """The report with the oracle's bound for the same trace and fleet (solved once per process)
    and the lightest model's FID: its share of the gain that any policy could get."""
    if getattr(args, "no_oracle", False):  # `hadis experiment` has no such option
        return report
    from shared.experiments.oracle import oracle_for
    from shared.policies.baselines import quality_ladder
    from shared.profiles import load_profile
    from shared.settings import get_settings

    oracle = oracle_for(trace, args.profile, args.slo, args.gpus, get_settings().time_scale, args.window or args.slo)
    light_only = load_profile(args.profile).model(quality_ladder(args.profile)[0]).fid
    return report.with_oracle(oracle.fid, light_only)


def finish(args: argparse.Namespace, report, series, plans, class_rows: list | None = None,
           busy: list | None = None) -> int:
    """Write the run (with a batch backlog, classes.csv, its figure and busy.csv too) and print the
    report; 1 when a job of either class was lost."""
    from shared.experiments.report import write_run

    write_run(Path(args.out), report, series, plans)
    if class_rows is not None:
        write_classes(Path(args.out), class_rows, busy or [])
    sys.stdout.write(orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n")
    batch_lost = report.classes["batch"]["lost"] if report.classes else 0
    return 0 if report.lost == 0 and batch_lost == 0 else 1


def write_classes(out: Path, rows: list, busy: list) -> None:
    from shared.experiments.class_report import write_busy_spans, write_class_series

    write_class_series(out, rows)
    write_busy_spans(out, busy)
    try:
        from shared.experiments.plots import plot_classes
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":
            raise
        return
    plot_classes(out)


def with_classes(args: argparse.Namespace, trace, report, run) -> tuple:
    """The report with its `classes` section, and the per-window class shares, of a run with a
    batch backlog (a ClassRun, from the simulator or the services)."""
    from shared.experiments.class_report import class_series, classes_section
    from shared.experiments.report import FidLookup
    from shared.policies.pareto import load_quality, load_table
    from shared.profiles import load_profile

    lookup = FidLookup(load_quality(load_table(args.profile).quality_table), load_profile(args.profile))
    settings = {"jobs": args.batch_jobs, "at_s": args.batch_at, "slo_s": run.batch_slo_s, "yield": run.yield_mode}
    section = classes_section(run.interactive, run.batch, run.busy, lookup, run.gpus, trace.duration_s,
                              args.window or args.slo, settings)
    ends = [job.end_s for job in run.batch if job.end_s is not None]
    rows = class_series(run.busy, run.batch, run.placements, run.gpus, args.window or args.slo,
                        max([trace.duration_s, *ends]))
    return report.model_copy(update={"classes": section}), rows


def run_simulation(args: argparse.Namespace) -> int:
    from shared.experiments.runner import Progress
    from shared.experiments.simulator import simulate
    from shared.settings import Settings

    check_args(args)
    if args.policy == "oracle":
        return run_oracle(args)
    trace, base, overrides = prepare(args)
    policy = "planned-static" if args.policy == "best-static" else args.policy
    settings = Settings(**{**base.model_dump(), "profile": args.profile, "slo_s": args.slo,
                           "controller_policy": policy, "emulated_gpus": args.gpus, "backend": "emulated",
                           "judge_backend": "emulated", **overrides})
    options = {"worker_start_s": args.worker_start, "worker_start_each_s": args.worker_start_each,
               "offset_s": args.offset}
    notes = {"scale": args.scale, "worker_start_s": settings.worker_start_s if args.worker_start is None
             else args.worker_start, "worker_start_each_s": settings.worker_start_each_s
             if args.worker_start_each is None else args.worker_start_each, "offset_s": args.offset, **overrides}
    if args.batch_jobs:
        return run_class_simulation(args, trace, settings, options, notes)
    best = None
    if args.policy == "best-static":
        best, settings = run_best_static(args, trace, settings, options)
        outcomes, plans, wall_s = best.outcomes, best.plans, best.wall_s
        notes.update(best.notes())
    else:
        progress = Progress(len(trace), trace.duration_s, f"simulate {args.policy}")
        outcomes, plans, wall_s = simulate(settings, trace, **options,
                                           progress=lambda t, arrived, ended: show(progress, t, arrived, ended))
        progress.submitted = progress.ended = len(trace)
        progress.show(trace.duration_s, force=True)
        progress.close()
    report, series = build(args, "simulate", trace, outcomes, plans, wall_s, notes)
    if args.band:
        write_band(args, trace, settings, report)
    if best is not None:
        from shared.experiments.best_static import write_sweep

        write_sweep(Path(args.out), best)
    return finish(args, report, series, plans)


def run_class_simulation(args: argparse.Namespace, trace, settings, options: dict, notes: dict) -> int:
    """The simulation with a batch backlog (shared/experiments/classes_sim.py): the report's totals
    are the interactive class's, its `classes` each class's."""
    from shared.experiments.classes_sim import BatchLoad, simulate_classes

    batch = BatchLoad(args.batch_jobs, settings.batch_slo_s, args.batch_at)
    if args.batch_mode == "fifo":
        from shared.experiments.fifo_sim import simulate_fifo

        run = simulate_fifo(settings, trace, batch, **options)
    else:
        run = simulate_classes(settings, trace, batch, **options)
    report, series = build(args, "simulate", trace, run.interactive, run.plans, run.wall_s, notes)
    report, rows = with_classes(args, trace, report, run)
    return finish(args, report, series, run.plans, rows, run.busy)


def run_best_static(args: argparse.Namespace, trace, settings, options: dict):
    """The sweep of fixed plans (one line per plan on stderr); the chosen run, and its settings."""
    from shared.experiments.best_static import static_settings, stderr_line, sweep
    from shared.experiments.report import FidLookup
    from shared.policies.pareto import load_quality, load_table
    from shared.profiles import load_profile

    lookup = FidLookup(load_quality(load_table(args.profile).quality_table), load_profile(args.profile))
    best = sweep(settings, trace, lookup, window_s=args.window or args.slo, progress=stderr_line, **options)
    stderr_line(f"best-static: {best.demand_qps:g} qps" + (f" ({best.note})" if best.note else ""))
    return best, static_settings(settings, best.demand_qps)


def run_oracle(args: argparse.Namespace) -> int:
    """The oracle's bound as a run (shared/experiments/oracle.py): nothing is simulated."""
    import time

    from shared.experiments.oracle import oracle_for, oracle_report

    trace, base, _ = prepare(args)
    started = time.perf_counter()
    oracle = oracle_for(trace, args.profile, args.slo, args.gpus, base.time_scale, args.window or args.slo)
    report, series = oracle_report(oracle, trace=trace.name, profile=args.profile, slo_s=args.slo, gpus=args.gpus,
                                   duration_s=trace.duration_s, wall_s=time.perf_counter() - started)
    return finish(args, with_oracle(args, trace, report), series, [])


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

    from shared.experiments.classes_sim import BatchLoad
    from shared.experiments.runner import Experiment, experiment_settings

    check_args(args)
    trace, base, overrides = prepare(args)
    settings = experiment_settings(base, policy=args.policy, profile=args.profile, gpus=args.gpus, slo_s=args.slo,
                                   **overrides)
    # A batch backlog (docs/classes.md): submitted through the services at --batch-at; the report's
    # totals are then the interactive class's, its `classes` each class's (as hadis simulate's).
    batch = BatchLoad(args.batch_jobs, settings.batch_slo_s, args.batch_at) if args.batch_jobs else None
    experiment = Experiment(settings, trace, Path(args.out), batch=batch)
    started = time.perf_counter()
    try:
        outcomes, plans, notes = asyncio.run(experiment.run())
    except asyncio.CancelledError:  # SIGTERM: the runner stopped its services and deleted the namespace
        sys.stderr.write(f"hadis experiment: stopped by SIGTERM; no report (logs in {args.out}/logs)\n")
        return 128 + 15
    report, series = build(args, "experiment", trace, outcomes, plans, time.perf_counter() - started,
                           {**notes, **overrides})
    if experiment.class_run is None:
        return finish(args, report, series, plans)
    report, rows = with_classes(args, trace, report, experiment.class_run)
    return finish(args, report, series, plans, rows, experiment.class_run.busy)


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
