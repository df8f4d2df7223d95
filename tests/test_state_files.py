"""Everything gridmate keeps on disk is private whatever the umask: files 0600,
directories 0700, also outside systemd (no UMask=0077 to narrow them)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_notify import settings_for

from gridmate.energy.journal import DayJournal
from gridmate.energy.state import EnergyState, StateStore, write_status
from gridmate.notify import Event, EventKind, Notifier
from gridmate.report.daily import write_metrics
from gridmate.runtime.files import make_private_directory, write_atomically


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever is private now is private by gridmate's doing."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def modes(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (root itself excluded) with its permission bits."""
    found = {}
    for directory, names, files in os.walk(root):
        for name in [*names, *files]:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def assert_private(root: Path) -> None:
    entries = modes(root)
    assert entries, "nothing was written"
    wrong = {
        path: mode
        for path, mode in entries.items()
        if mode != ("0o700" if (root / path).is_dir() else "0o600")
    }
    assert not wrong, wrong


def test_atomic_writes_and_their_new_directories_are_private(tmp_path, open_umask):
    write_atomically(tmp_path / "a" / "b" / "c.json", "{}")
    make_private_directory(tmp_path / "x" / "y")
    assert_private(tmp_path)


def test_an_existing_directory_is_left_as_the_operator_made_it(tmp_path, open_umask):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    write_atomically(shared / "new" / "file", "x")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o750
    assert_private(shared)


def test_energy_state_status_and_journal_are_private(tmp_path, open_umask):
    state_directory, runtime_directory = tmp_path / "state", tmp_path / "run"
    StateStore(state_directory).save(EnergyState())
    write_status(runtime_directory, {"phase": "idle"})
    journal = DayJournal(state_directory, "America/Phoenix")
    journal.append("health", at=datetime(2026, 7, 14, 20, tzinfo=UTC), problems=[])
    assert_private(tmp_path)


def test_a_journal_left_group_readable_by_an_older_version_is_narrowed(tmp_path, open_umask):
    journal = DayJournal(tmp_path, "America/Phoenix")
    at = datetime(2026, 7, 14, 20, tzinfo=UTC)
    journal.append("health", at=at, problems=[])
    path = journal.path_for(at.astimezone(journal.tz).date())
    path.chmod(0o644)
    journal.append("health", at=at, problems=["x"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_report_metrics_files_are_private(tmp_path, open_umask):
    write_metrics(tmp_path / "metrics", {"date": "2026-07-14", "grid_kwh": 1.0})
    assert_private(tmp_path)


@pytest.mark.services
async def test_notifier_queue_ledger_and_lock_are_private(smtp_server, tmp_path, open_umask):
    notifier = Notifier(settings_for(smtp_server.port), tmp_path / "state", source="energy")
    await notifier.start()
    await notifier.send(
        Event(EventKind.peak_started, "Peak started", "4 PM peak began.", "Reserve 20%.")
    )
    await smtp_server.wait_for(1)
    await notifier.close()
    assert_private(tmp_path)
