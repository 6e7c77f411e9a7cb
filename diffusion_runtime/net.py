"""Network helpers shared by the launcher and the engines.

They live apart from the launcher so that an engine (imported inside every model's stub process) never
imports the launcher's process and repository code.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the kernel picks it). Another process may still take it before
    the caller binds it, which is acceptable for loopback servers started right after."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
