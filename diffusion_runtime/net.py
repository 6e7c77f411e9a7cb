"""Network helpers shared by the launcher and the engines.

They live apart from the launcher so that an engine (imported inside every model's stub process) never
imports the launcher's process and repository code.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000


def _ephemeral_start() -> int | None:
    """The first port of the kernel's ephemeral range (where outgoing connections get their local ports)."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now, for a server the caller starts right after.

    Chosen at random below the kernel's ephemeral range: a port the kernel hands out for ``bind(0)`` comes from
    that range, where every outgoing connection on the machine (gRPC and HTTP clients of other servers) also takes
    its local port, and one did take such a port between the check and the server's bind (a test's tritonserver
    then died with "Address already in use"). Below the range only another server can take it."""
    start = _ephemeral_start()
    if start is not None and start > LOWEST_PORT:
        for _ in range(50):
            port = random.randrange(LOWEST_PORT, start)
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
