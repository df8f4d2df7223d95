"""A stand-in for Tesla's cloud: the OAuth token endpoint and the Fleet API.

It speaks the documented wire format, quirks included, so clients are tested
against behaviour rather than against our own assumptions:

* every answer is a ``{"response": ...}`` envelope; errors carry ``error`` and
  ``error_description`` (Fleet API conventions page);
* refresh tokens are single-use: each refresh issues a new one and only the
  newest of a login is valid; presenting an older one answers 401
  ``login_required`` as Tesla does;
* access tokens are JWT-shaped with ``exp`` and ``scp`` claims and expire;
* a sleeping or offline car answers 408 to data and commands and is not woken
  (only ``wake_up`` wakes it, answering the state before the wake; the car is
  online ``wake_seconds`` later, 20 s by default); every call is recorded with the car's state so
  tests can assert that nothing polled a sleeping car;
* an online car that is not charging falls asleep after ``sleep_after`` of
  inactivity (about 15 minutes, TeslaMate's FAQ). ``vehicle_data``, commands
  and ``wake_up`` reset its inactivity timer; the vehicle list does not
  (same FAQ). The idle time counts from the first request that sees the car
  not charging;
* unsigned REST commands (``/command/...``) to a car that needs the Vehicle
  Command Protocol (Model 3/Y and S/X from 2021 on) answer 403 "Tesla Vehicle
  Command Protocol required"; signed ones arrive at ``signed_command`` (from
  :mod:`gridmate.sim.command_proxy`, the stand-in for tesla-http-proxy) and
  the car accepts them only when signed by a key enrolled on it
  (``virtual_keys``) with a counter it has not seen; a car that does not need
  the protocol answers ``signed_command`` with 422, as Tesla's servers do;
* the vehicle commands gridmate sends act on the car: ``charge_start``/
  ``charge_stop``, ``set_charge_limit`` (``{"percent": N}``, within the car's
  ``charge_limit_soc_min``..``_max``; the same limit again is refused with
  ``already_set``), ``set_charging_amps`` (``{"charging_amps": N}``, 1 up to the
  car's ``charge_current_request_max``) and ``auto_conditioning_start``/``_stop``
  (``climate_state.is_climate_on``). A value the car does not take is a
  ``{"result": false, "reason": ...}`` answer (the reasons other than Tesla's
  ``is_charging``, ``not_charging`` and ``already_set`` are this simulator's
  wording); a missing or non-numeric parameter is a 400;
* Powerwall reserve writes follow firmware 25.18.4: 0-80 or exactly 100,
  anything else is a 400;
* rate limits (429 with ``RateLimit-*`` and ``Retry-After``) and 5xx failures
  are configured per test, as are lost answers (:meth:`TeslaCloudSimulator.lose_answers`:
  a call carried out whose answer is a 502 or a truncated body).

Usage::

    async with tesla_cloud_simulator(sites=[SimulatedEnergySite()]) as cloud:
        access, refresh = cloud.issue_tokens()
        ... FleetApi(StaticTokenProvider(Secret(access)), base_url=cloud.base_url)
"""

from __future__ import annotations

import base64
import json
import math
import random
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from gridmate.runtime.clock import Clock, SystemClock
from gridmate.sim.http import serve_on_loopback

__all__ = [
    "ALL_SCOPES",
    "COMMAND_PARAMETERS",
    "PROTOCOL_REQUIRED",
    "VEHICLE_COMMANDS",
    "ApiCall",
    "OAuthEvent",
    "RateLimitRule",
    "SimulatedEnergySite",
    "SimulatedVehicle",
    "SiteWrite",
    "TeslaCloudSimulator",
    "command_parameter_fault",
    "tesla_cloud_simulator",
]

ALL_SCOPES: tuple[str, ...] = (
    "openid",
    "offline_access",
    "user_data",
    "vehicle_device_data",
    "vehicle_cmds",
    "vehicle_charging_cmds",
    "energy_device_data",
    "energy_cmds",
)
OPERATION_MODES = ("self_consumption", "autonomous", "backup")


@dataclass(frozen=True)
class SiteWrite:
    """An accepted settings write on a simulated site."""

    t: datetime
    setting: str
    """``backup_reserve_percent`` or ``default_real_mode``."""
    value: Any
    client: str | None = None
    """The address the write came from (which host of a failover pair wrote it)."""


@dataclass
class SimulatedEnergySite:
    """A Powerwall site. Power in W (battery + = discharging, grid + = importing).

    ``percentage_charged`` is on the app's scale, as the cloud reports it.
    A house model may mutate the power and charge fields at any time.
    """

    site_id: int = 1689251431
    site_name: str = "Home"
    percentage_charged: float = 80.0
    battery_power_w: float = 0.0
    load_power_w: float = 1200.0
    solar_power_w: float = 0.0
    grid_power_w: float = 1200.0
    generator_power_w: float = 0.0
    backup_reserve_percent: int = 20
    operation_mode: str = "self_consumption"
    grid_status: str = "Active"
    nameplate_energy_wh: float = 13500.0
    nameplate_power_w: float = 5000.0
    battery_count: int = 1
    installation_time_zone: str = "America/Los_Angeles"
    storm_mode_enabled: bool = False
    firmware_version: str = "25.18.4"
    reserve_rule_80_or_100: bool = True
    """Firmware 25.18.4 and later accept a reserve of 0-80 or exactly 100 only."""
    writes: list[SiteWrite] = field(default_factory=list)

    def reserve_refusal(self, percent: Any) -> str | None:
        """Why Tesla would refuse this reserve, or None if it accepts it."""
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            return "backup_reserve_percent must be a number"
        if percent != int(percent) or not 0 <= percent <= 100:
            return "backup_reserve_percent must be an integer between 0 and 100"
        if self.reserve_rule_80_or_100 and 80 < percent < 100:
            return "backup_reserve_percent must be between 0 and 80, or 100"
        return None


