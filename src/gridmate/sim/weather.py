"""Stand-ins for the NWS API (api.weather.gov) and Open-Meteo.

* NWS answers 403 without a User-Agent, as the real service does; ``/points``
  hands out the gridpoint forecast URL; the forecast has 14 day/night periods
  (day 06:00-18:00, night 18:00-06:00) with ``isDaytime`` and ``temperature``
  (°F). As on api.weather.gov the first period is the current one, starting at
  the current hour: "This Afternoon" at 15:00 runs to 18:00, and from 18:00
  on the first period is "Tonight", so today has no daytime period left.
* Open-Meteo's daily variables need ``timezone`` (400 otherwise) and answer
  arrays aligned by index.
* ``nws_down`` makes NWS answer 503 so a client's fallback can be tested.

Daily highs come from ``highs`` (local date → °F) or ``default_high_f``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from aiohttp import web

from gridmate.runtime.clock import Clock, SystemClock
from gridmate.sim.http import serve_on_loopback

__all__ = ["WeatherSimulator", "weather_simulator"]


@dataclass
class WeatherSimulator:
    clock: Clock
    timezone: str
    highs: dict[date, float] = field(default_factory=dict)
    default_high_f: float = 85.0
    nws_down: bool = False
    open_meteo_down: bool = False
    nws_base_url: str = ""
    open_meteo_base_url: str = ""
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    """(service, path, status)."""

    def high(self, day: date) -> float:
        return self.highs.get(day, self.default_high_f)

    def _log(self, service: str, request: web.Request, status: int) -> None:
        self.requests.append((service, request.path_qs, status))

    async def _points(self, request: web.Request) -> web.Response:
        if self.nws_down:
            self._log("nws", request, 503)
            return web.json_response({"title": "Service Unavailable"}, status=503)
        if not request.headers.get("User-Agent"):
            self._log("nws", request, 403)
            return web.json_response(
                {"title": "Forbidden", "detail": "A User-Agent header is required"}, status=403
            )
        self._log("nws", request, 200)
        base = self.nws_base_url
        return web.json_response(
            {
                "properties": {
                    "gridId": "PSR",
                    "gridX": 159,
                    "gridY": 57,
                    "forecast": f"{base}/gridpoints/PSR/159,57/forecast",
                    "forecastHourly": f"{base}/gridpoints/PSR/159,57/forecast/hourly",
                    "timeZone": self.timezone,
                }
            },
            content_type="application/geo+json",
        )

    async def _forecast(self, request: web.Request) -> web.Response:
        if self.nws_down:
            self._log("nws", request, 503)
            return web.json_response({"title": "Service Unavailable"}, status=503)
        if not request.headers.get("User-Agent"):
            self._log("nws", request, 403)
            return web.json_response({"title": "Forbidden"}, status=403)
        now = self.clock.now().astimezone(ZoneInfo(self.timezone))
        periods = [
            _period(number, start, end, now.date(), self.high)
            for number, (start, end) in enumerate(_period_bounds(now), start=1)
        ]
        self._log("nws", request, 200)
        return web.json_response(
            {
                "properties": {
                    "generatedAt": now.isoformat(timespec="seconds"),
                    "updateTime": now.replace(minute=0, second=0, microsecond=0).isoformat(),
                    "periods": periods,
                }
            },
            content_type="application/geo+json",
        )

    async def _open_meteo(self, request: web.Request) -> web.Response:
        if self.open_meteo_down:
            self._log("open_meteo", request, 503)
            return web.json_response({"error": True, "reason": "unavailable"}, status=503)
        query = request.query
        if "daily" in query and "timezone" not in query:
            self._log("open_meteo", request, 400)
            return web.json_response(
                {"error": True, "reason": "Timezone is required for daily variables"}, status=400
            )
        zone = query.get("timezone", "GMT")
        tz = ZoneInfo(self.timezone if zone == "auto" else zone)
        today = self.clock.now().astimezone(tz).date()
        days = int(query.get("forecast_days", "7"))
        fahrenheit = query.get("temperature_unit") == "fahrenheit"
        times, highs = [], []
        for offset in range(days):
            day = today + timedelta(days=offset)
            high = self.high(day)
            times.append(day.isoformat())
            highs.append(round(high if fahrenheit else (high - 32) / 1.8, 1))
        self._log("open_meteo", request, 200)
        return web.json_response(
            {
                "latitude": float(query.get("latitude", "0")),
                "longitude": float(query.get("longitude", "0")),
                "timezone": str(tz),
                "utc_offset_seconds": int(
                    (self.clock.now().astimezone(tz).utcoffset() or timedelta()).total_seconds()
                ),
                "daily_units": {
                    "time": "iso8601",
                    "temperature_2m_max": "°F" if fahrenheit else "°C",
                },
                "daily": {"time": times, "temperature_2m_max": highs},
            }
        )


def _period_bounds(now: datetime) -> list[tuple[datetime, datetime]]:
    """14 periods: the current one from the current hour, then whole days and nights."""
    start = now.replace(minute=0, second=0, microsecond=0)
    bounds = []
    for _ in range(14):
        if 6 <= start.hour < 18:
            end = start.replace(hour=18)
        elif start.hour >= 18:
            end = (start + timedelta(days=1)).replace(hour=6)
        else:
            end = start.replace(hour=6)
        bounds.append((start, end))
        start = end
    return bounds


def _period(
    number: int, start: datetime, end: datetime, today: date, high: Callable[[date], float]
) -> dict[str, object]:
    daytime = 6 <= start.hour < 18
    if daytime:
        name = start.strftime("%A")
        if start.date() == today:
            name = "This Afternoon" if number == 1 and start.hour >= 12 else "Today"
        temperature = high(start.date())
    else:
        night_of = start.date() if start.hour >= 18 else start.date() - timedelta(days=1)
        name = f"{night_of.strftime('%A')} Night"
        if number == 1 and start.hour < 6:
            name = "Overnight"
        elif night_of == today:
            name = "Tonight"
        temperature = high(night_of) - 20
    return {
        "number": number,
        "name": name,
        "startTime": start.isoformat(),
        "endTime": end.isoformat(),
        "isDaytime": daytime,
        "temperature": round(temperature),
        "temperatureUnit": "F",
        "shortForecast": "Sunny" if daytime else "Clear",
    }


@asynccontextmanager
async def weather_simulator(
    *,
    clock: Clock | None = None,
    timezone: str = "America/Phoenix",
    highs: Mapping[date, float] | None = None,
    default_high_f: float = 85.0,
) -> AsyncIterator[WeatherSimulator]:
    sim = WeatherSimulator(
        clock=clock or SystemClock(),
        timezone=timezone,
        highs=dict(highs or {}),
        default_high_f=default_high_f,
    )
    nws = web.Application()
    nws.router.add_get("/points/{where}", sim._points)
    nws.router.add_get("/gridpoints/{office}/{xy}/forecast", sim._forecast)
    meteo = web.Application()
    meteo.router.add_get("/v1/forecast", sim._open_meteo)
    async with serve_on_loopback(nws) as nws_url, serve_on_loopback(meteo) as meteo_url:
        sim.nws_base_url, sim.open_meteo_base_url = nws_url, meteo_url
        yield sim
