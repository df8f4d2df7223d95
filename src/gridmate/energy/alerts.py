"""When something deserves a message, and when it is over: pure decisions.

The energy service reports *conditions* to the notifier: the battery at its
floor before the peak ends, grid import during a peak, a cloud API failing or
rate-limiting gridmate, a Tesla token failing or about to expire. Each is a
:class:`Watch` stepped once per control cycle with whether it is bad right
now (:func:`step`): it *opens* once it has been bad for its hold time (one bad
sample of grid import is not a condition, five minutes of it is) and
*resolves* on the first good observation after that. The notifier then damps
flapping: a condition that comes back before its "resolved" went out stays one
episode, so a flapping API gives one message and one "resolved".

Nothing here does I/O or reads a clock; :mod:`gridmate.energy.service` turns
the :class:`Change` values into notifier calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from gridmate.energy.planner import Plan, SiteReading
from gridmate.notify import EventKind

__all__ = [
    "ApiStatus",
    "Change",
    "Observation",
    "Watch",
    "WatchKey",
    "api_observations",
    "evaluate",
    "peak_observations",
    "step",
    "token_changes",
]

Transition = Literal["open", "resolve"]


@dataclass(frozen=True)
class Watch:
    """One condition's bookkeeping: since when it is bad, and whether it was reported."""

    since: datetime | None = None
    open: bool = False


def step(
    watch: Watch, at: datetime, bad: bool, hold_seconds: float
) -> tuple[Watch, Transition | None]:
    """Advance ``watch`` by one observation made at ``at``."""
    if not bad:
        return Watch(), ("resolve" if watch.open else None)
    since = watch.since or at
    if watch.open:
        return replace(watch, since=since), None
    if (at - since).total_seconds() >= hold_seconds:
        return Watch(since=since, open=True), "open"
    return Watch(since=since), None


@dataclass(frozen=True)
class Observation:
    kind: EventKind
    key: str
    bad: bool
    hold_seconds: float = 0.0
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    action: Transition
    kind: EventKind
    key: str
    facts: Mapping[str, Any] = field(default_factory=dict)


WatchKey = tuple[EventKind, str]


def evaluate(
    watches: Mapping[WatchKey, Watch], observations: Iterable[Observation], at: datetime
) -> tuple[dict[WatchKey, Watch], list[Change]]:
    """Step every observed condition; conditions not observed this cycle keep their state."""
    result = dict(watches)
    changes: list[Change] = []
    for seen in observations:
        key = (seen.kind, seen.key)
        watch, transition = step(result.get(key, Watch()), at, seen.bad, seen.hold_seconds)
        if watch == Watch():
            result.pop(key, None)
        else:
            result[key] = watch
        if transition is not None:
            changes.append(Change(transition, seen.kind, seen.key, dict(seen.facts)))
    return result, changes


# ---------------------------------------------------------------- the peak


def _why_import(plan: Plan, site: SiteReading, floor: float, margin: float) -> str:
    wish = plan.powerwall
    if site.soc_percent is not None and site.soc_percent <= floor + margin:
        return "the battery is at its floor"
    if max(0.0, site.load_kw - site.solar_kw) > site.max_power_kw:
        return (
            f"the house draws {site.load_kw - site.solar_kw:.1f} kW, more than the battery's "
            f"{site.max_power_kw:.1f} kW"
        )
    if plan.memory.powerwall_overridden:
        return "the Powerwall's reserve was changed by hand for this peak"
    if wish is None:
        return "the Powerwall was left in its own setting for this peak"
    if (site.reserve_percent, site.mode) != (wish.reserve_percent, wish.mode):
        return "the Powerwall does not have its peak setting yet"
    return "the Powerwall did not cover the whole load"


def peak_observations(
    plan: Plan,
    site: SiteReading,
    *,
    site_key: str,
    peak_reserve_percent: int,
    grid_import_kw: float,
    grid_import_minutes: float,
    floor_margin_percent: float,
) -> list[Observation]:
    """Battery-at-floor and grid-import observations of one cycle."""
    in_peak = plan.phase == "peak"
    # The floor the battery stops at is the reserve gridmate sets for the peak (the
    # first peak reading still shows the one from before); when gridmate leaves the
    # Powerwall alone or a person changed it, the reserve it has.
    if plan.powerwall is not None:
        floor = float(plan.powerwall.reserve_percent)
    elif site.reserve_percent is not None:
        floor = float(site.reserve_percent)
    else:
        floor = float(peak_reserve_percent)
    soc = site.soc_percent
    at_floor = (
        in_peak
        and soc is not None
        and soc <= floor + floor_margin_percent
        and (plan.minutes_left or 0.0) > 0
    )
    importing = in_peak and site.grid_kw >= grid_import_kw
    common = {
        "soc": soc,
        "floor": floor,
        "grid_kw": round(site.grid_kw, 2),
        "load_kw": round(site.load_kw, 2),
        "minutes_left": round(plan.minutes_left, 0) if plan.minutes_left is not None else None,
        "block_end": plan.block[1] if plan.block else None,
    }
    return [
        Observation(EventKind.battery_floor_before_peak_end, site_key, at_floor, 0.0, common),
        Observation(
            EventKind.grid_import_during_peak,
            site_key,
            importing,
            grid_import_minutes * 60.0,
            {
                **common,
                "threshold_kw": grid_import_kw,
                "why": _why_import(plan, site, floor, floor_margin_percent) if importing else "",
            },
        ),
    ]


# ---------------------------------------------------------------- cloud APIs


@dataclass(frozen=True)
class ApiStatus:
    """What one API's last calls say: ``ok``, ``failing`` or ``rate_limited``."""

    name: str
    state: Literal["ok", "failing", "rate_limited"]
    reason: str = ""
    retry_seconds: float = 0.0
    capped: bool = False
    """The API asked for a longer wait than gridmate obeys (Retry-After beyond the cap)."""


def api_observations(statuses: Iterable[ApiStatus], hold_seconds: float) -> list[Observation]:
    """A failing and a rate-limit observation per API.

    A failure counts once it has lasted ``hold_seconds`` without one success. A
    rate limit counts as soon as its Retry-After is that long, or longer than
    gridmate's cap, since waiting for it to last that long would only delay the news.
    """
    result = []
    for status in statuses:
        facts = {"api": status.name, "reason": status.reason, "retry_seconds": status.retry_seconds}
        limited = status.state == "rate_limited"
        result.append(
            Observation(
                EventKind.api_failure, status.name, status.state == "failing", hold_seconds, facts
            )
        )
        result.append(
            Observation(
                EventKind.api_rate_limited,
                status.name,
                limited,
                0.0
                if limited and (status.capped or status.retry_seconds >= hold_seconds)
                else hold_seconds,
                facts,
            )
        )
    return result


# ---------------------------------------------------------------- tokens


def token_changes(
    kind: Literal["failing", "recovered", "expiring"],
    source: str,
    facts: Mapping[str, Any],
) -> list[Change]:
    """A token provider's event as conditions: failing and expiring open, recovered resolves.

    A recovery is a working refresh (OAuth) or a token read again (TeslaMate); after
    it, gridmate's refresh token is new, so an expiry warning is over too.
    """
    key = "honeywell" if source == "honeywell" else f"tesla {source}"
    if kind == "failing":
        return [Change("open", EventKind.token_failing, key, facts)]
    if kind == "expiring":
        return [Change("open", EventKind.token_expiring, key, facts)]
    return [
        Change("resolve", EventKind.token_failing, key, facts),
        Change("resolve", EventKind.token_expiring, key, facts),
    ]
