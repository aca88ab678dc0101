"""A CPU of its own for a model that computes on the CPU, the way a GPU is a device of its own.

Used by `scripts/bench_worker.py`. On a 2-core machine the model's core is disturbed by three
things, each measured there: the scheduler running the worker's event loop on it, RabbitMQ and
Redis waking on it, and device interrupts (the disk's, which RabbitMQ's fsyncs raise, all land on
one CPU). So the model gets the CPU that serves the fewest device interrupts, the harness and the
worker run on the others, and the local broker and store are moved to the others for the run and
put back afterwards (where this user may; a SIGKILLed run leaves them moved).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
TCP_LISTEN = "0A"


def cpu_list(cpus: frozenset[int] | set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def device_interrupts(text: str) -> dict[int, int]:
    """Interrupts each CPU has served for devices: the numbered lines of /proc/interrupts (the
    named ones, such as LOC, the local timer, every CPU has alike)."""
    lines = text.splitlines()
    if not lines:
        return {}
    cpus = [int(name[3:]) for name in lines[0].split() if name.startswith("CPU")]
    counts = dict.fromkeys(cpus, 0)
    for line in lines[1:]:
        label, *fields = line.split()
        if label.rstrip(":").isdigit():
            for cpu, value in zip(cpus, fields, strict=False):  # after the counts: the chip, the type, the device
                if value.isdigit():
                    counts[cpu] += int(value)
    return counts


def quietest_cpu(available: list[int]) -> int:
    """The available CPU that serves the fewest device interrupts (the lowest one on a tie)."""
    try:
        counts = device_interrupts(Path("/proc/interrupts").read_text())
    except OSError:
        counts = {}
    return min(available, key=lambda cpu: (counts.get(cpu, 0), cpu))


def listening_inodes(table: str, ports: set[int]) -> set[str]:
    """Socket inodes listening on `ports` in a /proc/net/tcp table."""
    inodes = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) in ports:
            inodes.add(fields[9])
    return inodes


def listening_pids(ports: set[int]) -> dict[int, str]:
    """The processes (pid: command name) listening on these local TCP ports, as far as this user sees."""
    inodes: set[str] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            inodes |= listening_inodes(Path(name).read_text(), ports)
    sockets, found = {f"socket:[{inode}]" for inode in inodes}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets for fd in os.listdir(f"/proc/{pid}/fd")):
                found[int(pid)] = Path(f"/proc/{pid}/comm").read_text().strip()
    return found


def local_ports(*urls: str) -> set[int]:
    """The ports of those URLs that point at this machine (the broker and store to move)."""
    ports = set()
    for url in urls:
        parts = urlsplit(url)
        if parts.hostname in LOCAL_HOSTS and parts.port:
            ports.add(parts.port)
    return ports


@dataclass
class Moved:
    """What `moved_to` did: the processes moved, and those it could not move."""

    moved: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)

    def describe(self) -> str:
        said = []
        if self.moved:
            said.append(f"{', '.join(sorted(set(self.moved.values())))} moved there too")
        if self.refused:
            said.append(f"{', '.join(sorted(set(self.refused.values())))} left where they are (not permitted)")
        return "; ".join(said) or "no local broker or store found to move"


@contextlib.contextmanager
def moved_to(processes: dict[int, str], cpus: frozenset[int]):
    """Every thread of these processes on `cpus` while the block runs, then back on their own."""
    record, before = Moved(), {}
    try:
        for pid, name in processes.items():
            try:
                before[pid] = os.sched_getaffinity(pid)
                set_every_thread(pid, cpus)
                record.moved[pid] = name
            except PermissionError:
                record.refused[pid] = name
            except ProcessLookupError:
                pass
        yield record
    finally:
        for pid, mask in before.items():
            with contextlib.suppress(OSError):
                set_every_thread(pid, mask)  # threads started meanwhile included


def set_every_thread(pid: int, cpus: frozenset[int] | set[int]) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def running_on(cpus: frozenset[int] | None):
    """The calling thread (and what it starts meanwhile: threads, processes) on `cpus`."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
