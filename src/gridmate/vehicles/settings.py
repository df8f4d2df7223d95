"""Settings of the vehicles component (``GRIDMATE_VEHICLES_*``)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from gridmate.homeassistant.settings import DeviceTopics
from gridmate.notify.settings import NotifySettings
from gridmate.runtime.secrets import Credential, Secret
from gridmate.runtime.settings import ComponentSettings, MqttSettings, Section
from gridmate.tesla.settings import TeslaCloudSettings
from gridmate.vehicles.catalogue import FIELDS
from gridmate.vehicles.sources.settings import (
    ArbitrationSettings,
    PollingSettings,
    TeslaMateSourceSettings,
)
from gridmate.vehicles.state import InvalidPolicy

_KAFKA_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_VIN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")


class KafkaSettings(Section):
    """The Kafka cluster fleet-telemetry writes to."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    namespace: str = Field(
        description="fleet-telemetry's 'namespace'; topics are <namespace>_V, _connectivity, "
        "_alerts and _errors. Required: the server has no default."
    )
    group_id: str = "gridmate-vehicles"
    client_id: str = "gridmate-vehicles"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    password: Annotated[Secret | None, Credential("kafka_password")] = None
    ca_file: Path | None = Field(None, description="CA bundle for SSL / SASL_SSL.")
    max_record_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Larger records are counted as malformed and skipped.",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where a new consumer group starts: 'earliest' rebuilds the state "
        "from everything Kafka still retains.",
    )
    commit_interval: float = Field(
        1.0, gt=0, le=60, description="Seconds between offset commits of delivered records."
    )
    static_membership: bool = Field(
        True,
        description="Join the group as a static member (KIP-345, Kafka 2.3 or later) under "
        "group_instance_id, so a restart gets its partitions back without a rebalance. "
        "Brokers without it (tansu) handle a restart as a slower rebalance; turn it off there.",
    )
    group_instance_id: str | None = Field(
        None,
        description="This instance's static member id, stable across restarts and distinct "
        "per instance; default '<client_id>-<hostname>' (set it when several instances run "
        "on one host).",
    )
    session_timeout: float = Field(
        10.0,
        ge=1,
        le=1800,
        description="Seconds without a heartbeat after which the broker gives an instance's "
        "partitions to the others (a static member's restart must fit in it). Kafka accepts "
        "6 to 1800 s by default.",
    )
    heartbeat_interval: float = Field(
        3.0, gt=0, le=600, description="Seconds between heartbeats; under session_timeout."
    )

    @field_validator("namespace", "group_id", "client_id", "group_instance_id")
    @classmethod
    def _kafka_name(cls, value: str | None) -> str | None:
        if value is not None and not _KAFKA_NAME.match(value):
            raise ValueError("use letters, digits, '.', '_' and '-' only")
        return value

    @property
    def instance_id(self) -> str | None:
        """The static member id in use, or None for dynamic membership."""
        if not self.static_membership:
            return None
        if self.group_instance_id:
            return self.group_instance_id
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "localhost"
        return f"{self.client_id}-{host}"

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL")
        if sasl:
            missing = [
                key
                for key, value in (
                    ("sasl_mechanism", self.sasl_mechanism),
                    ("sasl_username", self.sasl_username),
                    ("password_file", self.password),
                )
                if not value
            ]
            if missing:
                raise ValueError(
                    f"security_protocol {self.security_protocol} needs {', '.join(missing)}"
                )
        elif self.sasl_mechanism or self.sasl_username:
            raise ValueError(
                "sasl_mechanism and sasl_username need security_protocol SASL_PLAINTEXT or SASL_SSL"
            )
        if self.ca_file is not None and not self.security_protocol.endswith("SSL"):
            raise ValueError("ca_file needs security_protocol SSL or SASL_SSL")
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError("heartbeat_interval must be shorter than session_timeout")
        return self


