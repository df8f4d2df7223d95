"""Settings every component that shows devices in Home Assistant shares."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from gridmate.runtime.settings import MqttSettings, Section

_URL = r"^https?://"
_TOPIC_WORD = re.compile(r"^[A-Za-z0-9_-]+$")


class DeviceLinks(Section):
    """Links Home Assistant shows with gridmate's devices; none unless configured."""

    configuration_url: str | None = Field(
        None,
        pattern=_URL,
        description="Shown as the devices' 'Visit' link in Home Assistant (e.g. gridmate's "
        "Grafana or TeslaMate).",
    )
    support_url: str | None = Field(
        None,
        pattern=_URL,
        description="A page where the people using this gridmate get help (an issue tracker, "
        "say): the support URL of the origin in every discovery document.",
    )


class DeviceTopics(DeviceLinks):
    """Where a component's Home Assistant devices live on the broker: the same three
    names for every component of one gridmate."""

    discovery_prefix: str = Field(
        "homeassistant", description="Home Assistant's MQTT discovery prefix."
    )
    base_topic: str = Field(
        "gridmate", description="Prefix of gridmate's own topics (the same for every component)."
    )
    node_name: str = Field(
        "gridmate",
        description="Identifies this gridmate in unique ids and discovery topics; change it "
        "only to run two separate gridmates against one Home Assistant.",
    )

    @field_validator("discovery_prefix", "base_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not value or any(c in value for c in "#+") or value.startswith("/"):
            raise ValueError("not a valid topic prefix (no '#', '+' or leading '/')")
        return value.rstrip("/")

    @field_validator("node_name")
    @classmethod
    def _node(cls, value: str) -> str:
        if not _TOPIC_WORD.match(value):
            raise ValueError("use letters, digits, '_' and '-' only")
        return value


class NotificationDeviceSettings(DeviceTopics):
    """The component as a Home Assistant device whose one entity is a "Notifications"
    event (MQTT discovery); for the commands a timer or systemd runs (report, backup)."""

    enable: bool = Field(
        False,
        description="Publish the component's notifications to Home Assistant as an MQTT "
        "event entity (event types info, warning, critical), on the broker in 'mqtt'.",
    )
    mqtt: MqttSettings = MqttSettings()
    announce_wait_seconds: float = Field(
        2.0,
        ge=0,
        le=60,
        description="After announcing the device for the first time (or changed), wait this "
        "long before firing events, so Home Assistant has subscribed to the event topic.",
    )
    timeout_seconds: float = Field(
        15.0, gt=0, le=300, description="Give up publishing after this long (logged)."
    )
