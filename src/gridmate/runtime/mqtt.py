"""MQTT clients built the same way everywhere from :class:`MqttSettings`."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import aiomqtt

from gridmate.runtime.settings import MqttSettings

# Small MQTT packets (PUBLISH, PUBACK) must leave at once: with Nagle's algorithm
# and the peer's delayed ACK a QoS 1 round trip can stall for ~40 ms.
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    if not settings.tls:
        return None
    return ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)


def mqtt_client(
    settings: MqttSettings, *, identifier: str | None = None, **options: Any
) -> aiomqtt.Client:
    """A client for the configured broker; ``options`` go to :class:`aiomqtt.Client`.

    ``identifier`` is used when the settings name no ``client_id``; None lets the
    broker's client library pick a random one.
    """
    options.setdefault("timeout", 10.0)
    return aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password.reveal() if settings.password else None,
        identifier=settings.client_id or identifier,
        keepalive=settings.keepalive,
        tls_context=tls_context(settings),
        socket_options=(NO_DELAY,),
        **options,
    )
