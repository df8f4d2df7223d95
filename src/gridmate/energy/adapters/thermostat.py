"""Thermostats: Honeywell Home (Resideo) v2 API and Home Assistant ``climate`` entities.

Both follow the same rules: read at most every ``poll_seconds`` (the APIs
rate-limit hard and a lockout also locks the owner's app), write only when the
wanted state differs from what was read, and build every Honeywell write
from a fresh read so ``mode`` and ``autoChangeoverActive`` are echoed as the
person left them.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import httpx

from gridmate.energy.adapters.common import (
    AdapterError,
    ApiHealth,
    RateLimitedError,
    RejectedError,
    Wire,
    parse_wire,
)
from gridmate.energy.planner import DesiredThermostat, Hold, ThermostatReading
from gridmate.energy.settings import HomeAssistantSettings, HoneywellSettings, ThermostatSettings
from gridmate.runtime.clock import Clock
from gridmate.runtime.files import write_atomically
from gridmate.runtime.logs import get_logger
from gridmate.runtime.retry_after import parse_retry_after
from gridmate.runtime.secrets import Secret
from gridmate.tesla.tokens import EventHook, OAuthTokenProvider, TokenUnavailable

log = get_logger("energy.thermostat")

_HOLD_FROM_HONEYWELL: dict[str, Hold] = {
    "NoHold": "schedule",
    "TemporaryHold": "temporary",
    "PermanentHold": "permanent",
    "HoldUntil": "until",
    "VacationHold": "permanent",
}
_HOLD_TO_HONEYWELL = {"schedule": "NoHold", "temporary": "TemporaryHold",
                      "permanent": "PermanentHold", "until": "HoldUntil"}  # fmt: skip


class _HoneywellChangeable(Wire):
    """``changeableValues`` of a Honeywell Home v2 thermostat: what a write echoes."""

    mode: str
    autoChangeoverActive: bool = False
    heatSetpoint: float | None = None
    coolSetpoint: float | None = None
    thermostatSetpointStatus: str = "NoHold"


class _HoneywellDevice(Wire):
    """``GET /v2/devices/thermostats/{deviceId}``, the fields gridmate reads."""

    indoorTemperature: float | None = None
    changeableValues: _HoneywellChangeable


class _HomeAssistantAttributes(Wire):
    temperature: float | None = None
    target_temp_high: float | None = None
    target_temp_low: float | None = None
    current_temperature: float | None = None


class _HomeAssistantState(Wire):
    """``GET /api/states/climate.x``."""

    state: str
    attributes: _HomeAssistantAttributes = _HomeAssistantAttributes()


class Thermostat(Protocol):
    id: str
    supports_holds: bool
    health: ApiHealth

    async def read(self, *, force: bool = False) -> ThermostatReading: ...

    async def write(self, wish: DesiredThermostat) -> None: ...


RESIDEO_API_URL = "https://api.honeywellhome.com"
BASE_URL_HINT = (
    f"check honeywell.base_url (Resideo's API is at {RESIDEO_API_URL}; api.honeywell.com "
    "has served an expired certificate since May 2026)"
)


def honeywell_unreachable(error: httpx.TransportError, base_url: str) -> AdapterError:
    """A connection or certificate failure that names the setting to change."""
    text = str(error) or type(error).__name__
    host = httpx.URL(base_url).host or base_url
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower():
        what = f"the certificate of {host} is not valid ({text})"
    else:
        what = f"cannot connect to {host} ({text})"
    return AdapterError(f"Honeywell: {what}; {BASE_URL_HINT}")


def write_private_file(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, readable by the owner only."""
    write_atomically(path, text, mode=0o600)


