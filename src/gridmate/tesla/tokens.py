"""Where Fleet API access tokens come from.

:class:`TokenProvider` is what :class:`~gridmate.tesla.fleet_api.FleetApi`
asks for a token before each request. Implementations:

* :class:`TeslaMateTokenProvider` reads the token TeslaMate keeps in its
  PostgreSQL database (``private.tokens``, or ``public.tokens`` before
  TeslaMate 2.2.0), decrypts it, and **never refreshes it**: Tesla's refresh
  tokens are single-use, so refreshing would log TeslaMate out. TeslaMate
  refreshes at 75% of the token's life; we re-read when ``updated_at``
  changes and periodically, and keep the last good token until it expires
  when the database is down, the key is wrong or the table is gone.
* :class:`OAuthTokenProvider` is for installations without TeslaMate: it owns
  the refresh token, rotates it with Tesla's OAuth server, and saves each new
  refresh token (atomically, mode 0600) **before** the new access token is
  used, since the old one is already void.
* :class:`StaticTokenProvider`: a fixed token (tests, demo).

Providers that can get a different token after a 401 also implement
``token_rejected(token)``; the Fleet API client calls it once before retrying.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from gridmate.runtime.backoff import Backoff
from gridmate.runtime.clock import Clock, SystemClock, sleep_or_wake
from gridmate.runtime.files import write_atomically
from gridmate.runtime.logs import get_logger
from gridmate.runtime.secrets import Secret
from gridmate.tesla._metrics import collector
from gridmate.tesla.cloak import CloakVault, MalformedCiphertext, WrongEncryptionKey
from gridmate.tesla.teslamate_db import TeslaMateDatabaseError, connect

__all__ = [
    "DEFAULT_TOKEN_URL",
    "OAuthTokenProvider",
    "StaticTokenProvider",
    "TeslaMateTokenProvider",
    "TokenEvent",
    "TokenProvider",
    "TokenUnavailable",
    "jwt_expiry",
    "token_kind",
]

log = get_logger("tesla.tokens")

DEFAULT_TOKEN_URL = "https://fleet-auth.prd.vn.cloud.tesla.com/oauth2/v3/token"
TOKEN_TABLES = ("private.tokens", "public.tokens")


class TokenUnavailable(Exception):
    """No usable access token; ``reason`` says why in words a person can act on.

    ``code`` is a short machine-readable cause (e.g. ``wrong_encryption_key``).
    """

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@runtime_checkable
class TokenProvider(Protocol):
    @property
    def expires_at(self) -> datetime | None:
        """When the current access token expires, if known."""

    async def access_token(self) -> Secret:
        """A token to send now; raises :class:`TokenUnavailable`."""


@dataclass(frozen=True)
class TokenEvent:
    """A change worth telling a person about (the notifier's token_failing/token_expiring)."""

    kind: Literal["failing", "recovered", "expiring"]
    source: Literal["teslamate", "oauth", "honeywell"]
    reason: str
    """Short cause, e.g. ``wrong_encryption_key``, ``refresh_token_rejected``."""
    detail: str
    """A sentence saying what happened and what to do."""
    expires_at: datetime | None = None
    """For ``failing``: until when the kept token still works; for ``expiring``:
    when the refresh token is expected to expire."""


EventHook = Callable[[TokenEvent], Any]


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT-shaped token, not verified; None if it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


def jwt_expiry(token: str) -> datetime | None:
    """The ``exp`` claim of a JWT-shaped token (not verified: we only schedule by it)."""
    claims = _jwt_claims(token)
    if claims is None:
        return None
    try:
        return datetime.fromtimestamp(float(claims["exp"]), UTC)
    except (ValueError, KeyError, TypeError, OverflowError):
        return None


TokenKind = Literal["fleet_api", "owner_api", "unknown"]


def token_kind(token: str) -> TokenKind:
    """Which API a Tesla access token was issued for, from its (unverified) claims.

    Fleet API tokens name the Fleet API hosts (``https://fleet-api.prd.<region>.vn.
    cloud.tesla.com``) in ``aud`` and come from the ``.../oauth2/v3/nts`` issuer.
    Owner-API tokens, TeslaMate's default (``TESLA_AUTH_CLIENT_ID=ownerapi``), name
    ``https://owner-api.teslamotors.com/`` and are issued to the ``ownerapi`` client.
    A token that says neither is "unknown" and is given the benefit of the doubt.
    """
    claims = _jwt_claims(token)
    if claims is None:
        return "unknown"
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list):
        audiences = []
    texts = [a for a in audiences if isinstance(a, str)]
    issuer = claims.get("iss") if isinstance(claims.get("iss"), str) else ""
    if any("fleet-api." in a for a in texts):
        return "fleet_api"
    if any("owner-api." in a for a in texts) or claims.get("azp") == "ownerapi":
        return "owner_api"
    if str(issuer).rstrip("/").endswith("/oauth2/v3/nts"):
        return "fleet_api"
    return "unknown"


