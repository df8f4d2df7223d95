"""Client for Tesla's Fleet API: vehicles, vehicle commands and Powerwall sites.

Three rules shape this client:

* **Never wake a car to look at it.** Whether a car is online comes from
  :meth:`FleetApi.vehicles`, which does not wake it;
  :meth:`FleetApi.vehicle_data` on a sleeping car answers 408
  (:class:`VehicleUnavailable`) and leaves it asleep. :meth:`FleetApi.wake_up`
  exists for commands only: resuming charging that gridmate itself paused on a
  car that fell asleep meanwhile, and a command from Home Assistant to a car
  the user allowed gridmate to wake.
* **Every request below status 500 is billed** (Tesla's billing page), so calls
  are counted by pricing category and capped by daily budgets before they are
  sent: per vehicle per day, per energy site writes per day, and at most one
  ``live_status`` per site per interval.
* **A 429 is obeyed, not retried.** ``Retry-After`` (or ``RateLimit-Reset``)
  blocks further calls for that device until the time passes; callers get
  :class:`RateLimited` at once instead of adding to the storm.

Access tokens come from a :class:`~gridmate.tesla.tokens.TokenProvider` and
are never logged. A 401 fetches a token again once (providers that can, re-read
or refresh it) and retries; a second 401 raises :class:`Unauthorized`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry

from gridmate.runtime.backoff import Backoff
from gridmate.runtime.clock import Clock, SystemClock
from gridmate.runtime.files import write_atomically
from gridmate.runtime.logs import get_logger
from gridmate.runtime.retry_after import (
    DEFAULT_MAX_WAIT_SECONDS,
    RetryAfter,
    cap_wait,
    parse_retry_after,
)
from gridmate.runtime.secrets import Secret
from gridmate.tesla._metrics import collector
from gridmate.tesla.tokens import TokenProvider, TokenUnavailable

__all__ = [
    "ACCEPTED_RESERVE_RULE",
    "ALREADY_DONE",
    "CHARGE_LIMIT_RANGE",
    "DEFAULT_DISCOVERY_URLS",
    "REGION_BASE_URLS",
    "ApiUnreachable",
    "BudgetExhausted",
    "BudgetUse",
    "CommandResult",
    "FleetApi",
    "FleetApiError",
    "Forbidden",
    "MisdirectedRequest",
    "OperationMode",
    "PreconditionFailed",
    "RateLimited",
    "RejectedValue",
    "ServerError",
    "TokenUnavailable",
    "Unauthorized",
    "VehicleListing",
    "VehicleUnavailable",
    "is_accepted_backup_reserve",
    "nearest_accepted_backup_reserve",
]

log = get_logger("tesla.fleet_api")

REGION_BASE_URLS: dict[str, str] = {
    "na": "https://fleet-api.prd.na.vn.cloud.tesla.com",
    "eu": "https://fleet-api.prd.eu.vn.cloud.tesla.com",
    "cn": "https://fleet-api.prd.cn.vn.cloud.tesla.cn",
}
DEFAULT_DISCOVERY_URLS: tuple[str, ...] = tuple(REGION_BASE_URLS.values())
# Region discovery may only hand us a base URL on Tesla's own domains (or one of
# the URLs we were told to ask), so a bad answer cannot redirect our token.
_TRUSTED_HOST_SUFFIXES = (".tesla.com", ".tesla.cn")

_NOT_AWAKE = "vehicle is offline or asleep"

OperationMode = Literal["self_consumption", "autonomous", "backup"]
_OPERATION_MODES: tuple[str, ...] = ("self_consumption", "autonomous", "backup")
Category = Literal["data", "commands", "wakes"]

DEFAULT_VEHICLE_DATA_ENDPOINTS: tuple[str, ...] = ("charge_state", "drive_state", "vehicle_state")

ACCEPTED_RESERVE_RULE = "0-80 or exactly 100 (Powerwall firmware 25.18.4 and later)"

CHARGE_LIMIT_RANGE = (50, 100)
"""What ``set_charge_limit`` accepts at most; a car reports its own bounds in
``charge_state`` (``charge_limit_soc_min``/``_max``)."""

ALREADY_DONE: dict[str, str] = {
    "charge_start": "is_charging",
    "charge_stop": "not_charging",
    "set_charge_limit": "already_set",
}
"""A command's refusal reason that means the car already is as asked."""


def is_accepted_backup_reserve(percent: int) -> bool:
    """Whether current Powerwall firmware accepts this backup reserve."""
    return 0 <= percent <= 80 or percent == 100