@dataclass
class SimulatedVehicle:
    vin: str = "5YJ3E1EA7KF000001"
    id: int = 1492931365001
    vehicle_id: int = 1234567001
    display_name: str | None = "Car"
    state: str = "online"
    """``online``, ``asleep`` or ``offline``."""
    battery_level: int = 55
    charge_limit_soc: int = 80
    charge_limit_soc_min: int = 50
    charge_limit_soc_max: int = 100
    charging_state: str = "Stopped"
    """``Charging``, ``Stopped``, ``Complete`` or ``Disconnected``."""
    charge_amps: int = 32
    """The charging current asked for (``charge_current_request``)."""
    charge_current_request_max: int = 32
    """The most the car and its charger allow; ``set_charging_amps`` above it is refused."""
    charger_voltage: int = 240
    climate_on: bool = False
    inside_temp_c: float = 24.5
    outside_temp_c: float = 19.0
    latitude: float = 37.4925
    longitude: float = -121.9447
    odometer_miles: float = 12345.6
    shift_state: str | None = None
    """``P``, ``D``, ``R``, ``N``; None (as Tesla sends it) while parked and asleep."""
    speed_mph: int | None = None
    commands: list[tuple[datetime, str, bool, str]] = field(default_factory=list)
    """(time, command, result, reason) of every command that reached the car."""
    command_parameters: list[dict[str, Any]] = field(default_factory=list)
    """The parameters of each command in :attr:`commands`, in the same order."""
    wakes: int = 0
    command_signing_required: bool = True
    """Model 3/Y and S/X from 2021 on: REST commands answer 403 (pre-2021 S/X: False)."""
    virtual_keys: list[bytes] = field(default_factory=list)
    """Public keys (uncompressed P-256 points) enrolled on the car's keychain."""
    signed_commands: int = 0
    """Commands that reached the car signed (through the command proxy)."""
    sleep_after: timedelta | None = timedelta(minutes=15)
    """Inactivity after which an online car that is not charging falls asleep (None: never)."""
    naps: int = 0
    """How often the car fell asleep by itself."""
    wake_seconds: float = 20.0
    """How long a woken car takes to come online (Tesla: 10-60 s)."""
    _idle_since: datetime | None = field(default=None, repr=False)
    _online_at: datetime | None = field(default=None, repr=False)
    _counters: dict[bytes, int] = field(default_factory=dict, repr=False)

    @property
    def plugged_in(self) -> bool:
        return self.charging_state != "Disconnected"

    @property
    def charger_power_kw(self) -> float:
        if self.charging_state != "Charging":
            return 0.0
        return round(self.charge_amps * self.charger_voltage / 1000, 1)

    def settle(self, now: datetime) -> None:
        """Come online after a wake; fall asleep after ``sleep_after`` idle and not charging."""
        if self._online_at is not None and now >= self._online_at:
            self._online_at = None
            if self.state == "asleep":
                self.state = "online"
            self.active(now)
        if self.state != "online" or self.charging_state == "Charging":
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
        elif self.sleep_after is not None and now - self._idle_since >= self.sleep_after:
            self.state = "asleep"
            self._idle_since = None
            self.naps += 1

    def active(self, now: datetime) -> None:
        """Something kept the car awake (a data request, a command, a wake)."""
        self._idle_since = now if self.state == "online" else None


@dataclass(frozen=True)
class ApiCall:
    """One Fleet API request as the simulator saw it."""

    t: datetime
    method: str
    path: str
    endpoint: str
    status: int
    vin: str | None
    site_id: int | None
    vehicle_state: str | None
    """The car's state when the call arrived (before any wake)."""
    token_serial: int | None
    """Which issued access token was presented (1 = first issued), if valid."""


@dataclass(frozen=True)
class OAuthEvent:
    t: datetime
    kind: str
    """``issued`` (issue_tokens), ``refreshed``, ``rejected`` or ``failed`` (injected)."""
    detail: str
    access_serial: int | None = None
    refresh_token: str | None = None
    """The refresh token issued by this event (tests compare it with files)."""


@dataclass
class RateLimitRule:
    """At most ``limit`` requests per ``window`` seconds per device (or account).

    A ``limit`` of 0 refuses every matching request (an account that is throttled
    from the start).

    ``endpoint`` None applies to every Fleet endpoint. ``retry_after`` fixes the
    Retry-After value (a number of seconds, or the header's text as sent, such as
    ``"1e309"`` or an HTTP date); by default it is the time until the window resets.
    """

    limit: int
    window: float
    endpoint: str | None = None
    retry_after: float | str | None = None
    per_device: bool = True
    _hits: dict[str, list[datetime]] = field(default_factory=dict, repr=False)


@dataclass
class _AccessGrant:
    serial: int
    expires_at: datetime
    scopes: tuple[str, ...]
    refresh_token: str
    used: bool = False


