"""The fairness run of `make test-hostile` (issue 29): does a tenant that floods the api hurt another
tenant's latency objective? Through the real services: `hadis serve all` (controller, router, judge,
api, agent and its workers on emulated GPUs) in a namespace of its own, two tenants with keys made by
`hadis api-key create`, and HTTP `POST /v1/images/generations` from this process.

* alone: tenant B sends its normal load, --b-rate requests/s of one 512x512 image (about half of
  what the fleet serves), for --phase-seconds; Y = the share of B's requests whose job was done
  within its objective (the record's latency, submitted to done, at most the SLO; a refused or
  failed request is a miss).
* flood: the same B load while tenant A floods at --flood (20) times its rate limit with n=10 at
  2048x2048 (the largest size), starting --lead-seconds before B. A's limits are generous: its
  rate alone admits --a-jobs-per-s images, more than the fleet serves, its burst takes two
  requests, its quota and image budget never bind; so what protects B, if anything does, is the
  api's fair share of a saturated fleet, not A's own limits. X = B's share within the objective.

The fleet: --gpus emulated GPUs (the static plan: one light, one heavy; r=0.2, d=0.3) with the
paper-l40s-x10 profile times --time-scale (5: a light batch of 4 in 0.9 s); a 200-job backlog
drains at about 4.2 jobs/s here. The emulated models sleep the profiled time of a batch whatever
the images' size (shared/backends/emulated.py): a 2048x2048 job costs the fleet what a 512x512 one
does, while the api charges it 16 units (shared/policies/tenancy.py: job_units, where it exists).

The api's resident memory is sampled every 0.1 s through both phases (its VmHWM, the kernel's peak,
where readable): api_peak_mb. lost counts the jobs the api accepted (200, or a 408/500 that names an
accepted job; and every job with an event in the namespace) that are not terminal in the store once
the load is over and the objective has passed for all of them.

The limits go through the code's own `hadis api-key create`, in its units: --weight (--a-weight,
--b-weight) and --image-mb are passed where it has them. --code DIR runs the stack from another
checkout (scripts/checkout.py), e.g. the revision before a fix: `git worktree add /tmp/base b46b980`,
then `python scripts/fairness.py --code /tmp/base`. Alone, `python scripts/fairness.py` prints the
figures and `fairness B within_slo=X (alone Y) api_peak_mb=M lost=L` (about 110 s here).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from checkout import HADIS, Code
from fairness_load import Reply, account, b_share, client_for, describe, paced, served_line
from shared.settings import Settings
from shared.store import Store

STACK_ENV = {
    "HADIS_BACKEND": "emulated",
    "HADIS_JUDGE_BACKEND": "emulated",
    "HADIS_PROFILE": "paper-l40s-x10",
    "HADIS_CONTROLLER_POLICY": "static",
    "HADIS_PLAN_R": "0.2",
    "HADIS_PLAN_D": "0.3",
    "HADIS_IMAGE_TTL_S": "600",  # the namespace is deleted at the end; A's image budget is sized on it
    "HADIS_LOG_LEVEL": "warning",
    "HADIS_LOG_FORMAT": "json",
}
A_SIZE, B_SIZE = (2048, 2048), (512, 512)  # A's default (--a-size), B's
READY_S = 120.0
SAMPLE_S = 0.1


@dataclass
class Result:
    within_slo: float  # B's share in the flood, 0-1
    alone: float  # B's share alone, 0-1
    api_peak_mb: float
    lost: int

    def line(self) -> str:
        return (f"fairness B within_slo={self.within_slo * 100:.1f}% (alone {self.alone * 100:.1f}%) "
                f"api_peak_mb={self.api_peak_mb:.0f} lost={self.lost}")


# ---- the stack ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stack_code(args: argparse.Namespace, namespace: str, port: int) -> Code:
    return Code.at(args.code, {**STACK_ENV, "HADIS_NAMESPACE": namespace, "HADIS_API_PORT": str(port),
                               "HADIS_TIME_SCALE": str(args.time_scale), "HADIS_SLO_S": str(args.slo),
                               "HADIS_EMULATED_GPUS": str(args.gpus)})


def start_stack(code: Code, log_path: Path) -> subprocess.Popen:
    """`hadis serve all`, as `make run` runs it, in a session of its own."""
    return code.popen([*HADIS, "serve", "all"], log_path, start_new_session=True)


def stop_stack(stack: subprocess.Popen) -> None:
    """SIGTERM to the supervisor (it stops its children gracefully); SIGKILL past a minute."""
    if stack.poll() is None:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stack.kill()
            stack.wait(timeout=30)


def api_process(stack: subprocess.Popen) -> psutil.Process | None:
    """The supervisor's api child (`python -m services.api`), if it runs."""
    try:
        for child in psutil.Process(stack.pid).children():
            if "services.api" in child.cmdline():
                return child
    except psutil.Error:
        pass
    return None


