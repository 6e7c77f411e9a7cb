"""One tritonserver as the pool sees it: its gRPC client, its load, and what is known to be down there."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's own channel options plus a short reconnect backoff: gRPC's default backs off up to 120 s
    between connection attempts, so a restarted tritonserver would stay unreachable for up to two minutes."""
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


@dataclass(frozen=True)
class Server:
    """One tritonserver's addresses: gRPC and, when known, its ``/metrics`` URL."""

    url: str
    metrics_url: str | None = None


@dataclass
class TritonEndpoint:
    """One tritonserver. ``in_flight`` counts this frontend's open calls to it (the load-balancing signal);
    after a connection failure the server is skipped until ``down_until``. ``failed_models`` holds the models
    whose stub process died there (Triton's error, with its message), until a reload brings them back, one
    answers again, or the server restarts; ``reloads`` the reload of each that is under way."""

    url: str
    metrics_url: str | None
    client: grpcclient.InferenceServerClient
    in_flight: int = 0
    model_in_flight: Counter[str] = field(default_factory=Counter)
    down_until: float = 0.0
    failed_models: dict[str, str] = field(default_factory=dict)
    reloads: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    reload_started: dict[str, float] = field(default_factory=dict)  # model → when its last reload began
    reloaded_at: dict[str, float] = field(default_factory=dict)  # model → when its last reload succeeded
    model_control: bool = True  # False once the server refused to reload a model (no explicit model control)
    served: frozenset[str] | None = None  # Triton names of the models it serves, once read (servers may differ)

    @classmethod
    def connect(cls, server: Server) -> TritonEndpoint:
        client = grpcclient.InferenceServerClient(url=server.url, channel_args=channel_args())
        return cls(server.url, server.metrics_url, client)

    def reloading(self, model: str) -> bool:
        task = self.reloads.get(model)
        return task is not None and not task.done()

    def restarted(self) -> None:
        """The server could not be reached: one that comes back starts new model processes in its own mode."""
        self.failed_models.clear()
        self.model_control = True

    async def close(self) -> None:
        for task in self.reloads.values():
            task.cancel()
        await self.client.close()
