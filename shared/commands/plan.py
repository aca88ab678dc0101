"""`hadis plan`: the plan the controller would choose for a demand, as JSON, with the solve time."""

from __future__ import annotations

import argparse
import sys

import orjson


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("plan", help="print the plan the controller would choose, as JSON",
                                   description="Solve the HADIS planner once and print the decision.")
    parser.add_argument("--profile", required=True, help="a profile name under profiles/ (e.g. paper-l40s-x10)")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs available")
    parser.add_argument("--demand", type=float, required=True, help="arrival rate, queries per second")
    parser.add_argument("--slo", type=float, required=True, help="latency objective, seconds")
    parser.add_argument("--queueing", type=float, default=0.0, help="expected queueing delay, seconds")
    parser.add_argument("--margin", type=float, default=0.0, help="demand safety margin (0.2 = plan for 1.2x)")
    parser.add_argument("--light-share", choices=["routed", "all"], default="routed",
                        help="routed: light serves the 1 - r not routed to heavy; all: provision light for "
                             "all of the demand, as the paper does")
    parser.add_argument("--pair", action="append", metavar="LIGHT:HEAVY",
                        help="only this model pair (repeatable); default: every pair of the table")
    parser.set_defaults(handler=run)
    return parser


def parse_pairs(values: list[str] | None) -> list[tuple[str, str]] | None:
    if not values:
        return None
    pairs = []
    for value in values:
        light, sep, heavy = value.partition(":")
        if not sep or not light or not heavy:
            raise ValueError(f"--pair wants LIGHT:HEAVY, not {value!r}")
        pairs.append((light, heavy))
    return pairs


def run(args: argparse.Namespace) -> int:
    from shared.policies.planner import Planner, load_table
    from shared.profiles import load_profile

    try:
        planner = Planner(load_profile(args.profile), load_table(args.profile), light_share=args.light_share,
                          margin=args.margin, pairs=parse_pairs(args.pair))
    except (FileNotFoundError, KeyError, ValueError) as error:
        write({"error": str(error).strip('"')})
        return 2
    decision = planner.plan(args.demand, args.gpus, args.slo, queueing_s=args.queueing)
    write({"profile": args.profile, "demand_qps": args.demand, "gpus": args.gpus, "slo_s": args.slo,
           "queueing_s": args.queueing, "margin": args.margin, "light_share": args.light_share,
           **decision.model_dump(mode="json"), "reason": decision.reason()})
    return 0


def write(data: dict) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
