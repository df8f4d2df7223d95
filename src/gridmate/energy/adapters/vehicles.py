"""Cars charging at home: their state, and pausing or resuming their charging.

State comes through a small :class:`VehicleSource` interface. The Fleet
source asks the vehicle list first and reads ``vehicle_data`` only for a car
that is online, so it never wakes a car. Commands go through the Fleet API
within a per-car daily budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import aiomqtt

from gridmate.energy.adapters.common import AdapterError, ApiHealth, RateLimitedError
from gridmate.energy.planner import VehicleReading
from gridmate.energy.settings import EvSettings
from gridmate.runtime.backoff import Backoff, reconnecting
from gridmate.runtime.clock import Clock
from gridmate.runtime.logs import get_logger
from gridmate.tesla import fleet_api
from gridmate.tesla.fleet_api import FleetApi

log = get_logger("energy.vehicles")


class VehicleSource(Protocol):
    """Where the cars' state comes from, and how charging is paused and resumed."""

    settings: EvSettings
    health: ApiHealth
    read_interval: float
    """Seconds between reads the reconciler allows (reads may be billed)."""

    async def read(self) -> dict[str, VehicleReading]: ...

    async def command(self, vin: str, wish: str) -> bool: ...

    async def wake(self, vin: str) -> None: ...


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def at_home(settings: EvSettings, lat: object, lon: object) -> bool:
    home_lat, home_lon = settings.home_latitude, settings.home_longitude
    if home_lat is None or home_lon is None or lat is None or lon is None:
        return True  # no home set: a car charging is taken to charge at home
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return True
    return _distance_m(float(lat), float(lon), home_lat, home_lon) <= settings.home_radius_m


class FleetVehicles:
    """State and charging commands through the Fleet API."""

    read_interval = 300.0
    """Vehicle reads are billed; five minutes apart is enough to catch a charge session."""

    def __init__(self, fleet: FleetApi, settings: EvSettings, *, clock: Clock) -> None:
        self.fleet = fleet
        self.settings = settings
        self.clock = clock
        self.health = ApiHealth("tesla_vehicle", clock, budget=settings.commands_per_day)
        self._commands: dict[str, int] = {}
        self._day: date | None = None

    def _at_home(self, drive: dict) -> bool:
        return at_home(self.settings, drive.get("latitude"), drive.get("longitude"))

    async def read(self) -> dict[str, VehicleReading]:
        try:
            self.health.count()
            listing = await self.fleet.vehicles()
        except fleet_api.RateLimited as error:
            self.health.block(error.retry_after, f"429 from Tesla ({error})", capped=error.capped)
            raise RateLimitedError(f"vehicle list: {error}", error.retry_after) from error
        except fleet_api.FleetApiError as error:
            self.health.failed(str(error))
            raise AdapterError(f"vehicle list: {error}") from error
        wanted = set(self.settings.vins)
        readings: dict[str, VehicleReading] = {}
        for car in listing:
            if wanted and car.vin not in wanted:
                continue
            if not car.online:
                readings[car.vin] = VehicleReading(
                    charging=False, at_home=False, asleep=car.state == "asleep"
                )
                continue
            try:
                self.health.count()
                data = await self.fleet.vehicle_data(car.vin, ("charge_state", "drive_state"))
            except fleet_api.VehicleUnavailable:
                readings[car.vin] = VehicleReading(charging=False, at_home=False)
                continue
            except fleet_api.FleetApiError as error:
                self.health.failed(str(error))
                continue
            charge = data.get("charge_state") or {}
            state = charge.get("charging_state")
            power = float(charge.get("charger_power") or 0.0)
            readings[car.vin] = VehicleReading(
                charging=state == "Charging",
                at_home=self._at_home(data.get("drive_state") or {}),
                charge_power_kw=power,
            )
        self.health.ok()
        return readings

    def commands_left(self, vin: str) -> int:
        today = self.clock.now().date()
        if self._day != today:
            self._day, self._commands = today, {}
        return self.settings.commands_per_day - self._commands.get(vin, 0)

    async def command(self, vin: str, wish: str) -> bool:
        """Send charge_stop ('stopped') or charge_start ('charging'); True when achieved."""
        if self.commands_left(vin) <= 0:
            raise RateLimitedError(f"charging command budget for {vin} used up today", 3600.0)
        self._commands[vin] = self._commands.get(vin, 0) + 1
        try:
            result = await (
                self.fleet.charge_stop(vin) if wish == "stopped" else self.fleet.charge_start(vin)
            )
        except fleet_api.RateLimited as error:
            self.health.block(error.retry_after, f"429 from Tesla ({error})", capped=error.capped)
            raise RateLimitedError(str(error), error.retry_after) from error
        except fleet_api.FleetApiError as error:
            self.health.failed(str(error))
            raise AdapterError(f"{vin}: {error}") from error
        return result.achieved

    async def wake(self, vin: str) -> None:
        """Wake a car gridmate paused, so its charging can be resumed (counts as a command)."""
        if self.commands_left(vin) <= 0:
            raise RateLimitedError(f"charging command budget for {vin} used up today", 3600.0)
        self._commands[vin] = self._commands.get(vin, 0) + 1
        try:
            await self.fleet.wake_up(vin)
        except fleet_api.RateLimited as error:
            raise RateLimitedError(str(error), error.retry_after) from error
        except fleet_api.FleetApiError as error:
            self.health.failed(str(error))
            raise AdapterError(f"{vin}: {error}") from error


