"""The Powerwall: control through the Fleet API, reads from the gateway when there is one.

Fleet ``live_status`` reads are billed and limited to one per site per five
minutes, so they are the fallback: with a local gateway configured, state of
charge and power come from it every cycle. The reserve and the operation mode
come from ``site_info``, read at start, every ``settings_read_seconds`` and right
after every write to verify it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from gridmate.energy.adapters.common import (
    AdapterError,
    ApiHealth,
    OutcomeUnknown,
    RateLimitedError,
    RejectedError,
)
from gridmate.energy.adapters.gateway import GatewayClient
from gridmate.runtime.clock import Clock
from gridmate.runtime.logs import get_logger
from gridmate.tesla import fleet_api
from gridmate.tesla.fleet_api import FleetApi

log = get_logger("energy.powerwall")
T = TypeVar("T")


@dataclass(frozen=True)
class PowerwallReading:
    at: datetime
    source: Literal["gateway", "cloud", "cached"]
    soc_percent: float | None
    load_kw: float
    solar_kw: float
    battery_kw: float
    grid_kw: float
    reserve_percent: int | None
    mode: str | None
    capacity_kwh: float
    max_power_kw: float
    time_zone: str | None


@dataclass(frozen=True)
class WriteOutcome:
    setting: str
    value: object
    ok: bool
    verified: bool
    error: str | None = None
    rejected: bool = False
    """Tesla refused the value (400): retrying the same value is pointless."""
    counts: bool = True
    """Whether the write counts against the day's write budget the way Tesla counts it:
    a write the site applied does; one refused before reaching it (a local budget or
    back-off, 401, 403, 429) or refused for its value does not. A lost answer whose
    read-back fails too counts, since the site may have applied it."""
    unknown: bool = False
    """The answer was lost and the read-back failed: nobody knows yet whether the site
    has the value. The next read asks Tesla again before anything is decided."""
    answer_lost: str | None = None
    """Why the answer was lost, when the outcome was settled by reading back."""


class Powerwall:
    def __init__(
        self,
        fleet: FleetApi,
        *,
        clock: Clock,
        site_id: int | None = None,
        gateway: GatewayClient | None = None,
        cloud_read_seconds: float = 300.0,
        settings_read_seconds: float = 1800.0,
        capacity_kwh: float | None = None,
        max_power_kw: float | None = None,
    ) -> None:
        self.fleet = fleet
        self.clock = clock
        self.site_id = site_id
        self.gateway = gateway
        self.cloud_read_seconds = cloud_read_seconds
        self.settings_read_seconds = settings_read_seconds
        self.health = ApiHealth("tesla_energy", clock)
        self._capacity = capacity_kwh
        self._max_power = max_power_kw
        self._info: dict[str, object] = {}
        self._info_at: datetime | None = None
        self._live: PowerwallReading | None = None
        self._live_at: datetime | None = None
        self._unsettled = False
        """A write went out after the last site_info read that worked: the reserve and
        mode held are older than it and are not reported as the site's."""

    async def start(self) -> None:
        if self.site_id is None:
            sites = await self._call(self.fleet.energy_sites())
            if not sites:
                raise AdapterError("the Tesla account has no energy site")
            self.site_id = sites[0]
            log.info("energy site found", site=self.site_id)
        await self.refresh_settings()

    async def _call(self, awaitable: Coroutine[Any, Any, T]) -> T:
        wait = self.health.blocked()
        if wait is not None:
            awaitable.close()
            raise RateLimitedError(f"Tesla rate limit: waiting {wait:.0f} s", wait)
        try:
            self.health.count()
            result = await awaitable
        except fleet_api.RateLimited as error:
            self.health.block(error.retry_after, f"429 from Tesla ({error})", capped=error.capped)
            raise RateLimitedError(str(error), error.retry_after) from error
        except fleet_api.BudgetExhausted as error:
            raise RateLimitedError(str(error), error.retry_after) from error
        except fleet_api.RejectedValue as error:
            raise RejectedError(str(error)) from error
        except fleet_api.FleetApiError as error:
            self.health.failed(f"{type(error).__name__}: {error}")
            if _answer_lost(error):
                answered = error.status is not None and 200 <= error.status < 300
                raise OutcomeUnknown(f"Tesla: {error}", answered=answered) from error
            raise AdapterError(f"Tesla: {error}") from error
        except fleet_api.TokenUnavailable as error:
            self.health.failed(f"{type(error).__name__}: {error}")
            raise AdapterError(f"Tesla: {error}") from error
        self.health.ok()
        return result

    async def refresh_settings(self) -> None:
        assert self.site_id is not None
        info = await self._call(self.fleet.site_info(self.site_id))
        self._info = dict(info)
        self._info_at = self.clock.now()
        self._unsettled = False

    @property
    def reserve_percent(self) -> int | None:
        value = self._info.get("backup_reserve_percent")
        return int(value) if isinstance(value, int | float) else None

    @property
    def mode(self) -> str | None:
        value = self._info.get("default_real_mode")
        return str(value) if value is not None else None

    @property
    def capacity_kwh(self) -> float:
        if self._capacity is not None:
            return self._capacity
        value = self._info.get("nameplate_energy")
        return float(value) / 1000.0 if isinstance(value, int | float) else 13.5

    @property
    def max_power_kw(self) -> float:
        if self._max_power is not None:
            return self._max_power
        value = self._info.get("nameplate_power")
        return float(value) / 1000.0 if isinstance(value, int | float) else 5.0

    async def read(self, *, settings_max_age: float | None = None) -> PowerwallReading:
        """Power from the gateway (or the cloud); reserve and mode from a recent site_info.

        ``settings_max_age`` reads site_info again when the last read is older (default
        ``settings_read_seconds``).
        """
        now = self.clock.now()
        max_age = self.settings_read_seconds if settings_max_age is None else settings_max_age
        if self._info_at is None or (now - self._info_at).total_seconds() >= max_age:
            try:
                await self.refresh_settings()
            except AdapterError as error:
                log.warning("site_info read failed; using the last one", error=str(error))
        zone = self._info.get("installation_time_zone")
        common = {
            "reserve_percent": None if self._unsettled else self.reserve_percent,
            "mode": None if self._unsettled else self.mode,
            "capacity_kwh": self.capacity_kwh,
            "max_power_kw": self.max_power_kw,
            "time_zone": str(zone) if zone else None,
        }
        if self.gateway is not None:
            try:
                local = await self.gateway.read()
                return PowerwallReading(
                    now, "gateway", local.soc_percent, local.load_kw, local.solar_kw,
                    local.battery_kw, local.grid_kw, **common,  # type: ignore[arg-type]
                )  # fmt: skip
            except AdapterError as error:
                log.warning("gateway read failed; falling back to the cloud", error=str(error))
        due = (
            self._live_at is None
            or (now - self._live_at).total_seconds() >= self.cloud_read_seconds
        )
        if due:
            assert self.site_id is not None
            try:
                live = await self._call(self.fleet.live_status(self.site_id))
                self._live_at = now
                self._live = PowerwallReading(
                    now,
                    "cloud",
                    _num(live.get("percentage_charged")),
                    (_num(live.get("load_power")) or 0.0) / 1000.0,
                    (_num(live.get("solar_power")) or 0.0) / 1000.0,
                    (_num(live.get("battery_power")) or 0.0) / 1000.0,
                    (_num(live.get("grid_power")) or 0.0) / 1000.0,
                    **common,  # type: ignore[arg-type]
                )
            except RateLimitedError as error:
                log.info("live_status not read now", reason=str(error))
        if self._live is None:
            raise AdapterError("no Powerwall reading yet")
        last = self._live
        return PowerwallReading(
            last.at, "cached" if not due else last.source, last.soc_percent, last.load_kw,
            last.solar_kw, last.battery_kw, last.grid_kw, **common,  # type: ignore[arg-type]
        )  # fmt: skip

    async def write_reserve(self, percent: int) -> WriteOutcome:
        assert self.site_id is not None
        return await self._write(
            "backup_reserve_percent", percent, self.fleet.set_backup_reserve(self.site_id, percent)
        )

    async def write_mode(self, mode: str) -> WriteOutcome:
        assert self.site_id is not None
        return await self._write(
            "default_real_mode",
            mode,
            self.fleet.set_operation_mode(self.site_id, mode),  # type: ignore[arg-type]
        )

    async def _write(
        self, setting: str, value: object, call: Coroutine[Any, Any, None]
    ) -> WriteOutcome:
        try:
            await self._call(call)
        except RejectedError as error:
            return WriteOutcome(
                setting, value, False, False, str(error), rejected=True, counts=False
            )
        except OutcomeUnknown as error:
            return await self._settle(setting, value, error)
        except AdapterError as error:  # refused before it reached the site: 401, 403, 429
            return WriteOutcome(setting, value, False, False, str(error), counts=False)
        return await self._verify(setting, value)

    async def _settle(self, setting: str, value: object, error: OutcomeUnknown) -> WriteOutcome:
        """A write whose answer was lost: what the site reads now is what happened."""
        lost = str(error)
        # The Fleet client counted a 2xx itself; a 5xx or no answer is counted here once
        # the site shows (or may have) the value, as Tesla counts it.
        uncounted = not error.answered
        self._info_at = None  # whatever comes next, the next read asks Tesla first
        assert self.site_id is not None
        try:
            await self.refresh_settings()
        except AdapterError as read_error:
            log.warning("write answer lost and read-back failed; outcome unknown",
                        setting=setting, value=value, error=str(read_error))  # fmt: skip
            self._info_at = None
            self._unsettled = True
            if uncounted:
                self.fleet.note_site_write_applied(self.site_id)
            return WriteOutcome(
                setting, value, False, False,
                f"answer lost ({lost}) and read-back failed ({read_error}); the next cycle reads "
                "the site again before deciding", counts=True, unknown=True,
            )  # fmt: skip
        seen = self._info.get(setting)
        if seen == value:
            log.info("write answer lost; the site has the value", setting=setting, value=value)
            if uncounted:
                self.fleet.note_site_write_applied(self.site_id)
            return WriteOutcome(setting, value, True, True, answer_lost=lost)
        return WriteOutcome(
            setting, value, False, False,
            f"answer lost ({lost}); read back {seen!r}, so the site did not apply it",
            counts=False, answer_lost=lost,
        )  # fmt: skip

    async def _verify(self, setting: str, value: object) -> WriteOutcome:
        # Read back: a write Tesla acknowledged is not yet a setting the site has.
        try:
            await self.refresh_settings()
        except AdapterError as error:
            self._unsettled = True
            self._info_at = None
            return WriteOutcome(setting, value, True, False, f"read-back failed: {error}")
        seen = self._info.get(setting)
        if seen != value:
            return WriteOutcome(setting, value, True, False, f"read back {seen!r}")
        return WriteOutcome(setting, value, True, True)


def _answer_lost(error: fleet_api.FleetApiError) -> bool:
    """Whether the request may have reached Tesla although no usable answer came back."""
    if isinstance(error, fleet_api.ServerError):
        return True
    if isinstance(error, fleet_api.ApiUnreachable):
        return error.retry_after is None  # with a wait, it was refused before sending
    return error.status is not None and 200 <= error.status < 300  # an unparsable answer


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