OWNER_API_TOKEN_DETAIL = (
    "TeslaMate holds an owner-API token (its default, TESLA_AUTH_CLIENT_ID=ownerapi); the "
    "Fleet API refuses those, and the owner API itself answers 403 since June 2026. Sign "
    "TeslaMate in with your own Fleet API application (TESLA_API_HOST, TESLA_AUTH_HOST, "
    'TESLA_AUTH_CLIENT_ID), or use tesla.token_source = "oauth"; see docs/tesla.md'
)


async def _emit(hook: EventHook | None, event: TokenEvent) -> None:
    if hook is None:
        return
    try:
        result = hook(event)
        if inspect.isawaitable(result):
            await result
    except Exception:  # a broken hook must not break token handling
        log.exception("token event hook failed", kind=event.kind, reason=event.reason)


class _TokenMetrics:
    def __init__(self, registry: CollectorRegistry | None, source: str) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.errors = collector(
            Counter,
            registry,
            "gridmate_tesla_token_sync_errors",
            "Failed attempts to obtain a Tesla access token, by source and reason.",
            ("source", "reason"),
        )
        self.expiry = collector(
            Gauge,
            registry,
            "gridmate_tesla_token_expiry_timestamp_seconds",
            "When the access token in use expires (Unix time; 0 if unknown).",
            ("source",),
        ).labels(source)
        self.success = collector(
            Gauge,
            registry,
            "gridmate_tesla_token_last_success_timestamp_seconds",
            "When a token was last read or refreshed successfully (Unix time).",
            ("source",),
        ).labels(source)
        self.refreshes = collector(
            Counter,
            registry,
            "gridmate_tesla_token_refreshes",
            "Access tokens obtained: refreshed with Tesla (oauth) or newly read (teslamate).",
            ("source",),
        ).labels(source)
        self.refresh_expiry = collector(
            Gauge,
            registry,
            "gridmate_tesla_refresh_token_expiry_timestamp_seconds",
            "When gridmate's own refresh token is expected to expire (Unix time).",
            (),
        )
        self.source = source

    def error(self, reason: str) -> None:
        self.errors.labels(self.source, reason).inc()


# ---------------------------------------------------------------- static


class StaticTokenProvider:
    """Always the same token; for tests and the demo."""

    def __init__(self, token: Secret, expires_at: datetime | None = None) -> None:
        self._token = token
        self._expires_at = expires_at

    @property
    def expires_at(self) -> datetime | None:
        return self._expires_at

    async def access_token(self) -> Secret:
        return self._token


# ---------------------------------------------------------------- TeslaMate