@dataclass
class _RefreshGrant:
    login: int
    issued_at: datetime
    expires_at: datetime
    scopes: tuple[str, ...]
    current: bool = True


class TeslaCloudSimulator:
    """State and controls of a running simulator (see :func:`tesla_cloud_simulator`)."""

    def __init__(
        self,
        *,
        sites: Sequence[SimulatedEnergySite],
        vehicles: Sequence[SimulatedVehicle],
        clock: Clock,
        client_id: str,
        region: str,
        access_token_lifetime: float,
        refresh_token_lifetime: timedelta,
    ) -> None:
        self.sites: dict[int, SimulatedEnergySite] = {s.site_id: s for s in sites}
        self.vehicles: dict[str, SimulatedVehicle] = {v.vin: v for v in vehicles}
        self.clock = clock
        self.client_id = client_id
        self.region = region
        self.access_token_lifetime = access_token_lifetime
        self.refresh_token_lifetime = refresh_token_lifetime
        self.region_base_url: str | None = None
        """What ``/api/1/users/region`` answers; None means this simulator's own URL."""
        self.registered_in_region = True
        """False answers 412 to every Fleet call, as for an unregistered application."""
        self.calls: list[ApiCall] = []
        self.oauth_events: list[OAuthEvent] = []
        self.rate_limits: list[RateLimitRule] = []
        self.first_use_hooks: list[Callable[[str, str], None]] = []
        """Called with (access token, refresh token issued with it) when a newly
        issued access token is first presented; lets a test look at a client's
        state exactly at that moment."""
        self.random_failure_rate = 0.0
        self._random = random.Random(7)
        self._injected: list[tuple[int, str | None]] = []
        self._lost_answers: list[
            tuple[int | Literal["truncated", "reset"] | dict[str, Any], str | None]
        ] = []
        self._oauth_injected: list[int] = []
        self._access: dict[str, _AccessGrant] = {}
        self._refresh: dict[str, _RefreshGrant] = {}
        self._serial = 0
        self._logins = 0
        self.base_url = ""
        self.token_url = ""

    # ------------------------------------------------------------ controls

    def issue_tokens(
        self, scopes: Sequence[str] = ALL_SCOPES, *, access_lifetime: float | None = None
    ) -> tuple[str, str]:
        """A new login, as after the authorization-code flow: (access, refresh)."""
        self._logins += 1
        access, refresh = self._issue(self._logins, tuple(scopes), access_lifetime)
        self.oauth_events.append(
            OAuthEvent(
                self.clock.now(),
                "issued",
                "login",
                self._access[access].serial,
                refresh_token=refresh,
            )
        )
        return access, refresh

    def issue_owner_api_tokens(self) -> tuple[str, str]:
        """What TeslaMate gets by default (client ``ownerapi`` at auth.tesla.com).

        Owner-API tokens, with that audience and issuer; the Fleet API does not accept
        them (this simulator answers 401 invalid_token, as for any token it did not issue).
        """
        now = self.clock.now()
        access = _jwt(
            {
                "iss": "https://auth.tesla.com/oauth2/v3",
                "aud": [
                    "https://owner-api.teslamotors.com/",
                    "https://auth.tesla.com/oauth2/v3/userinfo",
                ],
                "azp": "ownerapi",
                "sub": f"sim-owner-{secrets.token_hex(4)}",
                "scp": ["openid", "email", "offline_access"],
                "amr": ["pwd"],
                "iat": int(now.timestamp()),
                "exp": int((now + timedelta(hours=8)).timestamp()),
            }
        )
        return access, secrets.token_hex(32)

    def expire_access_tokens(self) -> None:
        """Make every issued access token expired now."""
        past = self.clock.now() - timedelta(seconds=1)
        for grant in self._access.values():
            grant.expires_at = past

    def inject_failures(
        self, count: int = 1, *, status: int = 503, endpoint: str | None = None
    ) -> None:
        """The next ``count`` matching Fleet calls answer ``status``."""
        self._injected.extend([(status, endpoint)] * count)

    def lose_answers(
        self,
        count: int = 1,
        *,
        endpoint: str | None = None,
        answer: int | Literal["truncated", "reset"] | dict[str, Any] = 502,
    ) -> None:
        """The next ``count`` matching Fleet calls are carried out, then their answer is
        lost: replaced by HTTP ``answer`` (a gateway error in front of Tesla), with
        ``"truncated"`` a 200 whose body breaks off, with ``"reset"`` a connection closed
        without an answer, or with a dict a 200 with that JSON
        (an answer of the wrong shape, e.g. ``{"response": None}``). A write has been
        applied."""
        self._lost_answers.extend([(answer, endpoint)] * count)

    def inject_oauth_failures(self, count: int = 1, *, status: int = 503) -> None:
        """The next ``count`` token requests answer ``status`` without touching any token."""
        self._oauth_injected.extend([status] * count)

    def add_rate_limit(
        self,
        limit: int,
        window: float,
        *,
        endpoint: str | None = None,
        retry_after: float | str | None = None,
        per_device: bool = True,
    ) -> RateLimitRule:
        if limit < 0 or window <= 0:
            raise ValueError("a rate limit needs limit >= 0 and a positive window")
        rule = RateLimitRule(limit, window, endpoint, retry_after, per_device)
        self.rate_limits.append(rule)
        return rule

    def calls_to(self, endpoint: str, *, vin: str | None = None) -> list[ApiCall]:
        return [c for c in self.calls if c.endpoint == endpoint and (vin is None or c.vin == vin)]

    # ------------------------------------------------------------ tokens

    def _issue(
        self, login: int, scopes: tuple[str, ...], lifetime: float | None
    ) -> tuple[str, str]:
        now = self.clock.now()
        self._serial += 1
        lifetime = self.access_token_lifetime if lifetime is None else lifetime
        expires = now + timedelta(seconds=lifetime)
        access = _jwt(
            {
                "iss": "https://fleet-auth.prd.vn.cloud.tesla.com/oauth2/v3/nts",
                "aud": [self.base_url],
                "sub": f"sim-user-{login}",
                "scp": list(scopes),
                "ou_code": self.region.upper(),
                "iat": int(now.timestamp()),
                "exp": int(expires.timestamp()),
                "jti": secrets.token_hex(8),
            }
        )
        refresh = f"{self.region.upper()}_{secrets.token_hex(32)}"
        for grant in self._refresh.values():
            if grant.login == login:
                grant.current = False
        self._refresh[refresh] = _RefreshGrant(
            login, now, now + self.refresh_token_lifetime, scopes
        )
        self._access[access] = _AccessGrant(self._serial, expires, scopes, refresh)
        return access, refresh

    async def _token_endpoint(self, request: web.Request) -> web.Response:
        form = await request.post()
        now = self.clock.now()
        if self._oauth_injected:
            status = self._oauth_injected.pop(0)
            self.oauth_events.append(OAuthEvent(now, "failed", f"injected HTTP {status}"))
            return _oauth_error(status, "server_error", "injected failure")
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", "only refresh_token is simulated")
        if form.get("client_id") != self.client_id:
            return _oauth_error(401, "invalid_client", "unknown client_id")
        presented = str(form.get("refresh_token", ""))
        grant = self._refresh.get(presented)
        if grant is None or not grant.current or grant.expires_at <= now:
            why = "unknown" if grant is None else "reused" if not grant.current else "expired"
            self.oauth_events.append(OAuthEvent(now, "rejected", why))
            return _oauth_error(401, "login_required", "The refresh_token is expired.")
        access, refresh = self._issue(grant.login, grant.scopes, None)
        self.oauth_events.append(
            OAuthEvent(now, "refreshed", "ok", self._access[access].serial, refresh_token=refresh)
        )
        return web.json_response(
            {
                "access_token": access,
                "refresh_token": refresh,
                "id_token": _jwt({"sub": f"sim-user-{grant.login}"}),
                "expires_in": int(self.access_token_lifetime),
                "token_type": "Bearer",
            }
        )

    # ------------------------------------------------------------ fleet plumbing

    @web.middleware
    async def _fleet(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if not request.path.startswith("/api/1/"):
            response: web.StreamResponse = await handler(request)
            return response
        # Commands are recorded by name (charge_start, ...), other calls by route.
        endpoint = request.match_info.get("command") or request.match_info.route.name or "unknown"
        for car in self.vehicles.values():
            car.settle(self.clock.now())
        vin, site_id, state = self._subject(request)
        grant = self._grant(request)
        response = await self._answer(request, handler, endpoint, vin, site_id, grant)
        self.calls.append(
            ApiCall(
                self.clock.now(),
                request.method,
                request.path,
                endpoint,
                response.status,
                vin,
                site_id,
                state,
                grant.serial if grant else None,
            )
        )
        return response

    def _subject(self, request: web.Request) -> tuple[str | None, int | None, str | None]:
        key = request.match_info.get("vehicle")
        car = self._vehicle(key) if key else None
        site = request.match_info.get("site")
        site_id = int(site) if site and site.isdigit() else None
        return (car.vin if car else key), site_id, (car.state if car else None)

    def _grant(self, request: web.Request) -> _AccessGrant | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        grant = self._access.get(header[len("Bearer ") :])
        if grant is None or grant.expires_at <= self.clock.now():
            return None
        return grant

    async def _answer(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
        endpoint: str,
        vin: str | None,
        site_id: int | None,
        grant: _AccessGrant | None,
    ) -> web.StreamResponse:
        for index, (status, only) in enumerate(self._injected):
            if only is None or only == endpoint:
                del self._injected[index]
                return _fleet_error(status, "internal_error", "injected failure")
        if self.random_failure_rate and self._random.random() < self.random_failure_rate:
            return _fleet_error(503, "service_unavailable", "random injected failure")
        if grant is None:
            return _fleet_error(401, "invalid_token", "token expired or invalid (401)")
        self._note_first_use(request, grant)
        if not self.registered_in_region:
            return _fleet_error(
                412,
                "precondition_failed",
                "Account must be registered in the current region (partner_accounts)",
            )
        needed = _SCOPES_NEEDED.get(endpoint)
        if needed and not set(needed) & set(grant.scopes):
            return _fleet_error(403, "unauthorized_missing_scopes", f"needs {' or '.join(needed)}")
        device = vin or (f"site:{site_id}" if site_id is not None else "account")
        limited = self._rate_limit(endpoint, device)
        if limited is not None:
            return limited
        response: web.StreamResponse = await handler(request)
        for index, (answer, only) in enumerate(self._lost_answers):
            if only is None or only == endpoint:
                del self._lost_answers[index]
                if answer == "reset":
                    if request.transport is not None:
                        request.transport.abort()  # the connection drops: no answer at all
                    return web.Response(status=200)
                if answer == "truncated":
                    return web.Response(
                        status=200, body=b'{"response": {"code": 2', content_type="application/json"
                    )
                if isinstance(answer, dict):
                    return web.json_response(answer)
                return _fleet_error(answer, "bad_gateway", "upstream answer lost (injected)")
        return response

    def _note_first_use(self, request: web.Request, grant: _AccessGrant) -> None:
        if grant.used:
            return
        grant.used = True
        token = request.headers["Authorization"][len("Bearer ") :]
        for hook in list(self.first_use_hooks):
            hook(token, grant.refresh_token)

    def _rate_limit(self, endpoint: str, device: str) -> web.Response | None:
        now = self.clock.now()
        for rule in self.rate_limits:
            if rule.endpoint is not None and rule.endpoint != endpoint:
                continue
            key = device if rule.per_device else "account"
            window = timedelta(seconds=rule.window)
            hits = [t for t in rule._hits.get(key, []) if now - t < window]
            rule._hits[key] = hits
            if len(hits) >= rule.limit:
                # With no request in the window (a limit of 0 refuses everything) the
                # window is taken to start now.
                opened = hits[0] if hits else now
                reset = math.ceil((opened + window - now).total_seconds())
                retry = rule.retry_after if rule.retry_after is not None else reset
                header = retry if isinstance(retry, str) else str(math.ceil(retry))
                response = _fleet_error(429, "rate_limit_exceeded", f"Retry in {header} seconds")
                response.headers["RateLimit-Limit"] = str(rule.limit)
                response.headers["RateLimit-Remaining"] = "0"
                response.headers["RateLimit-Reset"] = str(reset)
                response.headers["Retry-After"] = header
                return response
            hits.append(now)
        return None

    def _vehicle(self, key: str) -> SimulatedVehicle | None:
        if key in self.vehicles:
            return self.vehicles[key]
        for car in self.vehicles.values():
            if str(car.id) == key:
                return car
        return None

    def _car_or_error(self, request: web.Request) -> SimulatedVehicle | web.Response:
        car = self._vehicle(request.match_info["vehicle"])
        if car is None:
            return _fleet_error(404, "not_found", "vehicle not found")
        if car.state != "online":
            return _fleet_error(408, "vehicle unavailable: vehicle is offline or asleep", "")
        return car

    def _site_or_error(self, request: web.Request) -> SimulatedEnergySite | web.Response:
        site = self.sites.get(int(request.match_info["site"]))
        if site is None:
            return _fleet_error(404, "not_found", "energy site not found")
        return site

    # ------------------------------------------------------------ fleet endpoints

    async def _region(self, request: web.Request) -> web.Response:
        return _ok(
            {"region": self.region, "fleet_api_base_url": self.region_base_url or self.base_url}
        )

    async def _vehicles(self, request: web.Request) -> web.Response:
        cars = [_listing(car) for car in self.vehicles.values()]
        return web.json_response({"response": cars, "pagination": None, "count": len(cars)})

    async def _vehicle_endpoint(self, request: web.Request) -> web.Response:
        car = self._vehicle(request.match_info["vehicle"])
        if car is None:
            return _fleet_error(404, "not_found", "vehicle not found")
        return _ok(_listing(car))

    async def _vehicle_data(self, request: web.Request) -> web.Response:
        car = self._car_or_error(request)
        if isinstance(car, web.Response):
            return car
        wanted = request.query.get("endpoints", "")
        parts = [p for p in wanted.replace(",", ";").split(";") if p] or list(_CAR_SECTIONS)
        car.active(self.clock.now())  # a data request resets the inactivity timer
        body = _listing(car)
        now = int(self.clock.now().timestamp() * 1000)
        for part in parts:
            section = _CAR_SECTIONS.get(part)
            if section is not None:
                body[part] = {**section(car), "timestamp": now}
        return _ok(body)

    async def _wake_up(self, request: web.Request) -> web.Response:
        car = self._vehicle(request.match_info["vehicle"])
        if car is None:
            return _fleet_error(404, "not_found", "vehicle not found")
        car.wakes += 1
        answer = _listing(car)  # Tesla answers with the state before the car is up
        now = self.clock.now()
        if car.state == "asleep" and car._online_at is None:
            car._online_at = now + timedelta(seconds=car.wake_seconds)
            car.settle(now)
        car.active(now)
        return _ok(answer)

    async def _command(self, request: web.Request) -> web.Response:
        listed = self._vehicle(request.match_info["vehicle"])
        if listed is not None and listed.command_signing_required:
            return _fleet_error(403, PROTOCOL_REQUIRED, "")
        car = self._car_or_error(request)
        if isinstance(car, web.Response):
            return car
        name = request.match_info["command"]
        if name not in VEHICLE_COMMANDS:
            return _fleet_error(400, "invalid_command", f"{name} is not simulated")
        body = await _json_body(request)
        parameters = body if isinstance(body, dict) else {}
        missing = command_parameter_fault(name, parameters)
        if missing is not None:
            return _fleet_error(400, "invalid_field", missing)
        result, reason = self._execute(car, name, parameters)
        return _ok({"result": result, "reason": reason})

    def _execute(
        self, car: SimulatedVehicle, name: str, parameters: dict[str, Any]
    ) -> tuple[bool, str]:
        result, reason = VEHICLE_COMMANDS[name](car, parameters)
        car.commands.append((self.clock.now(), name, result, reason))
        car.command_parameters.append(dict(parameters))
        car.active(self.clock.now())
        return result, reason

    async def _signed_command(self, request: web.Request) -> web.Response:
        """A signed message for the car (the routable message is the proxy stand-in's format)."""
        car = self._vehicle(request.match_info["vehicle"])
        if car is None:
            return _fleet_error(404, "not_found", "vehicle not found")
        if not car.command_signing_required:
            return _fleet_error(422, "vehicle does not support the Vehicle Command Protocol", "")
        if car.state != "online":
            return _fleet_error(408, "vehicle unavailable: vehicle is offline or asleep", "")
        body = await _json_body(request)
        try:
            envelope = json.loads(base64.b64decode(body["routable_message"]))
            public_key = base64.b64decode(envelope["public_key"])
            payload = base64.b64decode(envelope["payload"])
            signature = base64.b64decode(envelope["signature"])
            message = json.loads(payload)
        except (KeyError, TypeError, ValueError):
            return _fleet_error(400, "invalid_field", "routable_message is not a signed message")
        fault = self._check_signature(car, public_key, payload, signature, message)
        if fault is not None:
            return _ok(_car_answer({"fault": fault}))
        name = str(message.get("command"))
        if name not in VEHICLE_COMMANDS:
            return _ok(_car_answer({"result": False, "reason": f"{name} is not simulated"}))
        needed = _SCOPES_NEEDED.get(name)
        grant = self._grant(request)
        if needed and grant is not None and not set(needed) & set(grant.scopes):
            return _fleet_error(403, "unauthorized_missing_scopes", f"needs {' or '.join(needed)}")
        parameters = message.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        car.signed_commands += 1
        result, reason = self._execute(car, name, parameters)
        return _ok(_car_answer({"result": result, "reason": reason}))

    def _check_signature(
        self,
        car: SimulatedVehicle,
        public_key: bytes,
        payload: bytes,
        signature: bytes,
        message: dict[str, Any],
    ) -> str | None:
        """The car's fault for this message, or None when it accepts it."""
        if public_key not in car.virtual_keys:
            return "ERROR_UNKNOWN_KEY_ID"
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
        try:
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return "ERROR_INVALID_SIGNATURE"
        if message.get("vin") != car.vin:
            return "ERROR_INCORRECT_EPOCH"
        counter = int(message.get("counter", 0))
        if counter <= car._counters.get(public_key, 0):
            return "ERROR_INVALID_TOKEN_OR_COUNTER"
        car._counters[public_key] = counter
        return None

    async def _products(self, request: web.Request) -> web.Response:
        products: list[dict[str, Any]] = [_listing(car) for car in self.vehicles.values()]
        for site in self.sites.values():
            products.append(
                {
                    "energy_site_id": site.site_id,
                    "resource_type": "battery",
                    "site_name": site.site_name,
                    "id": f"STE{site.site_id}",
                    "gateway_id": f"GW{site.site_id}",
                    "energy_left": _energy_left(site),
                    "total_pack_energy": site.nameplate_energy_wh,
                    "percentage_charged": site.percentage_charged,
                    "battery_type": "ac_powerwall",
                    "backup_capable": True,
                    "battery_power": site.battery_power_w,
                    "components": {"battery": True, "solar": True, "grid": True},
                }
            )
        return web.json_response({"response": products, "count": len(products)})

    async def _site_info(self, request: web.Request) -> web.Response:
        site = self._site_or_error(request)
        if isinstance(site, web.Response):
            return site
        return _ok(
            {
                "id": f"STE{site.site_id}",
                "site_name": site.site_name,
                "backup_reserve_percent": site.backup_reserve_percent,
                "default_real_mode": site.operation_mode,
                "installation_date": "2023-05-01T10:00:00-07:00",
                "installation_time_zone": site.installation_time_zone,
                "user_settings": {"storm_mode_enabled": site.storm_mode_enabled},
                "components": {
                    "solar": True,
                    "battery": True,
                    "grid": True,
                    "backup": True,
                    "gateway": "teg",
                    "tou_capable": True,
                    "storm_mode_capable": True,
                    "off_grid_vehicle_charging_reserve_supported": True,
                    "edit_setting_grid_charging": True,
                    "edit_setting_energy_exports": True,
                    "backup_time_remaining_enabled": True,
                    "battery_type": "ac_powerwall",
                },
                "version": site.firmware_version,
                "battery_count": site.battery_count,
                "nameplate_power": site.nameplate_power_w,
                "nameplate_energy": site.nameplate_energy_wh,
                "off_grid_vehicle_charging_reserve_percent": 0,
            }
        )

    async def _live_status(self, request: web.Request) -> web.Response:
        site = self._site_or_error(request)
        if isinstance(site, web.Response):
            return site
        return _ok(
            {
                "solar_power": site.solar_power_w,
                "energy_left": _energy_left(site),
                "total_pack_energy": site.nameplate_energy_wh,
                "percentage_charged": site.percentage_charged,
                "backup_capable": True,
                "battery_power": site.battery_power_w,
                "load_power": site.load_power_w,
                "grid_status": site.grid_status,
                "grid_services_active": False,
                "grid_power": site.grid_power_w,
                "grid_services_power": 0,
                "generator_power": site.generator_power_w,
                "island_status": "on_grid" if site.grid_status == "Active" else "off_grid",
                "storm_mode_active": False,
                "timestamp": self.clock.now().isoformat(timespec="seconds"),
                "wall_connectors": [],
            }
        )

    async def _backup(self, request: web.Request) -> web.Response:
        site = self._site_or_error(request)
        if isinstance(site, web.Response):
            return site
        body = await _json_body(request)
        if not isinstance(body, dict) or "backup_reserve_percent" not in body:
            return _fleet_error(400, "invalid_field", "backup_reserve_percent is required")
        percent = body["backup_reserve_percent"]
        refusal = site.reserve_refusal(percent)
        if refusal is not None:
            return _fleet_error(400, "invalid_field", refusal)
        site.backup_reserve_percent = int(percent)
        site.writes.append(
            SiteWrite(self.clock.now(), "backup_reserve_percent", int(percent), request.remote)
        )
        return _ok({"code": 201, "message": "Updated"})

    async def _operation(self, request: web.Request) -> web.Response:
        site = self._site_or_error(request)
        if isinstance(site, web.Response):
            return site
        body = await _json_body(request)
        mode = body.get("default_real_mode") if isinstance(body, dict) else None
        if mode not in OPERATION_MODES:
            return _fleet_error(
                400, "invalid_field", f"default_real_mode must be one of {OPERATION_MODES}"
            )
        site.operation_mode = str(mode)
        site.writes.append(SiteWrite(self.clock.now(), "default_real_mode", mode, request.remote))
        return _ok({"code": 201, "message": "Updated"})

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._fleet])
        app.router.add_post("/oauth2/v3/token", self._token_endpoint)
        routes = [
            ("GET", "/api/1/users/region", self._region, "users_region"),
            ("GET", "/api/1/vehicles", self._vehicles, "vehicles"),
            ("GET", "/api/1/vehicles/{vehicle}", self._vehicle_endpoint, "vehicle"),
            ("GET", "/api/1/vehicles/{vehicle}/vehicle_data", self._vehicle_data, "vehicle_data"),
            ("POST", "/api/1/vehicles/{vehicle}/wake_up", self._wake_up, "wake_up"),
            ("POST", "/api/1/vehicles/{vehicle}/command/{command}", self._command, "command"),
            (
                "POST",
                "/api/1/vehicles/{vehicle}/signed_command",
                self._signed_command,
                "signed_command",
            ),
            ("GET", "/api/1/products", self._products, "products"),
            ("GET", "/api/1/energy_sites/{site}/site_info", self._site_info, "site_info"),
            ("GET", "/api/1/energy_sites/{site}/live_status", self._live_status, "live_status"),
            ("POST", "/api/1/energy_sites/{site}/backup", self._backup, "backup"),
            ("POST", "/api/1/energy_sites/{site}/operation", self._operation, "operation"),
        ]
        for method, path, handler, name in routes:
            app.router.add_route(method, path, handler, name=name)
        return app


