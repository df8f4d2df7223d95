"""Today's forecast high: NWS first (US), Open-Meteo as the fallback, cached."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx

from gridmate.energy.adapters.common import ApiHealth
from gridmate.energy.planner import Forecast
from gridmate.energy.settings import WeatherSettings
from gridmate.runtime.clock import Clock
from gridmate.runtime.logs import get_logger

log = get_logger("energy.weather")


class _DaytimeOver(Exception):
    """NWS answered, but its periods start after the day's daytime: nothing left to forecast."""


class WeatherClient:
    def __init__(
        self, settings: WeatherSettings, tz: ZoneInfo, *, http: httpx.AsyncClient, clock: Clock
    ) -> None:
        self.settings = settings
        self.tz = tz
        self.http = http
        self.clock = clock
        self.health = ApiHealth("weather", clock)
        self._forecast_url: str | None = None
        self._cache: dict[date, Forecast] = {}
        self._daytime_over: set[date] = set()

    @property
    def configured(self) -> bool:
        return self.settings.latitude is not None and self.settings.longitude is not None

    async def forecast(self, day: date) -> Forecast | None:
        """The forecast high of ``day`` (local), fetched at most every refresh_hours."""
        if not self.configured:
            return None
        cached = self._cache.get(day)
        now = self.clock.now()
        fresh = timedelta(hours=self.settings.refresh_hours)
        if cached is not None and cached.fetched_at is not None and now - cached.fetched_at < fresh:
            return cached
        if day in self._daytime_over:
            return cached  # the day's high is history; asking again changes nothing
        problems = []
        days_over = 0  # sources that answered but have nothing left for the day
        for source in self.settings.sources:
            try:
                high = await (self._nws(day) if source == "nws" else self._open_meteo(day))
            except _DaytimeOver:
                # Evening: NWS's first period is tonight. The forecast made earlier today
                # stays the day's forecast; without one, the next source may know the day.
                if cached is not None:
                    self._daytime_over = {d for d in self._daytime_over if d > day} | {day}
                    self.health.ok()
                    return cached
                problems.append(f"{source}: no daytime period left for {day}")
                days_over += 1
                continue
            except (httpx.HTTPError, KeyError, ValueError, TypeError) as error:
                problems.append(f"{source}: {type(error).__name__}: {error}")
                log.warning("forecast source failed", source=source, error=str(error))
                continue
            if high is None:
                problems.append(f"{source}: no forecast for {day}")
                continue
            result = Forecast(day=day, high_f=high, source=source, fetched_at=now)
            self._cache = {d: f for d, f in self._cache.items() if d >= day - timedelta(days=1)}
            self._cache[day] = result
            self.health.ok()
            log.info("forecast", day=day.isoformat(), high_f=high, source=source)
            return result
        if problems and days_over == len(problems):
            self._daytime_over = {d for d in self._daytime_over if d > day} | {day}
            self.health.ok()  # every source answered; today simply has no forecast left
            return cached
        self.health.failed("; ".join(problems) or "no source configured")
        return cached  # an older forecast of the same day beats none

    async def _get(self, url: str, **params: str) -> httpx.Response:
        self.health.count()
        response = await self.http.get(
            url,
            params=params or None,
            headers={"User-Agent": self.settings.user_agent, "Accept": "application/geo+json"},
        )
        response.raise_for_status()
        return response

    async def _nws(self, day: date) -> float | None:
        if self._forecast_url is None:
            where = f"{self.settings.latitude:.4f},{self.settings.longitude:.4f}"
            points = await self._get(f"{self.settings.nws_url.rstrip('/')}/points/{where}")
            self._forecast_url = str(points.json()["properties"]["forecast"])
        data = (await self._get(self._forecast_url)).json()
        periods = data["properties"]["periods"]
        highs = [
            float(p["temperature"])
            if p.get("temperatureUnit", "F") == "F"
            else float(p["temperature"]) * 1.8 + 32
            for p in periods
            if p.get("isDaytime")
            and datetime.fromisoformat(p["startTime"]).astimezone(self.tz).date() == day
        ]
        if highs:
            return max(highs)
        # The forecast starts with the current period: from 18:00 on that is tonight.
        first = (
            datetime.fromisoformat(periods[0]["startTime"]).astimezone(self.tz) if periods else None
        )
        if first is not None and first.date() == day and not periods[0].get("isDaytime"):
            raise _DaytimeOver
        return None

    async def _open_meteo(self, day: date) -> float | None:
        response = await self._get(
            f"{self.settings.open_meteo_url.rstrip('/')}/v1/forecast",
            latitude=str(self.settings.latitude),
            longitude=str(self.settings.longitude),
            daily="temperature_2m_max",
            temperature_unit="fahrenheit",
            timezone=str(self.tz),
            forecast_days="3",
        )
        daily = response.json()["daily"]
        for when, high in zip(daily["time"], daily["temperature_2m_max"], strict=False):
            if date.fromisoformat(when) == day and high is not None:
                return float(high)
        return None
