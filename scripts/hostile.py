"""`make test-hostile` (issue 29): the hostile-tenant cases, then the fairness run, then one line.

1. cases: `pytest -m hostile tests/hostile` (tests/conftest.py marks every test there by its folder),
   its output as it comes; the counts from its JUnit XML report. Skipped cases are counted, not
   passed.
2. fairness: scripts/fairness.py through `hadis serve all` on emulated GPUs: tenant B's load alone
   (Y: its share of jobs done within the objective), then beside tenant A flooding at 20x its rate
   limit with n=10 at 2048x2048 (X), the api's peak resident memory over both, and the jobs lost.

Last line: `hostile cases=N passed=N; fairness B within_slo=X (alone Y) api_peak_mb=M lost=L`.
Exit 1 when a case failed (or none ran: a suite that collects nothing proves nothing), a job was
lost, X is more than --tolerance-pp (1) percentage points below Y, or the api's peak is over
--api-bound-mb. The bound, 512 MB, is about seven times what the api holds under this flood today
(about 70 MB): room for the interpreter, uvicorn and the bounded waiters and caches, small enough
that a budget that stops bounding what a tenant makes the api hold (bodies, waiters, ids) shows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import fairness

ROOT = Path(__file__).resolve().parent.parent
API_BOUND_MB = 512.0
TOLERANCE_PP = 1.0


@dataclass
class Cases:
    total: int
    passed: int
    failed: int  # failures and errors, collection errors included

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.failed == 0


def run_cases(extra: list[str]) -> Cases:
    """pytest on the hostile suite, its counts from the JUnit XML it writes."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as folder:
        report = Path(folder) / "cases.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "hostile", "tests/hostile", f"--junitxml={report}",
                   *extra]
        print("cases: " + " ".join(command[2:]), flush=True)
        code = subprocess.run(command, cwd=ROOT).returncode
        if not report.exists():
            return Cases(0, 0, 1)  # pytest itself failed (a bad option, an internal error)
        cases = read_report(report)
    if code not in (0, 5) and cases.failed == 0:
        cases.failed = 1  # pytest failed in a way the report does not count (a crash of a plugin)
    return cases


def read_report(path: Path) -> Cases:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = failed = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return Cases(total, total - failed - skipped, failed)


def verdict(cases: Cases, result: fairness.Result, args: argparse.Namespace) -> list[str]:
    """Why the run fails (empty: it passes)."""
    problems = []
    if cases.total == 0:
        problems.append("no hostile case ran")
    if cases.failed:
        problems.append(f"{cases.failed} hostile case(s) failed")
    if result.lost:
        problems.append(f"{result.lost} accepted job(s) lost")
    gap_pp = (result.alone - result.within_slo) * 100
    if gap_pp > args.tolerance_pp:
        problems.append(f"B's share within the objective fell {gap_pp:.1f} pp under A's flood "
                        f"(at most {args.tolerance_pp:g})")
    if result.api_peak_mb > args.api_bound_mb:
        problems.append(f"the api's peak resident memory {result.api_peak_mb:.0f} MB is over {args.api_bound_mb:g} MB")
    return problems


def main() -> None:
    """The cases, then the fairness run even when a case failed (both figures are wanted), then the line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-bound-mb", type=float, default=API_BOUND_MB, help="the api's peak RSS bound")
    parser.add_argument("--tolerance-pp", type=float, default=TOLERANCE_PP,
                        help="how far B's share under the flood may fall below its share alone")
    parser.add_argument("--pytest-args", default="", help="more pytest arguments for the cases (split on spaces)")
    fairness.add_arguments(parser)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # the progress lines as they come, under make too

    cases = run_cases(args.pytest_args.split())
    try:
        result = fairness.run(args)
    except Exception as error:  # noqa: BLE001 - the line still ends the run, with what stopped it
        traceback.print_exc()
        print(f"FAILED: the fairness run: {error!r}")
        print(f"hostile cases={cases.total} passed={cases.passed}; fairness error={type(error).__name__}")
        sys.exit(1)
    problems = verdict(cases, result, args)
    for problem in problems:
        print(f"FAILED: {problem}")
    print(f"hostile cases={cases.total} passed={cases.passed}; {result.line()}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
