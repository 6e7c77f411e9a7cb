"""What ``--triton-url`` names: one tritonserver, or every tritonserver behind a DNS name.

``host:port`` is one server, reached through one long-lived gRPC connection. That is wrong for a Kubernetes
ClusterIP Service: it balances connections, not calls, so a frontend would send every call to the one pod its
connection landed on, and pods that the autoscaler adds would get no traffic from frontends already running.

``dns:///host:port`` (gRPC's own spelling of a name to resolve) asks for the other behaviour: the name is
resolved again every ``refresh_s`` seconds, and sooner after a server behind it could not be reached, and each
address it returns becomes a server of the pool. Pointed at a headless Service (``clusterIP: None``), whose name
resolves to the addresses of its ready pods, the frontend spreads calls over every pod, least busy first,
follows scale-ups and scale-downs, and keeps per-pod bookkeeping (failover, model reloads, metrics).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

DNS_SCHEME = "dns:"


@dataclass(frozen=True)
class Server:
    """One tritonserver: its gRPC address and, when known, its ``/metrics`` URL."""

    url: str
    metrics_url: str | None = None


@dataclass(frozen=True)
class TritonTarget:
    """One ``--triton-url`` (with its ``--triton-metrics-url``, if any)."""

    url: str
    metrics_url: str | None = None

    @property
    def resolves(self) -> bool:
        return self.url.startswith(DNS_SCHEME)

    def name(self) -> tuple[str, int]:
        """The host and port of a ``dns:`` target (``dns:///host:port`` or ``dns:host:port``)."""
        rest = self.url[len(DNS_SCHEME) :]
        if rest.startswith("//"):
            authority, _, rest = rest[2:].partition("/")
            if authority:
                raise ValueError(f"{self.url}: a DNS server in the URL is not supported; use dns:///host:port")
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{self.url}: expected dns:///host:port")
        return host.strip("[]"), int(port)

    def server(self, address: str | None = None) -> Server:
        """The server at one resolved ``address`` of this target (the target itself when it does not resolve).
        A metrics URL on the target's host is moved to the same address."""
        if address is None:
            return Server(self.url, self.metrics_url)
        host, port = self.name()
        grpc_host = f"[{address}]" if ":" in address else address
        metrics = self.metrics_url
        if metrics is not None:
            parts = urlsplit(metrics)
            if parts.hostname == host:
                netloc = grpc_host + (f":{parts.port}" if parts.port else "")
                metrics = urlunsplit(parts._replace(netloc=netloc))
        return Server(f"{grpc_host}:{port}", metrics)

    async def servers(self) -> list[Server]:
        """The servers this target names now: one, or one per address its name resolves to (in the resolver's
        order, without repeats). Raises ``OSError`` when the name cannot be resolved."""
        if not self.resolves:
            return [self.server()]
        host, port = self.name()
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        return [self.server(address) for address in addresses]


def targets(urls: Sequence[str], metrics_urls: Sequence[str | None]) -> list[TritonTarget]:
    """The targets of the command line: ``metrics_urls`` pair with ``urls`` in order. Checks ``dns:`` URLs now,
    so a malformed one stops the frontend at start rather than at its first request."""
    padded = list(metrics_urls) + [None] * (len(urls) - len(metrics_urls))
    found = [TritonTarget(url, metrics) for url, metrics in zip(urls, padded, strict=True)]
    for target in found:
        if target.resolves:
            target.name()
    return found
