"""Convert a public production request trace into a hadis trace (`arrival_ms,prompt_id` per line).

Source: the Azure LLM inference trace 2023 (Patel et al., "Splitwise", ISCA 2024; CC-BY 4.0):
  repository Azure/AzurePublicDataset, commit b469a113cedca53ddc3bdea71a143dc4b7d8700c
  (the file last changed in 790921015d50dd6aae7f7e47f39ba0e235ad6b08),
  path data/AzureLLMInferenceTrace_code.csv, md5 5429a38bc2999f29bf67c1ae0f98be57:
  8,819 requests of an LLM code-completion service in Azure on 2023-11-16 from 18:17 to 19:14
  (3,436 s, 2.57 req/s on average, up to 72 in one second): real arrival times, with bursts.
  (data/AzureLLMInferenceTrace_conv.csv, md5 2ec51bd013f310fa72cac08de1331368, the conversation
  service, is also accepted: 19,366 requests over 3,502 s, much smoother.)

Only its TIMESTAMP column is used (the token counts say nothing about an image). The raw file is not
committed; get it with `git clone https://github.com/Azure/AzurePublicDataset` (or `git show
<commit>:data/AzureLLMInferenceTrace_code.csv` in a clone) and pass it as --source.

The transform, in order (each step's parameter is in the output's header line):
1. the requests in [--start, --start + --span) seconds after the first one (default: all of them);
2. times relative to the first kept request, divided by --compress (default 8: the 57 minutes become
   430 s, so a run through the services takes minutes, like the published traces' 10x compression);
3. each request kept with probability --keep (default 1: none thinned), to scale the rate down;
4. prompt ids drawn uniformly from [0, 5000) (the reference prompts), like the generator's.
Steps 3 and 4 draw from numpy PCG64(--seed). With the defaults: 8,819 requests over 429 s, 20.5 req/s
on average, 89.5 req/s at the peak 10 s (4.4x the mean).

    .venv/bin/python scripts/convert_trace.py --source AzureLLMInferenceTrace_code.csv \\
        --out traces/azure_code_8x.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from shared.experiments.bursty import PROMPTS, describe, generator, write_trace
from shared.experiments.trace import Trace

REPOSITORY, COMMIT = "Azure/AzurePublicDataset", "b469a113cedca53ddc3bdea71a143dc4b7d8700c"
KNOWN_MD5 = {"AzureLLMInferenceTrace_code.csv": "5429a38bc2999f29bf67c1ae0f98be57",
             "AzureLLMInferenceTrace_conv.csv": "2ec51bd013f310fa72cac08de1331368"}


def read_timestamps(path: Path) -> np.ndarray:
    """Seconds from the first request: TIMESTAMP is `YYYY-MM-DD hh:mm:ss.fffffff` (local wall time,
    100 ns digits), parsed at nanosecond resolution by numpy."""
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("TIMESTAMP,"):
        raise SystemExit(f"{path}: expected a header starting 'TIMESTAMP,' (the Azure LLM inference trace)")
    stamps = np.array([line.split(",", 1)[0].replace(" ", "T") for line in lines[1:] if line.strip()],
                      dtype="datetime64[ns]")
    seconds = np.sort((stamps - stamps.min()).astype(np.int64) / 1e9)
    return seconds


def convert(seconds: np.ndarray, start: float, span: float | None, compress: float, keep: float,
            seed: int) -> Trace:
    """Steps 1-4 of the module's docstring."""
    if not compress > 0 or not 0 < keep <= 1:
        raise SystemExit("--compress must be above 0 and --keep in (0, 1]")
    end = np.inf if span is None else start + span
    chosen = seconds[(seconds >= start) & (seconds < end)]
    if len(chosen) == 0:
        raise SystemExit(f"no requests in [{start:g}, {end:g}) s")
    times = (chosen - chosen[0]) / compress
    rng = generator(seed)
    times = times[rng.random(len(times)) < keep]
    return Trace("azure", times, rng.integers(0, PROMPTS, len(times)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="AzureLLMInferenceTrace_code.csv (or _conv.csv)")
    parser.add_argument("--out", type=Path, required=True, help="the hadis trace to write")
    parser.add_argument("--start", type=float, default=0.0, help="seconds into the source to begin (default 0)")
    parser.add_argument("--span", type=float, help="seconds of the source to take (default: to its end)")
    parser.add_argument("--compress", type=float, default=8.0, help="divide times by this (default 8)")
    parser.add_argument("--keep", type=float, default=1.0, help="keep each request with this probability (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="for thinning and prompt ids (default 0)")
    args = parser.parse_args()
    md5 = hashlib.md5(args.source.read_bytes()).hexdigest()
    known = KNOWN_MD5.get(args.source.name)
    if known != md5:
        print(f"warning: {args.source.name} md5 {md5} is not the documented version's ({known})", file=sys.stderr)
    trace = convert(read_timestamps(args.source), args.start, args.span, args.compress, args.keep, args.seed)
    span = "end" if args.span is None else f"{args.start + args.span:g}"
    header = (f"scripts/convert_trace.py: {REPOSITORY} @ {COMMIT} : data/{args.source.name} (md5 {md5}); "
              f"source seconds [{args.start:g}, {span}), times / {args.compress:g}, keep {args.keep:g}, "
              f"uniform prompt ids, seed {args.seed}")
    write_trace(trace, args.out, header)
    print(json.dumps(describe(trace, 10.0)))


if __name__ == "__main__":
    main()
