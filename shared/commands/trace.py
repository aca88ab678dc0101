"""`hadis trace`: make bursty arrival traces (on/off, MMPP) and describe any trace file.

A made trace's first line is a comment with the command that made it and the values it derived, so
the file says how to make it again; the command prints `describe()` of what it wrote as JSON, with
what it was asked for under "made", to compare the two.
"""

from __future__ import annotations

import argparse
import sys

import orjson


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("trace", help="make a bursty arrival trace, or describe a trace file",
                                   description="make a bursty arrival trace (arrival_ms,prompt_id per line), "
                                               "or describe a trace file")
    actions = parser.add_subparsers(dest="action", required=True)

    p = actions.add_parser("on-off", help="ON bursts at mean x peak-to-mean, OFF periods near silence")
    p.add_argument("--mean", type=float, required=True, help="long-run mean rate, req/s")
    p.add_argument("--peak-to-mean", type=float, required=True, help="the ON rate over the mean (> 1)")
    p.add_argument("--off", type=float, required=True, help="mean OFF period, seconds (exponential)")
    p.add_argument("--on", type=float, help="mean ON period, seconds: derived from the rest; if given, it must agree")
    p.add_argument("--base", type=float, help="the OFF rate, req/s (default: 1 %% of the peak, at most 0.1)")
    _common(p)
    p.set_defaults(handler=make_on_off)

    p = actions.add_parser("mmpp", help="a Markov-modulated Poisson process over K rates")
    p.add_argument("--rates", required=True, help="the states' rates, req/s, comma-separated (e.g. 0.5,10,60)")
    p.add_argument("--holding", type=float, required=True, help="mean time in a state, seconds (exponential)")
    _common(p)
    p.set_defaults(handler=make_mmpp)

    p = actions.add_parser("describe", help="jobs, mean, peak over a window, silences of a trace file")
    p.add_argument("file", help="a trace file: arrival_ms,prompt_id per line")
    p.add_argument("--window", type=float, default=10.0, help="seconds per window for the peak (default 10)")
    p.set_defaults(handler=describe_file)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, required=True, help="seconds of trace")
    p.add_argument("--seed", type=int, required=True, help="the random seed (numpy PCG64): fixes the trace")
    p.add_argument("--out", required=True, help="the trace file to write")
    p.add_argument("--window", type=float, default=10.0, help="seconds per window for the printed peak (default 10)")


def _print(data: object) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def _fail(error: ValueError) -> int:
    _print({"error": str(error)})
    return 2


def _command(args: argparse.Namespace, flags: list[str]) -> str:
    """The command line that makes this trace again (the flags given, in a fixed order)."""
    parts = ["hadis trace", args.action]
    for flag in flags:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            parts.append(f"--{flag} {value:g}" if isinstance(value, float) else f"--{flag} {value}")
    return " ".join(parts)


def make_on_off(args: argparse.Namespace) -> int:
    from shared.experiments import bursty

    try:
        params = bursty.on_off_params(args.mean, args.peak_to_mean, args.off, args.on, args.base)
        rng = bursty.generator(args.seed)
        schedule = bursty.on_off_schedule(params, args.duration, rng)
    except ValueError as error:
        return _fail(error)
    trace = bursty.arrivals(schedule, rng, f"on_off(seed={args.seed})")
    bursts = [s for s in schedule if s.state == 1]
    made = {"mean_qps": params.mean_qps, "peak_qps": params.peak_qps, "base_qps": params.base_qps,
            "on_s": round(params.on_s, 3), "off_s": params.off_s, "bursts": len(bursts),
            "first_burst_s": round(bursts[0].start_s, 3) if bursts else None}
    header = (_command(args, ["mean", "peak-to-mean", "off", "on", "base", "duration", "seed"])
              + f" (derived: peak {params.peak_qps:g} req/s, base {params.base_qps:g} req/s, "
                f"mean ON {params.on_s:.4g} s; {len(bursts)} bursts)")
    bursty.write_trace(trace, args.out, header)
    _print({**bursty.describe(trace, args.window), "made": made})
    return 0


def make_mmpp(args: argparse.Namespace) -> int:
    from shared.experiments import bursty

    try:
        rates = [float(r) for r in args.rates.split(",")]
        rng = bursty.generator(args.seed)
        schedule = bursty.mmpp_schedule(rates, args.holding, args.duration, rng)
    except ValueError as error:
        return _fail(error)
    trace = bursty.arrivals(schedule, rng, f"mmpp(seed={args.seed})")
    share = [sum(s.end_s - s.start_s for s in schedule if s.state == k) / args.duration for k in range(len(rates))]
    made = {"rates_qps": rates, "holding_s": args.holding, "visits": len(schedule),
            "time_share": [round(x, 3) for x in share]}
    header = (_command(args, ["rates", "holding", "duration", "seed"])
              + f" (uniform transitions to the other states, starting in the slowest; {len(schedule)} visits)")
    bursty.write_trace(trace, args.out, header)
    _print({**bursty.describe(trace, args.window), "made": made})
    return 0


def describe_file(args: argparse.Namespace) -> int:
    from shared.experiments import bursty
    from shared.experiments.trace import load_trace

    try:
        _print(bursty.describe(load_trace(args.file), args.window))
    except ValueError as error:
        return _fail(error)
    return 0
