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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from openai_frontend.triton.endpoint import Server, TritonEndpoint

log = logging.getLogger(__name__)

DNS_SCHEME = "dns:"


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


class ServerSet:
    """The servers that the targets name now, as the pool's endpoints: a plain URL's one server for good; a
    ``dns:`` URL's, resolved again when ``refresh`` finds ``refresh_s`` passed (or a server of it was ``lost``).
    A new address becomes an endpoint, a vanished one is retired and closed once its calls in flight are done. A
    name that cannot be resolved keeps its last servers: a DNS hiccup must not empty the pool."""

    def __init__(self, urls: Sequence[str], metrics_urls: Sequence[str | None], refresh_s: float) -> None:
        self._members: dict[TritonTarget, list[TritonEndpoint]] = {
            target: [] if target.resolves else [TritonEndpoint.connect(target.server())]
            for target in targets(urls, metrics_urls)
        }
        self._retired: list[TritonEndpoint] = []
        self._lock = asyncio.Lock()
        self._due = 0.0
        self.refresh_s = refresh_s

    @property
    def endpoints(self) -> list[TritonEndpoint]:
        return [endpoint for members in self._members.values() for endpoint in members]

    def names(self) -> str:
        return ", ".join(target.url for target in self._members)

    def lost(self, endpoint: TritonEndpoint) -> None:
        """``endpoint`` could not be reached: if a name stands for it, the pod may be gone, so ask again."""
        if any(target.resolves and endpoint in members for target, members in self._members.items()):
            self._due = 0.0

    async def refresh(self) -> None:
        if time.monotonic() < self._due:
            return
        async with self._lock:
            if time.monotonic() < self._due:
                return
            for target, members in self._members.items():
                if not target.resolves:
                    continue
                try:
                    servers = await target.servers()
                except OSError as exc:
                    log.warning("cannot resolve %s (%s); keeping its %d servers", target.url, exc, len(members))
                    continue
                current = {endpoint.url: endpoint for endpoint in members}
                resolved = [current.pop(s.url, None) or TritonEndpoint.connect(s) for s in servers]
                if current or len(resolved) != len(members):
                    log.info("%s: servers %s", target.url, ", ".join(e.url for e in resolved) or "none")
                self._members[target] = resolved
                self._retired.extend(current.values())
            self._due = time.monotonic() + self.refresh_s
            for endpoint in [e for e in self._retired if e.in_flight == 0]:
                self._retired.remove(endpoint)
                await endpoint.close()

    async def close(self) -> None:
        for endpoint in self.endpoints + self._retired:
            await endpoint.close()
