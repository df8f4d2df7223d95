"""The energy service's conditions as notifier messages.

:class:`AlertMonitor` feeds each cycle's observations through the pure
decisions of :mod:`gridmate.energy.alerts` and turns what opens or resolves
into :meth:`Notifier.send` and :meth:`Notifier.resolve` calls, worded for the
person who reads them. Token providers report through :meth:`token_event`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from gridmate.energy.adapters.common import ApiHealth
from gridmate.energy.adapters.thermostat import HoneywellAuth
from gridmate.energy.alerts import (
    ApiStatus,
    Change,
    Observation,
    Watch,
    WatchKey,
    api_observations,
    evaluate,
    peak_observations,
    token_changes,
)
from gridmate.energy.reconciler import CycleReport, Reconciler
from gridmate.energy.settings import AlertSettings
from gridmate.notify import Event, EventKind, Notifier
from gridmate.runtime.logs import get_logger
from gridmate.tesla.tokens import TokenEvent

log = get_logger("energy.notices")

_CYCLE_KINDS = frozenset(
    {
        EventKind.battery_floor_before_peak_end,
        EventKind.grid_import_during_peak,
        EventKind.api_failure,
        EventKind.api_rate_limited,
    }
)
_TOKEN_KINDS = frozenset({EventKind.token_failing, EventKind.token_expiring})


def api_status(health: ApiHealth) -> ApiStatus:
    """What an adapter's :class:`ApiHealth` says about its API right now."""
    wait = health.blocked()
    if wait is not None:
        return ApiStatus(
            health.name, "rate_limited", health.last_error or "429", wait, health.block_capped
        )
    if health.last_error:
        return ApiStatus(health.name, "failing", health.last_error)
    return ApiStatus(health.name, "ok")


def _api_label(name: str) -> str:
    if name == "tesla_energy":
        return "Tesla's Powerwall API"
    if name == "tesla_vehicle":
        return "Tesla's vehicle API"
    if name == "weather":
        return "The weather forecast (NWS and Open-Meteo)"
    service, _, device = name.partition(":")
    if service == "honeywell":
        return f"Honeywell's API (thermostat {device})"
    if service == "home_assistant":
        return f"Home Assistant (thermostat {device})"
    return name


def _api_advice(name: str) -> str:
    if name.startswith("tesla"):
        return (
            "Check the Tesla app; if it works there, check gridmate's Tesla token "
            "('gridmate energy status' shows the problem)."
        )
    if name.startswith("honeywell"):
        return (
            "Check the thermostat in the Honeywell Home app; if gridmate's authorization was "
            "revoked, authorize again and update honeywell.refresh_token_file."
        )
    if name.startswith("home_assistant"):
        return "Check that Home Assistant runs and that gridmate's token is still valid."
    return "Nothing, if it passes: without a forecast gridmate does not precool."


HONEYWELL_REAUTHORIZE_STEPS = (
    "Authorize gridmate again: run the OAuth authorization-code flow of your Honeywell Home "
    "developer app (developer.honeywellhome.com), put the new refresh token in the file "
    "honeywell.refresh_token_file names, and restart gridmate-energy."
)


def condition_event(change: Change, tz: ZoneInfo) -> Event:
    """The message that opens ``change``'s condition."""
    facts = change.facts

    def clock(value: Any) -> str:
        return value.astimezone(tz).strftime("%H:%M") if isinstance(value, datetime) else "?"

    soc, floor = facts.get("soc"), facts.get("floor")
    if change.kind is EventKind.battery_floor_before_peak_end:
        left = facts.get("minutes_left")
        return Event(
            change.kind,
            f"Battery at its floor {left:.0f} min before the peak ends"
            if isinstance(left, int | float)
            else "Battery at its floor before the peak ends",
            f"The battery is at {soc:.0f} % with a floor (backup reserve) of {floor:.0f} %, "
            f"and the peak lasts until {clock(facts.get('block_end'))}. From now on the house "
            "draws from the grid at peak prices.",
            "Ran the house from the battery down to its floor and raised the thermostats "
            "as the battery drained, as configured.",
            "Turn off large loads (oven, dryer, pool pump, car charging) until the peak ends. "
            "If this happens often, precool more or lower reserve.peak_reserve_percent.",
            key=change.key,
        )
    if change.kind is EventKind.grid_import_during_peak:
        return Event(
            change.kind,
            f"Grid import during peak: {facts.get('grid_kw', 0.0):.1f} kW",
            f"The house has drawn at least {facts.get('threshold_kw')} kW from the grid for "
            f"several minutes of the peak ({facts.get('grid_kw', 0.0):.1f} kW now, load "
            f"{facts.get('load_kw', 0.0):.1f} kW): {facts.get('why') or 'cause unknown'}.",
            "Kept the battery running the house and the thermostat ladder raising setpoints; "
            "nothing more can be shed automatically.",
            f"Turn off large loads until the peak ends at {clock(facts.get('block_end'))}.",
            key=change.key,
        )
    if change.kind in (EventKind.api_failure, EventKind.api_rate_limited):
        name = str(facts.get("api") or change.key)
        label = _api_label(name)
        if change.kind is EventKind.api_rate_limited:
            wait = float(facts.get("retry_seconds") or 0.0)
            return Event(
                change.kind,
                f"{label} rate-limits gridmate",
                f"{label} answered “too many requests”; gridmate has to wait "
                f"{wait / 60:.0f} more minutes ({facts.get('reason')}).",
                "Stopped calling it until the wait is over; the devices keep their settings.",
                "Nothing, unless it keeps happening: then check for other programs using the "
                "same account (each one counts against the same limit).",
                key=change.key,
            )
        return Event(
            change.kind,
            f"{label} is failing",
            f"{label} has not answered successfully for a while: {facts.get('reason')}.",
            "Keeps the devices as they are, works with the last values it has, and retries "
            "every cycle.",
            _api_advice(name),
            key=change.key,
        )
    if change.kind is EventKind.token_failing and facts.get("source") == "honeywell":
        refused = facts.get("reason") == "refresh_token_rejected"
        return Event(
            change.kind,
            "Honeywell authorization lost: authorize gridmate again"
            if refused
            else "Honeywell login failing",
            str(facts.get("detail")),
            "Leaves the thermostats as they are and asks Honeywell for no more tokens; the "
            "Powerwall and the cars are controlled as usual."
            if refused
            else "Retries with growing pauses; thermostat calls fail until a token works again.",
            HONEYWELL_REAUTHORIZE_STEPS
            if refused
            else "Nothing, if it passes; if it keeps failing, check honeywell.base_url.",
            key=change.key,
        )
    if change.kind is EventKind.token_failing:
        source = str(facts.get("source"))
        until = facts.get("expires_at")
        kept = (
            f"Keeps using the token it has until it expires ({clock(until)}) and retries."
            if isinstance(until, datetime)
            else "Retries with growing pauses; Tesla calls fail until a token works again."
        )
        advice = (
            "Check that TeslaMate runs and that gridmate has TeslaMate's encryption key."
            if source == "teslamate"
            else "If Tesla refused the refresh token, sign in again and put the new refresh "
            "token in tesla.oauth.refresh_token_file."
        )
        return Event(
            change.kind,
            f"Tesla access token failing ({source})",
            str(facts.get("detail")),
            kept,
            advice,
            key=change.key,
        )
    if change.kind is EventKind.token_expiring:
        return Event(
            change.kind,
            "Tesla refresh token expires soon",
            str(facts.get("detail")),
            "Keeps trying to renew it with every refresh.",
            "Sign in to Tesla again and put the new refresh token in "
            "tesla.oauth.refresh_token_file.",
            key=change.key,
        )
    raise ValueError(f"no wording for {change.kind}")  # pragma: no cover