class HoneywellAuth:
    """OAuth for the Honeywell Home API, whose refresh tokens are single-use.

    It is :class:`~gridmate.tesla.tokens.OAuthTokenProvider`, the mechanism of
    gridmate's own Tesla login: the rotated refresh token is saved (atomically,
    0600) in ``token_file`` before the new access token is used, a newly
    configured ``honeywell.refresh_token_file`` replaces the saved one, and a
    refused refresh token stops all token requests until the user authorizes
    again, saying once, exactly, what to do (``on_event``).
    """

    REAUTHORIZE = (
        "authorize gridmate again with your Honeywell Home developer app (the OAuth "
        "authorization-code flow), put the new refresh token in "
        "honeywell.refresh_token_file and restart gridmate-energy"
    )

    def __init__(
        self,
        settings: HoneywellSettings,
        token_file: Path,
        *,
        http: httpx.AsyncClient,
        clock: Clock,
        on_event: EventHook | None = None,
    ) -> None:
        self.settings = settings
        self.token_file = token_file
        self._provider: OAuthTokenProvider | None = None
        if settings.api_key and settings.client_secret is not None:
            token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _adopt_legacy_token_file(token_file, settings.refresh_token, clock)
            self._provider = OAuthTokenProvider(
                settings.api_key,
                token_file,
                initial_refresh_token=settings.refresh_token,
                token_url=f"{settings.base_url.rstrip('/')}/oauth2/token",
                http=http,
                clock=clock,
                client_secret=settings.client_secret,
                service="Honeywell",
                source="honeywell",
                reauthorize=self.REAUTHORIZE,
                # Resideo publishes no refresh-token lifetime: no expiry warnings.
                refresh_token_lifetime=timedelta(days=36500),
                expiry_warning=timedelta(days=1),
                on_event=on_event,
            )

    def problem(self) -> str | None:
        if self._provider is None:
            return "honeywell.api_key and honeywell.client_secret_file are required"
        return self._provider.health()

    def login_failing(self) -> bool:
        """The login itself fails (reported as a token condition, not as "API failing")."""
        return self._provider is not None and self._provider.health() is not None

    async def rejected(self, token: Secret) -> None:
        """Honeywell refused ``token``: the next :meth:`token` refreshes."""
        if self._provider is not None:
            await self._provider.token_rejected(token)

    async def token(self) -> Secret:
        if self._provider is None:
            raise AdapterError(str(self.problem()))
        try:
            return await self._provider.access_token()
        except TokenUnavailable as error:
            if error.code == "refresh_token_rejected" or error.code == "no_refresh_token":
                raise AdapterError(f"authorize again: {error.reason}") from None
            if error.code == "auth_unreachable":
                raise AdapterError(f"Honeywell login: {error.reason}; {BASE_URL_HINT}") from None
            raise AdapterError(f"Honeywell login: {error.reason}") from None


