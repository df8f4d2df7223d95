"""Recording when backups and replications last succeeded.

``gridmate backup record --job NAME`` runs as restic's cleanup hook
(``backupCleanupCommand``, systemd ``ExecStopPost=``) and as syncoid's
``ExecStopPost=``. Those hooks run after failures too, so the command reads
systemd's ``$SERVICE_RESULT`` and records a success time only when it is
``success``; a failed run updates the last-run time and status alone.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from gridmate.backup.metrics import write_freshness_metrics
from gridmate.runtime.files import write_atomically
from gridmate.runtime.logs import get_logger

log = get_logger("backup.freshness")

Kind = Literal["backup", "replication"]
STATE_FILE = "freshness.json"


class MissingResult(ValueError):
    """The hook was run without $SERVICE_RESULT (outside a systemd stop hook)."""


def run_succeeded(environment: Mapping[str, str]) -> bool:
    """Whether the service run that triggered the hook succeeded (pure).

    systemd sets ``SERVICE_RESULT`` for ``ExecStop=``/``ExecStopPost=``:
    ``success`` or a failure reason (``exit-code``, ``timeout``, ``signal``...).
    """
    result = environment.get("SERVICE_RESULT")
    if result is None:
        raise MissingResult(
            "$SERVICE_RESULT is not set: run this as the unit's ExecStopPost= (restic's "
            "backupCleanupCommand), or pass --result success|failure"
        )
    return result == "success"


def _load(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("freshness state unreadable; starting a new one", error=str(error))
        return {}
    return data if isinstance(data, dict) else {}


def record_run(
    state_directory: Path,
    textfile_directory: Path,
    kind: Kind,
    job: str,
    succeeded: bool,
    now: float | None = None,
) -> dict[str, Any]:
    """Record one finished run and rewrite the metrics file; returns the job's record."""
    moment = now if now is not None else time.time()
    state_directory.mkdir(parents=True, exist_ok=True)
    path = state_directory / STATE_FILE
    with (state_directory / f"{STATE_FILE}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _load(path)
        record = state.setdefault(kind, {}).setdefault(job, {"last_success": None})
        record["last_run"] = moment
        record["last_result"] = "success" if succeeded else "failure"
        if succeeded:
            record["last_success"] = moment
        write_atomically(path, json.dumps(state, indent=2, sort_keys=True) + "\n", mode=0o644)
        write_freshness_metrics(textfile_directory, state)
    return dict(record)