class MemoryWatch:
    """The api's peak resident memory, from a thread: the kernel's VmHWM of each api process seen
    (a restarted api is a new one), else the largest RSS sampled."""

    def __init__(self, stack: subprocess.Popen) -> None:
        self.stack, self.peak_bytes, self.pids = stack, 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        process = None
        while not self._stop.wait(SAMPLE_S):
            if process is None or not process.is_running():
                process = api_process(self.stack)
                if process is None:
                    continue
                self.pids.add(process.pid)
            self.peak_bytes = max(self.peak_bytes, resident_peak(process))

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def resident_peak(process: psutil.Process) -> int:
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return process.memory_info().rss
    except (OSError, psutil.Error, ValueError):
        return 0


# ---- the tenants -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tenants:
    """What an image costs in the code's units (a 2048x2048 one 16, where it counts units; else one),
    and the two tenants' limits in them."""

    a_units: float  # one of A's images
    b_units: float

    @classmethod
    def of(cls, code: Code, a_size: tuple[int, int] = A_SIZE) -> Tenants:
        return cls(code.units(a_size), code.units(B_SIZE))

    def limits(self, args: argparse.Namespace, tenant: str) -> dict[str, float]:
        """A's generous limits (its rate alone over the fleet's capacity), B's that its load never reaches.
        Those the code's `hadis api-key create` lacks are left out (checkout.Code.make_key)."""
        if tenant == "a":
            request = args.n * self.a_units
            width, height = args.a_size
            image_mb = args.a_jobs_per_s * width * height * 3 / 2**20 * int(STACK_ENV["HADIS_IMAGE_TTL_S"]) * 4
            return {"rate": args.a_jobs_per_s * self.a_units, "burst": 2 * request, "max_active": 1000 * request,
                    "weight": args.a_weight, "image_mb": image_mb}
        return {"rate": 4 * args.b_rate * self.b_units, "burst": 20 * self.b_units, "max_active": 1000 * self.b_units,
                "weight": args.b_weight, "image_mb": 100_000}


# ---- the load ----------------------------------------------------------------------------------

async def wait_ready(base: str, key: str, stack: subprocess.Popen) -> None:
    """One image of B's through every service (a long objective: they may still be starting)."""
    give_up_at = time.monotonic() + READY_S
    async with client_for(base, key, 70.0) as http:
        while True:
            if stack.poll() is not None:
                raise RuntimeError(f"hadis serve all exited with {stack.returncode}")
            try:
                response = await http.post("/v1/images/generations", json={
                    "prompt": "warm-up: a red bicycle", "model": "hadis-60s", "response_format": "url"})
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > give_up_at:
                raise RuntimeError(f"no first image through the api in {READY_S:.0f} s")
            await asyncio.sleep(1.0)


async def alone(args: argparse.Namespace, base: str, keys: dict[str, str], replies: list[Reply]) -> None:
    """B's load, nothing else; then every answer."""
    async with client_for(base, keys["b"], args.slo + 60) as http:
        tasks = await paced(http, "b", "alone", args.b_rate, args.phase_seconds, 1, B_SIZE, replies)
        await asyncio.gather(*tasks)


async def flood(args: argparse.Namespace, base: str, keys: dict[str, str], replies: list[Reply]) -> None:
    """A's flood from --lead-seconds before B's load to its end, B's load as alone; then every answer."""
    a_rate = args.flood * args.a_jobs_per_s / args.n  # requests/s: --flood times its limit, whatever the unit
    a_seconds = args.lead_seconds + args.phase_seconds
    async with client_for(base, keys["a"], args.slo + 60) as a_http, \
            client_for(base, keys["b"], args.slo + 60) as b_http:
        a_sending = asyncio.create_task(paced(a_http, "a", "flood", a_rate, a_seconds, args.n, args.a_size, replies))
        await asyncio.sleep(args.lead_seconds)
        b_tasks = await paced(b_http, "b", "flood", args.b_rate, args.phase_seconds, 1, B_SIZE, replies)
        await asyncio.gather(*b_tasks, *(await a_sending))


# ---- the run -----------------------------------------------------------------------------------

