"""Local Powerwall gateway reads: state of charge and power flows, free and frequent.

The gateway reports the raw state of charge, which includes the 5 % Tesla
hides; :func:`app_from_raw` converts it before it is compared with the reserve.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from gridmate.energy.adapters.common import AdapterError, ApiHealth, Wire, parse_wire
from gridmate.energy.settings import GatewaySettings
from gridmate.runtime.clock import Clock


def app_from_raw(raw_percent: float) -> float:
    """App-scale % from the gateway's raw % (app = (raw - 5) / 0.95)."""
    return max(0.0, min(100.0, (raw_percent - 5.0) / 0.95))


@dataclass(frozen=True)
class GatewayReading:
    soc_percent: float
    """App scale."""
    load_kw: float
    solar_kw: float
    battery_kw: float
    grid_kw: float


class _Login(Wire):
    token: str


class _StateOfEnergy(Wire):
    """``GET /api/system_status/soe``."""

    percentage: float


class _Meter(Wire):
    instant_power: float


class _Aggregates(Wire):
    """``GET /api/meters/aggregates``: one meter per flow, power in W."""

    site: _Meter
    battery: _Meter
    load: _Meter
    solar: _Meter


class GatewayClient:
    def __init__(self, settings: GatewaySettings, *, clock: Clock) -> None:
        self.settings = settings
        self.health = ApiHealth("powerwall_gateway", clock)
        self._http = httpx.AsyncClient(
            base_url=settings.url.rstrip("/"), verify=settings.verify_tls, timeout=10.0
        )
        self._token: str | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _login(self) -> None:
        if self.settings.password is None:
            raise AdapterError("powerwall.gateway.password_file is not set")
        response = await self._http.post(
            "/api/login/Basic",
            json={
                "username": "customer",
                "password": self.settings.password.reveal(),
                "email": self.settings.email,
                "clientInfo": {"timezone": "UTC"},
            },
        )
        if response.status_code != 200:
            raise AdapterError(
                f"gateway login refused ({response.status_code}); check the password"
            )
        self._token = parse_wire(_Login, response.json(), "the gateway's login").token

    async def _get(self, path: str) -> object:
        for attempt in (1, 2):
            if self._token is None:
                await self._login()
            response = await self._http.get(
                path, headers={"Authorization": f"Bearer {self._token}"}
            )
            if response.status_code in (401, 403) and attempt == 1:
                self._token = None  # the gateway forgets sessions; log in again once
                continue
            response.raise_for_status()
            return response.json()
        raise AdapterError("gateway refused the session twice")

    async def read(self) -> GatewayReading:
        try:
            soe = parse_wire(_StateOfEnergy, await self._get("/api/system_status/soe"),
                             "the gateway's system_status/soe")  # fmt: skip
            meters = parse_wire(_Aggregates, await self._get("/api/meters/aggregates"),
                                "the gateway's meters/aggregates")  # fmt: skip
        except AdapterError as error:
            self.health.failed(str(error))
            raise AdapterError(f"gateway read failed: {error}") from error
        except (httpx.HTTPError, ValueError) as error:
            self.health.failed(f"{type(error).__name__}: {error}")
            raise AdapterError(f"gateway read failed: {error}") from error
        self.health.ok()
        raw = soe.percentage
        soc = app_from_raw(raw) if self.settings.soc_scale == "raw" else raw
        return GatewayReading(
            soc,
            meters.load.instant_power / 1000.0,
            meters.solar.instant_power / 1000.0,
            meters.battery.instant_power / 1000.0,
            meters.site.instant_power / 1000.0,
        )
