"""The energy day journal (contract read by the daily report)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from gridmate.energy.journal import (
    DayJournal,
    journal_directory,
    journal_path,
    journal_time_zone,
    read_day,
)
from gridmate.runtime.clock import SimulatedClock


def test_lines_go_to_the_local_day_file(tmp_path):
    clock = SimulatedClock(datetime(2026, 7, 2, 6, 30, tzinfo=UTC))  # 23:30 on Jul 1 in Phoenix
    journal = DayJournal(tmp_path, "America/Phoenix", clock=clock)
    journal.append("peak", event="start", soc=91.5)
    journal.append(
        "action",
        at=datetime(2026, 7, 2, 8, 0, tzinfo=UTC),
        device="powerwall",
        action="set_backup_reserve",
        detail={"percent": 0},
        ok=True,
        error=None,
    )
    first = read_day(tmp_path, date(2026, 7, 1))
    second = read_day(tmp_path, date(2026, 7, 2))
    assert [e["kind"] for e in first] == ["peak"]
    assert first[0]["soc"] == 91.5
    assert first[0]["t"].startswith("2026-07-02T06:30")
    assert second[0]["detail"] == {"percent": 0}
    assert journal_path(tmp_path, date(2026, 7, 2)).name == "2026-07-02.jsonl"


def test_torn_and_garbage_lines_are_skipped(tmp_path):
    journal = DayJournal(tmp_path, "UTC")
    journal.append("health", at=datetime(2026, 1, 5, 12, tzinfo=UTC), ok=True, problems=[])
    path = journal_path(tmp_path, date(2026, 1, 5))
    with path.open("a") as handle:
        handle.write("not json\n")
        handle.write('{"t": "2026-01-05T12:01:00+00:00", "kind": "sam')  # crash mid-line
    events = read_day(tmp_path, date(2026, 1, 5))
    assert [e["kind"] for e in events] == ["health"]
    assert read_day(tmp_path, date(2026, 1, 6)) == []


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown journal kind"):
        DayJournal(tmp_path, "UTC").append("samples", soc=1.0)


def test_the_site_time_zone_is_recorded_next_to_the_journal(tmp_path):
    assert journal_time_zone(tmp_path) is None
    DayJournal(tmp_path, "America/Phoenix").append("health", ok=True, problems=[])
    assert journal_time_zone(tmp_path) == "America/Phoenix"
    # A site that moved its zone (a new configuration) records the new one.
    DayJournal(tmp_path, "Europe/Berlin").append("health", ok=True, problems=[])
    assert journal_time_zone(tmp_path) == "Europe/Berlin"
    (journal_directory(tmp_path) / "time_zone").write_text("Mars/Olympus_Mons\n")
    assert journal_time_zone(tmp_path) is None
