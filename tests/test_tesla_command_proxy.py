"""Signed vehicle commands: gridmate's ``command_proxy_url`` path against the proxy stand-in.

The Tesla cloud simulator refuses unsigned commands to cars that need the
Vehicle Command Protocol (403, Tesla's text); the stand-in for
``tesla-http-proxy`` (TLS, its own key enrolled on the cars) signs them. The
cars fall asleep after a while without activity, as real ones do.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.sim.command_proxy import CommandProxySimulator, command_proxy_simulator
from gridmate.sim.tesla_cloud import (
    PROTOCOL_REQUIRED,
    SimulatedEnergySite,
    SimulatedVehicle,
    TeslaCloudSimulator,
    tesla_cloud_simulator,
)
from gridmate.tesla.fleet_api import (
    ApiUnreachable,
    FleetApi,
    Forbidden,
    RejectedValue,
    ServerError,
    VehicleUnavailable,
)
from gridmate.tesla.settings import TeslaCloudSettings, build_fleet_api
from gridmate.tesla.tokens import StaticTokenProvider

MODEL_3 = "5YJ3E1EA7KF000001"
MODEL_S_2019 = "5YJSA1E26KF000002"  # pre-2021 Model S: REST commands still work
SITE_ID = 1689251431


@dataclass
class Setup:
    clock: SimulatedClock
    cloud: TeslaCloudSimulator
    proxy: CommandProxySimulator
    access: str

    def settings(self, **changes: object) -> TeslaCloudSettings:
        fields: dict[str, object] = {
            "base_url": self.cloud.base_url,
            "command_proxy_url": self.proxy.base_url,
            "command_proxy_ca_file": self.proxy.ca_file,
            "daily_site_write_budget": None,
        }
        fields.update(changes)
        return TeslaCloudSettings(**fields)  # type: ignore[arg-type]

    def api(self, registry: CollectorRegistry | None = None, **changes: object) -> FleetApi:
        return build_fleet_api(
            self.settings(**changes),
            StaticTokenProvider(Secret(self.access)),
            clock=self.clock,
            registry=registry,
        )

    def car(self, vin: str = MODEL_3) -> SimulatedVehicle:
        return self.cloud.vehicles[vin]


@pytest_asyncio.fixture
async def setup() -> AsyncIterator[Setup]:
    clock = SimulatedClock(datetime(2026, 7, 1, 22, 0, tzinfo=UTC))
    async with (
        tesla_cloud_simulator(
            sites=[SimulatedEnergySite(site_id=SITE_ID)],
            vehicles=[
                SimulatedVehicle(vin=MODEL_3, id=101, charging_state="Stopped"),
                SimulatedVehicle(
                    vin=MODEL_S_2019,
                    id=102,
                    charging_state="Stopped",
                    command_signing_required=False,
                ),
            ],
            clock=clock,
        ) as cloud,
        command_proxy_simulator(cloud) as proxy,
    ):
        access, _ = cloud.issue_tokens()
        yield Setup(clock, cloud, proxy, access)


async def test_an_unsigned_command_to_a_model_3_is_refused_with_teslas_403(setup: Setup) -> None:
    async with setup.api(command_proxy_url=None, command_proxy_ca_file=None) as api:
        with pytest.raises(Forbidden) as caught:
            await api.charge_start(MODEL_3)
        # The REST command still works for a car that predates the protocol.
        assert (await api.charge_start(MODEL_S_2019)).achieved
    assert caught.value.status == 403
    assert "Tesla Vehicle Command Protocol required" in str(caught.value)
    assert setup.car().commands == []
    assert setup.car().charging_state == "Stopped"
    assert PROTOCOL_REQUIRED.startswith("Tesla Vehicle Command Protocol required")


async def test_commands_go_signed_through_the_configured_proxy(setup: Setup) -> None:
    car = setup.car()
    async with setup.api() as api:
        started = await api.charge_start(MODEL_3)
        assert started.result and started.achieved
        assert car.charging_state == "Charging"
        again = await api.charge_start(MODEL_3)  # refused by the car, reason passed on
        assert (again.result, again.reason, again.achieved) == (False, "is_charging", True)
        stopped = await api.charge_stop(MODEL_3)
        assert stopped.achieved and car.charging_state == "Stopped"
        # Data and energy calls go straight to Tesla, not through the proxy.
        await api.vehicle_data(MODEL_3)
        await api.live_status(SITE_ID)
    assert car.signed_commands == 3
    assert [(r.path.rsplit("/", 1)[-1], r.handling, r.status) for r in setup.proxy.requests] == [
        ("charge_start", "signed", 200),
        ("charge_start", "signed", 200),
        ("charge_stop", "signed", 200),
    ]
    assert setup.cloud.calls_to("command") == []  # nothing unsigned reached Tesla
    assert len(setup.cloud.calls_to("signed_command", vin=MODEL_3)) == 3


async def test_every_car_control_goes_signed_and_none_unsigned(setup: Setup) -> None:
    car = setup.car()
    commands = (
        ("set_charge_limit", {"percent": 90}),
        ("set_charging_amps", {"charging_amps": 12}),
        ("auto_conditioning_start", None),
    )
    async with setup.api(command_proxy_url=None, command_proxy_ca_file=None) as unsigned:
        for name, parameters in commands:
            with pytest.raises(Forbidden, match="Vehicle Command Protocol required"):
                await unsigned.vehicle_command(MODEL_3, name, parameters)
    assert car.commands == []
    assert (car.charge_limit_soc, car.charge_amps, car.climate_on) == (80, 32, False)
    async with setup.api() as api:
        for name, parameters in commands:
            assert (await api.vehicle_command(MODEL_3, name, parameters)).achieved
        # The car's own refusal comes back through the proxy as Tesla's answer shape.
        refused = await api.set_charging_amps(MODEL_3, 48)
        assert (refused.result, refused.reason) == (False, "invalid_charging_amps")
        data = await api.vehicle_data(MODEL_3, endpoints=("charge_state", "climate_state"))
    assert (car.charge_limit_soc, car.charge_amps, car.climate_on) == (90, 12, True)
    assert data["charge_state"]["charge_limit_soc"] == 90
    assert data["climate_state"]["is_climate_on"] is True
    assert car.signed_commands == 4
    assert [r.handling for r in setup.proxy.requests] == ["signed"] * 4
    assert setup.cloud.calls_to("command") == []


async def test_a_command_without_its_parameter_is_refused_by_the_proxy(setup: Setup) -> None:
    async with setup.api() as api:
        with pytest.raises(RejectedValue, match="missing percent param"):
            await api.vehicle_command(MODEL_3, "set_charge_limit", {})
        with pytest.raises(RejectedValue, match="invalid charging_amps param"):
            await api.vehicle_command(MODEL_3, "set_charging_amps", {"charging_amps": "16"})
    assert setup.car().commands == []
    assert [(r.status, r.handling) for r in setup.proxy.requests] == [(400, "refused")] * 2


async def test_climate_needs_the_vehicle_commands_scope_not_only_charging(
    setup: Setup,
) -> None:
    charging_only, _ = setup.cloud.issue_tokens(("openid", "vehicle_charging_cmds"))
    async with build_fleet_api(
        setup.settings(),
        StaticTokenProvider(Secret(charging_only)),
        clock=setup.clock,
        registry=None,
    ) as api:
        assert (await api.set_charge_limit(MODEL_3, 70)).achieved
        with pytest.raises(Forbidden, match="unauthorized_missing_scopes"):
            await api.set_climate(MODEL_3, True)
    assert setup.car().climate_on is False
    assert setup.car().charge_limit_soc == 70


async def test_the_proxy_certificate_is_only_trusted_through_the_ca_file(setup: Setup) -> None:
    async with setup.api(command_proxy_ca_file=None) as api:
        with pytest.raises(ApiUnreachable, match=r"no answer from 127\.0\.0\.1"):
            await api.charge_start(MODEL_3)
        # Only the commands are refused: calls to Tesla's URL are unaffected.
        assert await api.energy_sites() == [SITE_ID]
    assert setup.proxy.requests == []
    assert setup.car().commands == []


async def test_a_car_without_the_proxys_key_refuses_the_command(setup: Setup) -> None:
    setup.car().virtual_keys.clear()  # the owner never approved the key
    async with setup.api() as api:
        with pytest.raises(ServerError, match="public key has not been paired"):
            await api.charge_start(MODEL_3)
    assert setup.car().commands == []


async def test_a_sleeping_car_through_the_proxy_is_unavailable_not_an_outage(
    setup: Setup,
) -> None:
    setup.car().state = "asleep"
    registry = CollectorRegistry()
    async with setup.api(registry) as api:
        for _ in range(3):
            with pytest.raises(VehicleUnavailable, match="offline or asleep"):
                await api.charge_stop(MODEL_3)
        # Tesla billed its 408s behind the proxy's 500s: so does gridmate's count.
        billed = "gridmate_tesla_api_billable_requests_total"
        assert registry.get_sample_value(billed, {"category": "commands"}) == 3
        # A car's sleep is that car's state: the Powerwall is still reachable at once.
        assert (await api.live_status(SITE_ID))["percentage_charged"] == 80.0
    assert setup.car().state == "asleep"  # the proxy does not wake the car
    assert setup.car().wakes == 0
    assert [r.status for r in setup.proxy.requests] == [500, 500, 500]


async def test_a_car_without_the_protocol_gets_rest_commands_through_the_proxy(
    setup: Setup,
) -> None:
    car = setup.car(MODEL_S_2019)
    async with setup.api() as api:
        assert (await api.charge_start(MODEL_S_2019)).achieved
        assert (await api.charge_stop(MODEL_S_2019)).achieved
    assert car.signed_commands == 0
    assert [c[1] for c in car.commands] == ["charge_start", "charge_stop"]
    # Tesla said 422 once; the proxy remembered and sent REST from then on.
    assert len(setup.cloud.calls_to("signed_command", vin=MODEL_S_2019)) == 1
    assert [r.handling for r in setup.proxy.requests] == ["rest_fallback", "rest_fallback"]


async def test_the_proxy_answers_like_tesla_http_proxy(setup: Setup) -> None:
    base = setup.proxy.base_url
    ca = ssl.create_default_context(cafile=str(setup.proxy.ca_file))
    bearer = {"Authorization": f"Bearer {setup.access}"}
    async with httpx.AsyncClient(verify=ca) as client:
        assert (await client.get(f"{base}/health")).text == "OK"
        no_token = await client.post(f"{base}/api/1/vehicles/{MODEL_3}/command/charge_start")
        assert no_token.status_code == 403
        assert no_token.json()["error"] == "client did not provide an OAuth token"
        by_id = await client.post(f"{base}/api/1/vehicles/101/command/charge_start", headers=bearer)
        assert by_id.status_code == 404 and "17-character VIN" in by_id.json()["error"]
        wrong_method = await client.get(
            f"{base}/api/1/vehicles/{MODEL_3}/command/charge_start", headers=bearer
        )
        assert wrong_method.status_code == 405
        bad_json = await client.post(
            f"{base}/api/1/vehicles/{MODEL_3}/command/charge_start", headers=bearer, content=b"{"
        )
        assert bad_json.status_code == 400
        assert bad_json.text.strip() == "error occurred while parsing request parameters"
        unknown = await client.post(
            f"{base}/api/1/vehicles/{MODEL_3}/command/do_a_barrel_roll", headers=bearer, json={}
        )
        assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_command"
        # Other calls are forwarded; an error answer is replaced by the status text.
        listing = await client.get(f"{base}/api/1/vehicles", headers=bearer)
        assert [v["vin"] for v in listing.json()["response"]] == [MODEL_3, MODEL_S_2019]
        setup.car().state = "asleep"
        data = await client.get(f"{base}/api/1/vehicles/{MODEL_3}/vehicle_data", headers=bearer)
        assert data.status_code == 408 and data.json()["error"] == "Request Timeout"
    assert setup.car().commands == []


async def test_a_replayed_signed_message_is_refused_by_the_car(setup: Setup) -> None:
    async with setup.api() as api:
        assert (await api.charge_start(MODEL_3)).achieved
    (message,) = setup.proxy.signed_bodies
    # The proxy's exact request again, straight to Tesla: its counter is spent.
    async with httpx.AsyncClient() as client:
        replay = await client.post(
            f"{setup.cloud.base_url}/api/1/vehicles/{MODEL_3}/signed_command",
            content=message,
            headers={
                "Authorization": f"Bearer {setup.access}",
                "Content-Type": "application/json",
            },
        )
    assert replay.status_code == 200
    answer = json.loads(base64.b64decode(replay.json()["response"]))
    assert answer == {"fault": "ERROR_INVALID_TOKEN_OR_COUNTER"}
    assert [c[1] for c in setup.car().commands] == ["charge_start"]  # executed once


# ---------------------------------------------------------------- sleep


async def test_a_car_falls_asleep_after_charging_stops_unless_polled(setup: Setup) -> None:
    car = setup.car()
    car.charging_state = "Charging"
    async with setup.api() as api:
        # Charging for an hour: listed every 5 minutes, it stays awake.
        for _ in range(12):
            setup.clock.jump_to(setup.clock.now() + timedelta(minutes=5))
            assert {v.vin: v.state for v in await api.vehicles()}[MODEL_3] == "online"
        assert (await api.charge_stop(MODEL_3)).achieved
        # Reading its data resets the inactivity timer (TeslaMate FAQ): still awake.
        for _ in range(6):
            setup.clock.jump_to(setup.clock.now() + timedelta(minutes=10))
            await api.vehicle_data(MODEL_3)
        # The vehicle list does not: 15 minutes later it is asleep.
        setup.clock.jump_to(setup.clock.now() + timedelta(minutes=10))
        assert {v.vin: v.state for v in await api.vehicles()}[MODEL_3] == "online"
        setup.clock.jump_to(setup.clock.now() + timedelta(minutes=6))
        assert {v.vin: v.state for v in await api.vehicles()}[MODEL_3] == "asleep"
        with pytest.raises(VehicleUnavailable):
            await api.vehicle_data(MODEL_3)
        # Woken on purpose, it comes online some seconds later (Tesla: 10-60 s).
        assert await api.wake_up(MODEL_3) == "asleep"
        with pytest.raises(VehicleUnavailable):
            await api.charge_start(MODEL_3)
        setup.clock.jump_to(setup.clock.now() + timedelta(seconds=car.wake_seconds))
        assert {v.vin: v.state for v in await api.vehicles()}[MODEL_3] == "online"
        assert (await api.charge_start(MODEL_3)).achieved
    assert car.naps == 1 and car.wakes == 1
    assert car.charging_state == "Charging"
