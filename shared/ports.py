"""Free local TCP ports, for a process that serves on several at once: a block of consecutive
ports, as a metrics port and the ones after it (the agent's, then one per worker: services/agent.py,
shared/supervisor.py) need. Here, not in an experiment module, so that the experiment runner
(shared/experiments/class_runner.py) and the tests that start the stack take the block alike."""

from __future__ import annotations

import random
import socket


def free_port_base(count: int, attempts: int = 50) -> int:
    """A port P with P .. P + count - 1 all free just now (bound, then released: another process
    may still take one before its server binds it). P is drawn at random between 20000 and 60000,
    so that two runs at once seldom try the same block."""
    for _ in range(attempts):
        base = random.randint(20_000, 60_000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")
