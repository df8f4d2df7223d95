"""A stand-in for the Honeywell Home (Resideo) v2 API, quirks included.

* OAuth: ``POST /oauth2/token`` with HTTP Basic ``apikey:secret``; refresh
  tokens are single-use (each refresh issues a new one, the old one answers 401
  ``Invalid Refresh Token``). ``truncate_token_answers`` breaks off that many token
  answers after the rotation, as a dropped connection or proxy does.
* ``GET/POST /v2/devices/thermostats/{deviceId}?apikey=…&locationId=…`` with a
  Bearer token; ``GET /v2/locations?apikey=…``.
* A POST without ``mode`` is a 400, as is one without both setpoints; LCC
  devices also need ``thermostatSetpointStatus`` and ``HoldUntil`` needs
  ``nextPeriodTime``. Setpoints outside the device's range are a 400.
* A request budget per window answers 429 ``{"code":"429.02.001"}``.
* Holds behave: ``HoldUntil`` ends at ``nextPeriodTime`` (local time), ``NoHold``
  returns to the schedule's setpoints.

The thermal model in :mod:`gridmate.sim.house` moves ``indoor_f``.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from gridmate.runtime.clock import Clock, SystemClock
from gridmate.sim.http import serve_on_loopback

__all__ = ["HoneywellSimulator", "SimulatedThermostat", "honeywell_simulator"]

_MODES = ("Heat", "Cool", "Off", "Auto")


@dataclass
class SimulatedThermostat:
    device_id: str = "LCC-00D02DB89E33"
    location_id: str = "123456"
    name: str = "Living Room"
    device_class: str = "LCC"
    """'LCC' (needs thermostatSetpointStatus) or 'TCC'."""
    mode: str = "Cool"
    auto_changeover_active: bool = False
    schedule_cool_f: float = 76.0
    schedule_heat_f: float = 68.0
    cool_setpoint_f: float = 76.0
    heat_setpoint_f: float = 68.0
    setpoint_status: str = "NoHold"
    next_period_time: str | None = None
    indoor_f: float = 75.0
    outdoor_f: float = 90.0
    min_cool_f: float = 50.0
    max_cool_f: float = 99.0
    min_heat_f: float = 40.0
    max_heat_f: float = 90.0
    writes: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)
    """Accepted POST bodies with their time."""

    def person_sets(self, *, cool: float | None = None, heat: float | None = None) -> None:
        """Someone changes the setpoint at the wall: a permanent hold, as the device does."""
        if cool is not None:
            self.cool_setpoint_f = cool
        if heat is not None:
            self.heat_setpoint_f = heat
        self.setpoint_status = "PermanentHold"
        self.next_period_time = None

    def expire_holds(self, local_now: datetime) -> None:
        if self.setpoint_status == "HoldUntil" and self.next_period_time:
            until = time.fromisoformat(self.next_period_time)
            if local_now.time() >= until:
                self.return_to_schedule()

    def return_to_schedule(self) -> None:
        self.setpoint_status = "NoHold"
        self.next_period_time = None
        self.cool_setpoint_f = self.schedule_cool_f
        self.heat_setpoint_f = self.schedule_heat_f

    def as_json(self) -> dict[str, Any]:
        changeable: dict[str, Any] = {
            "mode": self.mode,
            "autoChangeoverActive": self.auto_changeover_active,
            "heatSetpoint": self.heat_setpoint_f,
            "coolSetpoint": self.cool_setpoint_f,
            "heatCoolMode": "Cool" if self.mode == "Cool" else "Heat",
        }
        if self.device_class == "LCC":
            changeable["thermostatSetpointStatus"] = self.setpoint_status
            changeable["nextPeriodTime"] = self.next_period_time or "18:00:00"
        return {
            "deviceID": self.device_id,
            "deviceClass": "Thermostat",
            "deviceType": "Thermostat",
            "userDefinedDeviceName": self.name,
            "units": "Fahrenheit",
            "indoorTemperature": round(self.indoor_f, 1),
            "outdoorTemperature": round(self.outdoor_f, 1),
            "allowedModes": list(_MODES),
            "minCoolSetpoint": self.min_cool_f,
            "maxCoolSetpoint": self.max_cool_f,
            "minHeatSetpoint": self.min_heat_f,
            "maxHeatSetpoint": self.max_heat_f,
            "deadband": 0,
            "allowedTimeIncrements": 15,
            "isAlive": True,
            "operationStatus": {"mode": "EquipmentOff"},
            "changeableValues": changeable,
        }


class HoneywellSimulator:
    def __init__(
        self,
        thermostats: Sequence[SimulatedThermostat],
        *,
        clock: Clock,
        timezone: str,
        api_key: str,
        api_secret: str,
        requests_per_window: int | None,
        window_seconds: float,
    ) -> None:
        self.thermostats = {t.device_id: t for t in thermostats}
        self.clock = clock
        self.tz = ZoneInfo(timezone)
        self.api_key = api_key
        self.api_secret = api_secret
        self.requests_per_window = requests_per_window
        self.window_seconds = window_seconds
        self.base_url = ""
        self.requests: list[tuple[datetime, str, str, int]] = []
        """(time, method, path, status) of every request, token requests included."""
        self._access: dict[str, datetime] = {}
        self._refresh: set[str] = set()
        self._hits: list[datetime] = []
        self.refreshes = 0
        self.truncate_token_answers = 0
        """How many of the next token answers break off after the refresh token rotated."""
        self.retry_after: str | None = None
        """A ``Retry-After`` header on 429 answers (Resideo usually sends none)."""
        self.answer_instead: dict[str, Any] = {}
        """Device ID -> JSON answered (200) to a GET instead of the device: valid JSON of
        another shape (``null``, ``[]``, a missing key), as a broken API answers."""

    def issue_refresh_token(self) -> str:
        token = "hw-r-" + secrets.token_urlsafe(16)
        self._refresh.add(token)
        return token

    def tick(self) -> None:
        local = self.clock.now().astimezone(self.tz)
        for thermostat in self.thermostats.values():
            thermostat.expire_holds(local)

    # ------------------------------------------------------------ handlers

    async def _token(self, request: web.Request) -> web.Response:
        response = await self._token_answer(request)
        self._record(request, response.status)
        return response

    async def _token_answer(self, request: web.Request) -> web.Response:
        expected = base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response({"fault": {"faultstring": "Invalid client"}}, status=401)
        form = await request.post()
        if form.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        presented = str(form.get("refresh_token", ""))
        if presented not in self._refresh:
            return web.json_response(
                {"fault": {"faultstring": "Invalid Refresh Token"}}, status=401
            )
        self._refresh.discard(presented)  # single use
        self.refreshes += 1
        access = "hw-a-" + secrets.token_urlsafe(16)
        self._access[access] = self.clock.now() + timedelta(seconds=1799)
        answer = {
            "access_token": access,
            "refresh_token": self.issue_refresh_token(),
            "expires_in": "1799",
            "token_type": "Bearer",
        }
        if self.truncate_token_answers > 0:
            self.truncate_token_answers -= 1
            body = json.dumps(answer).encode()
            return web.Response(body=body[: len(body) // 3], content_type="application/json")
        return web.json_response(answer)

    def _check(self, request: web.Request) -> web.Response | None:
        now = self.clock.now()
        if request.query.get("apikey") != self.api_key:
            return web.json_response({"fault": {"faultstring": "Invalid ApiKey"}}, status=401)
        header = request.headers.get("Authorization", "")
        expires = self._access.get(header.removeprefix("Bearer "))
        if expires is None or expires <= now:
            return web.json_response({"fault": {"faultstring": "Invalid Access Token"}}, status=401)
        if self.requests_per_window is not None:
            horizon = now - timedelta(seconds=self.window_seconds)
            self._hits = [t for t in self._hits if t > horizon]
            if len(self._hits) >= self.requests_per_window:
                headers = {"Retry-After": self.retry_after} if self.retry_after else None
                return web.json_response(
                    {"code": "429.02.001", "message": "rate limit has been exhausted"},
                    status=429,
                    headers=headers,
                )
            self._hits.append(now)
        return None

    def _record(self, request: web.Request, status: int) -> None:
        self.requests.append((self.clock.now(), request.method, request.path, status))

    async def _locations(self, request: web.Request) -> web.Response:
        self.tick()
        refusal = self._check(request)
        if refusal is not None:
            self._record(request, refusal.status)
            return refusal
        by_location: dict[str, list[dict[str, Any]]] = {}
        for thermostat in self.thermostats.values():
            by_location.setdefault(thermostat.location_id, []).append(thermostat.as_json())
        self._record(request, 200)
        return web.json_response(
            [{"locationID": int(k), "name": "Home", "devices": v} for k, v in by_location.items()]
        )

    async def _thermostat(self, request: web.Request) -> web.Response:
        self.tick()
        refusal = self._check(request)
        if refusal is not None:
            self._record(request, refusal.status)
            return refusal
        device = self.thermostats.get(request.match_info["device"])
        if device is None or request.query.get("locationId") != device.location_id:
            self._record(request, 404)
            return web.json_response({"code": 404, "message": "Device not found"}, status=404)
        if request.method == "GET":
            self._record(request, 200)
            if device.device_id in self.answer_instead:
                return web.json_response(self.answer_instead[device.device_id])
            return web.json_response(device.as_json())
        try:
            body = await request.json()
        except ValueError:
            body = None
        problem = self._refusal(device, body)
        if problem is not None:
            self._record(request, 400)
            return web.json_response({"code": 400, "message": problem}, status=400)
        assert isinstance(body, dict)
        device.mode = body["mode"]
        device.auto_changeover_active = bool(
            body.get("autoChangeoverActive", device.auto_changeover_active)
        )
        device.heat_setpoint_f = float(body["heatSetpoint"])
        device.cool_setpoint_f = float(body["coolSetpoint"])
        status = body.get("thermostatSetpointStatus", "PermanentHold")
        if status == "NoHold":
            device.return_to_schedule()
        else:
            device.setpoint_status = status
            device.next_period_time = body.get("nextPeriodTime") if status == "HoldUntil" else None
        device.writes.append((self.clock.now(), dict(body)))
        self._record(request, 200)
        return web.Response(status=200)

    @staticmethod
    def _refusal(device: SimulatedThermostat, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Request body is not JSON"
        if "mode" not in body:
            return "mode is required"
        if body["mode"] not in _MODES:
            return f"mode {body['mode']!r} is not allowed"
        for key in ("heatSetpoint", "coolSetpoint"):
            if not isinstance(body.get(key), int | float):
                return f"{key} is required"
        if not device.min_cool_f <= body["coolSetpoint"] <= device.max_cool_f:
            return "coolSetpoint out of range"
        if not device.min_heat_f <= body["heatSetpoint"] <= device.max_heat_f:
            return "heatSetpoint out of range"
        if device.device_class == "LCC":
            status = body.get("thermostatSetpointStatus")
            if status not in ("NoHold", "TemporaryHold", "PermanentHold", "HoldUntil"):
                return "thermostatSetpointStatus is required"
            if status == "HoldUntil":
                value = body.get("nextPeriodTime")
                try:
                    until = time.fromisoformat(str(value))
                except ValueError:
                    return "nextPeriodTime is required for HoldUntil"
                if until.minute % 15 or until.second:
                    return "nextPeriodTime must be in 15-minute increments"
        return None

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth2/token", self._token)
        app.router.add_get("/v2/locations", self._locations)
        app.router.add_get("/v2/devices/thermostats/{device}", self._thermostat)
        app.router.add_post("/v2/devices/thermostats/{device}", self._thermostat)
        return app


@asynccontextmanager
async def honeywell_simulator(
    thermostats: Sequence[SimulatedThermostat] = (SimulatedThermostat(),),
    *,
    clock: Clock | None = None,
    timezone: str = "America/Phoenix",
    api_key: str = "sim-consumer-key",
    api_secret: str = "sim-consumer-secret",
    requests_per_window: int | None = None,
    window_seconds: float = 60.0,
) -> AsyncIterator[HoneywellSimulator]:
    sim = HoneywellSimulator(
        thermostats,
        clock=clock or SystemClock(),
        timezone=timezone,
        api_key=api_key,
        api_secret=api_secret,
        requests_per_window=requests_per_window,
        window_seconds=window_seconds,
    )
    async with serve_on_loopback(sim.application()) as sim.base_url:
        yield sim