async def phases(args: argparse.Namespace, code: Code, stack: subprocess.Popen, base: str) -> Result:
    """Keys, a first image, both phases under the memory watch, then the accounting."""
    tenants = Tenants.of(code, args.a_size)
    keys = {tenant: code.make_key(tenant, tenants.limits(args, tenant)) for tenant in ("a", "b")}
    passed = sorted(code.key_options() & {"--weight", "--image-mb"})
    print(f"keys: a {tenants.limits(args, 'a')}, b {tenants.limits(args, 'b')} (units: {tenants.a_units:g} per "
          f"2048x2048 image, {tenants.b_units:g} per 512x512); hadis api-key create has {passed or 'neither'} "
          "of --weight, --image-mb")
    await wait_ready(base, keys["b"], stack)
    # The store alone (the broker's topology is the stack code's to declare, which --code may change).
    store = await Store.connect(Settings(namespace=code.env["HADIS_NAMESPACE"]))
    replies: list[Reply] = []
    try:
        since_id = await store.last_event_id()
        with MemoryWatch(stack) as memory:
            print(f"alone: B at {args.b_rate:g} requests/s for {args.phase_seconds:.0f} s")
            await alone(args, base, keys, replies)
            print(f"flood: A at {args.flood:g}x its rate limit, n={args.n} at {args.a_size[0]}x{args.a_size[1]}, from "
                  f"{args.lead_seconds:.0f} s before B's load, as alone")
            flood_started = time.time()
            await flood(args, base, keys, replies)
            flood_ended = time.time()
            records, lost = await account(store, since_id, replies)
        for tenant, phase in (("b", "alone"), ("a", "flood"), ("b", "flood")):
            print(describe(replies, tenant, phase, records))
        print(served_line(records, flood_started, flood_ended))
        if len(memory.pids) > 1:
            print(f"the api was restarted during the run: pids {sorted(memory.pids)}")
        return Result(b_share(replies, "flood", records), b_share(replies, "alone", records), memory.peak_mb, lost)
    finally:
        await store.close()


def run(args: argparse.Namespace) -> Result:
    """The whole run in a namespace of its own, deleted at the end with the stack stopped."""
    namespace, port = f"fair{uuid.uuid4().hex[:6]}", free_port()
    code = stack_code(args, namespace, port)
    log_path = Path(args.log or Path(tempfile.gettempdir()) / f"hadis-{namespace}.log")
    stack = start_stack(code, log_path)
    print(f"fairness: hadis serve all (pid {stack.pid}) from {code.cwd}, namespace {namespace}, "
          f"api :{port}, {args.gpus} emulated GPUs at time scale {args.time_scale:g}, SLO {args.slo:g} s; "
          f"log {log_path}")
    started = time.monotonic()
    try:
        return asyncio.run(phases(args, code, stack, f"http://127.0.0.1:{port}"))
    finally:
        stop_stack(stack)
        code.delete_namespace()
        print(f"fairness: {time.monotonic() - started:.0f} s in all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run's options, shared with scripts/hostile.py (make test-hostile HOSTILE_ARGS=...)."""
    parser.add_argument("--phase-seconds", type=float, default=45.0, help="B's load in each phase")
    parser.add_argument("--lead-seconds", type=float, default=5.0, help="A floods this long before B's load")
    parser.add_argument("--b-rate", type=float, default=2.0, help="B's requests/s (one 512x512 image each)")
    parser.add_argument("--a-jobs-per-s", type=float, default=6.0,
                        help="A's rate limit, in its 2048x2048 images per second (over the fleet's capacity)")
    parser.add_argument("--flood", type=float, default=20.0, help="A sends this many times its rate limit")
    parser.add_argument("--n", type=int, default=10, help="images per request of A's")
    parser.add_argument("--a-size", type=lambda text: tuple(int(side) for side in text.split("x")), default=A_SIZE,
                        help="the size of A's images, WIDTHxHEIGHT (default the largest, 2048x2048)")
    parser.add_argument("--a-weight", type=float, default=1.0, help="A's weight (when api-key create has --weight)")
    parser.add_argument("--b-weight", type=float, default=1.0, help="B's weight (when api-key create has --weight)")
    parser.add_argument("--gpus", type=int, default=2, help="emulated GPUs")
    parser.add_argument("--time-scale", type=float, default=5.0, help="multiplies the emulated latencies")
    parser.add_argument("--slo", type=float, default=10.0, help="the objective of every job (s)")
    parser.add_argument("--log", help="the stack's log (default: a file in the temporary folder)")
    parser.add_argument("--code", help="run the stack from this checkout (e.g. a git worktree of the revision "
                        "before a fix), with this venv's packages; default: this one")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.stdout.reconfigure(line_buffering=True)  # the progress lines as they come, under make too
    print(run(parser.parse_args()).line())


if __name__ == "__main__":
    main()
