"""A house with a Powerwall, an air conditioner and a car, good enough to test control.

:class:`HouseModel` moves the power and charge fields of a
:class:`~gridmate.sim.tesla_cloud.SimulatedEnergySite` every tick, following
the operation mode and reserve the cloud simulator received, and moves the
indoor temperature of :class:`~gridmate.sim.honeywell.SimulatedThermostat`
devices with a first-order thermal model. It also serves the two local
gateway endpoints gridmate reads (``/api/system_status/soe`` on the gateway's
raw scale and ``/api/meters/aggregates``), after ``/api/login/Basic``.

Battery behaviour (simplified from what Powerwalls do):

* ``self_consumption``: covers the house's net load down to the reserve,
  limited by the nameplate power, and stores solar surplus;
* ``autonomous`` (Time-Based Control): idle off peak except storing surplus;
* ``backup``: never discharges; charges from the grid toward 100 %.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from gridmate.runtime.clock import Clock
from gridmate.sim.honeywell import SimulatedThermostat
from gridmate.sim.http import serve_on_loopback
from gridmate.sim.tesla_cloud import SimulatedEnergySite, SimulatedVehicle

__all__ = ["HouseModel", "gateway_simulator", "outdoor_profile", "raw_from_app"]


def raw_from_app(app_percent: float) -> float:
    """The gateway's raw state of charge for an app-scale value (Tesla hides 5 %)."""
    return app_percent * 0.95 + 5.0


def outdoor_profile(high_f: float, low_f: float | None = None) -> Callable[[datetime], float]:
    """A day's outdoor temperature: lowest at 5 AM, highest at 4 PM (local)."""
    low = high_f - 25.0 if low_f is None else low_f

    def at(local: datetime) -> float:
        hour = local.hour + local.minute / 60.0
        # Cosine between the 5 AM low and the 4 PM high.
        phase = (hour - 5) / 11.0 if 5 <= hour <= 16 else 1.0 - (hour - 16) % 24 / 13.0
        return low + (high_f - low) * (1 - math.cos(math.pi * phase)) / 2

    return at


@dataclass
class HouseModel:
    site: SimulatedEnergySite
    timezone: str
    thermostats: Sequence[SimulatedThermostat] = ()
    vehicles: Sequence[SimulatedVehicle] = ()
    outdoor: Callable[[datetime], float] = field(default_factory=lambda: outdoor_profile(100.0))
    base_load_kw: float = 0.9
    hvac_kw: float = 3.5
    """Electric draw of one air conditioner (or heat pump) while running."""
    hvac_rate_f_per_hour: float = 4.0
    """How fast a running system moves the indoor temperature."""
    leak_per_hour: float = 0.08
    """Fraction of the indoor/outdoor difference that leaks in per hour."""
    solar_peak_kw: float = 0.0
    backup_charge_kw: float = 3.3
    last_tick: datetime | None = None
    hvac_running: dict[str, bool] = field(default_factory=dict)

    def solar_kw(self, local: datetime) -> float:
        hour = local.hour + local.minute / 60.0
        if not 6 <= hour <= 19:
            return 0.0
        return max(0.0, self.solar_peak_kw * math.sin(math.pi * (hour - 6) / 13.0))

    def step(self, now: datetime) -> None:
        """Advance the model to ``now``."""
        if self.last_tick is None:
            self.last_tick = now
            self._update_power(now, 0.0)
            return
        seconds = (now - self.last_tick).total_seconds()
        if seconds <= 0:
            return
        # Integrate in steps of at most one minute so a long jump stays stable.
        remaining = seconds
        moment = self.last_tick
        while remaining > 0:
            dt = min(60.0, remaining)
            moment = moment + (now - self.last_tick) * (dt / seconds)
            self._update_power(moment, dt)
            remaining -= dt
        self.last_tick = now

    def _update_power(self, now: datetime, dt: float) -> None:
        local = now.astimezone(ZoneInfo(self.timezone))
        outdoor = self.outdoor(local)
        hours = dt / 3600.0
        hvac_kw = 0.0
        for thermostat in self.thermostats:
            thermostat.outdoor_f = outdoor
            running = self._hvac_decision(thermostat)
            self.hvac_running[thermostat.device_id] = running
            drift = (outdoor - thermostat.indoor_f) * self.leak_per_hour * hours
            effect = 0.0
            if running:
                hvac_kw += self.hvac_kw
                direction = -1.0 if self._cooling(thermostat) else 1.0
                effect = direction * self.hvac_rate_f_per_hour * hours
            thermostat.indoor_f += drift + effect
        car_kw = sum(v.charger_power_kw for v in self.vehicles)
        load = self.base_load_kw + hvac_kw + car_kw
        solar = self.solar_kw(local)
        site = self.site
        capacity = site.nameplate_energy_wh / 1000.0
        limit = site.nameplate_power_w / 1000.0
        soc = site.percentage_charged
        net = load - solar
        battery = 0.0  # + discharging
        if site.operation_mode == "backup":
            battery = -self.backup_charge_kw if soc < 100 else 0.0
            if net < 0:
                battery = min(battery, net)
        elif site.operation_mode == "self_consumption":
            if net > 0 and soc > site.backup_reserve_percent:
                battery = min(net, limit)
            elif net < 0 and soc < 100:
                battery = max(net, -limit)
        else:  # autonomous, off peak: store surplus only
            if net < 0 and soc < 100:
                battery = max(net, -limit)
        if hours > 0:
            soc -= battery * hours / capacity * 100.0
            soc = max(0.0, min(100.0, soc))
        site.percentage_charged = round(soc, 3)
        site.battery_power_w = round(battery * 1000.0)
        site.load_power_w = round(load * 1000.0)
        site.solar_power_w = round(solar * 1000.0)
        site.grid_power_w = round((load - solar - battery) * 1000.0)

    @staticmethod
    def _cooling(thermostat: SimulatedThermostat) -> bool:
        if thermostat.mode == "Cool":
            return True
        if thermostat.mode == "Heat":
            return False
        return thermostat.indoor_f > thermostat.cool_setpoint_f

    def _hvac_decision(self, thermostat: SimulatedThermostat) -> bool:
        was = self.hvac_running.get(thermostat.device_id, False)
        if thermostat.mode == "Off":
            return False
        if self._cooling(thermostat):
            if thermostat.mode == "Auto" and thermostat.indoor_f <= thermostat.cool_setpoint_f:
                return False
            # One-degree hysteresis, like a real thermostat's cycle rate.
            if was:
                return thermostat.indoor_f > thermostat.cool_setpoint_f - 0.5
            return thermostat.indoor_f > thermostat.cool_setpoint_f + 0.5
        if was:
            return thermostat.indoor_f < thermostat.heat_setpoint_f + 0.5
        return thermostat.indoor_f < thermostat.heat_setpoint_f - 0.5

    async def run(self, clock: Clock, stop: asyncio.Event, tick_seconds: float = 30.0) -> None:
        """Advance with ``clock`` every ``tick_seconds`` of its time until ``stop``."""
        while not stop.is_set():
            self.step(clock.now())
            await clock.sleep(tick_seconds)


