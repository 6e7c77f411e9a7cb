"""``--triton-url``: one server, or ``dns:///host:port`` for every server a name resolves to (no servers started)."""

from __future__ import annotations

import asyncio

import pytest

from openai_frontend.triton.endpoint import Server
from openai_frontend.triton.targets import ServerSet, TritonTarget, targets


def test_a_plain_url_is_one_server_as_given() -> None:
    target = TritonTarget("10.0.0.7:8001", "http://10.0.0.7:8002/metrics")
    assert not target.resolves
    assert asyncio.run(target.servers()) == [Server("10.0.0.7:8001", "http://10.0.0.7:8002/metrics")]


@pytest.mark.parametrize("url", ["dns:///triton-image:8001", "dns:triton-image:8001"])
def test_dns_url_names_a_host_and_port(url: str) -> None:
    assert TritonTarget(url).name() == ("triton-image", 8001)


def test_each_address_is_a_server_with_its_own_metrics_url() -> None:
    target = TritonTarget("dns:///triton-image:8001", "http://triton-image:8002/metrics")
    assert target.server("10.1.2.3") == Server("10.1.2.3:8001", "http://10.1.2.3:8002/metrics")
    assert target.server("fd00::5") == Server("[fd00::5]:8001", "http://[fd00::5]:8002/metrics")
    elsewhere = TritonTarget("dns:///triton-image:8001", "http://prometheus-proxy:9090/triton")
    assert elsewhere.server("10.1.2.3").metrics_url == "http://prometheus-proxy:9090/triton", "another host is kept"


def test_a_name_resolves_to_its_addresses() -> None:
    servers = asyncio.run(TritonTarget("dns:///localhost:8001", "http://localhost:8002/metrics").servers())
    assert Server("127.0.0.1:8001", "http://127.0.0.1:8002/metrics") in servers
    assert len(servers) == len({s.url for s in servers}), "each address once"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("dns://8.8.8.8/triton:8001", "DNS server in the URL is not supported"),
        ("dns:///triton", "expected dns:///host:port"),
        ("dns:///triton:grpc", "expected dns:///host:port"),
    ],
)
def test_a_malformed_dns_url_is_refused_at_start(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        targets([url], [])


def test_a_server_set_resolves_names_when_due_and_keeps_each_servers_bookkeeping() -> None:
    async def scenario() -> None:
        servers = ServerSet(["10.0.0.1:8001", "dns:///localhost:8001"], [], refresh_s=3600)
        assert [e.url for e in servers.endpoints] == ["10.0.0.1:8001"], "a name is resolved on first use"
        await servers.refresh()
        assert [e.url for e in servers.endpoints] == ["10.0.0.1:8001", "127.0.0.1:8001"]
        resolved = servers.endpoints[1]
        resolved.failed_models["image_diffusion"] = "stub died"
        servers.lost(servers.endpoints[0])  # a plain server lost: nothing to resolve again
        assert servers._due > 0
        servers.lost(resolved)  # a pod behind the name lost: ask the name again at the next call
        assert servers._due == 0
        await servers.refresh()
        assert servers.endpoints[1] is resolved, "an address still resolved keeps its endpoint and what it knows"
        assert resolved.failed_models == {"image_diffusion": "stub died"}
        await servers.close()

    asyncio.run(scenario())