def _adopt_legacy_token_file(path: Path, seed: Secret | None, clock: Clock) -> None:
    """Turn the token file of earlier gridmate versions (``{"refresh_token": ...}``) into
    the OAuth state file, keeping its (newer) token rather than the configured one."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(saved, dict) or "version" in saved or "refresh_token" not in saved:
        return
    state = {
        "version": 1,
        "refresh_token": str(saved["refresh_token"]),
        "refresh_token_issued_at": clock.now().isoformat(),
        "access_token": None,
        "access_token_expires_at": None,
        "seed_sha256": hashlib.sha256(seed.reveal().encode()).hexdigest() if seed else None,
    }
    write_private_file(path, json.dumps(state, indent=2))
    log.info("honeywell token file converted to the OAuth state format", path=str(path))


def _round_up_quarter(when: datetime, tz: ZoneInfo) -> str:
    local = when.astimezone(tz)
    minutes = local.hour * 60 + local.minute + (1 if local.second else 0)
    minutes = min(23 * 60 + 45, math.ceil(minutes / 15) * 15)
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


class HoneywellThermostat:
    supports_holds = True

    def __init__(
        self,
        config: ThermostatSettings,
        settings: HoneywellSettings,
        auth: HoneywellAuth,
        *,
        http: httpx.AsyncClient,
        clock: Clock,
        tz: ZoneInfo,
    ) -> None:
        self.id = config.id
        self.device_id = str(config.device_id)
        self.location_id = str(config.location_id)
        self.settings = settings
        self.auth = auth
        self.http = http
        self.clock = clock
        self.tz = tz
        self.health = ApiHealth(f"honeywell:{self.id}", clock)
        self._last: tuple[datetime, _HoneywellDevice] | None = None

    @property
    def _url(self) -> str:
        return f"{self.settings.base_url.rstrip('/')}/v2/devices/thermostats/{self.device_id}"

    async def _request(self, method: str, body: dict[str, Any] | None = None) -> httpx.Response:
        wait = self.health.blocked()
        if wait is not None:
            raise RateLimitedError(f"Honeywell rate limit: waiting {wait:.0f} s", wait)
        params = {"apikey": str(self.settings.api_key), "locationId": self.location_id}
        for attempt in (1, 2):
            token = await self.auth.token()
            self.health.count()
            try:
                response = await self.http.request(
                    method,
                    self._url,
                    params=params,
                    json=body,
                    headers={"Authorization": f"Bearer {token.reveal()}"},
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                raise honeywell_unreachable(error, self.settings.base_url) from None
            if response.status_code == 401 and attempt == 1:
                await self.auth.rejected(token)
                continue
            if response.status_code == 429:
                # Honeywell usually sends no Retry-After: then wait two poll intervals.
                asked = parse_retry_after(
                    response.headers.get("retry-after"), self.clock.now(),
                    max_wait=self.settings.max_retry_after_seconds,
                )  # fmt: skip
                wait = max(2 * self.settings.poll_seconds, asked.seconds if asked else 0.0)
                reason = "429 rate limit" + (f" ({asked.describe()})" if asked else "")
                self.health.block(wait, reason, capped=asked is not None and asked.capped)
                raise RateLimitedError(f"Honeywell answered {reason}", wait)
            if response.status_code == 400:
                raise RejectedError(f"Honeywell refused the write: {response.text[:200]}")
            if response.status_code >= 300:
                raise AdapterError(f"Honeywell answered {response.status_code}")
            return response
        raise AdapterError("Honeywell refused the access token twice")

    async def _raw(self, force: bool) -> _HoneywellDevice:
        now = self.clock.now()
        if (
            not force
            and self._last is not None
            and (now - self._last[0]).total_seconds() < self.settings.poll_seconds
        ):
            return self._last[1]
        try:
            answer = (await self._request("GET")).json()
            data = parse_wire(_HoneywellDevice, answer, "Honeywell")
        except RateLimitedError:
            raise  # the health already says why and for how long
        except (httpx.HTTPError, ValueError) as error:
            self.health.failed(f"{type(error).__name__}: {error}")
            raise AdapterError(f"Honeywell read failed: {error}") from error
        except AdapterError as error:
            self.health.failed(str(error))
            raise
        self.health.ok()
        self._last = (now, data)
        return data

    async def read(self, *, force: bool = False) -> ThermostatReading:
        data = await self._raw(force)
        values = data.changeableValues
        return ThermostatReading(
            mode=values.mode.lower(),
            cool_setpoint_f=values.coolSetpoint,
            heat_setpoint_f=values.heatSetpoint,
            indoor_f=data.indoorTemperature,
            hold=_HOLD_FROM_HONEYWELL.get(values.thermostatSetpointStatus, "permanent"),
        )

    async def write(self, wish: DesiredThermostat) -> None:
        # Read-modify-write from a fresh read, echoing what the person set.
        current = (await self._raw(force=True)).changeableValues
        heat = wish.heat_setpoint_f if wish.heat_setpoint_f is not None else current.heatSetpoint
        cool = wish.cool_setpoint_f if wish.cool_setpoint_f is not None else current.coolSetpoint
        if heat is None or cool is None:
            raise AdapterError("Honeywell device reported no setpoints; not writing blind")
        body: dict[str, Any] = {
            "mode": current.mode,
            "autoChangeoverActive": current.autoChangeoverActive,
            "heatSetpoint": round(heat),
            "coolSetpoint": round(cool),
        }
        if self.device_id.startswith("LCC-"):
            body["thermostatSetpointStatus"] = _HOLD_TO_HONEYWELL[wish.hold]
            if wish.hold == "until":
                assert wish.hold_until is not None
                body["nextPeriodTime"] = _round_up_quarter(wish.hold_until, self.tz)
        try:
            await self._request("POST", body)
        except httpx.HTTPError as error:
            self.health.failed(f"{type(error).__name__}: {error}")
            raise AdapterError(f"Honeywell write failed: {error}") from error
        self._last = None  # the next read must see the device as it is now


class HomeAssistantThermostat:
    """A ``climate.*`` entity through Home Assistant's REST API (no holds there)."""

    supports_holds = False

    def __init__(
        self,
        config: ThermostatSettings,
        settings: HomeAssistantSettings,
        *,
        http: httpx.AsyncClient,
        clock: Clock,
    ) -> None:
        self.id = config.id
        self.entity_id = str(config.entity_id)
        self.settings = settings
        self.http = http
        self.health = ApiHealth(f"home_assistant:{self.id}", clock)
        self.clock = clock
        self._last: tuple[datetime, _HomeAssistantState] | None = None

    def _headers(self) -> dict[str, str]:
        if self.settings.token is None:
            raise AdapterError("home_assistant.token_file is not set")
        return {"Authorization": f"Bearer {self.settings.token.reveal()}"}

    async def read(self, *, force: bool = False) -> ThermostatReading:
        now = self.clock.now()
        if (
            force
            or self._last is None
            or (now - self._last[0]).total_seconds() >= self.settings.poll_seconds
        ):
            try:
                self.health.count()
                response = await self.http.get(
                    f"{self.settings.url.rstrip('/')}/api/states/{self.entity_id}",
                    headers=self._headers(),
                )
                response.raise_for_status()
                answer = response.json()
                state = parse_wire(_HomeAssistantState, answer, "Home Assistant")
            except AdapterError as error:
                self.health.failed(str(error))
                raise
            except (httpx.HTTPError, ValueError) as error:
                self.health.failed(f"{type(error).__name__}: {error}")
                raise AdapterError(f"Home Assistant read failed: {error}") from error
            self._last = (now, state)
            self.health.ok()
        state = self._last[1]
        attributes = state.attributes
        mode = {"heat_cool": "auto", "cool": "cool", "heat": "heat"}.get(state.state, "off")
        if mode == "auto":
            cool = attributes.target_temp_high
            heat = attributes.target_temp_low
        else:
            cool = attributes.temperature if mode == "cool" else None
            heat = attributes.temperature if mode == "heat" else None
        return ThermostatReading(
            mode=mode,
            cool_setpoint_f=cool,
            heat_setpoint_f=heat,
            indoor_f=attributes.current_temperature,
            hold="schedule",
        )

    async def write(self, wish: DesiredThermostat) -> None:
        reading = await self.read(force=True)
        body: dict[str, Any] = {"entity_id": self.entity_id}
        if reading.mode == "auto":
            body["target_temp_high"] = wish.cool_setpoint_f
            body["target_temp_low"] = wish.heat_setpoint_f
        elif reading.mode == "cool":
            body["temperature"] = wish.cool_setpoint_f
        elif reading.mode == "heat":
            body["temperature"] = wish.heat_setpoint_f
        else:
            return
        try:
            self.health.count()
            response = await self.http.post(
                f"{self.settings.url.rstrip('/')}/api/services/climate/set_temperature",
                json=body,
                headers=self._headers(),
            )
            if response.status_code == 400:
                raise RejectedError(f"Home Assistant refused: {response.text[:200]}")
            response.raise_for_status()
        except httpx.HTTPError as error:
            self.health.failed(f"{type(error).__name__}: {error}")
            raise AdapterError(f"Home Assistant write failed: {error}") from error
        self._last = None
