"""The Home Assistant climate adapter against a small stand-in for HA's REST API."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from aiohttp import web

from gridmate.energy.adapters.common import AdapterError
from gridmate.energy.adapters.thermostat import HomeAssistantThermostat
from gridmate.energy.planner import DesiredThermostat
from gridmate.energy.settings import HomeAssistantSettings, ThermostatSettings
from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.sim.http import serve_on_loopback


@pytest.fixture
async def home_assistant():
    """HA's /api/states and climate.set_temperature for one entity, with a bearer token."""
    entity = {
        "entity_id": "climate.living",
        "state": "cool",
        "attributes": {"temperature": 76, "current_temperature": 75.5,
                       "hvac_modes": ["off", "cool", "heat", "heat_cool"]},
    }  # fmt: skip
    calls: list[dict] = []
    instead: dict = {}  # {"body": ...}: answer this JSON instead of the entity

    def authorised(request: web.Request) -> bool:
        return request.headers.get("Authorization") == "Bearer ha-token-123"

    async def state(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"message": "401: Unauthorized"}, status=401)
        if request.match_info["entity"] != entity["entity_id"]:
            return web.json_response({"message": "Entity not found."}, status=404)
        if "body" in instead:
            return web.json_response(instead["body"])
        return web.json_response(entity)

    async def set_temperature(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"message": "401: Unauthorized"}, status=401)
        body = await request.json()
        calls.append(body)
        if "hvac_mode" in body:
            entity["state"] = body["hvac_mode"]
        if "temperature" in body:
            entity["attributes"]["temperature"] = body["temperature"]
        return web.json_response([entity])

    app = web.Application()
    app.router.add_get("/api/states/{entity}", state)
    app.router.add_post("/api/services/climate/set_temperature", set_temperature)
    async with serve_on_loopback(app) as url:
        yield url, entity, calls, instead


async def test_read_and_write_keep_the_mode(home_assistant):
    url, entity, calls, _ = home_assistant
    clock = SimulatedClock(datetime(2026, 7, 1, 23, tzinfo=UTC))
    config = ThermostatSettings(id="living", kind="home_assistant", entity_id="climate.living")
    async with httpx.AsyncClient() as http:
        device = HomeAssistantThermostat(
            config, HomeAssistantSettings(url=url, token=Secret("ha-token-123")),
            http=http, clock=clock,
        )  # fmt: skip
        reading = await device.read()
        assert (reading.mode, reading.cool_setpoint_f, reading.indoor_f) == ("cool", 76.0, 75.5)
        wish = DesiredThermostat(78.0, None, "until", None, "ladder step 1")
        await device.write(wish)
        assert calls == [{"entity_id": "climate.living", "temperature": 78.0}]
        assert "hvac_mode" not in calls[0]  # the person's mode is never touched
        assert (await device.read(force=True)).cool_setpoint_f == 78.0
        assert entity["state"] == "cool"


async def test_wrong_token_is_a_clear_error(home_assistant):
    url, _, _, _ = home_assistant
    clock = SimulatedClock(datetime(2026, 7, 1, 23, tzinfo=UTC))
    config = ThermostatSettings(id="living", kind="home_assistant", entity_id="climate.living")
    async with httpx.AsyncClient() as http:
        device = HomeAssistantThermostat(
            config, HomeAssistantSettings(url=url, token=Secret("wrong-token-456")),
            http=http, clock=clock,
        )  # fmt: skip
        with pytest.raises(AdapterError, match="Home Assistant read failed"):
            await device.read()
        assert device.health.problem() is not None


@pytest.mark.parametrize(
    "answer",
    [None, [], {"attributes": {}}, {"state": "cool", "attributes": {"temperature": "hot"}}],
)
async def test_a_wrong_shaped_answer_is_an_adapter_error_and_a_health_problem(
    home_assistant, answer
):
    url, _, calls, instead = home_assistant
    instead["body"] = answer
    clock = SimulatedClock(datetime(2026, 7, 1, 23, tzinfo=UTC))
    config = ThermostatSettings(id="living", kind="home_assistant", entity_id="climate.living")
    async with httpx.AsyncClient() as http:
        device = HomeAssistantThermostat(
            config, HomeAssistantSettings(url=url, token=Secret("ha-token-123")),
            http=http, clock=clock,
        )  # fmt: skip
        with pytest.raises(AdapterError, match="answered JSON of an unexpected shape"):
            await device.read()
        assert "unexpected shape" in (device.health.problem() or "")
        with pytest.raises(AdapterError):
            await device.write(DesiredThermostat(78.0, None, "until", None, "ladder step 1"))
        assert calls == []  # nothing written on a reading that made no sense