def nearest_accepted_backup_reserve(percent: int) -> int:
    """The closest reserve the firmware accepts; 81-99 round down to 80 (as evcc does)."""
    if percent < 0:
        return 0
    if percent >= 100:
        return 100
    return min(percent, 80)


# ---------------------------------------------------------------- errors


class FleetApiError(Exception):
    """A Fleet API call that did not succeed."""

    status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.error = error
        """Tesla's short error "enum" (the ``error`` field), when given."""
        self.endpoint = endpoint


class Unauthorized(FleetApiError):
    """401: the access token was refused even after fetching it again."""

    status = 401


class Forbidden(FleetApiError):
    """403: e.g. the token lacks the endpoint's scope (``unauthorized_missing_scopes``)."""

    status = 403


class VehicleUnavailable(FleetApiError):
    """408: the car is asleep or offline. It was not woken."""

    status = 408


class PreconditionFailed(FleetApiError):
    """412: e.g. the application is not registered in this region, or the key is not paired."""

    status = 412


class MisdirectedRequest(FleetApiError):
    """421: the account lives in another region than the base URL used."""

    status = 421


class RateLimited(FleetApiError):
    """429 from Tesla, or a call refused locally because Tesla's block has not expired."""

    status = 429

    def __init__(
        self, message: str, *, retry_after: float, capped: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.capped = capped
        """Tesla asked for a longer wait than ``max_retry_after``; the wait is the cap."""


class ServerError(FleetApiError):
    """5xx: Tesla's side failed (not billed)."""


class RejectedValue(FleetApiError):
    """400/422: Tesla refused a value, e.g. a backup reserve the firmware does not accept."""

    status = 400


class ApiUnreachable(FleetApiError):
    """No HTTP answer at all (DNS, connection, timeout), or refused locally while Tesla's
    API keeps failing (then ``retry_after`` says when the next call goes out)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BudgetExhausted(FleetApiError):
    """Refused locally, before sending: a daily budget or the minimum interval is used up."""

    def __init__(self, message: str, *, budget: str, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.budget = budget
        self.retry_after = retry_after


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class VehicleListing:
    vin: str
    id: int
    display_name: str | None
    state: str
    """``online``, ``asleep`` or ``offline`` as the vehicle list reports it."""

    @property
    def online(self) -> bool:
        return self.state == "online"


@dataclass(frozen=True)
class CommandResult:
    """A vehicle command's ``{"result": bool, "reason": str}``.

    ``result`` false with the reason in :data:`ALREADY_DONE` for the command
    (``is_charging`` for a start, ``already_set`` for a charge limit...) means the
    car already was in the wanted state; :attr:`achieved` is true then.
    """

    result: bool
    reason: str
    achieved: bool


@dataclass(frozen=True)
class BudgetUse:
    """One budget's use today (UTC day), as handed to the ``on_budget_use`` hook."""

    budget: Literal["vehicle_daily", "site_writes_daily"]
    device: str
    used: int
    limit: int | None
    day: date


@dataclass
class _DailyCounter:
    day: date | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def used(self, key: str, today: date) -> int:
        if self.day != today:
            return 0
        return self.counts.get(key, 0)

    def add(self, key: str, today: date) -> int:
        if self.day != today:
            self.day = today
            self.counts = {}
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]

    def set(self, key: str, today: date, used: int) -> None:
        if self.day != today:
            self.day = today
            self.counts = {}
        self.counts[key] = used


# ---------------------------------------------------------------- client