PROTOCOL_REQUIRED = (
    "Tesla Vehicle Command Protocol required, please refer to the documentation here: "
    "https://developer.tesla.com/docs/fleet-api#2023-10-09-rest-api-vehicle-commands-"
    "endpoint-deprecation-warning"
)
"""The 403 ``error`` for an unsigned command to a car that needs signing, verbatim."""

_CHARGING_SCOPES = ("vehicle_cmds", "vehicle_charging_cmds")
_SCOPES_NEEDED: dict[str, tuple[str, ...]] = {
    "vehicle_data": ("vehicle_device_data",),
    "wake_up": ("vehicle_cmds",),
    "charge_start": _CHARGING_SCOPES,
    "charge_stop": _CHARGING_SCOPES,
    "set_charge_limit": _CHARGING_SCOPES,
    "set_charging_amps": _CHARGING_SCOPES,
    # Climate is not a charging command: vehicle_charging_cmds alone does not cover it.
    "auto_conditioning_start": ("vehicle_cmds",),
    "auto_conditioning_stop": ("vehicle_cmds",),
    "signed_command": _CHARGING_SCOPES,
    "site_info": ("energy_device_data",),
    "live_status": ("energy_device_data",),
    "backup": ("energy_cmds",),
    "operation": ("energy_cmds",),
}


