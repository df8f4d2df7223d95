"""What the energy manager keeps across restarts and failovers, written atomically.

``<state_directory>/energy/state.json`` holds the peak memory (the pre-peak
baseline and what gridmate changed), the day's Powerwall write count and
vehicle command counts, and the last phase. A restart in the middle of a peak
loads it and the planner computes the same desired state as before.

``<runtime_directory>/energy-status.json`` (tmpfs) is the latest status for
``gridmate energy status`` and for people looking; losing it loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from gridmate.energy.controls import Controls
from gridmate.energy.planner import PeakMemory
from gridmate.runtime.files import write_atomically
from gridmate.runtime.logs import get_logger

log = get_logger("energy.state")

STATUS_FILE = "energy-status.json"


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that readers see the old file or the new one, never half."""
    write_atomically(path, json.dumps(data, indent=1, sort_keys=True, default=str))


@dataclass
class EnergyState:
    memory: PeakMemory = field(default_factory=PeakMemory)
    day: date | None = None
    """Local day the counters below belong to."""
    powerwall_writes: int = 0
    vehicle_commands: dict[str, int] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    """Settings Tesla refused today ('setting=value'), not retried until tomorrow."""
    last_phase: str = "idle"
    restored_through: datetime | None = None
    """End of the last block this node finished restoring."""
    controls: Controls = field(default_factory=Controls)
    """What a person set from Home Assistant (survives restarts and failovers)."""

    def roll_day(self, today: date) -> bool:
        if self.day == today:
            return False
        self.day = today
        self.powerwall_writes = 0
        self.vehicle_commands = {}
        self.rejected = []
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "memory": self.memory.to_json(),
            "day": self.day.isoformat() if self.day else None,
            "powerwall_writes": self.powerwall_writes,
            "vehicle_commands": self.vehicle_commands,
            "rejected": self.rejected,
            "last_phase": self.last_phase,
            "restored_through": (
                self.restored_through.isoformat() if self.restored_through else None
            ),
            "controls": self.controls.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EnergyState:
        return cls(
            memory=PeakMemory.from_json(data.get("memory") or {}),
            day=date.fromisoformat(data["day"]) if data.get("day") else None,
            powerwall_writes=int(data.get("powerwall_writes", 0)),
            vehicle_commands={
                str(k): int(v) for k, v in (data.get("vehicle_commands") or {}).items()
            },
            rejected=[str(x) for x in data.get("rejected", [])],
            last_phase=str(data.get("last_phase", "idle")),
            restored_through=(
                datetime.fromisoformat(data["restored_through"])
                if data.get("restored_through")
                else None
            ),
            controls=Controls.from_json(data.get("controls") or {}),
        )


class StateStore:
    def __init__(self, state_directory: Path) -> None:
        self.path = Path(state_directory) / "energy" / "state.json"

    def load(self) -> EnergyState:
        try:
            data = json.loads(self.path.read_text())
            return EnergyState.from_json(data)
        except FileNotFoundError:
            return EnergyState()
        except (OSError, ValueError, KeyError, TypeError) as error:
            # Keep the unreadable file for a person to look at; start clean.
            aside = self.path.with_name(f"state.unreadable.{os.getpid()}.json")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error(
                "energy state unreadable; starting without it",
                path=str(self.path),
                kept_as=str(aside),
                error=str(error),
            )
            return EnergyState()

    def save(self, state: EnergyState) -> None:
        atomic_write_json(self.path, state.to_json())


def write_status(runtime_directory: Path, status: dict[str, Any]) -> None:
    try:
        atomic_write_json(Path(runtime_directory) / STATUS_FILE, status)
    except OSError as error:
        log.warning("status file not written", error=str(error))


def read_status(runtime_directory: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((Path(runtime_directory) / STATUS_FILE).read_text()))
    except (OSError, ValueError):
        return None