@dataclass
class GatewaySimulator:
    house: HouseModel
    password: str
    base_url: str = ""
    tokens: set[str] = field(default_factory=set)
    reads: int = 0
    answer_instead: dict[str, Any] = field(default_factory=dict)
    """Path -> JSON answered (200) instead of the reading: a firmware that answers
    valid JSON of another shape (``null``, ``[]``, a missing key)."""


@asynccontextmanager
async def gateway_simulator(
    house: HouseModel, *, password: str = "ABCDE"
) -> AsyncIterator[GatewaySimulator]:
    """The Powerwall gateway's local REST API for the two reads gridmate makes."""
    sim = GatewaySimulator(house, password)

    async def login(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if body.get("username") != "customer" or body.get("password") != sim.password:
            return web.json_response(
                {"code": 401, "error": "bad credentials", "message": "Login Error"}, status=401
            )
        token = secrets.token_urlsafe(24)
        sim.tokens.add(token)
        response = web.json_response(
            {"email": body.get("email"), "firstname": "Tesla", "roles": ["Home_Owner"],
             "token": token, "loginTime": "2026-01-01T00:00:00Z"}
        )  # fmt: skip
        response.set_cookie("AuthCookie", token)
        return response

    def authorised(request: web.Request) -> bool:
        header = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return header in sim.tokens or request.cookies.get("AuthCookie") in sim.tokens

    async def soe(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"code": 401, "error": "Unauthorized"}, status=401)
        sim.reads += 1
        if request.path in sim.answer_instead:
            return web.json_response(sim.answer_instead[request.path])
        return web.json_response(
            {"percentage": round(raw_from_app(house.site.percentage_charged), 4)}
        )

    async def aggregates(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"code": 401, "error": "Unauthorized"}, status=401)
        sim.reads += 1
        if request.path in sim.answer_instead:
            return web.json_response(sim.answer_instead[request.path])
        site = house.site

        def meter(watts: float) -> dict[str, float]:
            return {"instant_power": float(watts), "frequency": 60.0, "energy_exported": 0.0,
                    "energy_imported": 0.0, "instant_average_voltage": 240.0}  # fmt: skip

        return web.json_response(
            {
                "site": meter(site.grid_power_w),
                "battery": meter(site.battery_power_w),
                "load": meter(site.load_power_w),
                "solar": meter(site.solar_power_w),
            }
        )

    app = web.Application()
    app.router.add_post("/api/login/Basic", login)
    app.router.add_get("/api/system_status/soe", soe)
    app.router.add_get("/api/meters/aggregates", aggregates)
    async with serve_on_loopback(app) as sim.base_url:
        yield sim