class HomeAssistantSettings(DeviceTopics):
    birth_delay: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Discovery is re-sent up to this many seconds (random) after Home "
        "Assistant comes online, as Home Assistant recommends.",
    )
    announce_all_entities: bool = Field(
        False,
        description="Announce every entity of a car at once. By default an entity is "
        "announced only once some source delivered its value for that car, so entities "
        "a car's sources never fill do not sit at 'unknown'.",
    )


class VehicleControlSettings(Section):
    """Car controls in Home Assistant: charging, charge limit, charging current, climate."""

    enable: bool = Field(
        False,
        description="Announce each car's controls (charging switch, charge limit and "
        "charging current numbers) and take their commands; needs tesla.token_source and "
        "tesla.command_proxy_url (Tesla's vehicle-command proxy).",
    )
    climate: bool = Field(
        False,
        description="Also announce a climate switch per car (auto_conditioning_start/"
        "stop). Off by default: it runs the car's heating or air conditioning from "
        "Home Assistant, on the car's battery when it is not plugged in.",
    )
    wake_vins: list[str] = Field(
        default_factory=list,
        description="Cars gridmate may wake for a command (a wake is the most expensive "
        "Fleet API call); other cars' commands are refused while they sleep.",
    )


class VehiclesSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDMATE_VEHICLES_")

    kafka: KafkaSettings | None = Field(
        None, description="Fleet Telemetry's Kafka; leave out to run on TeslaMate and/or polling."
    )
    mqtt: MqttSettings = MqttSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    vehicles: dict[str, str] = Field(
        default_factory=dict,
        description="VIN -> display name; overrides the name the vehicle reports.",
    )
    field_policies: dict[str, InvalidPolicy] = Field(
        default_factory=dict,
        description="Per field, what an 'invalid' value does: 'keep' the last value or "
        "'clear' it (shown as unknown).",
    )
    online_timeout: float = Field(
        600.0,
        gt=0,
        description="A vehicle with no open connection is offline this many seconds after "
        "its last data.",
    )
    stale_connection_after: float = Field(
        6 * 3600.0,
        gt=0,
        description="An open connection with no data for this long is considered closed.",
    )
    max_clock_skew: float = Field(
        300.0,
        gt=0,
        description="A Fleet Telemetry record timed more than this many seconds after the "
        "server received it (a car clock gone wrong) is taken as of its receive time, so it "
        "cannot hide later values.",
    )

    teslamate: TeslaMateSourceSettings = TeslaMateSourceSettings()
    tesla: TeslaCloudSettings = TeslaCloudSettings()
    polling: PollingSettings = PollingSettings()
    arbitration: ArbitrationSettings = ArbitrationSettings()
    notify: NotifySettings = NotifySettings()
    controls: VehicleControlSettings = VehicleControlSettings()

    @model_validator(mode="after")
    def _some_source(self) -> VehiclesSettings:
        polling = self.polling.enable and self.tesla.token_source != "none"
        if self.kafka is None and not self.teslamate.enable and not polling:
            raise ValueError(
                "no vehicle data source: configure [kafka] (Fleet Telemetry), set "
                "teslamate.enable = true, or set tesla.token_source for polling"
            )
        if self.teslamate.enable and not self.teslamate.use_database and not self.teslamate.cars:
            raise ValueError("teslamate.use_database = false needs teslamate.cars (car id -> VIN)")
        if self.controls.enable and (
            self.tesla.token_source == "none" or not self.tesla.command_proxy_url
        ):
            raise ValueError(
                "controls.enable needs a command path: tesla.token_source and "
                "tesla.command_proxy_url"
            )
        return self

    @field_validator("vehicles")
    @classmethod
    def _vins(cls, value: dict[str, str]) -> dict[str, str]:
        for vin, name in value.items():
            if not _VIN.match(vin):
                raise ValueError(f"{vin!r} is not a VIN (17 characters, no I, O or Q)")
            if not name.strip():
                raise ValueError(f"{vin}: the name is empty")
        return value

    @field_validator("field_policies")
    @classmethod
    def _fields(cls, value: dict[str, InvalidPolicy]) -> dict[str, InvalidPolicy]:
        unknown = sorted(set(value) - set(FIELDS))
        if unknown:
            raise ValueError(
                f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}"
            )
        return value
