"""Prometheus metrics: one registry and one /metrics endpoint per daemon."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["MetricsServer", "is_loopback", "new_registry", "start_metrics_server"]


def is_loopback(address: str) -> bool:
    """Whether only this host can reach ``address`` (127.0.0.0/8, ::1). The wildcard
    addresses 0.0.0.0 and :: listen on every interface, so they are not."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def new_registry() -> CollectorRegistry:
    """A registry with process, platform and GC metrics, separate per daemon."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(registry: CollectorRegistry, address: str, port: int) -> MetricsServer:
    server, thread = start_http_server(port, addr=address, registry=registry)
    return MetricsServer(server, thread)
