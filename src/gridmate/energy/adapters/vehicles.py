"""Cars charging at home: their state, and pausing or resuming their charging.

State comes through a small :class:`VehicleSource` interface. The Fleet
source asks the vehicle list first and reads ``vehicle_data`` only for a car
that is online, so it never wakes a car. Commands go through the Fleet API
within a per-car daily budget.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Protocol

from gridmate.energy.adapters.common import AdapterError, ApiHealth, RateLimitedError
from gridmate.energy.planner import VehicleReading
from gridmate.energy.settings import EvSettings
from gridmate.runtime.clock import Clock
from gridmate.runtime.logs import get_logger
from gridmate.tesla import fleet_api
from gridmate.tesla.fleet_api import FleetApi

log = get_logger("energy.vehicles")


class VehicleSource(Protocol):
    async def read(self) -> dict[str, VehicleReading]: ...


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


class FleetVehicles:
    """State and charging commands through the Fleet API."""

    def __init__(self, fleet: FleetApi, settings: EvSettings, *, clock: Clock) -> None:
        self.fleet = fleet
        self.settings = settings
        self.clock = clock
        self.health = ApiHealth("tesla_vehicle", clock, budget=settings.commands_per_day)
        self._commands: dict[str, int] = {}
        self._day: date | None = None

    def _at_home(self, drive: dict) -> bool:
        lat, lon = drive.get("latitude"), drive.get("longitude")
        home_lat, home_lon = self.settings.home_latitude, self.settings.home_longitude
        if home_lat is None or home_lon is None or lat is None or lon is None:
            return True  # no home set: a car charging is taken to charge at home
        return (
            _distance_m(float(lat), float(lon), home_lat, home_lon) <= self.settings.home_radius_m
        )

    async def read(self) -> dict[str, VehicleReading]:
        try:
            self.health.count()
            listing = await self.fleet.vehicles()
        except fleet_api.FleetApiError as error:
            self.health.failed(str(error))
            raise AdapterError(f"vehicle list: {error}") from error
        wanted = set(self.settings.vins)
        readings: dict[str, VehicleReading] = {}
        for car in listing:
            if wanted and car.vin not in wanted:
                continue
            if not car.online:
                readings[car.vin] = VehicleReading(charging=False, at_home=False)
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
            raise RateLimitedError(str(error), error.retry_after) from error
        except fleet_api.FleetApiError as error:
            self.health.failed(str(error))
            raise AdapterError(f"{vin}: {error}") from error
        return result.achieved
