"""Reading TeslaMate's token from a real PostgreSQL laid out like TeslaMate's database.

Tokens are encrypted here by an encoder written from Cloak's published format
(see test_tesla_cloak.py), not by gridmate's code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import CollectorRegistry

from gridmate.runtime.backoff import Backoff
from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.sim.tesla_cloud import tesla_cloud_simulator
from gridmate.tesla.fleet_api import FleetApi, Unauthorized
from gridmate.tesla.tokens import (
    TeslaMateTokenProvider,
    TokenEvent,
    TokenUnavailable,
    token_kind,
)

pytestmark = pytest.mark.services

KEY = "a-teslamate-ENCRYPTION_KEY-of-64-characters-0123456789abcdefghijk"
START = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def teslamate_encrypt(plaintext: str, encryption_key: str) -> bytes:
    """Cloak AES.GCM.V1 as TeslaMate's vault writes it."""
    key = hashlib.sha256(encryption_key.encode()).digest()
    iv = os.urandom(12)
    sealed = AESGCM(key).encrypt(iv, plaintext.encode(), b"AES256GCM")
    return b"\x01\x0aAES.GCM.V1" + iv + sealed[-16:] + sealed[:-16]


def jwt(expires: datetime, subject: str = "owner") -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"sub": subject, "exp": int(expires.timestamp()), "jti": os.urandom(4).hex()}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


async def make_layout(dsn: str, schema: str, *, encrypted: bool = True) -> None:
    """TeslaMate's tokens table in ``private`` (2.2.0+) or ``public`` (older), nothing else."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS private CASCADE")
        await conn.execute("DROP TABLE IF EXISTS public.tokens")
        if schema == "none":
            return
        if schema == "private":
            await conn.execute("CREATE SCHEMA private")
        kind = "bytea" if encrypted else "text"
        await conn.execute(
            f"CREATE TABLE {schema}.tokens (id serial PRIMARY KEY, refresh {kind}, "
            f"access {kind}, inserted_at timestamp(0) NOT NULL, "
            "updated_at timestamp(0) NOT NULL)"
        )
    finally:
        await conn.close()


async def save_tokens(
    dsn: str, table: str, access: str, *, key: str = KEY, touch: bool = True
) -> None:
    """What TeslaMate's Auth.save does: one row, updated in place."""
    access_value: object = teslamate_encrypt(access, key) if key else access
    refresh_value: object = teslamate_encrypt("EU_refresh-" + access[-6:], key) if key else "r"
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            updated = await conn.execute(
                f"UPDATE {table} SET access = $1, refresh = $2"
                + (", updated_at = updated_at + interval '1 second'" if touch else ""),
                access_value,
                refresh_value,
            )
            if updated == "UPDATE 0":
                await conn.execute(
                    f"INSERT INTO {table} (access, refresh, inserted_at, updated_at) "
                    "VALUES ($1, $2, now(), now())",
                    access_value,
                    refresh_value,
                )
    finally:
        await conn.close()


