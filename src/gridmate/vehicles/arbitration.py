"""Which source speaks for each vehicle: Fleet Telemetry, TeslaMate or Tesla API polling.

Sources are ranked: Fleet Telemetry (streamed by the car itself) over TeslaMate (which
polls the car) over gridmate's own polling of the Fleet API (billed per request). Each
source is judged per vehicle (:func:`judge_source`): *fresh*, *quiet* (silent, but the
car is asleep so silence is normal), *stale* (silent while the car is driving or
charging, another source saw activity it missed, or its link is down), *unhealthy*
(TeslaMate says its Tesla API access is failing) or *absent* (never heard). The vehicle's
selected source is the best trusted one (:func:`choose_source`).

Values are arbitrated per field (:func:`field_accepts`): a lower-ranked source may not
overwrite a field a trusted higher-ranked source provides, unless that value has grown
older than ``field_max_age``; it takes over at once when the higher source is not
trusted. :class:`RankedArbiter` is the state store's :class:`~gridmate.vehicles.state.Arbiter`
for writes that come without a vehicle context (Fleet Telemetry's own writes).

Everything here is a pure decision; :class:`SourceBook` keeps the per-vehicle facts the
decisions are made from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from gridmate.vehicles.state import GRIDMATE_SOURCE, FieldValue

FLEET_TELEMETRY = "fleet_telemetry"
TESLAMATE = "teslamate"
TESLA_API = "tesla_api"
NO_SOURCE = "none"
GRIDMATE = GRIDMATE_SOURCE
"""The source of fields gridmate derives itself (the "data source" field)."""

RANKS: dict[str, int] = {FLEET_TELEMETRY: 0, TESLAMATE: 1, TESLA_API: 2}
SOURCE_ORDER: tuple[str, ...] = (FLEET_TELEMETRY, TESLAMATE, TESLA_API)
DATA_SOURCE_OPTIONS: tuple[str, ...] = (*SOURCE_ORDER, NO_SOURCE)

SOURCE_NAMES: dict[str, str] = {
    FLEET_TELEMETRY: "Fleet Telemetry",
    TESLAMATE: "TeslaMate",
    TESLA_API: "Tesla API polling",
    NO_SOURCE: "no source",
}
"""How a person calls each source, in logs and notifications."""

_UNRANKED = 100


def rank(source: str) -> int:
    """Lower is better; sources gridmate does not know rank last."""
    return RANKS.get(source, _UNRANKED)


class Activity(IntEnum):
    """What a source last saw the car doing, as far as data flow is concerned."""

    UNKNOWN = 0
    SLEEPING = 1
    """Asleep, offline, or TeslaMate's "suspended": silence is normal."""
    IDLE = 2
    """Awake and parked: data may change rarely."""
    ACTIVE = 3
    """Driving or charging: data changes every few seconds."""


ACTIVITY_WORDS = {
    Activity.UNKNOWN: "in an unknown state",
    Activity.SLEEPING: "asleep",
    Activity.IDLE: "awake",
    Activity.ACTIVE: "driving or charging",
}


class Health(StrEnum):
    FRESH = "fresh"
    QUIET = "quiet"
    STALE = "stale"
    UNHEALTHY = "unhealthy"
    ABSENT = "absent"

    @property
    def trusted(self) -> bool:
        return self in (Health.FRESH, Health.QUIET)


@dataclass(frozen=True)
class Verdict:
    health: Health
    reason: str
    """Why, in words a person understands (empty when fresh)."""

    @property
    def trusted(self) -> bool:
        return self.health.trusted


@dataclass
class SourceFacts:
    """What one source told about one vehicle; the input of :func:`judge_source`."""

    last_heard: float | None = None
    """When the source last delivered anything live about the car (epoch s)."""
    activity: Activity = Activity.UNKNOWN
    activity_at: float | None = None
    """When the source last confirmed ``activity``."""
    healthy: bool | None = None
    """TeslaMate's ``healthy`` flag; None when not (yet) reported."""
    link_problem: str | None = None
    """Why the source cannot be believed right now (its connection is down, ...)."""
    last_failed: float | None = None
    """When the source last tried to get data about the car and failed (Tesla API polling)."""


