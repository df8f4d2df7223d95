"""gridmate's own Tesla OAuth refresh flow against the simulated token endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from gridmate.runtime.backoff import Backoff
from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.sim.tesla_cloud import TeslaCloudSimulator, tesla_cloud_simulator
from gridmate.tesla.fleet_api import FleetApi
from gridmate.tesla.tokens import OAuthTokenProvider, TokenEvent, TokenUnavailable

CLIENT_ID = "gridmate-test-client"
START = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


@pytest_asyncio.fixture
async def cloud(clock: SimulatedClock) -> AsyncIterator[TeslaCloudSimulator]:
    async with tesla_cloud_simulator(clock=clock, client_id=CLIENT_ID) as simulator:
        yield simulator


def make_provider(
    cloud: TeslaCloudSimulator,
    clock: SimulatedClock,
    state: Path,
    seed: str | None,
    *,
    events: list[TokenEvent] | None = None,
    registry: CollectorRegistry | None = None,
    **kwargs: object,
) -> OAuthTokenProvider:
    return OAuthTokenProvider(
        CLIENT_ID,
        state,
        initial_refresh_token=Secret(seed) if seed else None,
        token_url=cloud.token_url,
        clock=clock,
        registry=registry,
        on_event=events.append if events is not None else None,
        backoff=Backoff(initial=1, cap=1, jitter=False),
        **kwargs,  # type: ignore[arg-type]
    )


def saved_refresh_token(path: Path) -> str:
    return str(json.loads(path.read_text())["refresh_token"])


def refreshes(cloud: TeslaCloudSimulator) -> list[str]:
    return [e.kind for e in cloud.oauth_events if e.kind != "issued"]


async def test_seed_is_taken_over_and_rotated_into_a_private_file(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    state = tmp_path / "tesla-oauth.json"
    tokens = make_provider(cloud, clock, state, seed)
    try:
        access = await tokens.access_token()
    finally:
        await tokens.aclose()
    refreshed = cloud.oauth_events[-1]
    assert refreshed.kind == "refreshed"
    assert saved_refresh_token(state) == refreshed.refresh_token != seed
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == [state.name]  # no temp files left
    assert tokens.expires_at == START + timedelta(hours=8)
    assert access.reveal() not in repr(access)


async def test_the_new_refresh_token_is_on_disk_before_the_access_token_is_used(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    state = tmp_path / "tesla-oauth.json"
    on_disk_at_first_use: list[bool] = []
    cloud.first_use_hooks.append(
        lambda _access, refresh: on_disk_at_first_use.append(saved_refresh_token(state) == refresh)
    )
    tokens = make_provider(cloud, clock, state, seed)
    api = FleetApi(tokens, base_url=cloud.base_url, clock=clock)
    try:
        await api.vehicles()
        # Tesla voids the access token early; the 401 makes the provider refresh.
        cloud.expire_access_tokens()
        await api.vehicles()
    finally:
        await api.aclose()
        await tokens.aclose()
    assert refreshes(cloud) == ["refreshed", "refreshed"]
    assert on_disk_at_first_use == [True, True]


async def test_a_restart_continues_from_the_saved_token_not_the_void_seed(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    state = tmp_path / "tesla-oauth.json"
    first = make_provider(cloud, clock, state, seed)
    await first.access_token()
    await first.aclose()

    # The process dies; a new one starts with the same configuration.
    clock.jump_to(START + timedelta(hours=9))
    second = make_provider(cloud, clock, state, seed)
    try:
        await second.access_token()
    finally:
        await second.aclose()
    assert refreshes(cloud) == ["refreshed", "refreshed"]


async def test_a_failed_save_holds_the_token_back_until_it_is_saved(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    directory = tmp_path / "state"
    directory.mkdir()
    state = directory / "tesla-oauth.json"
    tokens = make_provider(cloud, clock, state, seed)
    used: list[str] = []
    cloud.first_use_hooks.append(lambda access, _refresh: used.append(access))
    api = FleetApi(tokens, base_url=cloud.base_url, clock=clock)
    try:
        await api.vehicles()
        clock.jump_to(START + timedelta(hours=8))  # the access token has expired

        shutil.rmtree(directory)  # the state directory vanished: saving must fail
        with pytest.raises(TokenUnavailable) as caught:
            await api.vehicles()
        assert caught.value.code == "state_not_saved"
        assert refreshes(cloud) == ["refreshed", "refreshed"]
        assert len(used) == 1  # the second access token was never sent

        directory.mkdir()
        await api.vehicles()
        # Saved now, without another refresh (the old refresh token is void anyway).
        assert refreshes(cloud) == ["refreshed", "refreshed"]
        assert saved_refresh_token(state) == cloud.oauth_events[-1].refresh_token
        assert len(used) == 2
    finally:
        await api.aclose()
        await tokens.aclose()


async def test_concurrent_callers_share_one_refresh(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    tokens = make_provider(cloud, clock, tmp_path / "tesla-oauth.json", seed)
    try:
        results = await asyncio.gather(*(tokens.access_token() for _ in range(10)))
    finally:
        await tokens.aclose()
    assert len({r.reveal() for r in results}) == 1
    assert refreshes(cloud) == ["refreshed"]


async def test_refreshes_shortly_before_expiry(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    tokens = make_provider(cloud, clock, tmp_path / "tesla-oauth.json", seed, refresh_margin=300)
    try:
        first = await tokens.access_token()
        clock.jump_to(START + timedelta(hours=7, minutes=54))
        assert await tokens.access_token() == first
        clock.jump_to(START + timedelta(hours=7, minutes=56))
        assert await tokens.access_token() != first
    finally:
        await tokens.aclose()
    assert refreshes(cloud) == ["refreshed", "refreshed"]


async def test_a_reused_refresh_token_is_refused_and_not_retried(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    user = make_provider(cloud, clock, tmp_path / "a.json", seed)
    await user.access_token()  # uses up the seed
    await user.aclose()

    events: list[TokenEvent] = []
    registry = CollectorRegistry()
    copycat = make_provider(
        cloud, clock, tmp_path / "b.json", seed, events=events, registry=registry
    )
    try:
        for _ in range(3):
            with pytest.raises(TokenUnavailable) as caught:
                await copycat.access_token()
            assert caught.value.code == "refresh_token_rejected"
        assert "sign in to Tesla again" in caught.value.reason
        assert copycat.health() is not None
    finally:
        await copycat.aclose()
    assert refreshes(cloud) == ["refreshed", "rejected"]
    assert [(e.kind, e.reason) for e in events] == [("failing", "refresh_token_rejected")]
    assert (
        registry.get_sample_value(
            "gridmate_tesla_token_sync_errors_total",
            {"source": "oauth", "reason": "refresh_token_rejected"},
        )
        == 1  # one attempt with Tesla; the later calls were answered locally
    )


async def test_a_newly_configured_seed_replaces_a_dead_state(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    state = tmp_path / "tesla-oauth.json"
    _, old_seed = cloud.issue_tokens()
    await make_provider(cloud, clock, tmp_path / "other.json", old_seed).access_token()
    stale = make_provider(cloud, clock, state, old_seed)
    with pytest.raises(TokenUnavailable):
        await stale.access_token()
    await stale.aclose()

    _, new_seed = cloud.issue_tokens()  # the user signed in again
    fresh = make_provider(cloud, clock, state, new_seed)
    try:
        await fresh.access_token()
    finally:
        await fresh.aclose()
    assert refreshes(cloud)[-1] == "refreshed"


async def test_temporary_oauth_trouble_keeps_the_valid_token(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    events: list[TokenEvent] = []
    tokens = make_provider(cloud, clock, tmp_path / "tesla-oauth.json", seed, events=events)
    try:
        first = await tokens.access_token()
        cloud.inject_oauth_failures(1, status=503)
        clock.jump_to(START + timedelta(hours=7, minutes=58))  # refresh due, token valid
        assert await tokens.access_token() == first
        clock.jump_to(clock.now() + timedelta(seconds=2))  # backoff passed
        assert await tokens.access_token() != first
    finally:
        await tokens.aclose()
    assert [(e.kind, e.reason) for e in events] == [
        ("failing", "auth_server_error"),
        ("recovered", "auth_server_error"),
    ]


async def test_warns_well_before_the_refresh_token_expires(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    events: list[TokenEvent] = []
    tokens = make_provider(cloud, clock, tmp_path / "tesla-oauth.json", seed, events=events)
    try:
        await tokens.access_token()
        # gridmate was stopped for 80 days; Tesla's auth server is down on restart.
        clock.jump_to(START + timedelta(days=80))
        cloud.inject_oauth_failures(1, status=503)
        with pytest.raises(TokenUnavailable):
            await tokens.access_token()
    finally:
        await tokens.aclose()
    expiring = [e for e in events if e.kind == "expiring"]
    assert len(expiring) == 1
    assert expiring[0].expires_at is not None
    assert abs(expiring[0].expires_at - (START + timedelta(days=90))) < timedelta(seconds=5)
    assert "sign in to Tesla again" in expiring[0].detail


async def test_a_fresh_refresh_token_ends_the_expiry_warning(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    events: list[TokenEvent] = []
    tokens = make_provider(cloud, clock, tmp_path / "tesla-oauth.json", seed, events=events)
    try:
        await tokens.access_token()
        clock.jump_to(START + timedelta(days=80))  # warned, then refreshed at once
        await tokens.access_token()
        clock.jump_to(clock.now() + timedelta(hours=9))
        await tokens.access_token()  # a young refresh token: nothing more to say
    finally:
        await tokens.aclose()
    assert [(e.kind, e.reason) for e in events] == [
        ("expiring", "refresh_token_expiring"),
        ("recovered", "refresh_token_expiring"),
    ]


async def test_background_keepalive_refreshes_an_idle_login(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    _, seed = cloud.issue_tokens()
    state = tmp_path / "tesla-oauth.json"
    tokens = make_provider(cloud, clock, state, seed, keepalive_interval=timedelta(days=7))
    await tokens.access_token()
    before = saved_refresh_token(state)
    clock.jump_to(START + timedelta(days=8))  # no API call for a week
    stop = asyncio.Event()
    task = asyncio.create_task(tokens.run(stop))
    for _ in range(200):
        if saved_refresh_token(state) != before:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    await tokens.aclose()
    assert saved_refresh_token(state) != before
    assert refreshes(cloud) == ["refreshed", "refreshed"]


async def test_no_token_at_all_and_an_unreadable_state_file(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    nothing = make_provider(cloud, clock, tmp_path / "missing.json", None)
    with pytest.raises(TokenUnavailable) as missing:
        await nothing.access_token()
    assert missing.value.code == "no_refresh_token"
    await nothing.aclose()

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    unreadable = make_provider(cloud, clock, broken, "EU_some-seed")
    with pytest.raises(TokenUnavailable) as caught:
        await unreadable.access_token()
    await unreadable.aclose()
    assert caught.value.code == "state_unreadable"
    assert broken.read_text() == "{not json"  # left untouched
    assert refreshes(cloud) == []


async def test_a_rotated_refresh_token_is_scrubbed_from_logs(
    cloud: TeslaCloudSimulator, clock: SimulatedClock, tmp_path: Path
) -> None:
    import io
    import logging

    from gridmate.runtime.logs import configure_logging, get_logger

    _, seed = cloud.issue_tokens()
    tokens = make_provider(cloud, clock, tmp_path / "tesla-oauth.json", seed)
    try:
        await tokens.access_token()
    finally:
        await tokens.aclose()
    rotated = cloud.oauth_events[-1].refresh_token
    assert rotated and rotated != seed
    stream = io.StringIO()
    configure_logging("info", "text", stream)
    try:
        get_logger("tesla").warning(f"token endpoint said {rotated}", body=rotated)
    finally:
        logging.getLogger().handlers.clear()
    assert rotated not in stream.getvalue()
    assert "********" in stream.getvalue()