class _SyncFailure(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TeslaMateTokenProvider:
    """The access token TeslaMate stores, read from its PostgreSQL database.

    ``dsn`` names the TeslaMate database (``postgresql://user@host:5432/teslamate``)
    without the password, which comes from ``db_password``. ``encryption_key``
    is TeslaMate's ``ENCRYPTION_KEY``.

    Reads happen on demand in :meth:`access_token` (at most every
    ``check_interval`` seconds, a cheap ``updated_at`` query; the token itself
    is decrypted again when ``updated_at`` changed or every
    ``reread_interval`` seconds). :meth:`run` does the same in the background
    so trouble is noticed, logged and counted even while no API call is made.
    Failures are retried with the runtime's :class:`Backoff`.
    """

    def __init__(
        self,
        dsn: str,
        encryption_key: Secret,
        db_password: Secret | None = None,
        *,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        reread_interval: float = 1800.0,
        check_interval: float = 60.0,
        expiry_margin: float = 60.0,
        connect_timeout: float = 5.0,
        backoff: Backoff | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self.dsn = dsn
        self._vault = CloakVault(encryption_key)
        self._password = db_password
        self._clock: Clock = clock or SystemClock()
        self.reread_interval = reread_interval
        self.check_interval = check_interval
        self.expiry_margin = expiry_margin
        self.connect_timeout = connect_timeout
        self._backoff = backoff or Backoff(initial=5.0, cap=300.0)
        self._on_event = on_event
        self._metrics = _TokenMetrics(registry, "teslamate")
        self._lock = asyncio.Lock()
        self._conn: Any = None
        self.table: str | None = None
        """``private.tokens`` or ``public.tokens`` once found."""
        self._token: Secret | None = None
        self._expires_at: datetime | None = None
        self._updated_at: Any = None
        self._last_full_read: datetime | None = None
        self._next_attempt: datetime | None = None
        self._problem: _SyncFailure | None = None

    @property
    def expires_at(self) -> datetime | None:
        return self._expires_at

    @property
    def problem(self) -> str | None:
        """The last failure's reason code while failing, else None."""
        return self._problem.reason if self._problem else None

    def health(self) -> str | None:
        """For ``daemon.add_health_check``: None, or why no usable token is at hand."""
        if self._token is None:
            return self._problem.detail if self._problem else "no token read from TeslaMate yet"
        if self._expired(self._clock.now()):
            return f"TeslaMate's token expired at {self._expires_at:%Y-%m-%d %H:%M} UTC"
        return None

    async def access_token(self) -> Secret:
        now = self._clock.now()
        if self._token is None or self._next_attempt is None or now >= self._next_attempt:
            await self.sync()
        now = self._clock.now()
        if self._token is None:
            problem = self._problem
            raise TokenUnavailable(
                problem.detail if problem else "no token read from TeslaMate yet",
                problem.reason if problem else None,
            )
        if self._expired(now):
            why = f"; last problem: {self._problem.detail}" if self._problem else ""
            raise TokenUnavailable(
                f"the token read from TeslaMate expired at {self._expires_at:%Y-%m-%d %H:%M} UTC"
                f"{why}",
                self._problem.reason if self._problem else "token_expired",
            )
        return self._token

    async def token_rejected(self, token: Secret) -> None:
        """Tesla refused ``token``: TeslaMate may have refreshed it meanwhile; read again."""
        if token == self._token:
            await self.sync(force=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the token fresh in the background until ``stop`` is set."""
        try:
            while not stop.is_set():
                await self.sync()
                wait = self.check_interval
                if self._next_attempt is not None:
                    wait = max(0.0, (self._next_attempt - self._clock.now()).total_seconds())
                await sleep_or_wake(self._clock, wait, stop)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)

    def _expired(self, now: datetime) -> bool:
        return self._expires_at is not None and now >= self._expires_at - timedelta(
            seconds=self.expiry_margin
        )

    async def sync(self, *, force: bool = False) -> None:
        """One read attempt now (unless a retry is not due); never raises."""
        async with self._lock:
            now = self._clock.now()
            if not force and self._next_attempt is not None and now < self._next_attempt:
                return
            try:
                await self._read(now, force=force)
            except _SyncFailure as failure:
                delay = self._backoff.next_delay()
                self._next_attempt = now + timedelta(seconds=delay)
                await self._failed(failure, delay)
            else:
                self._backoff.reset()
                self._next_attempt = now + timedelta(seconds=self.check_interval)
                self._metrics.success.set(now.timestamp())
                if self._problem is not None:
                    previous, self._problem = self._problem, None
                    log.info("teslamate token sync recovered", after=previous.reason)
                    await _emit(
                        self._on_event,
                        TokenEvent("recovered", "teslamate", previous.reason, "token read again"),
                    )

    async def _failed(self, failure: _SyncFailure, retry_in: float) -> None:
        self._metrics.error(failure.reason)
        keeping = (
            "none"
            if self._token is None
            else (f"{self._expires_at:%Y-%m-%dT%H:%M}Z" if self._expires_at else "unknown expiry")
        )
        changed = self._problem is None or self._problem.reason != failure.reason
        self._problem = failure
        log.warning(
            "teslamate token sync failed",
            reason=failure.reason,
            detail=failure.detail,
            kept_token_until=keeping,
            retry_in=f"{retry_in:.0f}s",
        )
        if changed:
            await _emit(
                self._on_event,
                TokenEvent(
                    "failing", "teslamate", failure.reason, failure.detail, self._expires_at
                ),
            )

    async def _connect(self) -> Any:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        try:
            self._conn = await connect(
                self.dsn, self._password, connect_timeout=self.connect_timeout,
                application_name="gridmate-tokens",
            )  # fmt: skip
        except TeslaMateDatabaseError as error:
            raise _SyncFailure(error.code, error.reason) from None
        return self._conn

    async def _locate_table(self, conn: Any) -> str:
        if self.table is not None:
            return self.table
        # Schema-qualified on purpose: since TeslaMate 2.2.0 the table is in
        # "private", which is not on the default search_path.
        row = await conn.fetchrow(
            "SELECT to_regclass('private.tokens') IS NOT NULL AS private, "
            "to_regclass('public.tokens') IS NOT NULL AS public"
        )
        if row["private"]:
            self.table = "private.tokens"
        elif row["public"]:
            self.table = "public.tokens"
        else:
            raise _SyncFailure(
                "table_missing",
                "neither private.tokens nor public.tokens exists; is the DSN TeslaMate's "
                "database, and has TeslaMate run its migrations?",
            )
        log.info("teslamate tokens table found", table=self.table)
        return self.table

    async def _read(self, now: datetime, *, force: bool) -> None:
        import asyncpg

        conn = await self._connect()
        try:
            table = await self._locate_table(conn)
            newest = await conn.fetchrow(
                f"SELECT updated_at, count(*) OVER () AS row_count FROM {table} "
                "ORDER BY updated_at DESC NULLS LAST LIMIT 1"
            )
            if newest is None:
                raise _SyncFailure(
                    "no_tokens",
                    f"{table} is empty: TeslaMate is not signed in to Tesla",
                )
            due = (
                force
                or self._token is None
                or newest["updated_at"] != self._updated_at
                or self._last_full_read is None
                or (now - self._last_full_read).total_seconds() >= self.reread_interval
            )
            if not due:
                return
            row = await conn.fetchrow(
                f"SELECT access, updated_at FROM {table} "
                "ORDER BY updated_at DESC NULLS LAST LIMIT 1"
            )
        except asyncpg.UndefinedTableError:
            self.table = None
            raise _SyncFailure(
                "table_missing", "the tokens table disappeared (TeslaMate migrating?)"
            ) from None
        except asyncpg.InsufficientPrivilegeError as error:
            raise _SyncFailure(
                "permission_denied",
                f"the database user may not read the tokens table: {error}",
            ) from None
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
            await self.aclose()
            raise _SyncFailure(
                "database_unreachable", "the connection to TeslaMate's database was lost"
            ) from None
        except asyncpg.PostgresError as error:
            raise _SyncFailure("query_failed", f"{type(error).__name__}: {error}") from None
        if row is None:
            raise _SyncFailure("no_tokens", f"{table} is empty: TeslaMate is not signed in")
        if newest["row_count"] > 1:
            log.warning("teslamate tokens table has several rows; using the newest", table=table)
        token = self._decrypt(row["access"])
        if token_kind(token.reveal()) == "owner_api":
            raise _SyncFailure("owner_api_token", OWNER_API_TOKEN_DETAIL)
        expires = jwt_expiry(token.reveal())
        if expires is not None and expires <= now:
            raise _SyncFailure(
                "token_expired",
                f"the token in {table} expired at {expires:%Y-%m-%d %H:%M} UTC; TeslaMate is "
                "not refreshing it (is it running and signed in?)",
            )
        changed = token != self._token
        self._token = token
        self._expires_at = expires
        self._updated_at = row["updated_at"]
        self._last_full_read = now
        self._metrics.expiry.set(expires.timestamp() if expires else 0)
        if changed:
            self._metrics.refreshes.inc()
            log.info(
                "teslamate token loaded",
                table=table,
                expires_at=f"{expires:%Y-%m-%dT%H:%M:%S}Z" if expires else "unknown",
            )

    def _decrypt(self, value: Any) -> Secret:
        if isinstance(value, str):
            # TeslaMate before 1.27 kept the token as plain text.
            return Secret(value, source="TeslaMate database")
        if value is None:
            raise _SyncFailure("no_tokens", "the tokens row has no access token")
        try:
            return self._vault.decrypt_text(value)
        except WrongEncryptionKey:
            raise _SyncFailure(
                "wrong_encryption_key",
                "the token does not decrypt with the configured ENCRYPTION_KEY; use the "
                "same key as TeslaMate",
            ) from None
        except MalformedCiphertext as error:
            raise _SyncFailure(
                "malformed_ciphertext", f"the stored token is not TeslaMate ciphertext: {error}"
            ) from None


# ---------------------------------------------------------------- own OAuth


@dataclass(frozen=True)
class _OAuthState:
    refresh_token: Secret
    """Wrapped as soon as it is read or received, so the log scrubber knows every
    rotated value, not only the one configured at start."""
    refresh_token_issued_at: datetime
    access_token: str | None
    access_token_expires_at: datetime | None
    seed_sha256: str | None = None
    """Fingerprint of the configured initial refresh token this state grew from, so a
    newly configured one (after signing in again) is recognised and taken over."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "refresh_token": self.refresh_token.reveal(),
                "refresh_token_issued_at": self.refresh_token_issued_at.isoformat(),
                "access_token": self.access_token,
                "access_token_expires_at": (
                    self.access_token_expires_at.isoformat()
                    if self.access_token_expires_at
                    else None
                ),
                "seed_sha256": self.seed_sha256,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> _OAuthState:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("refresh_token"), str):
            raise ValueError("no refresh_token in it")
        expires = data.get("access_token_expires_at")
        return cls(
            refresh_token=Secret(data["refresh_token"], source="tesla token state file"),
            refresh_token_issued_at=datetime.fromisoformat(data["refresh_token_issued_at"]),
            access_token=data.get("access_token"),
            access_token_expires_at=datetime.fromisoformat(expires) if expires else None,
            seed_sha256=data.get("seed_sha256"),
        )


def write_private_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically, readable by the owner only.

    A vanished state directory is reported, not recreated: the refresh token it held
    must not silently start over elsewhere."""
    write_atomically(path, text, mode=0o600, create_parents=False)


class OAuthTokenProvider:
    """gridmate's own Tesla login: refreshes access tokens, rotating the refresh token.

    ``state_path`` is gridmate's file (in its state directory) holding the
    current refresh token; it is created from ``initial_refresh_token`` (the
    token from the authorization-code flow) on first use, and from then on is
    the only copy that counts: the initial token is void after one refresh.

    Each refresh is saved atomically before the new access token is handed
    out. Concurrent callers share one refresh. A refresh token older than
    ``refresh_token_lifetime - expiry_warning`` raises a ``expiring`` event;
    :meth:`run` keeps the refresh token young by refreshing at least every
    ``keepalive_interval`` even when no API call is made.

    Other services with single-use refresh tokens use it too (Honeywell Home):
    ``client_secret`` sends the client's credentials as HTTP Basic, ``service``
    names the service in messages, ``source`` labels events and metrics, and
    ``reauthorize`` says what the user must do when the refresh token is refused.

    A token answer that is lost (a 2xx whose body is unusable) leaves the refresh
    token's fate unknown: it is asked once more at once with the same token, which
    either works (the server had not rotated it) or is refused (it was spent: then
    the user must authorize again, and is told so once).
    """

    def __init__(
        self,
        client_id: str,
        state_path: Path,
        *,
        initial_refresh_token: Secret | None = None,
        token_url: str = DEFAULT_TOKEN_URL,
        http: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        refresh_margin: float = 300.0,
        refresh_token_lifetime: timedelta = timedelta(days=90),
        expiry_warning: timedelta = timedelta(days=14),
        keepalive_interval: timedelta = timedelta(days=7),
        on_event: EventHook | None = None,
        backoff: Backoff | None = None,
        timeout: float = 30.0,
        client_secret: Secret | None = None,
        service: str = "Tesla",
        source: Literal["oauth", "honeywell"] = "oauth",
        reauthorize: str = "sign in to Tesla again and provide a new refresh token",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.service = service
        self.source: Literal["oauth", "honeywell"] = source
        self.reauthorize = reauthorize
        self.state_path = Path(state_path)
        self._initial = initial_refresh_token
        self.token_url = token_url
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._clock: Clock = clock or SystemClock()
        self.refresh_margin = refresh_margin
        self.refresh_token_lifetime = refresh_token_lifetime
        self.expiry_warning = expiry_warning
        self.keepalive_interval = keepalive_interval
        self._on_event = on_event
        self._backoff = backoff or Backoff(initial=5.0, cap=600.0)
        self._metrics = _TokenMetrics(registry, source)
        self._lock = asyncio.Lock()
        self._state: _OAuthState | None = None
        self._state_mtime: int | None = None
        self._unsaved: _OAuthState | None = None
        self._rejected_access: str | None = None
        self._dead: TokenUnavailable | None = None
        self._next_attempt: datetime | None = None
        self._last_failure: TokenUnavailable | None = None
        self._warned_for: Secret | None = None

    @property
    def expires_at(self) -> datetime | None:
        return self._state.access_token_expires_at if self._state else None

    @property
    def refresh_token_expires_at(self) -> datetime | None:
        """When the current refresh token is expected to expire (issue time + lifetime)."""
        if self._state is None:
            return None
        return self._state.refresh_token_issued_at + self.refresh_token_lifetime

    def health(self) -> str | None:
        if self._dead is not None:
            return self._dead.reason
        if self._last_failure is not None and not self._usable(self._clock.now()):
            return self._last_failure.reason
        return None

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def access_token(self) -> Secret:
        async with self._lock:
            await self._load()
            now = self._clock.now()
            await self._check_expiry_warning(now)
            if self._usable(now) and not self._due(now):
                return self._current()
            await self._refresh(now)
            return self._current()

    async def token_rejected(self, token: Secret) -> None:
        """Tesla refused ``token``: the next :meth:`access_token` refreshes."""
        if self._state is not None and self._state.access_token == token.reveal():
            self._rejected_access = token.reveal()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the refresh token alive and warn before it expires, until ``stop``."""
        while not stop.is_set():
            try:
                async with self._lock:
                    await self._load()
                    state = self._state
                    now = self._clock.now()
                    if state is not None and now - state.refresh_token_issued_at >= (
                        self.keepalive_interval
                    ):
                        log.info("refreshing to keep the tesla refresh token alive")
                        await self._refresh(now, keepalive=True)
                    await self._check_expiry_warning(now)
            except TokenUnavailable:
                pass  # already logged and counted
            await sleep_or_wake(self._clock, 3600.0, stop)

    # ------------------------------------------------------------ internals

    def _current(self) -> Secret:
        assert self._state is not None and self._state.access_token is not None
        return Secret(self._state.access_token, source=f"{self.service} OAuth")

    def _usable(self, now: datetime) -> bool:
        state = self._state
        if state is None or state.access_token is None:
            return False
        if state.access_token == self._rejected_access:
            return False
        return state.access_token_expires_at is None or now < state.access_token_expires_at

    def _due(self, now: datetime) -> bool:
        state = self._state
        assert state is not None
        if state.access_token_expires_at is None:
            return False
        return now >= state.access_token_expires_at - timedelta(seconds=self.refresh_margin)

    async def _load(self) -> None:
        """Read the state file (again, if someone replaced it), or seed it."""
        try:
            mtime: int | None = self.state_path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if self._state is not None and mtime == self._state_mtime:
            return
        if mtime is None:
            if self._state is not None:
                return  # keep what we hold; it is the only valid copy
            if self._initial is None:
                raise self._fail_now(
                    "no_refresh_token",
                    f"no refresh token: {self.state_path} does not exist and no initial "
                    f"refresh token is configured; {self.reauthorize}",
                    permanent=True,
                )
            await self._take_over_seed()
            return
        try:
            text = await asyncio.to_thread(self.state_path.read_text, encoding="utf-8")
            state = _OAuthState.from_json(text)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise self._fail_now(
                "state_unreadable",
                f"cannot use {self.state_path}: {type(error).__name__}: {error}; it is left "
                "untouched",
                permanent=False,
            ) from None
        if self._state is not None and state.refresh_token != self._state.refresh_token:
            log.info("token state file was replaced; using the new refresh token",
                     service=self.service)  # fmt: skip
        if self._initial is not None and state.seed_sha256 != _fingerprint(self._initial):
            log.info("a new initial refresh token is configured; it replaces the old state",
                     service=self.service)  # fmt: skip
            await self._take_over_seed()
            return
        self._state = state
        self._state_mtime = mtime
        self._dead = None
        self._metrics.refresh_expiry.set(
            (state.refresh_token_issued_at + self.refresh_token_lifetime).timestamp()
        )
        if state.access_token_expires_at is not None:
            self._metrics.expiry.set(state.access_token_expires_at.timestamp())

    async def _take_over_seed(self) -> None:
        assert self._initial is not None
        seed = _OAuthState(
            self._initial, self._clock.now(), None, None, _fingerprint(self._initial)
        )
        await self._save(seed)
        self._dead = None
        self._last_failure = None
        self._metrics.refresh_expiry.set(
            (seed.refresh_token_issued_at + self.refresh_token_lifetime).timestamp()
        )
        log.info("refresh token taken over into the state file", service=self.service,
                 path=self.state_path)  # fmt: skip

    async def _save(self, state: _OAuthState) -> None:
        await asyncio.to_thread(write_private_file, self.state_path, state.to_json())
        self._state = state
        self._state_mtime = self.state_path.stat().st_mtime_ns

    def _fail_now(self, reason: str, detail: str, *, permanent: bool) -> TokenUnavailable:
        self._metrics.error(reason)
        error = TokenUnavailable(detail, reason)
        self._last_failure = error
        if permanent:
            self._dead = error
        log.warning("access token unavailable", service=self.service, reason=reason,
                    detail=detail)  # fmt: skip
        return error

    async def _refresh(self, now: datetime, *, keepalive: bool = False) -> None:
        if self._dead is not None:
            raise self._dead
        if self._unsaved is not None:
            # The last refresh worked but could not be saved; Tesla already voided the
            # old refresh token, so saving this one comes before anything else.
            await self._persist(self._unsaved)
            if self._usable(now) and not self._due(now):
                return
        if self._next_attempt is not None and now < self._next_attempt and not keepalive:
            if self._usable(now):
                return
            assert self._last_failure is not None
            raise self._last_failure
        state = self._state
        assert state is not None
        for attempt in (1, 2):
            try:
                response = await self._post_refresh(state.refresh_token.reveal())
            except httpx.TransportError as error:
                await self._transient(
                    "auth_unreachable",
                    f"no answer from {self.service}'s OAuth server: {type(error).__name__}"
                    + (f" ({error})" if str(error) else ""),
                    now,
                )
                return
            if response.status_code >= 500:
                await self._transient(
                    "auth_server_error",
                    f"{self.service}'s OAuth server answered HTTP {response.status_code}",
                    now,
                )
                return
            body = _json_or_none(response)
            if response.status_code != 200:
                code = _error_code(body)
                lost = " after its answer to the last refresh was lost" if attempt == 2 else ""
                detail = (
                    f"{self.service} refused the refresh token{lost} (HTTP "
                    f"{response.status_code}, {code}); {self.reauthorize}"
                )
                refused = self._fail_now("refresh_token_rejected", detail, permanent=True)
                await _emit(
                    self._on_event,
                    TokenEvent("failing", self.source, "refresh_token_rejected", detail),
                )
                raise refused
            try:
                assert isinstance(body, dict)
                access = str(body["access_token"])
                refresh = Secret(
                    str(body["refresh_token"]), source=f"{self.service}'s token endpoint"
                )
                lifetime = float(body.get("expires_in") or 0)
                break
            except (AssertionError, KeyError, TypeError, ValueError):
                if attempt == 1:
                    # The server may have rotated the refresh token before the answer
                    # broke: asking again at once tells whether it is spent.
                    log.warning("token answer unusable; asking again with the same token",
                                service=self.service)  # fmt: skip
                    continue
                await self._transient(
                    "bad_response", f"{self.service}'s OAuth answer lacked tokens", now
                )
                return
        expires = jwt_expiry(access) or (now + timedelta(seconds=lifetime) if lifetime else None)
        new_state = _OAuthState(refresh, now, access, expires, state.seed_sha256)
        self._unsaved = new_state
        await self._persist(new_state)
        self._rejected_access = None
        self._backoff.reset()
        self._next_attempt = None
        recovered = self._last_failure
        self._last_failure = None
        self._metrics.refreshes.inc()
        self._metrics.success.set(now.timestamp())
        if expires is not None:
            self._metrics.expiry.set(expires.timestamp())
        self._metrics.refresh_expiry.set((now + self.refresh_token_lifetime).timestamp())
        log.info(
            "access token refreshed",
            service=self.service,
            expires_at=f"{expires:%Y-%m-%dT%H:%M:%S}Z" if expires else "unknown",
        )
        warned, self._warned_for = self._warned_for, None
        if recovered is not None:
            await _emit(
                self._on_event,
                TokenEvent(
                    "recovered", self.source, recovered.code or "unknown", "refresh works again"
                ),
            )
        elif warned is not None and warned != refresh:
            # The token that was about to expire has been replaced by a fresh one.
            await _emit(
                self._on_event,
                TokenEvent(
                    "recovered",
                    self.source,
                    "refresh_token_expiring",
                    "a new refresh token was issued",
                ),
            )

    async def _post_refresh(self, refresh_token: str) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        headers = {"Accept": "application/json"}
        if self.client_secret is None:
            return await self._http.post(
                self.token_url, data={**data, "client_id": self.client_id}, headers=headers
            )
        return await self._http.post(
            self.token_url,
            data=data,
            headers=headers,
            auth=(self.client_id, self.client_secret.reveal()),
        )

    async def _persist(self, state: _OAuthState) -> None:
        try:
            await self._save(state)
        except OSError as error:
            detail = (
                f"could not save the new refresh token to {self.state_path} "
                f"({type(error).__name__}: {error}); it is held in memory and saving is "
                "retried before the new access token is used"
            )
            self._metrics.error("state_not_saved")
            log.error("refresh token not saved", service=self.service, path=self.state_path,
                      error=str(error))  # fmt: skip
            failure = TokenUnavailable(detail, "state_not_saved")
            self._last_failure = failure
            await _emit(
                self._on_event, TokenEvent("failing", self.source, "state_not_saved", detail)
            )
            raise failure from None
        self._unsaved = None

    async def _transient(self, reason: str, detail: str, now: datetime) -> None:
        """A refresh that may work later: keep a still-valid token, else raise."""
        delay = self._backoff.next_delay()
        self._next_attempt = now + timedelta(seconds=delay)
        first = self._last_failure is None or self._last_failure.code != reason
        error = self._fail_now(reason, f"{detail}; retrying in {delay:.0f} s", permanent=False)
        if first:
            expires = self.expires_at if self._usable(now) else None
            await _emit(self._on_event, TokenEvent("failing", self.source, reason, detail, expires))
        if not self._usable(now):
            raise error

    async def _check_expiry_warning(self, now: datetime) -> None:
        state = self._state
        expires = self.refresh_token_expires_at
        if state is None or expires is None:
            return
        if now < expires - self.expiry_warning or self._warned_for == state.refresh_token:
            return
        self._warned_for = state.refresh_token
        days = max(0.0, (expires - now).total_seconds() / 86400)
        detail = (
            f"gridmate's {self.service} refresh token is expected to expire on "
            f"{expires:%Y-%m-%d} (in {days:.0f} days) and could not be renewed; "
            f"{self.reauthorize}"
        )
        log.warning("tesla refresh token nears expiry", expires_at=f"{expires:%Y-%m-%d}")
        await _emit(
            self._on_event,
            TokenEvent("expiring", self.source, "refresh_token_expiring", detail, expires),
        )


def _fingerprint(secret: Secret) -> str:
    return hashlib.sha256(secret.reveal().encode("utf-8")).hexdigest()


def _error_code(body: Any) -> str | None:
    """OAuth's ``error`` field, or Apigee's ``fault.faultstring`` (Honeywell)."""
    if not isinstance(body, dict):
        return None
    if body.get("error"):
        return str(body["error"])
    fault = body.get("fault")
    if isinstance(fault, dict) and fault.get("faultstring"):
        return str(fault["faultstring"])
    return None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