def _minutes(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{max(1, round(seconds))} s"
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def judge_source(
    name: str,
    facts: SourceFacts | None,
    *,
    now: float,
    stale_after: float,
    others: Iterable[tuple[str, SourceFacts]] = (),
    cross_check_grace: float = 90.0,
) -> Verdict:
    """How far ``name``'s data about one car can be trusted right now.

    Silence is judged by the car's state: a car that is driving or charging sends
    data every few seconds, so ``stale_after`` seconds of silence mean the source
    lost it; an asleep or parked car may be silent for hours. ``others`` lets another
    source's view convict this one: if another source saw the car driving or charging
    more than ``cross_check_grace`` seconds after this source last said anything,
    this source is missing what the car does.
    """
    label = SOURCE_NAMES.get(name, name)
    if facts is None or facts.last_heard is None:
        return Verdict(Health.ABSENT, f"no data from {label} yet")
    if facts.link_problem:
        return Verdict(Health.STALE, facts.link_problem)
    if facts.healthy is False:
        return Verdict(
            Health.UNHEALTHY, f"{label} reports that its access to the Tesla API is failing"
        )
    silent = now - facts.last_heard
    if facts.activity is Activity.ACTIVE and silent > stale_after:
        return Verdict(
            Health.STALE,
            f"no data from {label} for {_minutes(silent)} while the car is driving or charging",
        )
    for other_name, other in others:
        if other_name == name or other.activity is not Activity.ACTIVE:
            continue
        seen = other.activity_at
        if seen is not None and seen - facts.last_heard > cross_check_grace:
            return Verdict(
                Health.STALE,
                f"{SOURCE_NAMES.get(other_name, other_name)} saw the car driving or charging "
                f"{_minutes(seen - facts.last_heard)} after the last data from {label}",
            )
    if facts.activity is Activity.SLEEPING:
        return Verdict(Health.QUIET, "")
    return Verdict(Health.FRESH, "")


def judge_fallback(facts: SourceFacts | None) -> Verdict:
    """Tesla API polling is judged by whether it *can* poll, not by silence.

    It is the fallback: it polls only while it is selected, so its silence says
    nothing. It is out only before it started (it waits for the other sources to
    speak first) and while its link is broken (no token, budget used up, rate
    limited).
    """
    if facts is None:
        return Verdict(Health.ABSENT, "Tesla API polling has not started")
    if facts.link_problem:
        return Verdict(Health.STALE, facts.link_problem)
    return Verdict(Health.FRESH, "")


def choose_source(verdicts: Mapping[str, Verdict]) -> str:
    """The best-ranked trusted source, or :data:`NO_SOURCE`."""
    for name in sorted(verdicts, key=rank):
        if verdicts[name].trusted:
            return name
    return NO_SOURCE


def shown_source(selected: str, facts: SourceFacts | None) -> str:
    """What the "Data source" entity names: a source that delivers, or :data:`NO_SOURCE`.

    The selected source is named once it has delivered data for the car, and not
    while its latest attempt failed (Tesla API polling is selected before its first
    poll, since it polls only while selected).
    """
    if selected == NO_SOURCE or facts is None or facts.last_heard is None:
        return NO_SOURCE
    if facts.last_failed is not None and facts.last_failed >= facts.last_heard:
        return NO_SOURCE
    return selected


def field_accepts(
    current: FieldValue,
    incoming: FieldValue,
    *,
    trusted: Iterable[str],
    field_max_age: float,
    resend: bool = False,
    skew: float = 120.0,
) -> bool:
    """Whether ``incoming`` replaces ``current`` for one field of one vehicle.

    * Within one source, the later observation wins (as :class:`NewestWins`).
    * A value never replaces a newer one from another source, except that a better
      ranked source may be up to ``skew`` seconds behind (its clock is the car's,
      TeslaMate's is the time gridmate received the message).
    * An untrusted source does not overwrite a trusted one.
    * A worse-ranked trusted source overwrites a trusted better-ranked one only when
      that value is more than ``field_max_age`` seconds older (the better source no
      longer sends this field).
    """
    if incoming.source == current.source:
        if incoming.observed_at != current.observed_at:
            return incoming.observed_at > current.observed_at
        return not resend
    trusted = set(trusted)
    if incoming.source not in trusted and current.source in trusted:
        return False
    if rank(incoming.source) < rank(current.source):
        return incoming.observed_at >= current.observed_at - skew
    if incoming.observed_at <= current.observed_at:
        return False
    if current.source not in trusted:
        return True
    return incoming.observed_at - current.observed_at > field_max_age


class RankedArbiter:
    """The store's arbiter: source ranks without per-vehicle trust.

    Writes from TeslaMate and from polling are checked with :func:`field_accepts`
    (which knows which sources the vehicle trusts) before they reach the store; this
    arbiter then only has to let a better-ranked source's slightly older reading
    through (Fleet Telemetry stamps with the car's clock, TeslaMate with ours) and
    otherwise keeps the newest observation.
    """

    def __init__(self, skew: float = 120.0) -> None:
        self.skew = skew

    def accepts(self, current: FieldValue, incoming: FieldValue, *, resend: bool) -> bool:
        if incoming.source == current.source or rank(incoming.source) >= rank(current.source):
            if incoming.observed_at != current.observed_at:
                return incoming.observed_at > current.observed_at
            return not resend
        return incoming.observed_at >= current.observed_at - self.skew


# ---------------------------------------------------------------- bookkeeping


@dataclass(frozen=True)
class Switch:
    """The selected source of a vehicle changed."""

    vin: str
    previous: str
    current: str
    reason: str
    """Why the previous source was left (empty when a better one appeared)."""
    stale: tuple[str, ...] = ()
    """Sources that just became stale or unhealthy."""
    recovered: tuple[str, ...] = ()
    """Sources that are trusted again after being stale or unhealthy."""


@dataclass
class VehicleSources:
    facts: dict[str, SourceFacts] = field(default_factory=dict)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    selected: str = NO_SOURCE


class SourceBook:
    """Per vehicle: each source's facts, verdicts and the selected source.

    ``configured`` names the sources this installation runs; a source that is not
    configured is not judged at all.
    """

    def __init__(
        self,
        configured: Iterable[str],
        *,
        stale_after: Mapping[str, float],
        field_max_age: float = 900.0,
        cross_check_grace: float = 90.0,
    ) -> None:
        self.configured = tuple(sorted(set(configured), key=rank))
        self.stale_after = dict(stale_after)
        self.field_max_age = field_max_age
        self.cross_check_grace = cross_check_grace
        self._vehicles: dict[str, VehicleSources] = {}

    def vins(self) -> list[str]:
        return list(self._vehicles)

    def vehicle(self, vin: str) -> VehicleSources:
        entry = self._vehicles.get(vin)
        if entry is None:
            entry = self._vehicles[vin] = VehicleSources()
        return entry

    def facts(self, vin: str, source: str) -> SourceFacts:
        vehicle = self.vehicle(vin)
        facts = vehicle.facts.get(source)
        if facts is None:
            facts = vehicle.facts[source] = SourceFacts()
        return facts

    def selected(self, vin: str) -> str:
        entry = self._vehicles.get(vin)
        return entry.selected if entry else NO_SOURCE

    def trusted(self, vin: str) -> frozenset[str]:
        entry = self._vehicles.get(vin)
        if entry is None:
            return frozenset()
        return frozenset(name for name, verdict in entry.verdicts.items() if verdict.trusted)

    def verdict(self, vin: str, source: str) -> Verdict | None:
        entry = self._vehicles.get(vin)
        return entry.verdicts.get(source) if entry else None

    def accepts(
        self, vin: str, current: FieldValue | None, incoming: FieldValue, *, resend: bool = False
    ) -> bool:
        if current is None:
            return True
        return field_accepts(
            current,
            incoming,
            trusted=self.trusted(vin),
            field_max_age=self.field_max_age,
            resend=resend,
        )

    def evaluate(self, now: float, vins: Iterable[str] | None = None) -> list[Switch]:
        """Judge every configured source of each vehicle; the switches that result."""
        switches = []
        for vin in list(vins if vins is not None else self._vehicles):
            vehicle = self.vehicle(vin)
            previous_verdicts = dict(vehicle.verdicts)
            others = [(n, f) for n, f in vehicle.facts.items() if n in self.configured]
            verdicts = {
                name: (
                    judge_fallback(vehicle.facts.get(name))
                    if name == TESLA_API
                    else judge_source(
                        name,
                        vehicle.facts.get(name),
                        now=now,
                        stale_after=self.stale_after.get(name, 300.0),
                        others=others,
                        cross_check_grace=self.cross_check_grace,
                    )
                )
                for name in self.configured
            }
            vehicle.verdicts = verdicts
            selected = choose_source(verdicts)
            stale = tuple(
                name
                for name, verdict in verdicts.items()
                if verdict.health in (Health.STALE, Health.UNHEALTHY)
                and not (
                    name in previous_verdicts
                    and previous_verdicts[name].health in (Health.STALE, Health.UNHEALTHY)
                )
            )
            recovered = tuple(
                name
                for name, verdict in verdicts.items()
                if verdict.trusted
                and name in previous_verdicts
                and previous_verdicts[name].health in (Health.STALE, Health.UNHEALTHY)
            )
            if selected != vehicle.selected or stale or recovered:
                left = vehicle.selected
                reason = ""
                if left in verdicts and not verdicts[left].trusted:
                    reason = verdicts[left].reason
                switches.append(Switch(vin, left, selected, reason, stale, recovered))
                vehicle.selected = selected
        return switches


def describe_switch(switch: Switch, name: str) -> str:
    """The log line (and notification text) for a switch, in plain words."""
    current = SOURCE_NAMES.get(switch.current, switch.current)
    previous = SOURCE_NAMES.get(switch.previous, switch.previous)
    if switch.previous == switch.current:
        return f"telemetry for {name} is still provided by {current}"
    if switch.current == NO_SOURCE:
        why = f" ({switch.reason})" if switch.reason else ""
        return (
            f"data from {previous} for {name} cannot be trusted{why}; no other source is "
            "available, the last values are kept"
        )
    if switch.reason:
        return f"data from {previous} for {name} is stale; switching to {current} ({switch.reason})"
    return f"telemetry for {name} is now provided by {current}"
