"""The Fleet API client against the Tesla cloud simulator (real HTTP on loopback)."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from gridmate.runtime.backoff import Backoff
from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.sim.tesla_cloud import (
    SimulatedEnergySite,
    SimulatedVehicle,
    TeslaCloudSimulator,
    tesla_cloud_simulator,
)
from gridmate.tesla.fleet_api import (
    ApiUnreachable,
    BudgetExhausted,
    BudgetUse,
    FleetApi,
    FleetApiError,
    Forbidden,
    PreconditionFailed,
    RateLimited,
    RejectedValue,
    ServerError,
    Unauthorized,
    VehicleUnavailable,
    is_accepted_backup_reserve,
    nearest_accepted_backup_reserve,
)
from gridmate.tesla.tokens import StaticTokenProvider

SITE_ID = 1689251431
AWAKE_VIN = "5YJSA1E26KF000001"  # a 2019 Model S: REST commands, no signing needed
ASLEEP_VIN = "5YJ3E1EA7KF000002"


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(datetime(2026, 7, 1, 18, 0, tzinfo=UTC))


@pytest_asyncio.fixture
async def cloud(clock: SimulatedClock) -> AsyncIterator[TeslaCloudSimulator]:
    async with tesla_cloud_simulator(
        sites=[SimulatedEnergySite(site_id=SITE_ID, percentage_charged=64.5)],
        vehicles=[
            # Signed commands and falling asleep have their own tests
            # (test_tesla_command_proxy.py); this car takes REST commands and stays
            # awake (Sentry Mode on) so budget and billing tests can span a day.
            SimulatedVehicle(
                vin=AWAKE_VIN,
                id=101,
                display_name="Red",
                charging_state="Stopped",
                command_signing_required=False,
                sleep_after=None,
            ),
            SimulatedVehicle(vin=ASLEEP_VIN, id=102, display_name="Blue", state="asleep"),
        ],
        clock=clock,
    ) as simulator:
        yield simulator


def make_api(
    cloud: TeslaCloudSimulator,
    clock: SimulatedClock,
    registry: CollectorRegistry | None = None,
    **kwargs: object,
) -> FleetApi:
    access, _refresh = cloud.issue_tokens()
    return FleetApi(
        StaticTokenProvider(Secret(access)),
        base_url=cloud.base_url,
        clock=clock,
        registry=registry,
        **kwargs,  # type: ignore[arg-type]
    )


def billable(registry: CollectorRegistry, category: str) -> float:
    value = registry.get_sample_value(
        "gridmate_tesla_api_billable_requests_total", {"category": category}
    )
    return value or 0.0


# ---------------------------------------------------------------- region


async def test_region_discovery_skips_dead_servers_and_uses_the_answered_base_url(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    access, _ = cloud.issue_tokens()
    api = FleetApi(
        StaticTokenProvider(Secret(access)),
        discovery_urls=[closed_port_url(), cloud.base_url],
        clock=clock,
    )
    async with api:
        assert await api.base_url() == cloud.base_url
        assert api.region == "na"
        assert await api.energy_sites() == [SITE_ID]
    assert [c.endpoint for c in cloud.calls] == ["users_region", "products"]


async def test_region_discovery_refuses_a_base_url_off_teslas_domains(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    cloud.region_base_url = "https://fleet.example.net"
    access, _ = cloud.issue_tokens()
    async with FleetApi(
        StaticTokenProvider(Secret(access)), discovery_urls=[cloud.base_url], clock=clock
    ) as api:
        with pytest.raises(FleetApiError, match="untrusted base URL"):
            await api.vehicles()
    assert [c.endpoint for c in cloud.calls] == ["users_region"]


# ---------------------------------------------------------------- error model


async def test_invalid_token_is_unauthorized_after_one_attempt(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    async with FleetApi(
        StaticTokenProvider(Secret("not-a-token-the-cloud-issued")),
        base_url=cloud.base_url,
        clock=clock,
    ) as api:
        with pytest.raises(Unauthorized) as caught:
            await api.vehicles()
    assert caught.value.status == 401
    # The provider had no other token to offer, so nothing was retried.
    assert [c.status for c in cloud.calls] == [401]


class RotatingProvider:
    """Hands out a stale token first and a fresh one once told it was rejected."""

    def __init__(self, stale: str, fresh: str) -> None:
        self.current = Secret(stale)
        self.fresh = Secret(fresh)
        self.rejections = 0

    @property
    def expires_at(self) -> datetime | None:
        return None

    async def access_token(self) -> Secret:
        return self.current

    async def token_rejected(self, token: Secret) -> None:
        self.rejections += 1
        self.current = self.fresh


async def test_a_401_fetches_the_token_again_once_and_retries(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    stale, _ = cloud.issue_tokens()
    cloud.expire_access_tokens()
    fresh, _ = cloud.issue_tokens()
    provider = RotatingProvider(stale, fresh)
    async with FleetApi(provider, base_url=cloud.base_url, clock=clock) as api:
        listing = await api.vehicles()
    assert {v.vin for v in listing} == {AWAKE_VIN, ASLEEP_VIN}
    assert provider.rejections == 1
    assert [c.status for c in cloud.calls] == [401, 200]


async def test_missing_scope_is_forbidden(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    access, _ = cloud.issue_tokens(scopes=("openid", "offline_access", "energy_device_data"))
    async with FleetApi(
        StaticTokenProvider(Secret(access)), base_url=cloud.base_url, clock=clock
    ) as api:
        assert (await api.site_info(SITE_ID))["backup_reserve_percent"] == 20
        with pytest.raises(Forbidden) as caught:
            await api.set_backup_reserve(SITE_ID, 30)
    assert caught.value.error == "unauthorized_missing_scopes"
    assert cloud.sites[SITE_ID].backup_reserve_percent == 20


async def test_unregistered_application_is_a_failed_precondition(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    cloud.registered_in_region = False
    async with make_api(cloud, clock) as api:
        with pytest.raises(PreconditionFailed):
            await api.energy_sites()


async def test_server_errors_raise_and_are_not_billed(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    registry = CollectorRegistry()
    cloud.inject_failures(1, status=503, endpoint="site_info")
    async with make_api(cloud, clock, registry) as api:
        with pytest.raises(ServerError) as caught:
            await api.site_info(SITE_ID)
        assert caught.value.status == 503
        assert billable(registry, "data") == 0
        await api.site_info(SITE_ID)
        assert billable(registry, "data") == 1


async def test_an_api_that_keeps_failing_is_backed_off_then_resumed(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    cloud.inject_failures(3, status=503, endpoint="site_info")
    backoff = Backoff(initial=30.0, cap=120.0, jitter=False)
    async with make_api(cloud, clock, outage_backoff=backoff) as api:
        for _ in range(2):  # one failure may be a blip; the second starts the backoff
            with pytest.raises(ServerError):
                await api.site_info(SITE_ID)
        with pytest.raises(ApiUnreachable) as refused:
            await api.site_info(SITE_ID)
        assert refused.value.retry_after == pytest.approx(30.0, abs=1.0)
        assert len(cloud.calls_to("site_info")) == 2  # refused here, Tesla saw nothing

        clock.jump_to(clock.now() + timedelta(seconds=31))
        with pytest.raises(ServerError):  # the third injected failure: the delay doubles
            await api.site_info(SITE_ID)
        with pytest.raises(ApiUnreachable) as refused:
            await api.site_info(SITE_ID)
        assert refused.value.retry_after == pytest.approx(60.0, abs=1.0)

        clock.jump_to(clock.now() + timedelta(seconds=61))
        await api.site_info(SITE_ID)  # Tesla answers again: back to normal at once
        await api.site_info(SITE_ID)
        assert len(cloud.calls_to("site_info")) == 5


async def test_no_answer_is_unreachable(clock: SimulatedClock) -> None:
    async with FleetApi(
        StaticTokenProvider(Secret("whatever-token")), base_url=closed_port_url(), clock=clock
    ) as api:
        with pytest.raises(ApiUnreachable):
            await api.vehicles()


# ---------------------------------------------------------------- rate limits


async def test_429_blocks_the_device_for_retry_after_without_calling_again(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    registry = CollectorRegistry()
    cloud.add_rate_limit(1, window=120, endpoint="site_info", retry_after=120)
    async with make_api(cloud, clock, registry) as api:
        await api.site_info(SITE_ID)
        with pytest.raises(RateLimited) as first:
            await api.site_info(SITE_ID)
        assert first.value.retry_after == pytest.approx(120, abs=2)
        assert len(cloud.calls_to("site_info")) == 2

        # Asking again during the block is answered locally: Tesla sees nothing.
        for _ in range(5):
            with pytest.raises(RateLimited) as again:
                await api.site_info(SITE_ID)
            assert 0 < again.value.retry_after <= 120
        assert len(cloud.calls_to("site_info")) == 2

        # Other devices are not blocked by this site's limit.
        assert len(await api.vehicles()) == 2

        clock.jump_to(clock.now() + timedelta(seconds=121))
        assert (await api.site_info(SITE_ID))["id"] == f"STE{SITE_ID}"
    assert len(cloud.calls_to("site_info")) == 3
    assert (
        registry.get_sample_value(
            "gridmate_tesla_api_rate_limited_total", {"endpoint": "site_info"}
        )
        == 1
    )
    # Three site_info answers (the 429 is billed too: status below 500) and the list.
    assert billable(registry, "data") == 4


@pytest.mark.parametrize(
    ("header", "asked"),
    [
        ("1e20", "asked 100000000000000000000 s"),
        ("1e309", "asked for ever"),
        ("inf", "asked for ever"),
        ("99999999999", "asked 99999999999 s"),
        ("Fri, 31 Dec 9999 23:59:59 GMT", "asked 251"),  # about 251,000,000,000 s
    ],
)
async def test_a_huge_retry_after_is_capped_not_obeyed_nor_a_crash(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, header: str, asked: str
) -> None:
    cloud.add_rate_limit(0, window=60, endpoint="site_info", retry_after=header)
    async with make_api(cloud, clock) as api:
        with pytest.raises(RateLimited) as caught:
            await api.site_info(SITE_ID)
        assert caught.value.capped and caught.value.retry_after == pytest.approx(3600, abs=1)
        assert "waiting the cap of 3600 s" in str(caught.value) and asked in str(caught.value)
        with pytest.raises(RateLimited) as again:  # refused locally, still saying why
            await api.site_info(SITE_ID)
        assert again.value.capped and "waiting the cap" in str(again.value)
        cloud.rate_limits.clear()
        clock.jump_to(clock.now() + timedelta(seconds=3601))
        assert (await api.site_info(SITE_ID))["id"] == f"STE{SITE_ID}"


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        ("120", 120.0),
        ("2.5", 2.5),
        ("Wed, 01 Jul 2026 18:10:00 GMT", 600.0),
        ("soon", 60.0),  # unparsable: RateLimit-Reset (the window) applies
        ("nan", 60.0),
    ],
)
async def test_every_retry_after_form_is_understood(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, header: str, wait: float
) -> None:
    cloud.add_rate_limit(0, window=60, endpoint="site_info", retry_after=header)
    async with make_api(cloud, clock) as api:
        with pytest.raises(RateLimited) as caught:
            await api.site_info(SITE_ID)
    assert not caught.value.capped
    assert caught.value.retry_after == pytest.approx(wait, abs=1.5)


async def test_the_retry_after_cap_is_configurable(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    cloud.add_rate_limit(0, window=60, endpoint="site_info", retry_after="7200")
    async with make_api(cloud, clock, max_retry_after=900.0) as api:
        with pytest.raises(RateLimited) as caught:
            await api.site_info(SITE_ID)
    assert caught.value.capped and caught.value.retry_after == pytest.approx(900, abs=1)


async def test_429_without_retry_after_uses_ratelimit_reset(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    rule = cloud.add_rate_limit(2, window=600, endpoint="vehicles", per_device=False)
    async with make_api(cloud, clock) as api:
        await api.vehicles()
        clock.jump_to(clock.now() + timedelta(seconds=100))
        await api.vehicles()
        with pytest.raises(RateLimited) as caught:
            await api.vehicles()
    # The window opened 100 s ago, so the reset is about 500 s away.
    assert rule.retry_after is None
    assert caught.value.retry_after == pytest.approx(500, abs=2)


async def test_rate_limit_of_zero_refuses_every_call_with_the_full_window(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    cloud.add_rate_limit(0, window=300, endpoint="live_status")
    async with make_api(cloud, clock) as api:
        with pytest.raises(RateLimited) as caught:
            await api.live_status(SITE_ID)
        # Other devices are not limited by the rule.
        assert len(await api.vehicles()) == 2
    assert caught.value.retry_after == pytest.approx(300, abs=2)
    assert [c.status for c in cloud.calls_to("live_status")] == [429]
    with pytest.raises(ValueError, match="limit >= 0"):
        cloud.add_rate_limit(-1, window=60)


# ---------------------------------------------------------------- budgets


async def test_vehicle_daily_budget_refuses_before_sending(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    uses: list[BudgetUse] = []
    async with make_api(cloud, clock, daily_vehicle_budget=3, on_budget_use=uses.append) as api:
        for _ in range(3):
            await api.vehicle_data(AWAKE_VIN)
        with pytest.raises(BudgetExhausted) as caught:
            await api.vehicle_data(AWAKE_VIN)
        assert caught.value.budget == "vehicle_daily"
        assert [u.used for u in uses] == [1, 2, 3]
        assert uses[-1].limit == 3
        assert len(cloud.calls_to("vehicle_data")) == 3

        # A new UTC day starts a new budget.
        clock.jump_to(datetime(2026, 7, 2, 0, 0, 1, tzinfo=UTC))
        await api.vehicle_data(AWAKE_VIN)
        assert api.budget_use()[0].used == 1


async def test_budgets_survive_a_restart_through_the_budget_file(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path
) -> None:
    budget_file = tmp_path / "state" / "tesla-api-budgets.json"
    async with make_api(cloud, clock, daily_vehicle_budget=3, budget_file=budget_file) as api:
        for _ in range(2):
            await api.vehicle_data(AWAKE_VIN)
    assert budget_file.stat().st_mode & 0o077 == 0

    async with make_api(cloud, clock, daily_vehicle_budget=3, budget_file=budget_file) as api:
        assert [(u.device, u.used) for u in api.budget_use()] == [(AWAKE_VIN, 2)]
        await api.vehicle_data(AWAKE_VIN)
        with pytest.raises(BudgetExhausted):
            await api.vehicle_data(AWAKE_VIN)
    assert len(cloud.calls_to("vehicle_data")) == 3

    # Yesterday's counts do not carry into a new UTC day.
    clock.jump_to(datetime(2026, 7, 2, 0, 0, 1, tzinfo=UTC))
    async with make_api(cloud, clock, daily_vehicle_budget=3, budget_file=budget_file) as api:
        assert api.budget_use() == []

    budget_file.write_text("{not json")
    async with make_api(cloud, clock, daily_vehicle_budget=3, budget_file=budget_file) as api:
        assert api.budget_use() == []  # unreadable: counted from zero, with a warning


async def test_site_write_budget_and_restored_usage(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    async with make_api(cloud, clock, daily_site_write_budget=3) as api:
        # Two writes were made today before a restart.
        api.restore_budget_use(
            BudgetUse("site_writes_daily", str(SITE_ID), 2, 3, clock.now().date())
        )
        await api.set_operation_mode(SITE_ID, "self_consumption")
        with pytest.raises(BudgetExhausted) as caught:
            await api.set_backup_reserve(SITE_ID, 40)
    assert caught.value.budget == "site_writes_daily"
    assert [w.setting for w in cloud.sites[SITE_ID].writes] == ["default_real_mode"]


async def test_site_writes_count_only_when_the_site_took_them(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    def counted(api: FleetApi) -> int:
        return sum(u.used for u in api.budget_use() if u.budget == "site_writes_daily")

    async with make_api(cloud, clock, daily_site_write_budget=5) as api:
        with pytest.raises(RejectedValue):  # refused for its value
            await api.set_backup_reserve(SITE_ID, 90)
        cloud.add_rate_limit(0, window=60, endpoint="backup", retry_after=30)
        with pytest.raises(RateLimited):  # refused before it reached the site
            await api.set_backup_reserve(SITE_ID, 40)
        cloud.rate_limits.clear()
        clock.jump_to(clock.now() + timedelta(seconds=31))
        cloud.lose_answers(endpoint="backup")  # applied, answer lost: the caller decides
        with pytest.raises(ServerError):
            await api.set_backup_reserve(SITE_ID, 40)
        assert counted(api) == 0
        api.note_site_write_applied(SITE_ID)  # a read-back showed it applied
        await api.set_operation_mode(SITE_ID, "self_consumption")
        assert counted(api) == 2
    without_energy_scope, _ = cloud.issue_tokens(scopes=("openid", "offline_access"))
    async with FleetApi(
        StaticTokenProvider(Secret(without_energy_scope)), base_url=cloud.base_url, clock=clock
    ) as api:
        with pytest.raises(Forbidden):
            await api.set_backup_reserve(SITE_ID, 40)
        assert counted(api) == 0
    assert [w.setting for w in cloud.sites[SITE_ID].writes] == [
        "backup_reserve_percent",
        "default_real_mode",
    ]


async def test_live_status_is_read_at_most_once_per_interval(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    async with make_api(cloud, clock) as api:
        first = await api.live_status(SITE_ID)
        assert first["percentage_charged"] == 64.5
        clock.jump_to(clock.now() + timedelta(seconds=60))
        with pytest.raises(BudgetExhausted) as caught:
            await api.live_status(SITE_ID)
        assert caught.value.retry_after == pytest.approx(240, abs=2)
        clock.jump_to(clock.now() + timedelta(seconds=241))
        await api.live_status(SITE_ID)
    assert len(cloud.calls_to("live_status")) == 2


# ---------------------------------------------------------------- billing


async def test_billable_calls_are_counted_by_category(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    registry = CollectorRegistry()
    async with make_api(cloud, clock, registry) as api:
        await api.vehicles()
        await api.vehicle_data(AWAKE_VIN)
        with pytest.raises(VehicleUnavailable):
            await api.vehicle_data(ASLEEP_VIN)  # a 408 is billed too
        await api.charge_start(AWAKE_VIN)
        await api.set_backup_reserve(SITE_ID, 25)
    assert billable(registry, "data") == 3
    assert billable(registry, "commands") == 2
    assert billable(registry, "wakes") == 0
    assert (
        registry.get_sample_value(
            "gridmate_tesla_api_requests_total", {"endpoint": "vehicle_data", "status": "408"}
        )
        == 1
    )


# ---------------------------------------------------------------- vehicles


async def test_a_sleeping_car_is_never_woken_or_polled(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    async with make_api(cloud, clock) as api:
        listing = {v.vin: v for v in await api.vehicles()}
        assert listing[ASLEEP_VIN].state == "asleep"
        assert not listing[ASLEEP_VIN].online
        for _ in range(3):
            assert await api.vehicle_data_if_online(ASLEEP_VIN) is None
        awake = await api.vehicle_data_if_online(AWAKE_VIN)
    assert awake is not None
    assert awake["charge_state"]["battery_level"] == 55
    car = cloud.vehicles[ASLEEP_VIN]
    assert car.state == "asleep"
    assert car.wakes == 0
    assert cloud.calls_to("wake_up") == []
    assert cloud.calls_to("vehicle_data", vin=ASLEEP_VIN) == []
    assert all(c.vehicle_state != "asleep" for c in cloud.calls if c.vin is not None)


async def test_vehicle_data_of_a_sleeping_car_is_unavailable_and_leaves_it_asleep(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    async with make_api(cloud, clock) as api:
        with pytest.raises(VehicleUnavailable) as caught:
            await api.vehicle_data(ASLEEP_VIN, endpoints=("charge_state",))
    assert caught.value.status == 408
    assert cloud.vehicles[ASLEEP_VIN].state == "asleep"
    assert [c.vehicle_state for c in cloud.calls_to("vehicle_data")] == ["asleep"]


async def test_charge_commands_change_the_charging_state(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    car = cloud.vehicles[AWAKE_VIN]
    async with make_api(cloud, clock) as api:
        started = await api.charge_start(AWAKE_VIN)
        assert started.result and started.achieved
        assert car.charging_state == "Charging"
        data = await api.vehicle_data(AWAKE_VIN, endpoints=("charge_state",))
        assert data["charge_state"]["charging_state"] == "Charging"
        assert data["charge_state"]["charger_power"] > 0
        assert "drive_state" not in data

        again = await api.charge_start(AWAKE_VIN)
        assert not again.result and again.reason == "is_charging" and again.achieved

        stopped = await api.charge_stop(AWAKE_VIN)
        assert stopped.result
        assert car.charging_state == "Stopped"

        car.charging_state = "Disconnected"
        unplugged = await api.charge_start(AWAKE_VIN)
        assert not unplugged.achieved and unplugged.reason == "disconnected"
    assert [c[1] for c in car.commands] == [
        "charge_start",
        "charge_start",
        "charge_stop",
        "charge_start",
    ]


async def test_charge_limit_current_and_climate_commands_act_on_the_car(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    car = cloud.vehicles[AWAKE_VIN]
    async with make_api(cloud, clock) as api:
        limit = await api.set_charge_limit(AWAKE_VIN, 90)
        assert (limit.result, limit.achieved) == (True, True)
        same = await api.set_charge_limit(AWAKE_VIN, 90)  # Tesla: already_set, not a failure
        assert (same.result, same.reason, same.achieved) == (False, "already_set", True)
        car.charge_limit_soc_max = 95  # this car's own bound is narrower than Tesla's 100
        beyond = await api.set_charge_limit(AWAKE_VIN, 100)
        assert (beyond.result, beyond.achieved) == (False, False)
        assert beyond.reason == "invalid_charge_limit"

        amps = await api.set_charging_amps(AWAKE_VIN, 16)
        assert amps.achieved
        too_many = await api.set_charging_amps(AWAKE_VIN, car.charge_current_request_max + 1)
        assert not too_many.achieved and too_many.reason == "invalid_charging_amps"

        assert (await api.set_climate(AWAKE_VIN, True)).achieved
        data = await api.vehicle_data(AWAKE_VIN, endpoints=("charge_state", "climate_state"))
        assert data["charge_state"]["charge_limit_soc"] == 90
        assert data["charge_state"]["charge_limit_soc_max"] == 95
        assert data["charge_state"]["charge_current_request"] == 16
        assert data["charge_state"]["charge_current_request_max"] == 32
        assert data["climate_state"]["is_climate_on"] is True
        assert (await api.set_climate(AWAKE_VIN, False)).achieved
        assert car.climate_on is False

        # Values Tesla never takes are refused before anything is sent (or billed).
        sent = len(cloud.calls)
        for bad in (49, 101, 80.5, True):
            with pytest.raises(ValueError, match="charge limit"):
                await api.set_charge_limit(AWAKE_VIN, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="charging current"):
            await api.set_charging_amps(AWAKE_VIN, -1)
        assert len(cloud.calls) == sent
    # Tesla's documented endpoints and bodies.
    assert [(c[1], p) for c, p in zip(car.commands, car.command_parameters, strict=True)] == [
        ("set_charge_limit", {"percent": 90}),
        ("set_charge_limit", {"percent": 90}),
        ("set_charge_limit", {"percent": 100}),
        ("set_charging_amps", {"charging_amps": 16}),
        ("set_charging_amps", {"charging_amps": 33}),
        ("auto_conditioning_start", {}),
        ("auto_conditioning_stop", {}),
    ]
    assert car.charge_limit_soc == 90 and car.charge_amps == 16
    paths = {c.path for c in cloud.calls_to("set_charge_limit")}
    assert paths == {f"/api/1/vehicles/{AWAKE_VIN}/command/set_charge_limit"}


async def test_a_lower_charge_limit_ends_charging_that_reached_it(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    car = cloud.vehicles[AWAKE_VIN]
    car.battery_level = 70
    async with make_api(cloud, clock) as api:
        assert (await api.charge_start(AWAKE_VIN)).achieved
        assert (await api.set_charge_limit(AWAKE_VIN, 60)).achieved
    assert car.charging_state == "Complete"


# ---------------------------------------------------------------- energy sites


async def test_energy_site_reads_and_writes(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    site = cloud.sites[SITE_ID]
    site.battery_power_w = 2500
    site.grid_power_w = -300
    async with make_api(cloud, clock) as api:
        assert await api.energy_sites() == [SITE_ID]
        live = await api.live_status(SITE_ID)
        assert live["battery_power"] == 2500 and live["grid_power"] == -300
        assert live["energy_left"] == pytest.approx(13500 * 0.645, abs=0.1)

        await api.set_backup_reserve(SITE_ID, 80)
        await api.set_backup_reserve(SITE_ID, 100)
        await api.set_operation_mode(SITE_ID, "autonomous")
        info = await api.site_info(SITE_ID)
    assert info["backup_reserve_percent"] == 100
    assert info["default_real_mode"] == "autonomous"
    assert info["nameplate_energy"] == 13500
    assert [(w.setting, w.value) for w in site.writes] == [
        ("backup_reserve_percent", 80),
        ("backup_reserve_percent", 100),
        ("default_real_mode", "autonomous"),
    ]


@pytest.mark.parametrize("refused", [81, 85, 99])
async def test_reserves_between_80_and_100_are_rejected_by_tesla(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, refused: int
) -> None:
    async with make_api(cloud, clock) as api:
        with pytest.raises(RejectedValue) as caught:
            await api.set_backup_reserve(SITE_ID, refused)
    assert caught.value.status == 400
    assert "0 and 80, or 100" in str(caught.value)
    assert cloud.sites[SITE_ID].backup_reserve_percent == 20
    assert cloud.sites[SITE_ID].writes == []


async def test_out_of_range_values_are_refused_before_sending(
    cloud: TeslaCloudSimulator, clock: SimulatedClock
) -> None:
    async with make_api(cloud, clock) as api:
        with pytest.raises(ValueError, match="0-100"):
            await api.set_backup_reserve(SITE_ID, 101)
        with pytest.raises(ValueError, match="operation mode"):
            await api.set_operation_mode(SITE_ID, "eco")  # type: ignore[arg-type]
    assert cloud.calls == []


def test_reserve_rule_helpers() -> None:
    assert [is_accepted_backup_reserve(p) for p in (0, 80, 81, 99, 100)] == [
        True,
        True,
        False,
        False,
        True,
    ]
    assert [nearest_accepted_backup_reserve(p) for p in (-5, 50, 81, 99, 100, 120)] == [
        0,
        50,
        80,
        80,
        100,
        100,
    ]


# ---------------------------------------------------------------- secrets


async def test_tokens_never_reach_the_log(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, caplog: pytest.LogCaptureFixture
) -> None:
    stale, _ = cloud.issue_tokens()
    cloud.expire_access_tokens()
    caplog.set_level(logging.DEBUG)
    cloud.add_rate_limit(1, window=60, endpoint="site_info")
    async with FleetApi(
        StaticTokenProvider(Secret(stale)), base_url=cloud.base_url, clock=clock
    ) as api:
        with pytest.raises(Unauthorized):
            await api.site_info(SITE_ID)
    assert caplog.records, "expected the client to log something"
    for record in caplog.records:
        text = record.getMessage() + repr(getattr(record, "fields", {})) + str(record.args)
        assert stale not in text
