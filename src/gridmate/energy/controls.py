"""What a person set from Home Assistant, kept in the energy state across restarts.

The controls change the configured behaviour without editing the configuration: peak
control on or off, dry run, the peak reserve, the precool threshold, and two one-day
choices (skip today's precool, end today's peak control now). They live in
``state.json`` with the peak memory, so a restart or a failover to the other node
carries them over. :func:`effective_config` is the pure rule that applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from gridmate.energy.planner import PlannerConfig


def reserve_refusal(percent: float) -> str | None:
    """Why Powerwall firmware refuses a reserve: it accepts 0-80 % or 100 %."""
    if 80 < percent < 100:
        return f"{percent:g} % is refused by the Powerwall (0-80 % or 100 %)"
    return None


@dataclass(frozen=True)
class Controls:
    peak_control: bool = True
    """Off: restore what gridmate changed once, then write nothing until switched on."""
    dry_run: bool | None = None
    """None: as configured (``dry_run``)."""
    peak_reserve_percent: int | None = None
    """None: as configured (``reserve.peak_reserve_percent``)."""
    precool_threshold_f: float | None = None
    """None: as configured (``policy.precool_threshold_f``)."""
    skip_precool_day: date | None = None
    end_peak_day: date | None = None
    changed_at: datetime | None = None
    """When a person last changed them: the newer of two nodes' controls wins."""

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_control": self.peak_control,
            "dry_run": self.dry_run,
            "peak_reserve_percent": self.peak_reserve_percent,
            "precool_threshold_f": self.precool_threshold_f,
            "skip_precool_day": _day_text(self.skip_precool_day),
            "end_peak_day": _day_text(self.end_peak_day),
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Controls:
        reserve = data.get("peak_reserve_percent")
        threshold = data.get("precool_threshold_f")
        dry_run = data.get("dry_run")
        return cls(
            peak_control=bool(data.get("peak_control", True)),
            dry_run=None if dry_run is None else bool(dry_run),
            peak_reserve_percent=None if reserve is None else int(reserve),
            precool_threshold_f=None if threshold is None else float(threshold),
            skip_precool_day=_day(data.get("skip_precool_day")),
            end_peak_day=_day(data.get("end_peak_day")),
            changed_at=_moment(data.get("changed_at")),
        )

    def newer_than(self, other: Controls) -> bool:
        if self.changed_at is None:
            return False
        return other.changed_at is None or self.changed_at > other.changed_at


def _day_text(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else None


def _day(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else None


def effective_config(config: PlannerConfig, controls: Controls, today: date) -> PlannerConfig:
    """The planner configuration with the controls applied for local day ``today``."""
    reserve, policy = config.reserve, config.policy
    if controls.peak_reserve_percent is not None:
        reserve = reserve.model_copy(update={"peak_reserve_percent": controls.peak_reserve_percent})
    updates: dict[str, Any] = {}
    if controls.precool_threshold_f is not None:
        updates["precool_threshold_f"] = controls.precool_threshold_f
    if controls.skip_precool_day == today:
        updates["precool"] = False
    if updates:
        policy = policy.model_copy(update=updates)
    return replace(config, reserve=reserve, policy=policy)


def effective_dry_run(configured: bool, controls: Controls) -> bool:
    return configured if controls.dry_run is None else controls.dry_run