# ---------------------------------------------------------------- the car's commands


def _charge_start(car: SimulatedVehicle, _parameters: dict[str, Any]) -> tuple[bool, str]:
    if not car.plugged_in:
        return False, "disconnected"
    if car.charging_state == "Charging":
        return False, "is_charging"
    if car.battery_level >= car.charge_limit_soc:
        car.charging_state = "Complete"
        return False, "complete"
    car.charging_state = "Charging"
    return True, ""


def _charge_stop(car: SimulatedVehicle, _parameters: dict[str, Any]) -> tuple[bool, str]:
    if car.charging_state != "Charging":
        return False, "not_charging"
    car.charging_state = "Stopped"
    return True, ""


def _set_charge_limit(car: SimulatedVehicle, parameters: dict[str, Any]) -> tuple[bool, str]:
    percent = int(parameters["percent"])
    if not car.charge_limit_soc_min <= percent <= car.charge_limit_soc_max:
        return False, "invalid_charge_limit"
    if percent == car.charge_limit_soc:
        return False, "already_set"
    car.charge_limit_soc = percent
    if car.charging_state == "Charging" and car.battery_level >= percent:
        car.charging_state = "Complete"  # the new limit is reached: charging ends
    return True, ""


def _set_charging_amps(car: SimulatedVehicle, parameters: dict[str, Any]) -> tuple[bool, str]:
    amps = int(parameters["charging_amps"])
    if not 1 <= amps <= car.charge_current_request_max:
        return False, "invalid_charging_amps"
    car.charge_amps = amps
    return True, ""