# ---------------------------------------------------------------- the vehicles hub over MQTT


def reading_from_state(
    document: Mapping[str, Any],
    settings: EvSettings,
    *,
    now: datetime,
    not_before: datetime | None = None,
) -> VehicleReading | None:
    """A car's reading from the vehicles hub's state document, or None if not trustworthy.

    The document is what ``<base>/<VIN>/state`` carries: ``charging`` (bool or null),
    ``charger_power_kw``, ``location`` ([latitude, longitude] or null), ``online``
    (false while the car sleeps) and ``last_update`` (ISO 8601), among others. It is
    not trusted when its last update is older than ``ev.max_age_minutes`` or than
    ``not_before`` (a charging command gridmate sent since, whose effect the document
    does not show yet).
    """
    raw_update = document.get("last_update")
    try:
        updated = datetime.fromisoformat(str(raw_update))
    except ValueError:
        return None
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=UTC)
    if now - updated > timedelta(minutes=settings.max_age_minutes):
        return None
    if not_before is not None and updated < not_before:
        return None
    charging = document.get("charging")
    if not isinstance(charging, bool):
        return None
    power = document.get("charger_power_kw")
    location = document.get("location")
    lat, lon = (
        (location[0], location[1])
        if isinstance(location, list) and len(location) == 2
        else (None, None)
    )
    return VehicleReading(
        charging=charging,
        at_home=at_home(settings, lat, lon),
        charge_power_kw=float(power) if isinstance(power, int | float) else 0.0,
        asleep=document.get("online") is False,
    )


