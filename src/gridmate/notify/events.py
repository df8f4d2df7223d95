"""The event catalogue: what gridmate tells people about, and how loudly.

Every component describes what happened as an :class:`Event`. The notifier
decides whether it is worth a message (deduplication, flap damping, rate
limits), who gets it (the level's recipient list) and how it is worded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    """How urgent a message is; each level has its own recipient list."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


_I, _W, _C = Level.INFO, Level.WARNING, Level.CRITICAL


class EventKind(StrEnum):
    """Everything gridmate may notify about.

    A *condition* (``is_condition``) is a state that holds until it is
    resolved (stale telemetry, a failing API): it is reported once when it
    starts and once when it has been resolved for a while, however often it
    flaps in between. Other kinds are one-off happenings.
    """

    peak_started = "peak_started"
    peak_ended = "peak_ended"
    precool_decided = "precool_decided"
    battery_floor_before_peak_end = "battery_floor_before_peak_end"
    grid_import_during_peak = "grid_import_during_peak"
    reserve_restore_verified = "reserve_restore_verified"
    reserve_restore_failed = "reserve_restore_failed"
    thermostat_override_detected = "thermostat_override_detected"
    powerwall_override_detected = "powerwall_override_detected"
    api_failure = "api_failure"
    api_rate_limited = "api_rate_limited"
    token_failing = "token_failing"
    token_expiring = "token_expiring"
    telemetry_source_switched = "telemetry_source_switched"
    telemetry_stale = "telemetry_stale"
    failover_transition = "failover_transition"
    failover_split_brain = "failover_split_brain"
    component_start_failed = "component_start_failed"
    daily_report = "daily_report"
    battery_not_recovered = "battery_not_recovered"
    restore_failed = "restore_failed"
    backup_failed = "backup_failed"

    @property
    def default_level(self) -> Level:
        return _CATALOGUE[self][0]

    @property
    def label(self) -> str:
        """A short name a person understands, used in digests and logs."""
        return _CATALOGUE[self][1]

    @property
    def is_condition(self) -> bool:
        return _CATALOGUE[self][2]


# kind: (default level, title, is a condition that gets a "resolved" message)
_CATALOGUE: dict[EventKind, tuple[Level, str, bool]] = {
    EventKind.peak_started: (_I, "Peak period started", False),
    EventKind.peak_ended: (_I, "Peak period ended", False),
    EventKind.precool_decided: (_I, "Precooling decision", False),
    EventKind.battery_floor_before_peak_end: (_W, "Battery at its floor before peak end", True),
    EventKind.grid_import_during_peak: (_C, "Grid import during peak", True),
    EventKind.reserve_restore_verified: (_I, "Backup reserve restored", False),
    EventKind.reserve_restore_failed: (_C, "Backup reserve not restored", True),
    EventKind.thermostat_override_detected: (_I, "Thermostat changed by hand", True),
    EventKind.powerwall_override_detected: (_I, "Powerwall changed by hand", True),
    EventKind.api_failure: (_W, "Cloud API failing", True),
    EventKind.api_rate_limited: (_W, "Cloud API rate limit", True),
    EventKind.token_failing: (_C, "Access token failing", True),
    EventKind.token_expiring: (_W, "Access token expiring soon", True),
    EventKind.telemetry_source_switched: (_I, "Telemetry source switched", False),
    EventKind.telemetry_stale: (_W, "Telemetry is stale", True),
    EventKind.failover_transition: (_W, "Failover", False),
    EventKind.failover_split_brain: (_C, "Both failover nodes active", True),
    EventKind.component_start_failed: (_C, "Component failed to start", True),
    EventKind.daily_report: (_I, "Daily report", False),
    EventKind.battery_not_recovered: (_W, "Battery did not recover by end of day", False),
    EventKind.restore_failed: (_C, "Restore before first start failed", False),
    EventKind.backup_failed: (_W, "Backup failed", False),
}


@dataclass(frozen=True)
class InlineImage:
    """A picture shown inside the HTML part, referenced as ``cid:<content_id>``."""

    content_id: str
    png: bytes
    description: str = ""


@dataclass(frozen=True)
class Event:
    """Something a person may want to know, in the words they will read.

    ``key`` names what the event is about (a VIN, an energy site, an API), so
    the same kind of trouble with two different things is two conditions.
    ``occurrence`` identifies one happening (for example the date of a peak
    period); two nodes reporting the same kind, key and occurrence produce
    the same idempotency key, so only one message goes out.
    """

    kind: EventKind
    subject: str
    what_happened: str
    what_gridmate_did: str
    what_you_can_do: str | None = None
    key: str | None = None
    level: Level | None = None
    occurrence: str | None = None
    occurred_at: datetime | None = None
    details: tuple[tuple[str, str], ...] = ()
    images: tuple[InlineImage, ...] = field(default=(), repr=False)

    @property
    def effective_level(self) -> Level:
        return self.level or self.kind.default_level

    def idempotency_key(self, episode: str | None = None) -> str:
        """A key that is the same on every node for the same happening.

        With an ``occurrence`` it depends on kind, key and occurrence only;
        otherwise on the episode (a condition's start) or, for one-off events,
        on the words of the message.
        """
        if self.occurrence is not None:
            basis: list[Any] = [self.kind.value, self.key, "occurrence", self.occurrence]
        elif episode is not None:
            basis = [self.kind.value, self.key, "episode", episode]
        else:
            basis = [self.kind.value, self.key, "text", self.subject, self.what_happened]
        digest = hashlib.sha256(json.dumps(basis, ensure_ascii=False).encode()).hexdigest()
        return digest[:32]
