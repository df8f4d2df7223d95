"""Local Powerwall gateway reads: state of charge and power flows, free and frequent.

The gateway reports the raw state of charge, which includes the 5 % Tesla
hides; :func:`app_from_raw` converts it before it is compared with the reserve.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from gridmate.energy.adapters.common import AdapterError, ApiHealth
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
        self._token = str(response.json()["token"])

    async def _get(self, path: str) -> dict:
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
            return dict(response.json())
        raise AdapterError("gateway refused the session twice")

    async def read(self) -> GatewayReading:
        try:
            soe = await self._get("/api/system_status/soe")
            meters = await self._get("/api/meters/aggregates")
        except (httpx.HTTPError, AdapterError, KeyError, ValueError) as error:
            self.health.failed(f"{type(error).__name__}: {error}")
            raise AdapterError(f"gateway read failed: {error}") from error
        self.health.ok()
        raw = float(soe["percentage"])
        soc = app_from_raw(raw) if self.settings.soc_scale == "raw" else raw

        def kw(name: str) -> float:
            return float(meters[name]["instant_power"]) / 1000.0

        return GatewayReading(soc, kw("load"), kw("solar"), kw("battery"), kw("site"))
