"""What gridmate knows about each vehicle, whatever source told it.

The state is kept per VIN and per *canonical field* (gridmate's own names, listed in
:mod:`gridmate.vehicles.catalogue`): the value, when the source observed it (the
vehicle's clock where the source has one) and which source it came from. Sources
(Fleet Telemetry today) translate their own records into canonical fields and call
:meth:`StateStore.update`; the Home Assistant publisher only reads this state.

Whether an incoming observation replaces the current one is decided by an
:class:`Arbiter`. The default, :class:`NewestWins`, orders observations of one field
by their observation time, which is what makes resent and replayed records harmless.
Values are JSON-native (numbers, strings, booleans, None, tuples, dicts) so a snapshot
of the state can be published and read back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Protocol


class InvalidPolicy(StrEnum):
    """What a field does when a source says its value is currently not available."""

    KEEP = "keep"
    """Keep showing the last value (a car going to sleep invalidates most signals)."""
    CLEAR = "clear"
    """Show "unknown": the signal's absence means something (no route, no cable)."""


class _Invalid(Enum):
    INVALID = "invalid"


INVALID = _Invalid.INVALID
"""Passed as a value to :meth:`StateStore.update`: the source reports "not available"."""


@dataclass(slots=True)
class Applied:
    """What one record (from any source) changed, for the publisher."""

    vin: str
    changed: list[str]
    touched: bool = False
    stale: int = 0
    """Datums older than what is known (resends, replays)."""


class Outcome(Enum):
    """What an update did to the state."""

    CHANGED = "changed"
    """The value changed (or the field is new)."""
    TOUCHED = "touched"
    """Same value, newer observation time."""
    IGNORED = "ignored"
    """Older than what is known, a duplicate, or an invalid value kept by policy."""


@dataclass(slots=True)
class FieldValue:
    """One field of one vehicle: ``observed_at`` is epoch seconds (source's clock)."""

    value: Any
    observed_at: float
    source: str


class Arbiter(Protocol):
    """Decides whether ``incoming`` replaces ``current`` for one field."""

    def accepts(self, current: FieldValue, incoming: FieldValue, *, resend: bool) -> bool: ...


class NewestWins:
    """The later observation wins, per field.

    An observation as old as the current one is accepted only if it is not a resend:
    two different values at the same instant from the live stream are taken in log
    order, while a resend carries values already seen (or superseded).
    """

    def accepts(self, current: FieldValue, incoming: FieldValue, *, resend: bool) -> bool:
        if incoming.observed_at > current.observed_at:
            return True
        if incoming.observed_at < current.observed_at:
            return False
        return not resend


GRIDMATE_SOURCE = "gridmate"
"""The source of fields gridmate derives itself; they are not vehicle data."""


@dataclass(slots=True)
class VehicleState:
    vin: str
    fields: dict[str, FieldValue] = field(default_factory=dict)
    last_update: float | None = None
    """The newest observation time of any vehicle field (proof the vehicle talked);
    fields gridmate derives itself (the data source) do not count."""

    def value(self, key: str, default: Any = None) -> Any:
        current = self.fields.get(key)
        return default if current is None else current.value

    def values(self) -> dict[str, Any]:
        return {key: current.value for key, current in self.fields.items()}


class StateStore:
    """Per-VIN, per-field state with ordering and invalid-value policies."""

    def __init__(
        self,
        policies: Mapping[str, InvalidPolicy] | None = None,
        *,
        default_policy: InvalidPolicy = InvalidPolicy.KEEP,
        arbiter: Arbiter | None = None,
    ) -> None:
        self._policies = dict(policies or {})
        self._default_policy = default_policy
        self._arbiter: Arbiter = arbiter or NewestWins()
        self._vehicles: dict[str, VehicleState] = {}

    def policy(self, key: str) -> InvalidPolicy:
        return self._policies.get(key, self._default_policy)

    def __len__(self) -> int:
        return len(self._vehicles)

    def __contains__(self, vin: object) -> bool:
        return vin in self._vehicles

    def __iter__(self) -> Iterator[VehicleState]:
        return iter(list(self._vehicles.values()))

    def get(self, vin: str) -> VehicleState | None:
        return self._vehicles.get(vin)

    def vehicle(self, vin: str) -> VehicleState:
        """The vehicle's state, created empty on first use."""
        state = self._vehicles.get(vin)
        if state is None:
            state = self._vehicles[vin] = VehicleState(vin)
        return state

    def update(
        self,
        vin: str,
        key: str,
        value: Any,
        observed_at: float,
        source: str,
        *,
        resend: bool = False,
    ) -> Outcome:
        """Offer one observation; ``value`` may be :data:`INVALID`."""
        state = self._vehicles.get(vin)
        if state is None:
            state = self._vehicles[vin] = VehicleState(vin)
        if value is INVALID:
            if self._policies.get(key, self._default_policy) is InvalidPolicy.KEEP:
                return Outcome.IGNORED
            value = None
        if source != GRIDMATE_SOURCE and (
            state.last_update is None or observed_at > state.last_update
        ):
            state.last_update = observed_at
        current = state.fields.get(key)
        if current is None:
            state.fields[key] = FieldValue(value, observed_at, source)
            return Outcome.CHANGED
        incoming = FieldValue(value, observed_at, source)
        if not self._arbiter.accepts(current, incoming, resend=resend):
            return Outcome.IGNORED
        if current.value == value and current.source == source:
            if observed_at == current.observed_at:
                return Outcome.IGNORED
            current.observed_at = observed_at
            return Outcome.TOUCHED
        state.fields[key] = incoming
        return Outcome.CHANGED

    def seed(self, vin: str, fields: Mapping[str, FieldValue]) -> VehicleState:
        """Restore a vehicle's fields from a snapshot, keeping anything newer already known."""
        state = self.vehicle(vin)
        for key, snapshot in fields.items():
            current = state.fields.get(key)
            if current is None or snapshot.observed_at > current.observed_at:
                state.fields[key] = snapshot
            if snapshot.source != GRIDMATE_SOURCE and (
                state.last_update is None or snapshot.observed_at > state.last_update
            ):
                state.last_update = snapshot.observed_at
        return state

    def forget(self, vins: Iterable[str]) -> None:
        for vin in vins:
            self._vehicles.pop(vin, None)

    def clear(self) -> None:
        self._vehicles.clear()
