"""`make drill`: the acceptance scenario, against the real stack that `make run` runs.

It starts `hadis serve all` (the supervisor: controller, router, judge, agent; the agent starts
one worker per emulated GPU) as a subprocess, in a session of its own, with a fresh
HADIS_NAMESPACE and HADIS_EMULATED_GPUS=2 (default settings otherwise: the tiny backend on the
CPU), and waits for a first job to be done. Then, at once:

  * 400 jobs at 8/s from an outside client, published with confirms; a publish that fails while
    the broker is away is retried (the same job) until --give-up seconds have passed;
  * every 4 s a `kill -9` of a random service process: the supervisor's children and the
    workers (found under the stack's session in /proc; never the supervisor itself, nor a
    worker's model process);
  * one broker restart mid-load: `rabbitmqctl stop_app; sleep 4; rabbitmqctl start_app` (the
    machine's broker; HADIS_AMQP_URL's with RABBITMQCTL set to the command that reaches it:
    scripts/chaos.py, rabbitmqctl).

Then it waits (bounded) for every job to be terminal and counts done, failed, expired and lost
(not terminal, or no record), and runs the double-generation detector (tests/faults/processes.py:
double_work) over the event stream with the pids known to have died: those it killed, their
descendants that went away, and workers that went away without being told to stop (crashed).
It prints a timeline as it goes, stops the stack with SIGTERM, and deletes the namespace.

Last line: `drill done=<n> of <n> lost=<n> duplicated=<n> failed=<n> expired=<n> kills=<n>`;
exit 1 unless every job is done and none duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.faults.processes

from chaos import SteadyLoad, Timeline, restart_rabbitmq
from shared.client import Client
from shared.schemas import Job, JobState
from shared.settings import Settings
from tests.faults.processes import DoubleWork, read_all_events

VICTIM_ROLES = ("controller", "router", "judge", "agent", "worker")


# The stack's processes, from /proc.
@dataclass
class Proc:
    pid: int
    ppid: int
    role: str  # supervisor, controller, router, judge, agent, worker, model, other
    first_seen: float
    gone_at: float | None = None
    killed_at: float | None = None  # when the drill sent it SIGKILL


def read_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, session id, start time in clock ticks) of a process; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
    if fields[0] == "Z":
        return None  # a zombie is dead, waiting for its parent to reap it
    return int(fields[1]), int(fields[3]), int(fields[19])


def role_of(pid: int, root: int) -> str:
    if pid == root:
        return "supervisor"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "other"
    if "-m" in argv and argv.index("-m") + 1 < len(argv):
        module = argv[argv.index("-m") + 1]
        if module.startswith("services."):
            return module.removeprefix("services.")
        if module == "shared.backends.model_process":
            return "model"
    return "other"


class StackWatch:
    """Every process of the stack's session (so a worker orphaned by its agent's death is still
    seen), scanned every half second: who is alive, who went away and when."""

    def __init__(self, root: int, say: Timeline) -> None:
        self.root = root
        self.say = say
        self.alive: dict[int, Proc] = {}
        self.all: list[Proc] = []
        self.starts: dict[int, int] = {}
        self.lock = threading.Lock()
        self.frozen = False
        self.verbose = True  # a timeline line for each process that starts or goes away

    def scan(self, final: bool = False) -> None:
        """One look at /proc. After a `final` one, other scans do nothing (the result is read)."""
        with self.lock:  # the follower's thread and the killer's may scan at once
            if final or not self.frozen:
                self._scan()
            self.frozen = self.frozen or final

    def _scan(self) -> None:
        now = time.monotonic()
        seen: set[int] = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            stat = read_stat(pid)
            if stat is None or stat[1] != self.root:
                continue
            ppid, _, start = stat
            seen.add(pid)
            known = self.alive.get(pid)
            if known is not None and self.starts.get(pid) != start:  # the pid was reused
                self.went_away(self.alive.pop(pid), now)
                known = None
            if known is None:
                known = Proc(pid, ppid, role_of(pid, self.root), now)
                self.alive[pid], self.starts[pid] = known, start
                self.all.append(known)
                if self.verbose and known.role != "other":
                    self.say(f"  + {known.role} pid {pid} (parent {ppid})")
            elif now - known.first_seen < 2.0:  # fork before exec: the role may change once
                known.role, known.ppid = role_of(pid, self.root), ppid
        for pid in list(self.alive):
            if pid not in seen:
                self.went_away(self.alive.pop(pid), now)

    def went_away(self, proc: Proc, now: float) -> None:
        proc.gone_at = now
        if self.verbose and proc.role != "other":
            how = "killed" if proc.killed_at is not None else "exited"
            self.say(f"  - {proc.role} pid {proc.pid} {how}, after {now - proc.first_seen:.0f} s")

    async def follow(self, every_s: float = 0.5) -> None:
        while True:
            await asyncio.to_thread(self.scan)
            await asyncio.sleep(every_s)

    def victims(self) -> list[Proc]:
        with self.lock:
            return [proc for proc in self.alive.values() if proc.role in VICTIM_ROLES]

    def went_with_a_killed_ancestor(self) -> list[Proc]:
        """Processes that went away after an ancestor of theirs (the parent they started under,
        and so on up) was killed: a worker whose agent was killed, a model process."""
        by_pid = {proc.pid: proc for proc in self.all}
        found = []
        for proc in self.all:
            if proc.gone_at is None or proc.killed_at is not None:
                continue
            parent, hops = by_pid.get(proc.ppid), 0
            while parent is not None and hops < 16:
                if parent.killed_at is not None and parent.killed_at <= proc.gone_at:
                    found.append(proc)
                    break
                parent, hops = by_pid.get(parent.ppid), hops + 1
        return found

    def still_alive(self, proc: Proc) -> bool:
        stat = read_stat(proc.pid)
        return stat is not None and stat[1] == self.root and self.starts.get(proc.pid) == stat[2]


def stopping_pids(log_path: Path) -> set[int]:
    """Workers the agent told to stop (SIGTERM: a graceful stop, not a death), from its log."""
    pids = set()
    try:
        for line in log_path.read_text(errors="replace").splitlines():
            if "worker_stopping" in line:
                match = re.search(r'"pid":\s*(\d+)|pid=(\d+)', line)
                if match:
                    pids.add(int(match.group(1) or match.group(2)))
    except OSError:
        pass
    return pids


# The faults.
async def killer(watch: StackWatch, every_s: float, until: asyncio.Event, rng: random.Random, say: Timeline,
                 killed: list[Proc]) -> None:
    while not until.is_set():
        try:
            await asyncio.wait_for(until.wait(), timeout=every_s)
            return
        except TimeoutError:
            pass
        await asyncio.to_thread(watch.scan)
        victims = sorted(watch.victims(), key=lambda proc: proc.pid)
        if not victims:
            say("no service process to kill just now")
            continue
        victim = rng.choice(victims)
        if not watch.still_alive(victim):
            continue
        victim.killed_at = time.monotonic()
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            victim.killed_at = None
            continue
        killed.append(victim)
        alive = ", ".join(f"{proc.role}:{proc.pid}" for proc in victims if proc is not victim)
        say(f"kill -9 {victim.role} pid {victim.pid} (kill {len(killed)}); others: {alive}")


async def broker_restart(after_s: float, down_s: float, say: Timeline) -> None:
    await asyncio.sleep(after_s)
    await restart_rabbitmq(say, down_s)


# The stack.
def start_stack(namespace: str, gpus: int, log_path: Path) -> subprocess.Popen:
    # The api on a port of its own (0: any free one): the drill submits over AMQP.
    env = {**os.environ, "HADIS_NAMESPACE": namespace, "HADIS_EMULATED_GPUS": str(gpus), "HADIS_API_PORT": "0"}
    hadis = Path(sys.executable).with_name("hadis")
    with open(log_path, "ab") as log:
        return subprocess.Popen([str(hadis), "serve", "all"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop_stack(stack: subprocess.Popen, watch: StackWatch, say: Timeline, grace_s: float = 90.0) -> list[Proc]:
    """SIGTERM the supervisor (it stops its children gracefully); SIGKILL it past grace_s. Then
    processes of its session still running (workers orphaned by a killed agent) are ended one
    by one: SIGTERM, then SIGKILL. Returns those leftovers."""
    if stack.poll() is None:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            say(f"the supervisor did not stop within {grace_s:.0f} s: SIGKILL")
            stack.kill()
            stack.wait(timeout=30)
    say(f"supervisor exited with {stack.returncode}")
    watch.scan(final=True)
    leftovers = [proc for proc in watch.alive.values() if watch.still_alive(proc)]
    for proc in leftovers:
        say(f"still running after the supervisor stopped: {proc.role} pid {proc.pid} (parent {proc.ppid}): SIGTERM")
        os.kill(proc.pid, signal.SIGTERM)
    give_up_at = time.monotonic() + 45
    for proc in leftovers:
        while watch.still_alive(proc) and time.monotonic() < give_up_at:
            time.sleep(0.2)
        if watch.still_alive(proc):
            os.kill(proc.pid, signal.SIGKILL)
    return leftovers


async def first_job(client: Client, stack: subprocess.Popen, timeout_s: float, say: Timeline) -> None:
    job = Job(prompt="drill warm-up: a red bicycle", slo_s=min(timeout_s, 3600.0))
    await client.submit(job)
    give_up_at = time.monotonic() + timeout_s
    while time.monotonic() < give_up_at:
        if stack.poll() is not None:
            raise RuntimeError(f"hadis serve all exited with {stack.returncode}")
        record = await client.wait(job.job_id, timeout_s=5.0)
        if record is not None:
            if record.state is not JobState.done:
                raise RuntimeError(f"the first job ended {record.state.value}: {record.error}")
            say(f"first job done ({record.tier.value if record.tier else '?'}): the stack serves")
            return
    raise RuntimeError(f"no first job done within {timeout_s:.0f} s")


async def wait_terminal(client: Client, ids: list[str], timeout_s: float, say: Timeline) -> None:
    give_up_at, last = time.monotonic() + timeout_s, None
    say(f"waiting (at most {timeout_s:.0f} s) for {len(ids)} jobs to be terminal")
    while True:
        states = await client.store.states(ids)
        counts: dict[str, int] = {}
        for state in states:
            name = state.value if state is not None else "no-record"
            counts[name] = counts.get(name, 0) + 1
        terminal = sum(1 for state in states if state is not None and state.terminal)
        summary = " ".join(f"{name}={count}" for name, count in sorted(counts.items()))
        if summary != last:
            say(f"terminal {terminal}/{len(ids)}: {summary}")
            last = summary
        if terminal == len(ids) or time.monotonic() >= give_up_at:
            return
        await asyncio.sleep(3.0)


def history(events: list[tuple[str, dict[str, str]]], job_id: str) -> str:
    steps = []
    for _, event in events:
        if event.get("job_id") == job_id:
            step = event["state"] + (f"[{event['tier']}]" if event.get("tier") else "")
            step += f" by {event['owner']}" if event.get("owner") else ""
            step += f" +image:{event['image']}" if event.get("image") else ""
            steps.append(step)
    return " -> ".join(steps) or "(no events)"


@dataclass
class Figures:
    submitted: int = 0
    done: int = 0
    lost: int = 0
    duplicated: int = 0
    failed: int = 0
    expired: int = 0
    kills: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"drill done={self.done} of {self.submitted} lost={self.lost} duplicated={self.duplicated} "
                f"failed={self.failed} expired={self.expired} kills={self.kills}")


async def drill(args: argparse.Namespace, say: Timeline, figures: Figures) -> None:
    namespace = f"drill{uuid.uuid4().hex[:6]}"
    log_path = Path(args.log)
    settings = Settings(namespace=namespace, publish_timeout_s=args.publish_timeout)
    stack = start_stack(namespace, args.gpus, log_path)
    say(f"hadis serve all started: pid {stack.pid}, namespace {namespace}, {args.gpus} emulated GPUs, "
        f"log {log_path}")
    watch = StackWatch(stack.pid, say)
    watching = asyncio.create_task(watch.follow())
    client: Client | None = None
    killed: list[Proc] = []
    try:
        client = await Client.open(settings)
        await first_job(client, stack, args.start_timeout, say)
        await asyncio.to_thread(watch.scan)
        say("processes: " + ", ".join(f"{p.role}:{p.pid}" for p in sorted(watch.alive.values(), key=lambda p: p.pid)))

        load = SteadyLoad(client, rate_qps=args.rate, give_up_s=args.give_up, slo_s=args.slo, say=say)
        seconds = args.jobs / args.rate
        say(f"{args.jobs} jobs at {args.rate}/s ({seconds:.0f} s), kill -9 every {args.kill_every:.0f} s, "
            f"broker restart at {seconds / 2:.0f} s for {args.broker_down:.0f} s")
        load_over = asyncio.Event()
        rng = random.Random(args.seed)
        killing = asyncio.create_task(killer(watch, args.kill_every, load_over, rng, say, killed))
        try:
            await asyncio.gather(load.run(seconds=seconds, prefix="drill"),
                                 broker_restart(seconds / 2, args.broker_down, say))
        finally:
            load_over.set()
            await killing
        figures.kills = len(killed)
        say(f"load over: {len(load.jobs)} submitted, {len(load.refused)} refused, {load.retried} publishes "
            f"retried, {len(killed)} kills")

        ids = [job.job_id for job in load.jobs]
        await wait_terminal(client, ids, args.timeout, say)
        records = [await client.status(job_id) for job_id in ids]
        events = await read_all_events(client.store, load.since_id)

        # Who died: the killed, their descendants that went away after the kill (a worker whose
        # agent was killed), and workers that went away without the agent telling them to stop
        # (crashed). A claim may pass on from those; the detector is also run with the killed
        # alone, to show which findings that leniency hides.
        watching.cancel()
        await asyncio.to_thread(watch.scan, True)
        killed_pids = {proc.pid for proc in killed}
        descendants = {proc.pid: proc for proc in watch.went_with_a_killed_ancestor()}
        told_to_stop = stopping_pids(log_path)
        exited = {proc.pid: proc for proc in watch.all
                  if proc.gone_at is not None and proc.role == "worker"
                  and proc.pid not in killed_pids | set(descendants) | told_to_stop}
        died = killed_pids | set(descendants) | set(exited)
        if descendants:
            say("went away after an ancestor was killed: "
                + ", ".join(f"{p.role}:{p.pid}" for p in sorted(descendants.values(), key=lambda p: p.pid)))
        if exited:
            say("workers that went away, neither killed nor told to stop by the agent (crashed?): "
                + ", ".join(str(pid) for pid in sorted(exited)))
        orphans = [proc for proc in watch.alive.values() if proc.role == "worker" and proc.ppid not in
                   {p.pid for p in watch.alive.values() if p.role == "agent"}]
        if orphans:
            note = "workers running without a live agent parent (orphaned?): " + ", ".join(
                f"{proc.pid} (parent {proc.ppid})" for proc in orphans)
            figures.notes.append(note)
            say(note)
        strict = DoubleWork(killed_pids).feed(events)
        found = DoubleWork(died).feed(events)

        ids_set = set(ids)
        figures.submitted = len(ids)
        figures.done = sum(1 for r in records if r is not None and r.state is JobState.done)
        figures.failed = sum(1 for r in records if r is not None and r.state is JobState.failed)
        figures.expired = sum(1 for r in records if r is not None and r.state is JobState.expired)
        figures.lost = sum(1 for r in records if r is None or not r.state.terminal)
        duplicated = [job_id for job_id in found.jobs if job_id in ids_set]
        figures.duplicated = len(duplicated)
        for job_id in duplicated[:args.evidence]:
            say(f"DUPLICATED {job_id}: {'; '.join(found.findings[job_id])}\n      events: {history(events, job_id)}")
        hidden = [job_id for job_id in strict.jobs if job_id in ids_set and job_id not in found.findings]
        if hidden:
            figures.notes.append(f"{len(hidden)} jobs re-claimed after their owner went away without being killed")
            say(f"{len(hidden)} jobs were claimed again after their owner went away without being killed "
                "(taken as died, so not counted as duplicated):")
            for job_id in hidden[:args.evidence]:
                say(f"  {job_id}: {history(events, job_id)}")
        others = [job_id for job_id in found.jobs if job_id not in ids_set]
        if others:
            say(f"double work also found for jobs outside the load: {others[:5]}")
        unserved = [(job_id, r) for job_id, r in zip(ids, records, strict=True)
                    if r is None or r.state is not JobState.done]
        for job_id, record in unserved[:args.evidence]:
            what = "no record" if record is None else f"{record.state.value} ({record.error or ''})"
            say(f"NOT DONE {job_id}: {what}\n      events: {history(events, job_id)}")
        if len(unserved) > args.evidence:
            say(f"... and {len(unserved) - args.evidence} more not done")
    finally:
        watching.cancel()
        say("stopping the stack (SIGTERM)")
        leftovers = await asyncio.to_thread(stop_stack, stack, watch, say)
        if leftovers:
            figures.notes.append(f"{len(leftovers)} processes outlived the supervisor")
        if client is not None:
            try:
                await client.delete_namespace()
                say(f"namespace {namespace} deleted")
            finally:
                await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rate", type=float, default=8.0, help="jobs per second")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between two kill -9")
    parser.add_argument("--broker-down", type=float, default=4.0, help="seconds between stop_app and start_app")
    parser.add_argument("--gpus", type=int, default=2, help="HADIS_EMULATED_GPUS of the stack")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="bound on the wait for a first job")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the wait for terminal states")
    parser.add_argument("--publish-timeout", type=float, default=30.0, help="the client's bound on one publish")
    parser.add_argument("--give-up", type=float, default=120.0,
                        help="seconds a job's publish is retried through an outage before it counts as refused")
    parser.add_argument("--slo", type=float, default=None,
                        help="each job's slo_s (default: none given, the stack's HADIS_SLO_S, 60 s)")
    parser.add_argument("--seed", type=int, default=None, help="the victims' draw (default: random)")
    parser.add_argument("--evidence", type=int, default=10, help="jobs whose history is printed, per kind of problem")
    parser.add_argument("--log", help="the stack's output (default: a temp file)")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(2**31)
    args.log = args.log or tempfile.mkstemp(prefix="hadis-drill-", suffix=".log")[1]
    say, figures = Timeline(), Figures()
    say(f"drill: seed {args.seed}; the stack's output and this client's warnings go to {args.log}")
    # aio-pika's reconnection noise (this client's, while the broker restarts) goes to the log too.
    sys.stderr.flush()
    with open(args.log, "ab") as log:
        os.dup2(log.fileno(), 2)
    code = 1
    try:
        asyncio.run(drill(args, say, figures))
        code = 0 if figures.submitted and figures.done == figures.submitted and figures.duplicated == 0 else 1
    except Exception:  # noqa: BLE001 - the figures so far and the last line, whatever went wrong
        say("the drill itself failed:\n" + traceback.format_exc())
    for note in figures.notes:
        print(f"note: {note}")
    print(figures.line(), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
