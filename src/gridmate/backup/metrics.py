"""Metrics files for node_exporter's textfile collector.

Preseed and the backup hooks are short-lived commands with no daemon to
scrape, so they write ``*.prom`` files into the collector's directory
(``textfile_directory``); node_exporter serves them with its own metrics.
Files are replaced atomically, so a scrape never sees half a file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from gridmate.runtime.files import write_atomically

if TYPE_CHECKING:
    from gridmate.backup.preseed import Outcome

PRESEED_RESULTS = (
    "restored",
    "already-complete",
    "left-untouched",
    "started-empty",
    "refused",
    "failed",
)


def write_preseed_metrics(directory: Path, outcome: Outcome, now: float | None = None) -> Path:
    registry = CollectorRegistry()
    result = Gauge(
        "gridmate_preseed_result",
        "Outcome of the last preseed run: 1 for the result it had, 0 for the others.",
        ["target", "result"],
        registry=registry,
    )
    for name in PRESEED_RESULTS:
        result.labels(outcome.target, name).set(1 if str(outcome.result) == name else 0)
    method = Gauge(
        "gridmate_preseed_method_success",
        "Per method tried in the last run: 1 restored, 0 failed (untried methods absent).",
        ["target", "method"],
        registry=registry,
    )
    for attempt in outcome.attempts:
        if attempt.ok is not None:
            method.labels(outcome.target, attempt.method).set(1 if attempt.ok else 0)
    Gauge(
        "gridmate_preseed_duration_seconds",
        "How long the last preseed run took.",
        ["target"],
        registry=registry,
    ).labels(outcome.target).set(round(outcome.seconds, 3))
    Gauge(
        "gridmate_preseed_last_run_timestamp_seconds",
        "When preseed last ran for this target.",
        ["target"],
        registry=registry,
    ).labels(outcome.target).set(now if now is not None else time.time())
    path = directory / f"gridmate_preseed_{outcome.target}.prom"
    write_atomically(path, generate_latest(registry), mode=0o644)
    return path


def write_freshness_metrics(directory: Path, state: Mapping[str, Mapping[str, Any]]) -> Path:
    """``state``: kind ('backup', 'replication') -> job -> recorded times and result."""
    registry = CollectorRegistry()
    for kind in ("backup", "replication"):
        success = Gauge(
            f"gridmate_{kind}_last_success_timestamp_seconds",
            f"When the {kind} job last finished successfully.",
            ["job"],
            registry=registry,
        )
        last_run = Gauge(
            f"gridmate_{kind}_last_run_timestamp_seconds",
            f"When the {kind} job last finished, successfully or not.",
            ["job"],
            registry=registry,
        )
        last_ok = Gauge(
            f"gridmate_{kind}_last_run_success",
            f"1 when the last {kind} run succeeded, 0 when it failed.",
            ["job"],
            registry=registry,
        )
        for job, record in sorted(state.get(kind, {}).items()):
            if record.get("last_success") is not None:
                success.labels(job).set(float(record["last_success"]))
            last_run.labels(job).set(float(record["last_run"]))
            last_ok.labels(job).set(1 if record.get("last_result") == "success" else 0)
    path = directory / "gridmate_backup_freshness.prom"
    write_atomically(path, generate_latest(registry), mode=0o644)
    return path
