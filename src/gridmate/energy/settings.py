"""Settings of the energy manager (``gridmate energy``), env prefix ``GRIDMATE_ENERGY_``."""

from __future__ import annotations

import math
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import SettingsConfigDict

from gridmate.energy.tariff.presets import PRESETS, preset_names
from gridmate.energy.tariff.schedule import (
    PERIODS,
    EventConfig,
    Period,
    Schedule,
    ScheduleVersionConfig,
)
from gridmate.homeassistant.settings import DeviceTopics
from gridmate.notify import NotifySettings
from gridmate.runtime.secrets import Credential, Secret
from gridmate.runtime.settings import (
    ComponentSettings,
    MetricsSettings,
    MqttSettings,
    Section,
    TimeZoneName,
)
from gridmate.tesla.settings import TeslaCloudSettings

__all__ = [
    "AlertSettings",
    "EnergySettings",
    "EvSettings",
    "GatewaySettings",
    "HomeAssistantSettings",
    "HoneywellSettings",
    "LadderStep",
    "PowerwallSettings",
    "ReserveSettings",
    "TariffSettings",
    "ThermostatPolicy",
    "ThermostatSettings",
    "WeatherSettings",
]


def _key_error(key: str, reason: str) -> PydanticCustomError:
    return PydanticCustomError("energy", "{reason}", {"key": key, "reason": reason})


def _accepted_reserve(value: int) -> int:
    # Powerwall firmware 25.18.4 and later refuse 81-99 (and older ones treat 100
    # like a full hold); saying so at load beats a refused write at 4 PM.
    if not (0 <= value <= 80 or value == 100):
        raise ValueError(
            f"Tesla accepts a backup reserve of 0-80 or exactly 100, not {value} "
            "(use 100 to hold the battery full; gridmate then uses backup mode)"
        )
    return value


