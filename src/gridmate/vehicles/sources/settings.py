"""Settings of the vehicles component's other sources: TeslaMate, Tesla API polling,
and how sources are arbitrated. Included in :class:`~gridmate.vehicles.settings.VehiclesSettings`.

TeslaMate's database (car ids to VINs, and the cross-check of its MQTT output) is the
one named in ``tesla.teslamate`` (``dsn``, ``db_password_file``), which is also where
the Fleet API token comes from with ``tesla.token_source = "teslamate"``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from gridmate.runtime.secrets import Credential, Secret
from gridmate.runtime.settings import MqttSettings, Section

_VIN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")


class TeslaMateMqttSettings(MqttSettings):
    """TeslaMate's MQTT broker (often the same as Home Assistant's)."""

    password: Annotated[Secret | None, Credential("teslamate_mqtt_password")] = None


class TeslaMateSourceSettings(Section):
    enable: bool = Field(False, description="Read TeslaMate's MQTT topics.")
    mqtt: TeslaMateMqttSettings = TeslaMateMqttSettings()
    namespace: str | None = Field(
        None,
        description="TeslaMate's MQTT_NAMESPACE, if it sets one: topics are then "
        "teslamate/<namespace>/cars/<id>/<key> instead of teslamate/cars/<id>/<key>.",
    )
    cars: dict[int, str] = Field(
        default_factory=dict,
        description="TeslaMate car id -> VIN. Needed for cars TeslaMate has no VIN for, "
        "or when use_database is false; entries here win over the database.",
    )
    use_database: bool = Field(
        True,
        description="Read car ids and VINs from TeslaMate's 'cars' table, and check its "
        "newest positions, states and charges against what MQTT delivered (the database "
        "is tesla.teslamate.dsn).",
    )
    stale_after: float = Field(
        300.0,
        ge=30,
        le=3600,
        description="Seconds of silence after which TeslaMate's data about a car that is "
        "driving or charging is stale. Silence while the car sleeps is normal.",
    )
    database_check_interval: float = Field(
        60.0, ge=10, le=3600, description="Seconds between checks of TeslaMate's database."
    )
    database_lag_tolerance: float = Field(
        120.0,
        ge=10,
        le=3600,
        description="How much newer than the last MQTT message TeslaMate's database may be "
        "before the MQTT link is considered dead.",
    )
    cars_refresh_interval: float = Field(
        600.0, ge=30, description="Seconds between re-reads of TeslaMate's cars table."
    )
    web_url: str | None = Field(
        None,
        description="TeslaMate's web interface (e.g. http://127.0.0.1:4000). When set, "
        "gridmate asks it every web_check_interval seconds whether TeslaMate runs: its MQTT "
        "topics are silent while a car sleeps, so this is how TeslaMate dying then is "
        "noticed before the car drives.",
    )
    web_check_interval: float = Field(
        60.0, ge=5, le=3600, description="Seconds between checks of web_url."
    )

    @field_validator("web_url")
    @classmethod
    def _web_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if any(c in value for c in "/+#"):
            raise ValueError("must not contain '/', '+' or '#' (TeslaMate refuses those too)")
        return value

    @field_validator("cars")
    @classmethod
    def _cars(cls, value: dict[int, str]) -> dict[int, str]:
        for car_id, vin in value.items():
            if car_id < 1:
                raise ValueError(f"{car_id}: TeslaMate car ids start at 1")
            if not _VIN.match(vin):
                raise ValueError(f"car {car_id}: {vin!r} is not a VIN (17 characters, no I, O, Q)")
        return value


class PollingSettings(Section):
    """Polling the Fleet API, only for cars no fresher source covers, never waking one."""

    enable: bool = Field(
        True, description="Poll when needed (takes effect only with a tesla.token_source)."
    )
    active_interval: float = Field(
        120.0, ge=30, description="Seconds between polls of a car that drives or charges."
    )
    idle_interval: float = Field(
        600.0, ge=60, description="Seconds between polls of an awake, parked car."
    )
    asleep_interval: float = Field(
        900.0,
        ge=60,
        description="Seconds between looks at the vehicle list while a car sleeps "
        "(the list does not wake it).",
    )
    start_delay: float = Field(
        30.0,
        ge=0,
        description="Seconds to wait at start, so TeslaMate and Fleet Telemetry can speak first.",
    )


class ArbitrationSettings(Section):
    fleet_telemetry_stale_after: float = Field(
        300.0,
        ge=30,
        le=3600,
        description="Seconds of silence from Fleet Telemetry about a car that is driving or "
        "charging after which another source takes over.",
    )
    field_max_age: float = Field(
        900.0,
        ge=60,
        description="A field a better source has not updated for this long may be filled "
        "in by a lower-ranked one.",
    )
    evaluate_interval: float = Field(
        5.0, gt=0, le=60, description="Seconds between judgements of every source."
    )