def _climate(on: bool) -> Callable[[SimulatedVehicle, dict[str, Any]], tuple[bool, str]]:
    def command(car: SimulatedVehicle, _parameters: dict[str, Any]) -> tuple[bool, str]:
        car.climate_on = on
        return True, ""

    return command


VEHICLE_COMMANDS: dict[str, Callable[[SimulatedVehicle, dict[str, Any]], tuple[bool, str]]] = {
    "charge_start": _charge_start,
    "charge_stop": _charge_stop,
    "set_charge_limit": _set_charge_limit,
    "set_charging_amps": _set_charging_amps,
    "auto_conditioning_start": _climate(True),
    "auto_conditioning_stop": _climate(False),
}
"""The commands the simulated cars carry out: (car, parameters) -> (result, reason)."""

COMMAND_PARAMETERS: dict[str, str] = {
    "set_charge_limit": "percent",
    "set_charging_amps": "charging_amps",
}
"""The number each command needs in its body."""


def command_parameter_fault(name: str, parameters: dict[str, Any]) -> str | None:
    """Why a command's parameters are unusable (missing or not a number), or None."""
    key = COMMAND_PARAMETERS.get(name)
    if key is None:
        return None
    if key not in parameters:
        return f"missing {key} param"
    value = parameters[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"invalid {key} param"
    return None


# ---------------------------------------------------------------- the car's data


def _charge_state(car: SimulatedVehicle) -> dict[str, Any]:
    return {
        "battery_level": car.battery_level,
        "usable_battery_level": car.battery_level,
        "charge_limit_soc": car.charge_limit_soc,
        "charge_limit_soc_min": car.charge_limit_soc_min,
        "charge_limit_soc_max": car.charge_limit_soc_max,
        "charging_state": car.charging_state,
        "charge_port_door_open": car.plugged_in,
        "conn_charge_cable": "SAE" if car.plugged_in else "<invalid>",
        "charger_power": car.charger_power_kw,
        "charger_actual_current": car.charge_amps if car.charging_state == "Charging" else 0,
        "charger_voltage": car.charger_voltage if car.plugged_in else 0,
        "charge_amps": car.charge_amps,
        "charge_current_request": car.charge_amps,
        "charge_current_request_max": car.charge_current_request_max,
        "battery_range": round(car.battery_level * 3.1, 2),
    }


def _climate_state(car: SimulatedVehicle) -> dict[str, Any]:
    return {
        "is_climate_on": car.climate_on,
        "inside_temp": car.inside_temp_c,
        "outside_temp": car.outside_temp_c,
    }


def _drive_state(car: SimulatedVehicle) -> dict[str, Any]:
    return {
        "latitude": car.latitude,
        "longitude": car.longitude,
        "heading": 0,
        "shift_state": car.shift_state,
        "speed": car.speed_mph,
        "power": -car.charger_power_kw,
    }


def _vehicle_state(car: SimulatedVehicle) -> dict[str, Any]:
    return {"odometer": car.odometer_miles, "locked": True, "vehicle_name": car.display_name}


_CAR_SECTIONS: dict[str, Callable[[SimulatedVehicle], dict[str, Any]]] = {
    "charge_state": _charge_state,
    "climate_state": _climate_state,
    "drive_state": _drive_state,
    "location_data": _drive_state,
    "vehicle_state": _vehicle_state,
}


def _listing(car: SimulatedVehicle) -> dict[str, Any]:
    return {
        "id": car.id,
        "vehicle_id": car.vehicle_id,
        "vin": car.vin,
        "display_name": car.display_name,
        "state": car.state,
        "in_service": False,
        "id_s": str(car.id),
        "calendar_enabled": True,
        "api_version": 81,
        "access_type": "OWNER",
    }


def _energy_left(site: SimulatedEnergySite) -> float:
    return round(site.nameplate_energy_wh * site.percentage_charged / 100, 1)


def _car_answer(answer: dict[str, Any]) -> str:
    """What the car sends back through ``signed_command``: an opaque base64 message."""
    return base64.b64encode(json.dumps(answer).encode()).decode()


def _ok(response: Any) -> web.Response:
    return web.json_response({"response": response})


def _fleet_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"response": None, "error": error, "error_description": description}, status=status
    )


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signature = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{signature}"


@asynccontextmanager
async def tesla_cloud_simulator(
    sites: Sequence[SimulatedEnergySite] = (),
    vehicles: Sequence[SimulatedVehicle] = (),
    *,
    clock: Clock | None = None,
    client_id: str = "gridmate-sim-client",
    region: str = "na",
    access_token_lifetime: float = 8 * 3600,
    refresh_token_lifetime: timedelta = timedelta(days=90),
) -> AsyncIterator[TeslaCloudSimulator]:
    """Run the simulator on a free loopback port for the duration of the block."""
    cloud = TeslaCloudSimulator(
        sites=sites,
        vehicles=vehicles,
        clock=clock or SystemClock(),
        client_id=client_id,
        region=region,
        access_token_lifetime=access_token_lifetime,
        refresh_token_lifetime=refresh_token_lifetime,
    )
    async with serve_on_loopback(cloud.application()) as cloud.base_url:
        cloud.token_url = f"{cloud.base_url}/oauth2/v3/token"
        yield cloud
