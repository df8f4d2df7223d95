"""Today's forecast high from NWS and Open-Meteo (the weather simulator, real HTTP on loopback).

NWS's forecast starts with the current period, as api.weather.gov does: in the
evening today has no daytime period left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest_asyncio

from gridmate.energy.adapters.weather import WeatherClient
from gridmate.energy.settings import WeatherSettings
from gridmate.sim.weather import WeatherSimulator, weather_simulator

PHOENIX = ZoneInfo("America/Phoenix")
DAY = date(2026, 7, 1)
NEXT_DAY = DAY + timedelta(days=1)
USER_AGENT = "gridmate-test/1 (test@example.com)"


class HandClock:
    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def set(self, day: date, hour: int, minute: int = 0) -> None:
        self._now = datetime(day.year, day.month, day.day, hour, minute, tzinfo=PHOENIX)


@dataclass
class Weather:
    clock: HandClock
    sim: WeatherSimulator
    http: httpx.AsyncClient

    def client(self, **changes: object) -> WeatherClient:
        fields: dict[str, object] = {
            "latitude": 33.45,
            "longitude": -112.07,
            "user_agent": USER_AGENT,
            "nws_url": self.sim.nws_base_url,
            "open_meteo_url": self.sim.open_meteo_base_url,
        }
        fields.update(changes)
        return WeatherClient(
            WeatherSettings(**fields),  # type: ignore[arg-type]
            PHOENIX,
            http=self.http,
            clock=self.clock,
        )

    def asked(self, service: str) -> int:
        return sum(1 for s, _path, _status in self.sim.requests if s == service)


@pytest_asyncio.fixture
async def weather() -> AsyncIterator[Weather]:
    clock = HandClock(datetime(2026, 7, 1, 9, 0, tzinfo=PHOENIX))
    highs = {DAY: 104.0, NEXT_DAY: 96.0}
    async with (
        weather_simulator(clock=clock, highs=highs) as sim,
        httpx.AsyncClient(timeout=5.0) as http,
    ):
        yield Weather(clock, sim, http)


async def periods(w: Weather) -> list[dict]:
    url = f"{w.sim.nws_base_url}/gridpoints/PSR/159,57/forecast"
    response = await w.http.get(url, headers={"User-Agent": USER_AGENT})
    response.raise_for_status()
    return list(response.json()["properties"]["periods"])


async def test_the_nws_forecast_starts_with_the_current_period(weather: Weather) -> None:
    weather.clock.set(DAY, 15, 37)
    afternoon = await periods(weather)
    assert len(afternoon) == 14
    first = afternoon[0]
    assert (first["name"], first["isDaytime"], first["temperature"]) == (
        "This Afternoon",
        True,
        104,
    )
    assert first["startTime"] == "2026-07-01T15:00:00-07:00"
    assert first["endTime"] == "2026-07-01T18:00:00-07:00"
    assert afternoon[1]["name"] == "Tonight" and afternoon[1]["endTime"].startswith("2026-07-02T06")

    weather.clock.set(DAY, 19, 5)
    evening = await periods(weather)
    assert (evening[0]["name"], evening[0]["startTime"]) == ("Tonight", "2026-07-01T19:00:00-07:00")
    assert not [p for p in evening if p["isDaytime"] and p["startTime"].startswith("2026-07-01")]
    assert evening[1]["temperature"] == 96  # tomorrow

    weather.clock.set(NEXT_DAY, 2, 10)
    overnight = await periods(weather)
    assert [p["name"] for p in overnight[:3]] == ["Overnight", "Today", "Tonight"]


async def test_in_the_evening_the_days_nws_forecast_stays_the_forecast(weather: Weather) -> None:
    client = weather.client()
    weather.clock.set(DAY, 14, 0)
    afternoon = await client.forecast(DAY)
    assert afternoon is not None and (afternoon.source, afternoon.high_f) == ("nws", 104.0)

    weather.clock.set(DAY, 19, 30)  # past refresh_hours, and NWS starts with tonight
    evening = await client.forecast(DAY)
    assert evening == afternoon  # the same forecast, still from NWS, fetched at 14:00
    assert client.health.problem() is None
    assert weather.asked("open_meteo") == 0  # NWS answered: no reason to fall back
    nws_calls = weather.asked("nws")
    weather.clock.set(DAY, 23, 0)
    assert await client.forecast(DAY) == afternoon
    assert weather.asked("nws") == nws_calls  # the day's high is history: not asked again


async def test_first_asked_in_the_evening_without_a_fallback_is_not_a_failure(
    weather: Weather,
) -> None:
    client = weather.client(sources=("nws",))
    weather.clock.set(DAY, 20, 0)  # e.g. the service started tonight
    assert await client.forecast(DAY) is None
    assert client.health.problem() is None  # NWS is fine; today is simply over
    assert client.health.last_ok is not None
    # With Open-Meteo as the fallback, its daily high is used instead.
    both = weather.client()
    forecast = await both.forecast(DAY)
    assert forecast is not None and (forecast.source, forecast.high_f) == ("open_meteo", 104.0)


async def test_both_services_down_serve_the_cached_forecast(weather: Weather) -> None:
    client = weather.client()
    weather.clock.set(DAY, 9, 0)
    morning = await client.forecast(DAY)
    assert morning is not None and morning.source == "nws"

    weather.sim.nws_down = weather.sim.open_meteo_down = True
    weather.clock.set(DAY, 12, 30)  # the cache is stale; both answer 503
    stale = await client.forecast(DAY)
    assert stale == morning  # fetched at 09:00, from NWS
    problem = client.health.problem()
    assert problem is not None and "nws" in problem and "open_meteo" in problem
    assert "503" in problem
    # A day with nothing cached has no forecast, and says why.
    assert await client.forecast(NEXT_DAY) is None

    weather.sim.nws_down = weather.sim.open_meteo_down = False
    weather.clock.set(DAY, 12, 31)
    fresh = await client.forecast(DAY)
    assert fresh is not None and fresh.source == "nws" and fresh.fetched_at == weather.clock.now()
    assert client.health.problem() is None


async def test_back_to_nws_once_it_answers_again(weather: Weather) -> None:
    client = weather.client()
    weather.sim.nws_down = True
    weather.clock.set(DAY, 8, 0)
    fallback = await client.forecast(DAY)
    assert fallback is not None and fallback.source == "open_meteo"

    weather.sim.nws_down = False
    weather.clock.set(DAY, 10, 0)  # still fresh: Open-Meteo's answer stands
    assert await client.forecast(DAY) == fallback
    weather.clock.set(DAY, 11, 1)  # stale: NWS is asked first again
    back = await client.forecast(DAY)
    assert back is not None and (back.source, back.high_f) == ("nws", 104.0)

    # The evening passes without a fallback, and the next morning NWS answers.
    weather.clock.set(DAY, 21, 0)
    assert await client.forecast(DAY) == back
    weather.clock.set(NEXT_DAY, 7, 0)
    tomorrow = await client.forecast(NEXT_DAY)
    assert tomorrow is not None and (tomorrow.source, tomorrow.high_f) == ("nws", 96.0)
    assert [s for s, _p, status in weather.sim.requests if status == 200].count("open_meteo") == 1