def _login_lost(device: object) -> bool:
    auth = getattr(device, "auth", None)
    return isinstance(auth, HoneywellAuth) and auth.login_failing()


class AlertMonitor:
    """Conditions of one energy service, from cycles and token events to the notifier."""

    def __init__(self, settings: AlertSettings, notifier: Notifier | None, tz: ZoneInfo) -> None:
        self.settings = settings
        self.notifier = notifier
        self.tz = tz
        self.watches: dict[WatchKey, Watch] = {}
        self._stale_tokens: set[tuple[EventKind, str]] = set()
        self.seed()

    def seed(self) -> None:
        """Take over conditions a previous run left open, so they are resolved when clear."""
        if self.notifier is None:
            return
        for kind, key in self.notifier.open_conditions():
            if key is None:
                continue
            if kind in _CYCLE_KINDS:
                self.watches[(kind, key)] = Watch(open=True)
            elif kind in _TOKEN_KINDS:
                self._stale_tokens.add((kind, key))

    def observations(
        self, reconciler: Reconciler, report: CycleReport, site_key: str
    ) -> list[Observation]:
        healths: list[ApiHealth] = []
        if reconciler.powerwall is not None:
            healths.append(reconciler.powerwall.health)
        if reconciler.vehicles is not None:
            healths.append(reconciler.vehicles.health)
        # A thermostat whose Honeywell login is lost is covered by the token condition
        # ("authorize again"): one message, not a second "API failing" one.
        healths += [
            device.health for device in reconciler.thermostats.values() if not _login_lost(device)
        ]
        if reconciler.weather is not None:
            healths.append(reconciler.weather.health)
        seen = api_observations(
            (api_status(h) for h in healths), self.settings.api_failure_minutes * 60.0
        )
        if report.plan is not None and report.reading is not None:
            seen += peak_observations(
                report.plan,
                report.reading,
                site_key=site_key,
                peak_reserve_percent=reconciler.config.reserve.peak_reserve_percent,
                grid_import_kw=self.settings.grid_import_kw,
                grid_import_minutes=self.settings.grid_import_minutes,
                floor_margin_percent=self.settings.floor_margin_percent,
            )
        return seen

    async def observe(
        self,
        reconciler: Reconciler,
        report: CycleReport,
        site_key: str,
        *,
        tokens_healthy: bool = False,
        honeywell_healthy: bool = False,
    ) -> list[Change]:
        """One cycle's conditions; ``tokens_healthy``: Tesla tokens work,
        ``honeywell_healthy``: Honeywell answers (each clears its conditions left open)."""
        observed = self.observations(reconciler, report, site_key)
        self.watches, changes = evaluate(self.watches, observed, report.at)
        for kind, key in sorted(self._stale_tokens):
            if honeywell_healthy if key == "honeywell" else tokens_healthy:
                changes.append(Change("resolve", kind, key))
                self._stale_tokens.discard((kind, key))
        await self.apply(changes)
        return changes

    async def token_event(self, event: TokenEvent) -> None:
        """The token providers' ``on_event`` hook."""
        facts: Mapping[str, Any] = {
            "source": event.source,
            "reason": event.reason,
            "detail": event.detail,
            "expires_at": event.expires_at,
        }
        changes = token_changes(event.kind, event.source, facts)
        for change in changes:
            self._stale_tokens.discard((change.kind, change.key))
        await self.apply(changes)

    async def apply(self, changes: Iterable[Change]) -> None:
        for change in changes:
            log.debug("condition", kind=change.kind.value, key=change.key, action=change.action)
            if self.notifier is None:
                continue
            if change.action == "open":
                await self.notifier.send(condition_event(change, self.tz))
            else:
                await self.notifier.resolve(change.kind, change.key)
