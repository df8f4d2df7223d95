"""Device-based MQTT discovery documents (Home Assistant 2024.11 or later).

Pure functions; nothing here does I/O. A component builds its device and its
entities' configurations (with Home Assistant's abbreviated keys) and
:func:`device_document` adds what every gridmate device shares: the origin, the
availability topic (``online``/``offline``, the last will of the publishing
connection) and QoS 1; a support URL in the origin when one is configured
(:class:`gridmate.homeassistant.settings.DeviceLinks`). A device published by a
process that runs for seconds (a timer's job) has no availability topic: its
entities stay available between runs instead of turning unavailable when the
process leaves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from gridmate import __version__

ONLINE = "online"
OFFLINE = "offline"


class LinkTopics(Protocol):
    """Topics every component's link needs: its availability and Home Assistant's status."""

    @property
    def status(self) -> str: ...

    @property
    def homeassistant_status(self) -> str: ...


def homeassistant_status(discovery_prefix: str) -> str:
    """Where Home Assistant announces itself (``online`` is its birth message)."""
    return f"{discovery_prefix}/status"


def device_config_topic(discovery_prefix: str, object_id: str) -> str:
    return f"{discovery_prefix}/device/{object_id}/config"


def origin(support_url: str | None = None) -> dict[str, str]:
    """What publishes the discovery; ``url`` is Home Assistant's ``support_url``."""
    found = {"name": "gridmate", "sw": __version__}
    if support_url:
        found["url"] = support_url
    return found


def device_document(
    device: Mapping[str, Any],
    components: Mapping[str, Mapping[str, Any]],
    *,
    availability: str | None,
    support_url: str | None = None,
) -> dict[str, Any]:
    """One discovery message for a device and all its entities (``availability`` None:
    always available)."""
    document: dict[str, Any] = {"dev": dict(device), "o": origin(support_url)}
    if availability is not None:
        document["avty"] = [{"t": availability}]
    document["qos"] = 1
    document["cmps"] = {key: dict(value) for key, value in components.items()}
    return document


def encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
