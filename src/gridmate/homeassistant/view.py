"""What Home Assistant would display, read back from the MQTT broker.

Used by the demo and the tests to check a component's output the way Home Assistant
consumes it: device-based discovery configurations (with their abbreviations and the
options shared at the device level), each entity's state topic and value template,
availability, and JSON attributes.

Templates are evaluated by a deliberately small, strict evaluator: the hub only
emits ``{{ value_json.<key> }}``, and anything else, or a key missing from the state
document, is an error here rather than the silent empty string Home Assistant would
log a warning about. Rendering follows Jinja's ``str()`` of the value, so ``None``
becomes ``"None"``, which Home Assistant shows as "unknown".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiomqtt

# Home Assistant's abbreviations for the keys a discovery payload may use here.
ABBREVIATIONS = {
    "p": "platform",
    "uniq_id": "unique_id",
    "stat_t": "state_topic",
    "val_tpl": "value_template",
    "dev_cla": "device_class",
    "stat_cla": "state_class",
    "unit_of_meas": "unit_of_measurement",
    "ent_cat": "entity_category",
    "en": "enabled_by_default",
    "ic": "icon",
    "ops": "options",
    "sug_dsp_prc": "suggested_display_precision",
    "pl_on": "payload_on",
    "pl_off": "payload_off",
    "json_attr_t": "json_attributes_topic",
    "src_type": "source_type",
    "avty": "availability",
    "t": "topic",
    "dev": "device",
    "o": "origin",
    "cmps": "components",
    "ids": "identifiers",
    "mf": "manufacturer",
    "mdl": "model",
    "sw": "sw_version",
    "sn": "serial_number",
    "cmd_t": "command_topic",
    "pl_prs": "payload_press",
    "stat_on": "state_on",
    "stat_off": "state_off",
    "min": "min",
    "max": "max",
    "step": "step",
    "mode": "mode",
    "evt_typ": "event_types",
    "cu": "configuration_url",
    "url": "support_url",
}
_KNOWN_COMPONENT_KEYS = set(ABBREVIATIONS.values()) | {"name", "qos"}
_SHARED = ("availability", "qos", "origin")
_TEMPLATE = re.compile(r"^\{\{\s*value_json\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")
_NUMERIC_CLASSES = {
    "battery",
    "distance",
    "speed",
    "power",
    "energy",
    "energy_storage",
    "voltage",
    "current",
    "temperature",
    "pressure",
    "duration",
}


class TemplateError(ValueError):
    pass


def render_template(template: str, payload: bytes) -> str:
    """Render ``{{ value_json.key }}`` against a JSON payload, strictly."""
    match = _TEMPLATE.match(template.strip())
    if match is None:
        raise TemplateError(f"unsupported template {template!r}")
    document = json.loads(payload)
    key = match.group(1)
    if not isinstance(document, dict) or key not in document:
        raise TemplateError(f"value_json has no {key!r}")
    value = document[key]
    if isinstance(value, dict | list):
        raise TemplateError(f"{key!r} is not a scalar")
    return str(value)


def _expand(config: dict[str, Any]) -> dict[str, Any]:
    expanded = {}
    for key, value in config.items():
        long = ABBREVIATIONS.get(key, key)
        if isinstance(value, dict) and long in ("device", "origin"):
            value = {ABBREVIATIONS.get(k, k): v for k, v in value.items()}
        if long == "availability":
            value = [{ABBREVIATIONS.get(k, k): v for k, v in item.items()} for item in value]
        expanded[long] = value
    return expanded


@dataclass
class Entity:
    device: str
    name: str
    platform: str
    unique_id: str
    config: dict[str, Any]
    state: Any
    """None for unknown; a float for numeric sensors; "on"/"off"; a string otherwise."""
    available: bool
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.config.get("enabled_by_default", True))


class HomeAssistantView:
    """Subscribes like Home Assistant and renders every discovered entity."""

    def __init__(
        self, host: str, port: int, *, discovery_prefix: str = "homeassistant", base: str
    ) -> None:
        self.host, self.port = host, port
        self.discovery_prefix = discovery_prefix
        self.base = base
        self.retained: dict[str, bytes] = {}
        self.config_messages = 0
        self._client: aiomqtt.Client | None = None
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HomeAssistantView]:
        async with aiomqtt.Client(self.host, self.port) as client:
            self._client = client
            await client.subscribe(f"{self.discovery_prefix}/device/+/config", qos=1)
            await client.subscribe(f"{self.base}/#", qos=1)
            task = asyncio.create_task(self._listen(client))
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
                self._client = None

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic.endswith("/config"):
                self.config_messages += 1
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
            async with self._changed:
                self._changed.notify_all()

    async def announce_online(self) -> None:
        """Publish Home Assistant's birth message."""
        assert self._client is not None
        await self._client.publish(f"{self.discovery_prefix}/status", "online", qos=1)

    def entities(self) -> dict[tuple[str, str], Entity]:
        """Every discovered entity by (device name, entity name)."""
        result = {}
        prefix = f"{self.discovery_prefix}/device/"
        for topic, payload in list(self.retained.items()):
            if not (topic.startswith(prefix) and topic.endswith("/config")):
                continue
            device_config = _expand(json.loads(payload))
            device = device_config["device"]["name"]
            for component in device_config["components"].values():
                config = _expand(component)
                for key in _SHARED:
                    if key in device_config and key not in config:
                        config[key] = device_config[key]
                unknown = set(config) - _KNOWN_COMPONENT_KEYS
                if unknown:
                    raise ValueError(f"unexpected discovery keys {sorted(unknown)}")
                entity = self._render(device, config)
                result[(device, entity.name)] = entity
        return result

    def _render(self, device: str, config: dict[str, Any]) -> Entity:
        platform = config["platform"]
        available = all(
            self.retained.get(item["topic"]) == item.get("payload_available", "online").encode()
            for item in config.get("availability", [])
        )
        attributes: dict[str, Any] = {}
        if "json_attributes_topic" in config:
            raw = self.retained.get(config["json_attributes_topic"])
            attributes = json.loads(raw) if raw else {}
        state: Any = None
        if platform == "device_tracker":
            if "latitude" in attributes:
                state = (attributes["latitude"], attributes["longitude"])
        elif platform in ("button", "event"):
            state = None  # stateless here: a button is pressed, an event fires
        else:
            payload = self.retained.get(config["state_topic"])
            if payload is not None:
                state = self._interpret(
                    platform, config, render_template(config["value_template"], payload)
                )
        return Entity(
            device,
            config["name"],
            platform,
            config["unique_id"],
            config,
            state,
            available,
            attributes,
        )

    @staticmethod
    def _interpret(platform: str, config: dict[str, Any], rendered: str) -> Any:
        if rendered == "None":
            return None
        if platform in ("binary_sensor", "switch"):
            if rendered == config.get("state_on", config.get("payload_on", "ON")):
                return "on"
            if rendered == config.get("state_off", config.get("payload_off", "OFF")):
                return "off"
            raise ValueError(
                f"{config['name']}: {rendered!r} is neither payload_on nor payload_off"
            )
        device_class = config.get("device_class")
        if device_class == "enum":
            if rendered not in config["options"]:
                raise ValueError(f"{config['name']}: {rendered!r} is not an option")
            return rendered
        if device_class == "timestamp":
            stamp = datetime.fromisoformat(rendered)
            if stamp.tzinfo is None:
                raise ValueError(f"{config['name']}: timestamp without a time zone")
            return stamp
        if (
            platform == "number"
            or device_class in _NUMERIC_CLASSES
            or "state_class" in config
            or "unit_of_measurement" in config
        ):
            return float(rendered)
        return rendered

    async def command(self, device: str, name: str, payload: str) -> None:
        """Do what Home Assistant does when a user flips, presses or sets an entity."""
        assert self._client is not None
        entity = self.entities()[(device, name)]
        await self._client.publish(entity.config["command_topic"], payload, qos=1)

    async def wait_for(self, condition: Any, within: float = 60.0) -> dict[tuple[str, str], Entity]:
        """Wait until ``condition(entities)`` is true; returns the entities."""

        async def until() -> dict[tuple[str, str], Entity]:
            async with self._changed:
                while True:
                    entities = self.entities()
                    if condition(entities):
                        return entities
                    await self._changed.wait()

        return await asyncio.wait_for(until(), within)

    def value(self, device: str, name: str) -> Any:
        entity = self.entities().get((device, name))
        return None if entity is None else entity.state