async def row(dsn: str, table: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow(f"SELECT refresh, access, updated_at FROM {table}")
    finally:
        await conn.close()


class TcpRelay:
    """A loopback TCP relay to PostgreSQL that a test can cut and restore."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}


def via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


@pytest_asyncio.fixture
async def private_layout(postgres_dsn: str) -> AsyncIterator[str]:
    await make_layout(postgres_dsn, "private")
    yield postgres_dsn


def provider(
    dsn: str,
    clock: SimulatedClock,
    *,
    key: str = KEY,
    registry: CollectorRegistry | None = None,
    events: list[TokenEvent] | None = None,
    **kwargs: object,
) -> TeslaMateTokenProvider:
    return TeslaMateTokenProvider(
        dsn,
        Secret(key),
        Secret("teslamate-db-password"),
        clock=clock,
        registry=registry,
        backoff=Backoff(initial=1, cap=1, jitter=False),
        on_event=events.append if events is not None else None,
        **kwargs,  # type: ignore[arg-type]
    )


def errors(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value(
        "gridmate_tesla_token_sync_errors_total", {"source": "teslamate", "reason": reason}
    )
    return value or 0.0


# ---------------------------------------------------------------- locations


async def test_reads_private_tokens_of_teslamate_2_2(
    private_layout: str, clock: SimulatedClock
) -> None:
    token = jwt(START + timedelta(hours=8))
    await save_tokens(private_layout, "private.tokens", token)
    registry = CollectorRegistry()
    tokens = provider(private_layout, clock, registry=registry)
    try:
        assert (await tokens.access_token()).reveal() == token
        assert tokens.table == "private.tokens"
        assert tokens.expires_at == START + timedelta(hours=8)
        assert tokens.health() is None
    finally:
        await tokens.aclose()
    assert (
        registry.get_sample_value(
            "gridmate_tesla_token_expiry_timestamp_seconds", {"source": "teslamate"}
        )
        == (START + timedelta(hours=8)).timestamp()
    )


async def test_reads_public_tokens_of_older_teslamate(
    postgres_dsn: str, clock: SimulatedClock
) -> None:
    await make_layout(postgres_dsn, "public")
    token = jwt(START + timedelta(hours=8))
    await save_tokens(postgres_dsn, "public.tokens", token)
    tokens = provider(postgres_dsn, clock)
    try:
        assert (await tokens.access_token()).reveal() == token
        assert tokens.table == "public.tokens"
    finally:
        await tokens.aclose()


async def test_private_wins_over_a_leftover_public_table(
    private_layout: str, clock: SimulatedClock
) -> None:
    conn = await asyncpg.connect(private_layout)
    await conn.execute(
        "CREATE TABLE public.tokens (id serial PRIMARY KEY, refresh bytea, access bytea, "
        "inserted_at timestamp(0) NOT NULL, updated_at timestamp(0) NOT NULL)"
    )
    await conn.close()
    current, stale = jwt(START + timedelta(hours=8), "new"), jwt(START + timedelta(hours=1), "old")
    await save_tokens(private_layout, "private.tokens", current)
    await save_tokens(private_layout, "public.tokens", stale)
    tokens = provider(private_layout, clock)
    try:
        assert (await tokens.access_token()).reveal() == current
    finally:
        await tokens.aclose()


async def test_plain_text_tokens_of_teslamate_before_1_27(
    postgres_dsn: str, clock: SimulatedClock
) -> None:
    await make_layout(postgres_dsn, "public", encrypted=False)
    token = jwt(START + timedelta(hours=8))
    await save_tokens(postgres_dsn, "public.tokens", token, key="")
    tokens = provider(postgres_dsn, clock)
    try:
        assert (await tokens.access_token()).reveal() == token
    finally:
        await tokens.aclose()


async def test_missing_table_and_empty_table_are_named(
    postgres_dsn: str, clock: SimulatedClock
) -> None:
    await make_layout(postgres_dsn, "none")
    registry = CollectorRegistry()
    tokens = provider(postgres_dsn, clock, registry=registry)
    try:
        with pytest.raises(TokenUnavailable) as missing:
            await tokens.access_token()
        assert missing.value.code == "table_missing"
        assert "private.tokens" in missing.value.reason
        assert errors(registry, "table_missing") == 1

        await make_layout(postgres_dsn, "private")
        clock.jump_to(clock.now() + timedelta(seconds=2))
        with pytest.raises(TokenUnavailable) as empty:
            await tokens.access_token()
        assert empty.value.code == "no_tokens"
    finally:
        await tokens.aclose()


# ---------------------------------------------------------------- changes


async def test_updated_at_change_is_picked_up(private_layout: str, clock: SimulatedClock) -> None:
    first = jwt(START + timedelta(hours=8), "first")
    await save_tokens(private_layout, "private.tokens", first)
    tokens = provider(private_layout, clock, check_interval=60, reread_interval=3600)
    try:
        assert (await tokens.access_token()).reveal() == first
        second = jwt(START + timedelta(hours=14), "second")
        await save_tokens(private_layout, "private.tokens", second)  # TeslaMate refreshed
        assert (await tokens.access_token()).reveal() == first  # not yet checked again
        clock.jump_to(clock.now() + timedelta(seconds=61))
        assert (await tokens.access_token()).reveal() == second
        assert tokens.expires_at == START + timedelta(hours=14)
    finally:
        await tokens.aclose()


async def test_periodic_reread_even_without_updated_at_change(
    private_layout: str, clock: SimulatedClock
) -> None:
    first = jwt(START + timedelta(hours=8), "first")
    await save_tokens(private_layout, "private.tokens", first)
    tokens = provider(private_layout, clock, check_interval=60, reread_interval=1800)
    try:
        assert (await tokens.access_token()).reveal() == first
        second = jwt(START + timedelta(hours=9), "second")
        await save_tokens(private_layout, "private.tokens", second, touch=False)
        clock.jump_to(clock.now() + timedelta(seconds=61))
        assert (await tokens.access_token()).reveal() == first
        clock.jump_to(clock.now() + timedelta(seconds=1800))
        assert (await tokens.access_token()).reveal() == second
    finally:
        await tokens.aclose()


# ---------------------------------------------------------------- failures


async def test_wrong_key_is_specific_and_the_last_good_token_is_kept(
    private_layout: str, clock: SimulatedClock
) -> None:
    good = jwt(START + timedelta(hours=8))
    await save_tokens(private_layout, "private.tokens", good)
    registry = CollectorRegistry()
    events: list[TokenEvent] = []
    tokens = provider(private_layout, clock, registry=registry, events=events)
    stranger = provider(private_layout, clock, key="not-the-teslamate-key")
    try:
        assert (await tokens.access_token()).reveal() == good

        # TeslaMate was restarted with another ENCRYPTION_KEY and saved a new token.
        await save_tokens(
            private_layout, "private.tokens", jwt(START + timedelta(hours=9)), key="changed-key"
        )
        clock.jump_to(clock.now() + timedelta(seconds=61))
        assert (await tokens.access_token()).reveal() == good
        assert tokens.problem == "wrong_encryption_key"
        assert errors(registry, "wrong_encryption_key") == 1
        assert [(e.kind, e.reason) for e in events] == [("failing", "wrong_encryption_key")]
        assert events[0].expires_at == START + timedelta(hours=8)

        # Once the kept token expires there is nothing left to hand out.
        clock.jump_to(START + timedelta(hours=8))
        with pytest.raises(TokenUnavailable) as expired:
            await tokens.access_token()
        assert expired.value.code == "wrong_encryption_key"
        assert "expired" in expired.value.reason
        assert tokens.health() is not None

        with pytest.raises(TokenUnavailable) as never:
            await stranger.access_token()
        assert never.value.code == "wrong_encryption_key"
        assert "ENCRYPTION_KEY" in never.value.reason
    finally:
        await tokens.aclose()
        await stranger.aclose()


async def test_database_down_then_back(private_layout: str, clock: SimulatedClock) -> None:
    target = urlsplit(private_layout)
    relay = TcpRelay(target.hostname or "127.0.0.1", target.port or 5432)
    await relay.start()
    good = jwt(START + timedelta(hours=8), "good")
    await save_tokens(private_layout, "private.tokens", good)
    registry = CollectorRegistry()
    events: list[TokenEvent] = []
    tokens = provider(
        via(private_layout, relay.port), clock, registry=registry, events=events, check_interval=60
    )
    try:
        assert (await tokens.access_token()).reveal() == good

        await relay.cut()
        clock.jump_to(clock.now() + timedelta(seconds=61))
        assert (await tokens.access_token()).reveal() == good  # kept while still valid
        assert tokens.problem == "database_unreachable"
        assert errors(registry, "database_unreachable") >= 1

        # Meanwhile TeslaMate refreshed; we cannot see it yet.
        newer = jwt(START + timedelta(hours=14), "newer")
        await save_tokens(private_layout, "private.tokens", newer)
        clock.jump_to(START + timedelta(hours=8))
        with pytest.raises(TokenUnavailable) as down:
            await tokens.access_token()
        assert down.value.code == "database_unreachable"

        await relay.start()  # same port: the database is back
        clock.jump_to(clock.now() + timedelta(seconds=2))
        assert (await tokens.access_token()).reveal() == newer
        assert tokens.problem is None
        assert [e.kind for e in events] == ["failing", "recovered"]
    finally:
        await tokens.aclose()
        with contextlib.suppress(AssertionError):
            await relay.cut()


async def test_no_database_at_all(clock: SimulatedClock) -> None:
    relay = TcpRelay("127.0.0.1", 9)
    await relay.start()
    port = relay.port
    await relay.cut()
    registry = CollectorRegistry()
    tokens = provider(
        f"postgresql://teslamate@127.0.0.1:{port}/teslamate", clock, registry=registry
    )
    with pytest.raises(TokenUnavailable) as caught:
        await tokens.access_token()
    assert caught.value.code == "database_unreachable"
    # The retry is not due yet, so a second call does not hammer the database.
    with pytest.raises(TokenUnavailable):
        await tokens.access_token()
    assert errors(registry, "database_unreachable") == 1
    await tokens.aclose()


async def test_an_expired_token_in_the_database_is_reported(
    private_layout: str, clock: SimulatedClock
) -> None:
    await save_tokens(private_layout, "private.tokens", jwt(START - timedelta(minutes=5)))
    tokens = provider(private_layout, clock)
    try:
        with pytest.raises(TokenUnavailable) as caught:
            await tokens.access_token()
        assert caught.value.code == "token_expired"
        assert "TeslaMate is not refreshing it" in caught.value.reason
    finally:
        await tokens.aclose()


# ---------------------------------------------------------------- with the Fleet API


async def test_never_refreshes_and_picks_up_teslamates_refresh_after_a_401(
    private_layout: str, clock: SimulatedClock
) -> None:
    async with tesla_cloud_simulator(clock=clock) as cloud:
        old_access, _refresh = cloud.issue_tokens()
        await save_tokens(private_layout, "private.tokens", old_access)
        before = await row(private_layout, "private.tokens")
        tokens = provider(private_layout, clock)
        api = FleetApi(tokens, base_url=cloud.base_url, clock=clock)
        try:
            assert await api.vehicles() == []

            # Tesla invalidated the token; TeslaMate has not refreshed yet.
            cloud.expire_access_tokens()
            with pytest.raises(Unauthorized):
                await api.vehicles()
            # Nobody asked Tesla for a new token, and the row was left alone.
            assert [e.kind for e in cloud.oauth_events] == ["issued"]
            assert await row(private_layout, "private.tokens") == before

            # TeslaMate refreshes; the next 401 re-reads the row and the retry works.
            new_access, _ = cloud.issue_tokens()
            await save_tokens(private_layout, "private.tokens", new_access)
            assert await api.vehicles() == []
            assert [c.status for c in cloud.calls_to("vehicles")][-2:] == [401, 200]
        finally:
            await api.aclose()
            await tokens.aclose()


async def test_background_sync_runs_until_stopped(
    private_layout: str, clock: SimulatedClock
) -> None:
    await save_tokens(private_layout, "private.tokens", jwt(START + timedelta(hours=8)))
    registry = CollectorRegistry()
    tokens = provider(private_layout, clock, registry=registry)
    stop = asyncio.Event()
    task = asyncio.create_task(tokens.run(stop))
    for _ in range(200):
        if tokens.expires_at is not None:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert tokens.expires_at == START + timedelta(hours=8)
    assert registry.get_sample_value(
        "gridmate_tesla_token_last_success_timestamp_seconds", {"source": "teslamate"}
    )


async def test_teslamates_default_owner_api_token_is_named_with_the_fix(
    private_layout: str, clock: SimulatedClock
) -> None:
    async with tesla_cloud_simulator(clock=clock) as cloud:
        owner_access, _refresh = cloud.issue_owner_api_tokens()
        await save_tokens(private_layout, "private.tokens", owner_access)
        registry = CollectorRegistry()
        tokens = provider(private_layout, clock, registry=registry)
        api = FleetApi(tokens, base_url=cloud.base_url, clock=clock)
        try:
            with pytest.raises(TokenUnavailable) as caught:
                await api.vehicles()
            assert caught.value.code == "owner_api_token"
            assert "TESLA_AUTH_CLIENT_ID" in caught.value.reason
            assert 'token_source = "oauth"' in caught.value.reason
            health = tokens.health()
            assert health is not None and "owner-API token" in health
            assert errors(registry, "owner_api_token") == 1
            # Not sent to Tesla: it cannot work there.
            assert cloud.calls_to("vehicles") == []

            # TeslaMate signed in again with a Fleet API application.
            fleet_access, _ = cloud.issue_tokens()
            await save_tokens(private_layout, "private.tokens", fleet_access)
            clock.jump_to(clock.now() + timedelta(minutes=10))
            assert await api.vehicles() == []
            assert tokens.health() is None
        finally:
            await api.aclose()
            await tokens.aclose()


def test_token_kinds_are_told_apart_by_audience_and_issuer() -> None:
    def token(**claims: object) -> str:
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"eyJhbGciOiJSUzI1NiJ9.{body}.c2ln"

    fleet_aud = ["https://fleet-api.prd.eu.vn.cloud.tesla.com", "https://auth.tesla.com/x"]
    assert token_kind(token(aud=fleet_aud)) == "fleet_api"
    assert token_kind(token(aud="https://fleet-api.prd.na.vn.cloud.tesla.com")) == "fleet_api"
    assert token_kind(token(iss="https://fleet-auth.tesla.com/oauth2/v3/nts")) == "fleet_api"
    assert token_kind(token(aud=["https://owner-api.teslamotors.com/"])) == "owner_api"
    assert token_kind(token(azp="ownerapi", iss="https://auth.tesla.com/oauth2/v3")) == "owner_api"
    assert token_kind(token(sub="x")) == "unknown"
    assert token_kind(token(aud=7)) == "unknown"
    assert token_kind("not-a-jwt") == "unknown"
    assert token_kind("a.!!!.c") == "unknown"
