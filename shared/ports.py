"""Free local TCP ports, for a process that serves on several at once: a block of consecutive
ports, as a metrics port and the ones after it (the agent's, then one per worker: services/agent.py,
shared/supervisor.py) need. Here, not in an experiment module, so that the experiment runner
(shared/experiments/class_runner.py) and the tests that start the stack take the block alike."""

from __future__ import annotations

import random
import socket

# The block is drawn below the kernel's ephemeral ports (Linux: 32768-60999, macOS: from 49152),
# which the OS hands out for outgoing connections, for servers bound to port 0 and for Docker's
# published ports: drawn among them, a block found free was taken before a worker bound its metrics
# port, and the worker died on "Address already in use" until its test timed out (CI, three lanes
# of tests at once).
LOWEST, BELOW_EPHEMERAL = 20_000, 32_768
_handed: set[int] = set()  # the ports this process was given: not given twice


def free_port_base(count: int, attempts: int = 50) -> int:
    """A port P with P .. P + count - 1 all free just now (bound, then released: another process
    may still take one before its server binds it). P is drawn at random between LOWEST and
    BELOW_EPHEMERAL, so that two runs at once seldom try the same block and the OS gives none of
    its ports to anyone else."""
    for _ in range(attempts):
        base = random.randint(LOWEST, BELOW_EPHEMERAL - count)
        block = range(base, base + count)
        if any(port in _handed for port in block):
            continue
        sockets = []
        try:
            for port in block:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("0.0.0.0", port))
            _handed.update(block)
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")
