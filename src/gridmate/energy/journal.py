"""The energy manager's day journal: what happened, one JSON object per line.

The daily report and ``gridmate energy status`` read it; the energy service
writes it. One file per local day of the site::

    <state_directory>/energy/journal/YYYY-MM-DD.jsonl

The date is the site's local date (the utility's time zone), so a day's file
holds exactly that day's peak. Every line is an object with ``"t"`` (ISO 8601,
UTC) and ``"kind"``. The kinds and their fields:

``sample`` (one per control cycle)
    ``soc`` float % (app scale), ``battery_kw`` (+ discharging), ``grid_kw``
    (+ importing), ``load_kw``, ``solar_kw``, ``reserve`` int %, ``mode`` str,
    ``period`` ("peak" | "off_peak" | "super_off_peak" | "partial_peak"),
    ``price_per_kwh`` float or null, ``thermostats``
    ``{"<id>": {"setpoint_f": float, "indoor_f": float | null, "mode": str}}``.
``action`` (a device write, successful or not)
    ``device`` ("powerwall" | "thermostat:<id>" | "vehicle:<vin>"), ``action`` str,
    ``detail`` object, ``ok`` bool, ``error`` str or null.
``decision`` (why the planner chose something)
    ``what`` ("precool" | "ladder" | "reserve" | "ev_pause" | ...), ``detail`` object.
    The precool detail holds ``forecast_high_f``, ``source``, ``threshold_f`` and
    ``decided``.
``api_usage``
    ``api`` ("tesla_energy" | "tesla_vehicle" | "honeywell" | "weather"), ``used`` int,
    ``budget`` int or null. The latest line per ``api`` is the day's figure.
``health``
    ``ok`` bool, ``problems`` list of str.
``peak``
    ``event`` ("start" | "end"), ``soc`` float.
``failover`` (from ``gridmate energy failover-notify``, run by keepalived)
    ``node`` str, ``state`` ("MASTER" | "BACKUP" | "FAULT" | "STOP"), ``role`` str,
    ``instance`` str, ``type`` str, ``priority`` int or null.

The journal directory also holds ``time_zone``, one line with the site's IANA
time zone (written by the energy service), so readers such as the daily report
know where the journal's days begin without being told
(:func:`journal_time_zone`).

Each line is written with a single ``write`` on a file opened for appending,
so concurrent writers do not interleave inside a line; a line torn by a crash
(the last one, without its newline) is skipped by :func:`read_day`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gridmate.runtime.clock import Clock, SystemClock
from gridmate.runtime.files import (
    make_private_directory,
    open_private_for_append,
    write_atomically,
)
from gridmate.runtime.logs import get_logger

__all__ = [
    "KINDS",
    "PERIODS",
    "DayJournal",
    "iter_day",
    "journal_directory",
    "journal_path",
    "journal_time_zone",
    "read_day",
]

log = get_logger("energy.journal")

KINDS = frozenset({"sample", "action", "decision", "api_usage", "health", "peak", "failover"})
PERIODS = ("peak", "off_peak", "super_off_peak", "partial_peak")


def journal_directory(state_directory: Path) -> Path:
    return Path(state_directory) / "energy" / "journal"


def journal_path(state_directory: Path, day: date) -> Path:
    return journal_directory(state_directory) / f"{day.isoformat()}.jsonl"


TIME_ZONE_FILE = "time_zone"


def journal_time_zone(state_directory: Path) -> str | None:
    """The site's time zone the energy service recorded next to its journal, if any."""
    try:
        name = (journal_directory(state_directory) / TIME_ZONE_FILE).read_text().strip()
        ZoneInfo(name)
    except (OSError, ValueError, KeyError):  # KeyError: ZoneInfoNotFoundError
        return None
    return name


def _default(value: Any) -> Any:
    # Datetimes and dates in details are written as ISO text; anything else is a bug
    # in the caller, reported as text rather than losing the whole line.
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


class DayJournal:
    """Appends events to the day file of the site's local date."""

    def __init__(
        self, state_directory: Path, tz: ZoneInfo | str, *, clock: Clock | None = None
    ) -> None:
        self.state_directory = Path(state_directory)
        self.tz = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
        self.clock: Clock = clock or SystemClock()
        self._zone_recorded = False

    def _record_zone(self) -> None:
        directory = journal_directory(self.state_directory)
        if journal_time_zone(self.state_directory) != self.tz.key:
            write_atomically(directory / TIME_ZONE_FILE, self.tz.key + "\n")
        self._zone_recorded = True

    def path_for(self, day: date) -> Path:
        return journal_path(self.state_directory, day)

    def append(self, kind: str, *, at: datetime | None = None, **fields: Any) -> dict[str, Any]:
        """Write one event; ``at`` defaults to the clock's now. Returns the object written."""
        if kind not in KINDS:
            raise ValueError(f"unknown journal kind {kind!r}; known: {sorted(KINDS)}")
        when = (at or self.clock.now()).astimezone(UTC)
        event: dict[str, Any] = {"t": when.isoformat(), "kind": kind, **fields}
        line = json.dumps(event, default=_default, ensure_ascii=False, separators=(",", ":"))
        path = self.path_for(when.astimezone(self.tz).date())
        data = (line + "\n").encode("utf-8")
        try:
            make_private_directory(path.parent)
            if not self._zone_recorded:
                self._record_zone()
            fd = open_private_for_append(path)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as error:
            # The journal is a record, not the control path: losing a line must not
            # stop the controller, but it is logged.
            log.warning("journal line not written", path=str(path), kind=kind, error=str(error))
        return event


def iter_day(state_directory: Path, day: date) -> Iterator[dict[str, Any]]:
    """The day's events in file order; unreadable or torn lines are skipped."""
    path = journal_path(state_directory, day)
    try:
        handle = path.open("r", encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                break  # torn by a crash mid-write
            text = line.strip()
            if not text:
                continue
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                log.warning("journal line skipped", path=str(path), line=number, reason="not JSON")
                continue
            if isinstance(event, dict) and "t" in event and "kind" in event:
                yield event


def read_day(state_directory: Path, day: date) -> list[dict[str, Any]]:
    """All events of one local day (empty when the day has no file)."""
    return list(iter_day(state_directory, day))