class TariffSettings(Section):
    """The utility's time-of-use schedule."""

    preset: str | None = Field(
        "original",
        description=f"A built-in tariff: {', '.join(preset_names())}; unset for a custom one.",
    )
    time_zone: TimeZoneName | None = Field(
        None, description="The utility's IANA time zone; default: the preset's."
    )
    schedules: list[ScheduleVersionConfig] = Field(
        default_factory=list,
        description="Schedule versions; with a preset they add versions from their "
        "effective_from (a tariff change is one more entry here).",
    )
    events: list[EventConfig] = Field(
        default_factory=list, description="One-off event days such as critical peak days."
    )
    controlled_periods: tuple[Period, ...] = Field(
        ("peak",),
        description="Periods during which gridmate runs the battery and sheds load.",
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Price per kWh by season name and period, e.g. "
        "[tariff.prices.summer] peak = 0.42, so a preset gets prices without "
        "redefining its schedule. They apply to the seasons of that name in every "
        "schedule version and replace a preset's built-in prices; prices set inside a "
        "season of tariff.schedules win.",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; known: {', '.join(preset_names())}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> TariffSettings:
        if self.preset is None and not self.schedules:
            raise _key_error("schedules", "set a preset or at least one schedule")
        if self.preset is None and self.time_zone is None:
            raise _key_error("time_zone", "a custom tariff needs its time zone")
        self._check_prices()
        seen: dict[date, int] = {}
        for index, version in enumerate(self.all_versions()):
            if version.effective_from in seen:
                raise _key_error(
                    f"schedules.{index}.effective_from",
                    f"two schedule versions start on {version.effective_from}",
                )
            seen[version.effective_from] = index
        return self

    def _check_prices(self) -> None:
        # Names are checked here rather than by the type, so the error names the
        # exact key ("tariff.prices.sumer") and lists what would be accepted.
        periods_of = self.season_periods()
        for season, table in self.prices.items():
            if season not in periods_of:
                raise _key_error(
                    f"prices.{season}",
                    f"no season named {season!r} in this tariff; its seasons: "
                    f"{', '.join(sorted(periods_of))}",
                )
            for period, price in table.items():
                if period not in PERIODS:
                    raise _key_error(
                        f"prices.{season}.{period}",
                        f"unknown period {period!r}; periods are {', '.join(PERIODS)}",
                    )
                if period not in periods_of[season]:
                    raise _key_error(
                        f"prices.{season}.{period}",
                        f"season {season!r} has no {period} hours; it has "
                        f"{', '.join(p for p in PERIODS if p in periods_of[season])}",
                    )
                if not math.isfinite(price):
                    raise _key_error(f"prices.{season}.{period}", "must be a finite number")

    def season_periods(self) -> dict[str, set[str]]:
        """The periods each season name can have, over every schedule version."""
        event_periods = {event.period for event in self.events}
        found: dict[str, set[str]] = {}
        for version in self._unpriced_versions():
            holiday = version.holidays.treat_as if version.holidays else None
            for season in version.seasons:
                periods = found.setdefault(season.name, set())
                periods.add(version.default_period)
                periods.update(window.period for window in season.windows)
                periods.update(event_periods)
                if holiday in PERIODS:
                    periods.add(holiday)
        return found

    def _unpriced_versions(self) -> list[ScheduleVersionConfig]:
        base = list(PRESETS[self.preset].versions) if self.preset else []
        return base + list(self.schedules)

    def all_versions(self) -> list[ScheduleVersionConfig]:
        """The schedule versions with ``prices`` filled into their seasons."""
        versions = self._unpriced_versions()
        if not self.prices:
            return versions
        preset = set(map(id, PRESETS[self.preset].versions)) if self.preset else set()
        priced = []
        for version in versions:
            seasons = []
            for season in version.seasons:
                configured = self.prices.get(season.name, {})
                # A preset's published prices give way to the configured ones (prices
                # change yearly); prices written inside tariff.schedules win.
                merged: dict[Any, float] = (
                    {**season.prices, **configured}
                    if id(version) in preset
                    else {**configured, **season.prices}
                )
                seasons.append(season.model_copy(update={"prices": merged}))
            priced.append(version.model_copy(update={"seasons": seasons}))
        return priced

    @property
    def zone(self) -> str:
        if self.time_zone:
            return self.time_zone
        assert self.preset is not None
        return PRESETS[self.preset].timezone

    def build(self) -> Schedule:
        return Schedule(self.all_versions(), self.zone, self.events)

    def describe(self, day: date) -> str:
        """The tariff in force on ``day`` in words: a preset's version or a custom schedule."""
        version = self.build().version_for(day).config
        preset_dates = (
            {v.effective_from for v in PRESETS[self.preset].versions} if self.preset else set()
        )
        if version.effective_from in preset_dates:
            return f"preset {self.preset}"
        name = version.name or f"from {version.effective_from.isoformat()}"
        return f"custom schedule {name}"


class ReserveSettings(Section):
    peak_reserve_percent: int = Field(
        0, description="Backup reserve during controlled periods (0-80, or 100 = hold full)."
    )
    peak_mode: Literal["self_consumption", "autonomous"] = Field(
        "self_consumption",
        description="Operation mode during peak; Self-Powered acts at once, Time-Based "
        "Control can lag 15-45 minutes.",
    )
    restore_reserve_percent: int | None = Field(
        None,
        description="Restore this reserve after peak instead of the one read before peak.",
    )
    fallback_reserve_percent: int = Field(
        20,
        description="Restored when no pre-peak reserve was saved (e.g. first start mid-peak).",
    )
    writes_per_day: int = Field(
        5, ge=2, le=50, description="Powerwall settings writes allowed per site per day."
    )

    @field_validator("peak_reserve_percent", "fallback_reserve_percent", "restore_reserve_percent")
    @classmethod
    def _accepted(cls, value: int | None) -> int | None:
        return None if value is None else _accepted_reserve(value)


class LadderStep(Section):
    minutes_left: float = Field(
        gt=0, description="Applies with this many minutes of peak left, or fewer."
    )
    soc_at_most: float = Field(ge=0, le=100, description="... and the battery at this % or lower.")
    raise_f: float = Field(2.0, gt=0, le=10, description="Degrees °F added to the setpoint.")


def _default_ladder() -> list[LadderStep]:
    return [
        LadderStep(minutes_left=120, soc_at_most=75, raise_f=2),
        LadderStep(minutes_left=60, soc_at_most=50, raise_f=2),
        LadderStep(minutes_left=30, soc_at_most=25, raise_f=2),
    ]


class ThermostatPolicy(Section):
    ladder: list[LadderStep] = Field(default_factory=_default_ladder)
    energy_rule: bool = Field(
        True,
        description="Take one more ladder step when the house draws more than the battery "
        "can cover until peak end.",
    )
    precool: bool = True
    precool_lead_minutes: int = Field(30, ge=5, le=240)
    precool_threshold_f: float = Field(95.0, description="Forecast high that triggers precooling.")
    precool_delta_f: float = Field(3.0, gt=0, le=10)
    min_cool_setpoint_f: float = 60.0
    max_cool_setpoint_f: float = 90.0
    min_heat_setpoint_f: float = 50.0

    @field_validator("ladder")
    @classmethod
    def _ordered(cls, value: list[LadderStep]) -> list[LadderStep]:
        for index in range(1, len(value)):
            if value[index].minutes_left > value[index - 1].minutes_left:
                raise ValueError(
                    f"ladder steps must go from more minutes left to fewer "
                    f"(step {index} has {value[index].minutes_left:g} after "
                    f"{value[index - 1].minutes_left:g})"
                )
        return value


class ThermostatSettings(Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Name used in logs and the journal.")
    kind: Literal["honeywell", "home_assistant"]
    device_id: str | None = Field(None, description="Honeywell deviceId (LCC-... / TCC-...).")
    location_id: str | None = Field(None, description="Honeywell locationId.")
    entity_id: str | None = Field(None, description="Home Assistant climate entity.")

    @model_validator(mode="after")
    def _ids(self) -> ThermostatSettings:
        if self.kind == "honeywell" and (not self.device_id or not self.location_id):
            raise _key_error("device_id", "a Honeywell thermostat needs device_id and location_id")
        if self.kind == "home_assistant" and not (self.entity_id or "").startswith("climate."):
            raise _key_error("entity_id", "a Home Assistant thermostat needs entity_id 'climate.…'")
        return self


class HoneywellSettings(Section):
    base_url: str = Field(
        "https://api.honeywellhome.com",
        description="Resideo's Honeywell Home API (api.honeywell.com has served an expired "
        "certificate since May 2026).",
    )
    api_key: str | None = Field(None, description="The app's consumer key (sent as apikey).")
    client_secret: Annotated[Secret | None, Credential("honeywell_client_secret")] = None
    refresh_token: Annotated[Secret | None, Credential("honeywell_refresh_token")] = Field(
        None,
        description="Initial refresh token; rotated tokens are kept in the state directory.",
    )
    poll_seconds: float = Field(
        180.0, ge=120.0, le=300.0, description="Thermostat reads, no faster than every 2 minutes."
    )
    max_retry_after_seconds: float = Field(
        3600.0,
        gt=0,
        description="Longest wait gridmate obeys after a 429; a longer Retry-After is cut "
        "to this and reported as a rate-limit condition.",
    )


class HomeAssistantSettings(Section):
    url: str = "http://127.0.0.1:8123"
    token: Annotated[Secret | None, Credential("home_assistant_token")] = None
    poll_seconds: float = Field(120.0, ge=30.0, le=600.0)


class HomeAssistantDeviceSettings(DeviceTopics):
    """The energy manager as a Home Assistant device over MQTT discovery, with controls."""

    enable: bool = Field(
        False,
        description="Publish the energy manager to Home Assistant (MQTT discovery) and take "
        "commands from it. Anyone who can publish to the command topics can steer the "
        "battery: restrict them with the broker's ACL (docs/energy.md).",
    )
    mqtt: MqttSettings = MqttSettings()
    site: str = Field(
        "home",
        pattern=r"^[a-z0-9_]{1,32}$",
        description="Names this site in topics and unique ids (one energy device per site).",
    )
    device_name: str = Field("gridmate energy", min_length=1, max_length=64)
    currency: str = Field(
        "USD", pattern=r"^[A-Z]{3}$", description="Currency of the tariff's prices (ISO 4217)."
    )


class GatewaySettings(Section):
    """The Powerwall gateway on the LAN, for free and frequent reads."""

    url: str = Field(description="e.g. https://192.168.91.1 or a pypowerwall proxy.")
    password: Annotated[Secret | None, Credential("powerwall_gateway_password")] = None
    email: str = "gridmate@localhost"
    verify_tls: bool = Field(False, description="Gateways use a self-signed certificate.")
    soc_scale: Literal["raw", "app"] = Field(
        "raw",
        description="'raw' for the gateway (includes Tesla's hidden 5 %), 'app' for "
        "proxies that already convert.",
    )


class PowerwallSettings(Section):
    site_id: int | None = Field(None, description="Energy site id; unset = the account's first.")
    cloud_read_seconds: float = Field(
        300.0, ge=60.0, description="Fleet live_status at most this often (Tesla: 5 minutes)."
    )
    gateway: GatewaySettings | None = None


class WeatherSettings(Section):
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    user_agent: str = Field(
        "gridmate/0 (admin@localhost)",
        description="NWS requires 'App/Version (contact)'; put a real contact address here.",
    )
    nws_url: str = "https://api.weather.gov"
    open_meteo_url: str = "https://api.open-meteo.com"
    sources: tuple[Literal["nws", "open_meteo"], ...] = ("nws", "open_meteo")
    refresh_hours: float = Field(3.0, gt=0, le=24)

    @field_validator("user_agent")
    @classmethod
    def _contact(cls, value: str) -> str:
        if not re.match(r"^\S+/\S+ \(.+\)$", value):
            raise ValueError("use the form 'App/Version (contact@example.com)' as NWS asks")
        return value


class EvSettings(Section):
    enable: bool = Field(False, description="Pause home charging during peak.")
    vins: list[str] = Field(default_factory=list, description="Cars to manage; empty = all.")
    state_source: Literal["fleet", "mqtt"] = Field(
        "fleet",
        description="'fleet': the vehicle list first, vehicle_data only for a car that is "
        "online (never wakes a car). 'mqtt': the retained per-VIN state documents the "
        "vehicles hub publishes (<base_topic>/<VIN>/state), no Tesla data calls; the Fleet "
        "API stays the fallback for a car without a recent document.",
    )
    mqtt: MqttSettings = Field(
        default_factory=MqttSettings, description="The broker the vehicles hub publishes to."
    )
    base_topic: str = Field("gridmate", description="The vehicles hub's base topic.")
    max_age_minutes: float = Field(
        30.0,
        gt=0,
        le=1440,
        description="A state document whose last update is older is not trusted; the car's "
        "state then comes from the Fleet API.",
    )
    commands_per_day: int = Field(5, ge=1, le=50, description="Charging commands per car per day.")
    home_latitude: float | None = None
    home_longitude: float | None = None
    home_radius_m: float = 150.0

    @field_validator("base_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if (
            not value
            or any(c in value for c in "#+")
            or value.startswith("/")
            or value.endswith("/")
        ):
            raise ValueError("not a topic prefix (no '#', '+', or leading or trailing '/')")
        return value


class AlertSettings(Section):
    """When the energy service tells people about trouble (sent through ``notify``)."""

    grid_import_kw: float = Field(
        0.5, gt=0, description="Grid import during a peak at or above this is reported ..."
    )
    grid_import_minutes: float = Field(
        5.0, ge=0, le=120, description="... once it has lasted this long (not one sample)."
    )
    floor_margin_percent: float = Field(
        1.0,
        ge=0,
        le=20,
        description="The battery counts as at its floor (the reserve) within this many "
        "percent above it; reported when that happens before the peak ends.",
    )
    api_failure_minutes: float = Field(
        10.0,
        ge=0,
        le=1440,
        description="A cloud API (Tesla, Honeywell, weather) failing without one success "
        "for this long is reported; so is a rate limit that makes gridmate wait this long.",
    )


class FailoverSettings(Section):
    """This host as one node of an active/passive pair run by keepalived (docs/energy.md)."""

    enable: bool = Field(
        False,
        description="Check, right before every write, that keepalived's last state here is "
        "MASTER (role_file) and that this node holds the lease on the notify.mqtt broker.",
    )
    role_file: Path = Field(
        Path("/run/gridmate-energy-failover/state"),
        description="Where keepalived's notify script records this node's state (MASTER, "
        "BACKUP, FAULT, STOP) before it starts or stops the service.",
    )
    lease_seconds: float = Field(
        12.0,
        ge=3.0,
        le=300.0,
        description="A node's lease on the broker lives this long without a renewal "
        "(renewed every third of it); a split brain is seen within it.",
    )


class EnergySettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDMATE_ENERGY_")

    # The vehicles hub has 9108; both can run on one host with their defaults.
    metrics: MetricsSettings = MetricsSettings(port=9109)
    dry_run: bool = Field(False, description="Decide and log, but write nothing to any device.")
    cycle_seconds: float = Field(60.0, ge=5.0, le=600.0)
    tariff: TariffSettings = TariffSettings()
    reserve: ReserveSettings = ReserveSettings()
    policy: ThermostatPolicy = ThermostatPolicy()
    thermostats: list[ThermostatSettings] = Field(default_factory=list)
    honeywell: HoneywellSettings = HoneywellSettings()
    home_assistant: HomeAssistantSettings = HomeAssistantSettings()
    ha_device: HomeAssistantDeviceSettings = HomeAssistantDeviceSettings()
    tesla: TeslaCloudSettings = TeslaCloudSettings()
    powerwall: PowerwallSettings = PowerwallSettings()
    weather: WeatherSettings = WeatherSettings()
    ev: EvSettings = EvSettings()
    notify: NotifySettings = NotifySettings()
    alerts: AlertSettings = AlertSettings()
    failover: FailoverSettings = FailoverSettings()
    battery_capacity_kwh: float | None = Field(
        None, gt=0, description="Usable energy; default: the site's nameplate_energy."
    )
    battery_power_kw: float | None = Field(
        None, gt=0, description="Maximum discharge power; default: the site's nameplate_power."
    )

    @field_validator("thermostats")
    @classmethod
    def _unique_ids(cls, value: list[ThermostatSettings]) -> list[ThermostatSettings]:
        seen = set()
        for item in value:
            if item.id in seen:
                raise ValueError(f"thermostat id {item.id!r} is used twice")
            seen.add(item.id)
        return value

    @property
    def energy_directory(self) -> Path:
        return self.state_directory / "energy"
