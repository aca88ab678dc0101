"""scripts/cpu_isolation.py: reading /proc, and moving a real listening process and back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from cpu_isolation import (
    Moved,
    device_interrupts,
    listening_inodes,
    listening_pids,
    local_ports,
    moved_to,
    running_on,
)
from tests.helpers import free_port

INTERRUPTS = """\
           CPU0       CPU1
 36:          0     186131 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 39:       3521          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
LOC:     193214     227391   Local timer interrupts
ERR:          0
"""

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 22515 1 0
   1: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 23100 1 0
   2: 0100007F:1628 0100007F:B2E4 01 00000000:00000000 00:00000000 00000000   105        0 99999 1 0
"""

two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
LAST_CPU = max(os.sched_getaffinity(0))


def test_device_interrupts_count_numbered_lines_only() -> None:
    assert device_interrupts(INTERRUPTS) == {0: 3521, 1: 186131}


def test_listening_sockets_by_port() -> None:
    assert listening_inodes(TCP, {0x1628}) == {"22515"}  # 5672, listening; not the connection
    assert listening_inodes(TCP, {6379}) == {"23100"}


def test_only_local_urls_give_ports() -> None:
    assert local_ports("amqp://g:g@127.0.0.1:5672/", "redis://localhost:6379/0", "redis://cache.internal:6379/0",
                       "amqp://rabbit/") == {5672, 6379}


@pytest.fixture
def listener():
    """A real process listening on a local port, with a second thread."""
    port = free_port()
    code = (f"import socket, threading, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start(); print('up', flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "up"
    yield child, port
    child.kill()
    child.wait()


@two_cpus
def test_a_listening_process_is_moved_and_put_back(listener) -> None:
    child, port = listener
    found = listening_pids({port})
    assert list(found) == [child.pid]
    threads = os.listdir(f"/proc/{child.pid}/task")
    before = {tid: os.sched_getaffinity(int(tid)) for tid in threads}
    with moved_to(found, frozenset({LAST_CPU})) as moved:
        assert moved.moved == found and not moved.refused
        assert all(os.sched_getaffinity(int(tid)) == {LAST_CPU} for tid in threads)
    assert {tid: os.sched_getaffinity(int(tid)) for tid in threads} == before


def test_a_process_gone_meanwhile_is_skipped() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    time.sleep(0.1)
    with moved_to({gone.pid: "python"}, frozenset({0})) as moved:
        assert moved.moved == {} and moved.refused == {}
    assert "no local broker" in moved.describe()
    assert "not permitted" in Moved(refused={1: "beam.smp"}).describe()


@two_cpus
def test_running_on_pins_this_thread_and_what_it_starts() -> None:
    before = os.sched_getaffinity(0)
    with running_on(frozenset({LAST_CPU})):
        started = subprocess.Popen([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                                   stdout=subprocess.PIPE, text=True)
        assert started.communicate()[0].strip() == f"[{LAST_CPU}]"
    assert os.sched_getaffinity(0) == before