class MqttVehicles:
    """Car state from the vehicles hub's retained MQTT documents; commands via the Fleet API.

    :meth:`run` keeps a subscription to ``<base_topic>/+/state`` and remembers the
    latest document per VIN. :meth:`read` answers from them without a Tesla call;
    a car without a trustworthy document (none yet, too old, or older than the last
    command) is read through the Fleet source, the fallback.
    """

    read_interval = 0.0
    """Reading the documents costs nothing: every cycle."""

    def __init__(self, settings: EvSettings, fleet: FleetVehicles | None, *, clock: Clock) -> None:
        self.settings = settings
        self.fleet = fleet
        self.clock = clock
        self.health = fleet.health if fleet is not None else ApiHealth("tesla_vehicle", clock)
        self.documents: dict[str, dict[str, Any]] = {}
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self._commanded_at: dict[str, datetime] = {}
        self._stop = asyncio.Event()
        self._prefix = f"{settings.base_topic}/"

    def vin_of(self, topic: str) -> str | None:
        if not topic.startswith(self._prefix) or not topic.endswith("/state"):
            return None
        vin = topic[len(self._prefix) : -len("/state")]
        return vin if vin and "/" not in vin else None

    def take(self, topic: str, payload: bytes) -> None:
        """One message from the broker (an empty retained payload forgets the car)."""
        vin = self.vin_of(topic)
        if vin is None:
            return
        if not payload:
            self.documents.pop(vin, None)
            return
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("vehicle state document is not JSON; ignored", vin=vin)
            return
        if isinstance(document, dict):
            self.documents[vin] = document

    async def run(self, stop: asyncio.Event) -> None:
        """Stay subscribed until ``stop``, reconnecting with backoff."""
        mqtt = self.settings.mqtt
        self._stop = stop
        await reconnecting(
            self._session,
            peer=f"MQTT broker {mqtt.host}:{mqtt.port} (vehicle states)",
            stop=stop,
            retry_on=(aiomqtt.MqttError, OSError, TimeoutError),
            on_failure=self._failed,
        )

    def _failed(self, error: BaseException) -> None:
        self.connected.clear()
        self.last_error = f"{type(error).__name__}: {error}"

    async def _session(self, backoff: Backoff) -> None:
        mqtt = self.settings.mqtt
        tls = None
        if mqtt.tls:
            tls = ssl.create_default_context(cafile=str(mqtt.ca_file) if mqtt.ca_file else None)
        client = aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            username=mqtt.username,
            password=mqtt.password.reveal() if mqtt.password else None,
            identifier=mqtt.client_id,
            keepalive=mqtt.keepalive,
            tls_context=tls,
            timeout=10.0,
        )
        async with client:
            await client.subscribe(f"{self.settings.base_topic}/+/state", qos=1)
            self.connected.set()
            self.last_error = None
            backoff.reset()
            log.info("reading vehicle states from MQTT", broker=f"{mqtt.host}:{mqtt.port}",
                     topic=f"{self.settings.base_topic}/+/state")  # fmt: skip
            listener = asyncio.ensure_future(self._listen(client))
            stopping = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({listener, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if listener.done():
                    listener.result()
                    raise aiomqtt.MqttError("the message stream ended")
            finally:
                self.connected.clear()
                for task in (listener, stopping):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            self.take(
                str(message.topic),
                bytes(payload) if isinstance(payload, bytes | bytearray) else b"",
            )

    async def read(self) -> dict[str, VehicleReading]:
        now = self.clock.now()
        wanted = set(self.settings.vins) or set(self.documents)
        readings: dict[str, VehicleReading] = {}
        missing: set[str] = set()
        for vin in sorted(wanted):
            document = self.documents.get(vin)
            reading = (
                None
                if document is None
                else reading_from_state(
                    document, self.settings, now=now, not_before=self._commanded_at.get(vin)
                )
            )
            if reading is None:
                missing.add(vin)
            else:
                readings[vin] = reading
        # Nothing from the hub at all (broker unreachable, hub not running) is a reason
        # to ask Tesla too: without a VIN list no car would be known otherwise.
        if self.fleet is not None and (missing or not self.documents):
            log.info("no recent hub state; asking the Fleet API",
                     vins=",".join(sorted(missing)) or "all")  # fmt: skip
            fallback = await self.fleet.read()
            for vin, reading in fallback.items():
                if vin in missing or (not self.settings.vins and vin not in readings):
                    readings[vin] = reading
        return readings

    async def command(self, vin: str, wish: str) -> bool:
        if self.fleet is None:
            raise AdapterError("charging commands need Tesla access (tesla.token_source)")
        self._commanded_at[vin] = self.clock.now()
        return await self.fleet.command(vin, wish)

    async def wake(self, vin: str) -> None:
        if self.fleet is None:
            raise AdapterError("waking a car needs Tesla access (tesla.token_source)")
        self._commanded_at[vin] = self.clock.now()
        await self.fleet.wake(vin)