class FleetApi:
    """Async Fleet API client. One instance per account; call :meth:`aclose` at the end.

    ``base_url`` None means region discovery (``GET /api/1/users/region``
    against ``discovery_urls``, Tesla's documented region servers by
    default). ``command_base_url`` sends vehicle commands elsewhere, e.g. to
    Tesla's vehicle-command proxy that signs them.
    """

    def __init__(
        self,
        tokens: TokenProvider,
        *,
        base_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        daily_vehicle_budget: int | None = 200,
        daily_site_write_budget: int | None = 5,
        site_live_status_interval: float = 300.0,
        command_base_url: str | None = None,
        discovery_urls: Sequence[str] = DEFAULT_DISCOVERY_URLS,
        on_budget_use: Callable[[BudgetUse], None] | None = None,
        timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        outage_backoff: Backoff | None = None,
        budget_file: Path | None = None,
        max_retry_after: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        self._tokens = tokens
        self.max_retry_after = max_retry_after
        self._configured_base = base_url.rstrip("/") if base_url else None
        self._base: str | None = self._configured_base
        self._command_base = command_base_url.rstrip("/") if command_base_url else None
        self._discovery_urls = tuple(u.rstrip("/") for u in discovery_urls)
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout, verify=verify)
        self._clock: Clock = clock or SystemClock()
        self.daily_vehicle_budget = daily_vehicle_budget
        self.daily_site_write_budget = daily_site_write_budget
        self.site_live_status_interval = site_live_status_interval
        self._on_budget_use = on_budget_use
        self._vehicle_counter = _DailyCounter()
        self._site_write_counter = _DailyCounter()
        self._last_live_status: dict[int, datetime] = {}
        self._blocked_until: dict[str, datetime] = {}
        self._block_asked: dict[str, RetryAfter] = {}
        # Consecutive unanswered or 5xx calls; from the second one on, calls wait for
        # the backoff's delay instead of hammering an API that is down.
        self._outage = outage_backoff or Backoff(initial=5.0, cap=300.0)
        self._outage_failures = 0
        self._outage_until: datetime | None = None
        self._discovery_lock = asyncio.Lock()
        self.region: str | None = None
        self._budget_file = budget_file

        registry = registry if registry is not None else CollectorRegistry()
        from prometheus_client import Counter, Gauge

        self._m_requests = collector(
            Counter,
            registry,
            "gridmate_tesla_api_requests",
            "Fleet API requests sent, by endpoint and HTTP status ('error' when no answer).",
            ("endpoint", "status"),
        )
        self._m_billable = collector(
            Counter,
            registry,
            "gridmate_tesla_api_billable_requests",
            "Fleet API requests Tesla bills (status below 500), by pricing category.",
            ("category",),
        )
        for category in ("data", "commands", "wakes"):
            self._m_billable.labels(category)
        self._m_rate_limited = collector(
            Counter,
            registry,
            "gridmate_tesla_api_rate_limited",
            "429 answers from Tesla, by endpoint.",
            ("endpoint",),
        )
        self._m_refused = collector(
            Counter,
            registry,
            "gridmate_tesla_api_refused_locally",
            "Calls not sent because a budget, interval or 429 block forbade them, by reason.",
            ("reason",),
        )
        self._m_budget_used = collector(
            Gauge,
            registry,
            "gridmate_tesla_api_budget_used",
            "Requests counted against a daily budget today (UTC), by budget and device.",
            ("budget", "device"),
        )
        self._load_budgets()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> FleetApi:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------ budgets

    def budget_use(self) -> list[BudgetUse]:
        """Today's use of every budget that has been touched."""
        today = self._today()
        uses = [
            BudgetUse("vehicle_daily", vin, used, self.daily_vehicle_budget, today)
            for vin, used in self._vehicle_counter.counts.items()
            if self._vehicle_counter.day == today
        ]
        uses += [
            BudgetUse("site_writes_daily", site, used, self.daily_site_write_budget, today)
            for site, used in self._site_write_counter.counts.items()
            if self._site_write_counter.day == today
        ]
        return uses

    def vehicle_requests_left(self, vin: str) -> int | None:
        """Requests the car's daily budget still allows today; None without a budget."""
        if self.daily_vehicle_budget is None:
            return None
        used = self._vehicle_counter.used(vin, self._today())
        return max(0, self.daily_vehicle_budget - used)

    def restore_budget_use(self, use: BudgetUse) -> None:
        """Seed today's count after a restart (e.g. from the energy journal)."""
        if use.day != self._today():
            return
        counter = (
            self._vehicle_counter if use.budget == "vehicle_daily" else self._site_write_counter
        )
        counter.set(use.device, use.day, use.used)
        self._m_budget_used.labels(use.budget, use.device).set(use.used)

    def _today(self) -> date:
        return self._clock.now().astimezone(UTC).date()

    def _seconds_to_midnight(self) -> float:
        now = self._clock.now().astimezone(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        return (midnight - now).total_seconds()

    def _check_budgets(self, vin: str | None, site_write: int | None, endpoint: str) -> None:
        today = self._today()
        if vin is not None and self.daily_vehicle_budget is not None:
            used = self._vehicle_counter.used(vin, today)
            if used >= self.daily_vehicle_budget:
                self._m_refused.labels("vehicle_daily").inc()
                raise BudgetExhausted(
                    f"daily request budget for vehicle {vin} is used up "
                    f"({used}/{self.daily_vehicle_budget})",
                    budget="vehicle_daily",
                    retry_after=self._seconds_to_midnight(),
                    endpoint=endpoint,
                )
        if site_write is not None and self.daily_site_write_budget is not None:
            used = self._site_write_counter.used(str(site_write), today)
            if used >= self.daily_site_write_budget:
                self._m_refused.labels("site_writes_daily").inc()
                raise BudgetExhausted(
                    f"daily settings-write budget for energy site {site_write} is used up "
                    f"({used}/{self.daily_site_write_budget})",
                    budget="site_writes_daily",
                    retry_after=self._seconds_to_midnight(),
                    endpoint=endpoint,
                )

    def _count_budgets(self, vin: str | None, site_write: int | None) -> None:
        today = self._today()
        if vin is not None:
            used = self._vehicle_counter.add(vin, today)
            self._report_use(
                BudgetUse("vehicle_daily", vin, used, self.daily_vehicle_budget, today)
            )
        if site_write is not None:
            key = str(site_write)
            used = self._site_write_counter.add(key, today)
            self._report_use(
                BudgetUse("site_writes_daily", key, used, self.daily_site_write_budget, today)
            )

    def note_site_write_applied(self, site_id: int) -> None:
        """Count a site write whose answer was lost (5xx, no answer) but which a read-back
        shows (or cannot rule out) the site applied, as Tesla counts it."""
        self._count_budgets(None, site_id)

    def _load_budgets(self) -> None:
        """Today's counts from the budget file, so a restart does not reset them."""
        if self._budget_file is None:
            return
        try:
            entries = json.loads(self._budget_file.read_text(encoding="utf-8"))
            uses = [
                BudgetUse(e["budget"], e["device"], int(e["used"]), e.get("limit"),
                          date.fromisoformat(e["day"]))
                for e in entries
            ]  # fmt: skip
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("budget file unreadable; counting from zero",
                        path=str(self._budget_file), error=str(error))  # fmt: skip
            return
        for use in uses:
            self.restore_budget_use(use)

    def _save_budgets(self) -> None:
        if self._budget_file is None:
            return
        entries = [
            {"budget": u.budget, "device": u.device, "used": u.used, "limit": u.limit,
             "day": u.day.isoformat()}
            for u in self.budget_use()
        ]  # fmt: skip
        try:
            write_atomically(self._budget_file, json.dumps(entries))
        except OSError as error:
            log.warning("budget file not written", path=str(self._budget_file), error=str(error))

    def _report_use(self, use: BudgetUse) -> None:
        self._save_budgets()
        self._m_budget_used.labels(use.budget, use.device).set(use.used)
        if self._on_budget_use is not None:
            try:
                self._on_budget_use(use)
            except Exception:  # a broken hook must not break API calls
                log.exception("budget hook failed", budget=use.budget)

    # ------------------------------------------------------------ region

    async def base_url(self) -> str:
        """The Fleet API base URL in use, discovering the account's region if needed."""
        if self._base is not None:
            return self._base
        async with self._discovery_lock:
            if self._base is None:
                self._base = await self._discover_region()
            return self._base

    async def _discover_region(self) -> str:
        last_error: FleetApiError | None = None
        for server in self._discovery_urls:
            try:
                response = await self._send(
                    server, "GET", "/api/1/users/region", endpoint="users_region", category="data"
                )
            except (ApiUnreachable, MisdirectedRequest, ServerError) as error:
                last_error = error
                continue
            region = str(response.get("region", "")).lower() or None
            url = str(response.get("fleet_api_base_url", "")).rstrip("/")
            if not self._trusted_base(url):
                raise FleetApiError(
                    f"region discovery returned an untrusted base URL {url!r}",
                    endpoint="users_region",
                )
            self.region = region
            log.info("fleet api region discovered", region=region, base_url=url)
            return url
        raise last_error or ApiUnreachable("no region server answered", endpoint="users_region")

    def _trusted_base(self, url: str) -> bool:
        if not url:
            return False
        if url in self._discovery_urls:
            return True
        parts = urlsplit(url)
        return parts.scheme == "https" and any(
            (parts.hostname or "").endswith(suffix) for suffix in _TRUSTED_HOST_SUFFIXES
        )

    # ------------------------------------------------------------ requests

    async def _call(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        category: Category,
        vin: str | None = None,
        site_write: int | None = None,
        device: str | None = None,
        params: dict[str, str] | None = None,
        json: Any = None,
        command: bool = False,
        on_answer: Callable[[], None] | None = None,
    ) -> Any:
        block_key = device or vin or (str(site_write) if site_write is not None else "account")
        self._check_block(block_key, endpoint)
        self._check_outage(endpoint)
        self._check_budgets(vin, site_write, endpoint)
        try:
            answer = await self._call_region(
                method, path, endpoint=endpoint, category=category, vin=vin,
                site_write=site_write, params=params, json=json, command=command,
                on_answer=on_answer, block_key=block_key,
            )  # fmt: skip
        except (ApiUnreachable, ServerError):
            self._note_outage()
            raise
        self._outage_failures = 0
        self._outage_until = None
        self._outage.reset()
        return answer

    def _check_outage(self, endpoint: str) -> None:
        if self._outage_until is None:
            return
        remaining = (self._outage_until - self._clock.now()).total_seconds()
        if remaining <= 0:
            return
        self._m_refused.labels("backoff").inc()
        raise ApiUnreachable(
            f"Tesla's API failed {self._outage_failures} times in a row; "
            f"next try in {remaining:.0f} s",
            retry_after=remaining,
            endpoint=endpoint,
        )

    def _note_outage(self) -> None:
        self._outage_failures += 1
        if self._outage_failures < 2:
            return  # one failure may be a blip: the next call goes out at once
        delay = self._outage.next_delay()
        self._outage_until = self._clock.now() + timedelta(seconds=delay)
        log.warning(
            "fleet api keeps failing; backing off",
            failures=self._outage_failures,
            retry_in=f"{delay:.0f}s",
        )

    async def _call_region(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        category: Category,
        vin: str | None,
        site_write: int | None,
        params: dict[str, str] | None,
        json: Any,
        command: bool,
        on_answer: Callable[[], None] | None,
        block_key: str,
    ) -> Any:
        rediscovered = False
        while True:
            base = await self.base_url()
            if command and self._command_base is not None:
                base = self._command_base
            try:
                return await self._send(
                    base,
                    method,
                    path,
                    endpoint=endpoint,
                    category=category,
                    params=params,
                    json=json,
                    vin=vin,
                    site_write=site_write,
                    block_key=block_key,
                    on_answer=on_answer,
                )
            except MisdirectedRequest:
                # The account moved region (or discovery guessed wrong): ask again, once.
                if self._configured_base is not None or rediscovered:
                    raise
                rediscovered = True
                log.warning("fleet api answered 421 misdirected; discovering region again")
                async with self._discovery_lock:
                    self._base = None
                    self._base = await self._discover_region()

    def _check_block(self, key: str, endpoint: str) -> None:
        until = self._blocked_until.get(key)
        if until is None:
            return
        remaining = (until - self._clock.now()).total_seconds()
        if remaining <= 0:
            del self._blocked_until[key]
            self._block_asked.pop(key, None)
            return
        self._m_refused.labels("rate_limited").inc()
        asked = self._block_asked.get(key)
        capped = asked is not None and asked.capped
        raise RateLimited(
            f"Tesla rate-limited {key}; not calling again for {remaining:.0f} s"
            + (f" ({asked.describe()})" if asked is not None and capped else ""),
            retry_after=remaining,
            capped=capped,
            endpoint=endpoint,
        )

    async def _send(
        self,
        base: str,
        method: str,
        path: str,
        *,
        endpoint: str,
        category: Category,
        params: dict[str, str] | None = None,
        json: Any = None,
        vin: str | None = None,
        site_write: int | None = None,
        block_key: str = "account",
        on_answer: Callable[[], None] | None = None,
    ) -> Any:
        token = await self._tokens.access_token()
        retried_token = False
        while True:
            response = await self._http_request(base, method, path, token, params, json, endpoint)
            status = response.status_code
            self._m_requests.labels(endpoint, str(status)).inc()
            if on_answer is not None:
                on_answer()
            if status < 500 or _proxy_reports_asleep(response):
                # Tesla bills every request that gets an answer below 500 (the command
                # proxy turns Tesla's billed 408 for a sleeping car into a 500).
                self._m_billable.labels(category).inc()
                # A site write counts against the day's writes only when the site took
                # it; one refused before reaching it (401, 403, 429, 400) does not.
                applied = site_write if 200 <= status < 300 else None
                self._count_budgets(vin, applied)
            self._note_rate_headers(response, block_key)
            if status == 401 and not retried_token:
                retried_token = True
                fresh = await self._token_after_rejection(token)
                if fresh is not None:
                    token = fresh
                    continue
            return self._interpret(response, endpoint, block_key)

    async def _http_request(
        self,
        base: str,
        method: str,
        path: str,
        token: Secret,
        params: dict[str, str] | None,
        json: Any,
        endpoint: str,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token.reveal()}", "Accept": "application/json"}
        try:
            return await self._http.request(
                method, base + path, headers=headers, params=params, json=json
            )
        except httpx.TransportError as error:
            self._m_requests.labels(endpoint, "error").inc()
            raise ApiUnreachable(
                f"no answer from {urlsplit(base).hostname}: {type(error).__name__}",
                endpoint=endpoint,
            ) from None

    async def _token_after_rejection(self, rejected: Secret) -> Secret | None:
        """A different token to retry with after a 401, or None."""
        on_rejected = getattr(self._tokens, "token_rejected", None)
        if on_rejected is not None:
            await on_rejected(rejected)
        try:
            fresh = await self._tokens.access_token()
        except TokenUnavailable:
            return None
        return None if fresh == rejected else fresh

    def _note_rate_headers(self, response: httpx.Response, block_key: str) -> None:
        """Block the device until Tesla's reset when it says nothing remains."""
        remaining = _rate_header(response.headers, "remaining")
        if response.status_code != 429 and (remaining is None or remaining > 0):
            return
        now = self._clock.now()
        asked = parse_retry_after(
            response.headers.get("retry-after"), now, max_wait=self.max_retry_after
        )
        if asked is None:
            reset = _rate_header(response.headers, "reset")
            asked = None if reset is None else cap_wait(reset, max_wait=self.max_retry_after)
        if asked is None:
            wait = 60.0 if response.status_code == 429 else 0.0
            asked = RetryAfter(wait, wait, False)
        if asked.capped:
            log.warning("tesla asked for a longer wait than allowed; waiting the cap",
                        device=block_key, asked=asked.describe())  # fmt: skip
        if asked.seconds > 0:
            until = now + timedelta(seconds=asked.seconds)
            previous = self._blocked_until.get(block_key)
            if previous is None or until > previous:
                self._blocked_until[block_key] = until
                self._block_asked[block_key] = asked

    def _interpret(self, response: httpx.Response, endpoint: str, block_key: str) -> Any:
        status = response.status_code
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        description = body.get("error_description") if isinstance(body, dict) else None
        # tesla-http-proxy refuses a command's parameters with the reason inside
        # "response" and an empty "error" ({"response": {"result": false, "reason":
        # "missing percent param"}, "error": ""}).
        inner = body.get("response") if isinstance(body, dict) else None
        refusal = inner.get("reason") if isinstance(inner, dict) else None
        parts = (error, description, refusal)
        detail = "; ".join(str(p) for p in parts if p) or response.reason_phrase
        if 200 <= status < 300:
            if not isinstance(body, dict) or "response" not in body:
                raise FleetApiError(
                    f"{endpoint}: answer without a 'response' field",
                    status=status,
                    endpoint=endpoint,
                )
            return body["response"]
        kwargs: dict[str, Any] = {"status": status, "error": error, "endpoint": endpoint}
        message = f"{endpoint}: HTTP {status}: {detail}"
        if status == 401:
            log.warning("fleet api refused the access token", endpoint=endpoint, error=error)
            raise Unauthorized(message, **kwargs)
        if status == 403:
            raise Forbidden(message, **kwargs)
        if status == 408:
            raise VehicleUnavailable(message, **kwargs)
        if status == 412:
            raise PreconditionFailed(message, **kwargs)
        if status == 421:
            raise MisdirectedRequest(message, **kwargs)
        if status == 429:
            self._m_rate_limited.labels(endpoint).inc()
            until = self._blocked_until.get(block_key)
            wait = max(0.0, (until - self._clock.now()).total_seconds()) if until else 60.0
            asked = self._block_asked.get(block_key)
            capped = asked is not None and asked.capped
            log.warning(
                "fleet api rate limited",
                endpoint=endpoint,
                device=block_key,
                retry_in=f"{wait:.0f}s",
            )
            if asked is not None and capped:
                message = f"{message} ({asked.describe()})"
            raise RateLimited(message, retry_after=wait, capped=capped, **kwargs)
        if status in (400, 422):
            raise RejectedValue(message, **kwargs)
        if _proxy_reports_asleep(response):
            # tesla-http-proxy answers a command to a sleeping car with a 500: the car's
            # state, not an outage of Tesla's API.
            raise VehicleUnavailable(message, **kwargs)
        if status >= 500:
            raise ServerError(message, **kwargs)
        raise FleetApiError(message, **kwargs)

    # ------------------------------------------------------------ vehicles

    async def vehicles(self) -> list[VehicleListing]:
        """The account's cars with their online state. Does not wake any car."""
        response = await self._call("GET", "/api/1/vehicles", endpoint="vehicles", category="data")
        return [
            VehicleListing(
                vin=str(item["vin"]),
                id=int(item["id"]),
                display_name=item.get("display_name"),
                state=str(item.get("state", "unknown")),
            )
            for item in response or []
        ]

    async def vehicle_data(
        self, vin: str, endpoints: Sequence[str] = DEFAULT_VEHICLE_DATA_ENDPOINTS
    ) -> dict[str, Any]:
        """Live data of an online car; :class:`VehicleUnavailable` (car left asleep) otherwise."""
        response = await self._call(
            "GET",
            f"/api/1/vehicles/{vin}/vehicle_data",
            endpoint="vehicle_data",
            category="data",
            vin=vin,
            params={"endpoints": ";".join(endpoints)},
        )
        return dict(response)

    async def vehicle_data_if_online(
        self, vin: str, endpoints: Sequence[str] = DEFAULT_VEHICLE_DATA_ENDPOINTS
    ) -> dict[str, Any] | None:
        """Ask the vehicle list first and read data only when the car is online.

        None when the car is asleep or offline (nothing else was called), or
        when it fell asleep between the two calls.
        """
        listing = {v.vin: v for v in await self.vehicles()}
        car = listing.get(vin)
        if car is None:
            raise FleetApiError(f"vehicle {vin} is not on this account", endpoint="vehicles")
        if not car.online:
            return None
        try:
            return await self.vehicle_data(vin, endpoints)
        except VehicleUnavailable:
            return None

    async def wake_up(self, vin: str) -> str:
        """Wake a sleeping car; answers its state *before* the wake (it takes 10-60 s).

        Only for commands (see the module docstring): reads never wake a car.
        """
        response = await self._call(
            "POST",
            f"/api/1/vehicles/{vin}/wake_up",
            endpoint="wake_up",
            category="wakes",
            vin=vin,
        )
        state = str(response.get("state", "unknown")) if isinstance(response, dict) else "unknown"
        log.info("vehicle woken for a command", vin=vin, state_before=state)
        return state

    async def charge_start(self, vin: str) -> CommandResult:
        return await self.vehicle_command(vin, "charge_start")

    async def charge_stop(self, vin: str) -> CommandResult:
        return await self.vehicle_command(vin, "charge_stop")

    async def set_charge_limit(self, vin: str, percent: int) -> CommandResult:
        """The charge limit in % (Tesla accepts 50-100; the car may narrow that)."""
        if isinstance(percent, bool) or not isinstance(percent, int):
            raise ValueError(f"charge limit must be an integer percent, not {percent!r}")
        if not CHARGE_LIMIT_RANGE[0] <= percent <= CHARGE_LIMIT_RANGE[1]:
            low, high = CHARGE_LIMIT_RANGE
            raise ValueError(f"charge limit must be {low}-{high} %, not {percent}")
        return await self.vehicle_command(vin, "set_charge_limit", {"percent": percent})

    async def set_charging_amps(self, vin: str, amps: int) -> CommandResult:
        """The charging current in A; the car's own maximum is the caller's bound."""
        if isinstance(amps, bool) or not isinstance(amps, int) or amps < 0:
            raise ValueError(f"charging current must be a whole number of amps, not {amps!r}")
        return await self.vehicle_command(vin, "set_charging_amps", {"charging_amps": amps})

    async def set_climate(self, vin: str, on: bool) -> CommandResult:
        name = "auto_conditioning_start" if on else "auto_conditioning_stop"
        return await self.vehicle_command(vin, name)

    async def vehicle_command(
        self, vin: str, name: str, parameters: dict[str, Any] | None = None
    ) -> CommandResult:
        """``POST /api/1/vehicles/{vin}/command/{name}``, through the command proxy
        when one is configured.

        The car's answer is ``{"result": bool, "reason": str}``; a refusal by the car
        is a :class:`CommandResult` with ``result`` false, not an exception.
        """
        response = await self._call(
            "POST",
            f"/api/1/vehicles/{vin}/command/{name}",
            endpoint=name,
            category="commands",
            vin=vin,
            json=parameters or {},
            command=True,
        )
        result = bool(response.get("result")) if isinstance(response, dict) else False
        reason = str(response.get("reason") or "") if isinstance(response, dict) else ""
        outcome = CommandResult(result, reason, result or reason == ALREADY_DONE.get(name))
        log.info("vehicle command sent", command=name, vin=vin, result=result, reason=reason)
        return outcome

    # ------------------------------------------------------------ energy sites

    async def energy_sites(self) -> list[int]:
        """``energy_site_id`` of every product that is an energy site."""
        response = await self._call("GET", "/api/1/products", endpoint="products", category="data")
        return [int(p["energy_site_id"]) for p in response or [] if "energy_site_id" in p]

    async def site_info(self, site_id: int) -> dict[str, Any]:
        response = await self._call(
            "GET",
            f"/api/1/energy_sites/{site_id}/site_info",
            endpoint="site_info",
            category="data",
            device=f"site:{site_id}",
        )
        return _object(response, "site_info")

    async def live_status(self, site_id: int) -> dict[str, Any]:
        """Powerwall live status. Limited to one call per ``site_live_status_interval``."""
        now = self._clock.now()
        last = self._last_live_status.get(site_id)
        if last is not None:
            wait = self.site_live_status_interval - (now - last).total_seconds()
            if wait > 0:
                self._m_refused.labels("live_status_interval").inc()
                raise BudgetExhausted(
                    f"live_status of site {site_id} was read {(now - last).total_seconds():.0f} s "
                    f"ago; Tesla allows one read per {self.site_live_status_interval:.0f} s",
                    budget="live_status_interval",
                    retry_after=wait,
                    endpoint="live_status",
                )

        def answered() -> None:
            self._last_live_status[site_id] = self._clock.now()

        response = await self._call(
            "GET",
            f"/api/1/energy_sites/{site_id}/live_status",
            endpoint="live_status",
            category="data",
            device=f"site:{site_id}",
            on_answer=answered,
        )
        return _object(response, "live_status")

    async def set_backup_reserve(self, site_id: int, percent: int) -> None:
        """Write the backup reserve as asked; Tesla's refusal raises :class:`RejectedValue`.

        Current firmware accepts only 0-80 or 100 (see
        :func:`nearest_accepted_backup_reserve`); choosing is the caller's policy.
        """
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValueError(f"backup reserve must be an integer 0-100, not {percent!r}")
        await self._site_write(
            site_id, "backup", "set_backup_reserve", {"backup_reserve_percent": percent}
        )
        log.info("powerwall backup reserve set", site=site_id, percent=percent)

    async def set_operation_mode(self, site_id: int, mode: OperationMode) -> None:
        if mode not in _OPERATION_MODES:
            raise ValueError(f"operation mode must be one of {', '.join(_OPERATION_MODES)}")
        await self._site_write(
            site_id, "operation", "set_operation_mode", {"default_real_mode": mode}
        )
        log.info("powerwall operation mode set", site=site_id, mode=mode)

    async def _site_write(
        self, site_id: int, path: str, endpoint: str, body: dict[str, Any]
    ) -> None:
        response = await self._call(
            "POST",
            f"/api/1/energy_sites/{site_id}/{path}",
            endpoint=endpoint,
            category="commands",
            site_write=site_id,
            device=f"site:{site_id}",
            json=body,
        )
        # Success is {"code": 201, "message": "Updated"}; a code of 400 or more in a
        # 200 answer is a refusal too.
        if isinstance(response, dict):
            code = response.get("code")
            if isinstance(code, int) and code >= 400:
                raise RejectedValue(
                    f"{endpoint}: Tesla refused: {response.get('message', code)}",
                    status=code,
                    endpoint=endpoint,
                )


def _object(response: Any, endpoint: str) -> dict[str, Any]:
    """An energy site's ``response`` object, or :class:`FleetApiError` for another shape."""
    if not isinstance(response, dict):
        shape = "null" if response is None else type(response).__name__
        raise FleetApiError(
            f"{endpoint}: answer of an unexpected shape ({shape} instead of an object)",
            endpoint=endpoint,
        )
    return response


def _proxy_reports_asleep(response: httpx.Response) -> bool:
    """tesla-http-proxy's 500 for a sleeping car (Tesla answered it 408)."""
    if response.status_code != 500:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, str) and _NOT_AWAKE in error


def _rate_header(headers: httpx.Headers, suffix: str) -> float | None:
    """A ``RateLimit-Remaining``/``-Reset`` value, or Tesla's ``RateLimit-<scope>-<suffix>``."""
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith("ratelimit-") and lowered.endswith("-" + suffix):
            try:
                return float(value.split(",")[0].strip())
            except ValueError:
                continue
    return None
