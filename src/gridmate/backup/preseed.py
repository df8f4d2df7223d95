"""``gridmate backup preseed``: restore a target before its service first starts.

Safety rules, in the order :func:`decide` applies them:

1. a target whose marker says *complete* is never restored again;
2. a marker saying *restoring*, or leftovers of a restore, mean an earlier
   run was interrupted: what it left is discarded and the restore is redone;
3. a target that holds data (and carries no marker) is left untouched;
4. otherwise the configured methods are tried in order until one works.

The marker lives with the data (a ZFS user property, a file in the
directory, the database's comment), so a rebuilt host re-arms itself.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from gridmate.backup.metrics import write_preseed_metrics
from gridmate.backup.settings import BackupSettings, Method
from gridmate.backup.targets import COMPLETE, RESTORING, Inspection, Target, marker_text, target_for
from gridmate.backup.tools import ToolError
from gridmate.runtime.logs import get_logger

log = get_logger("backup.preseed")


class Decision(StrEnum):
    already_complete = "already-complete"
    leave_untouched = "leave-untouched"
    restore = "restore"
    redo = "redo"


def decide(inspection: Inspection) -> Decision:
    """What to do with a target, from what it holds and its marker (pure)."""
    if inspection.state == RESTORING or inspection.leftovers:
        return Decision.redo
    if inspection.state == COMPLETE:
        return Decision.already_complete
    if inspection.holds_data:
        return Decision.leave_untouched
    return Decision.restore


class Result(StrEnum):
    restored = "restored"
    already_complete = "already-complete"
    left_untouched = "left-untouched"
    started_empty = "started-empty"
    refused = "refused"
    failed = "failed"
    dry_run = "dry-run"

    @property
    def ok(self) -> bool:
        return self not in (Result.refused, Result.failed)


@dataclass(frozen=True)
class Attempt:
    method: Method
    ok: bool | None
    """True: restored; False: failed; None: not applicable to this target."""
    detail: str
    seconds: float = 0.0


@dataclass
class Outcome:
    target: str
    result: Result
    message: str
    method: Method | None = None
    attempts: list[Attempt] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.result.ok else 1

    def failures(self) -> list[str]:
        return [f"{a.method}: {a.detail}" for a in self.attempts if a.ok is False]


@contextmanager
def _target_lock(directory: Path, name: str) -> Iterator[None]:
    """One preseed per target at a time (two units, or a unit and a person)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f"preseed-{name}.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ToolError(f"another preseed of {name} is running") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_methods(
    target: Target, methods: tuple[Method, ...]
) -> tuple[list[Attempt], Attempt | None]:
    attempts: list[Attempt] = []
    for method in methods:
        reason = target.not_applicable(method)
        if reason is not None:
            attempts.append(Attempt(method, None, reason))
            log.info("method does not apply", target=target.name, method=method, reason=reason)
            continue
        started = time.monotonic()
        log.info(f"trying {method} for {target.name}", target=target.name, method=method)
        try:
            # Read-only checks first (repository opens, a snapshot or dump exists), so a
            # method that cannot work leaves the target exactly as it was.
            target.probe(method)
            target.begin(method)
            source = target.restore(method)
            target.mark(marker_text(COMPLETE, method))
        except (ToolError, OSError) as error:
            attempt = Attempt(method, False, str(error), time.monotonic() - started)
            attempts.append(attempt)
            log.warning(
                f"{method} could not restore {target.name}: {error}",
                target=target.name,
                method=method,
            )
            try:
                target.discard_partial()
            except (ToolError, OSError) as cleanup:
                log.error(f"could not clean up after {method}: {cleanup}", target=target.name)
            continue
        attempt = Attempt(method, True, source, time.monotonic() - started)
        attempts.append(attempt)
        return attempts, attempt
    return attempts, None


def preseed_target(settings: BackupSettings, name: str) -> Outcome:
    """Bring one target to a state its service can start on."""
    started = time.monotonic()
    config = settings.targets[name]
    methods = settings.methods_for(config)
    try:
        with _target_lock(settings.state_directory, name):
            outcome = _preseed_locked(settings, target_for(name, settings), methods)
    except (ToolError, OSError) as error:
        outcome = Outcome(name, Result.failed, f"{name}: could not be checked: {error}")
    outcome.seconds = time.monotonic() - started
    return outcome


def _preseed_locked(
    settings: BackupSettings, target: Target, methods: tuple[Method, ...]
) -> Outcome:
    name = target.name
    inspection = target.inspect()
    decision = decide(inspection)
    log.info(
        f"{name} ({target.describe()}): {inspection.describe()}",
        target=name,
        decision=str(decision),
    )
    if decision is Decision.already_complete:
        return Outcome(
            name,
            Result.already_complete,
            f"{name} was restored or started before ({inspection.marker}); nothing to do",
        )
    if decision is Decision.leave_untouched:
        return Outcome(
            name,
            Result.left_untouched,
            f"{name} already holds data and was left untouched (no preseed marker: it was "
            "not restored by gridmate, or predates it)",
        )
    if decision is Decision.redo:
        log.warning(
            f"an earlier restore of {name} did not finish; discarding what it left and "
            "restoring again",
            target=name,
        )
        target.discard_partial()
    attempts, success = _try_methods(target, methods)
    if success is not None:
        return Outcome(
            name,
            Result.restored,
            f"{name} restored with {success.method} from {success.detail} in "
            f"{success.seconds:.1f} s",
            method=success.method,
            attempts=attempts,
        )
    target.clear_marker()
    tried = (
        "; ".join(f"{a.method}: {a.detail}" for a in attempts) or "no restore method is configured"
    )
    if settings.on_failure_for(target.config) == "start-empty":
        target.start_empty()
        target.mark(marker_text(COMPLETE, "empty"))
        return Outcome(
            name,
            Result.started_empty,
            f"{name} could not be restored ({tried}); it starts empty as "
            "on_failure = 'start-empty' asks, and is marked complete",
            attempts=attempts,
        )
    return Outcome(
        name,
        Result.refused,
        f"{name} could not be restored ({tried}); its service is held back (on_failure = 'refuse')",
        attempts=attempts,
    )


def dry_run(settings: BackupSettings, name: str) -> list[str]:
    """What preseed would do for ``name`` on this host, in lines for a person."""
    config = settings.targets[name]
    lines = []
    try:
        target = target_for(name, settings)
        lines.append(f"target {name}: {target.describe()}")
        inspection = target.inspect()
    except (ToolError, OSError) as error:
        return [*lines, f"  cannot be checked: {error}", "  preseed would fail (exit 1)"]
    decision = decide(inspection)
    lines.append(f"  now: {inspection.describe()}")
    if decision is Decision.already_complete:
        return [*lines, "  would do nothing: already restored or started (marker complete)"]
    if decision is Decision.leave_untouched:
        return [*lines, "  would do nothing: it holds data, which preseed never overwrites"]
    if decision is Decision.redo:
        lines.append("  an earlier restore did not finish: would discard what it left first")
    for index, method in enumerate(settings.methods_for(config), start=1):
        reason = target.not_applicable(method)
        if reason is not None:
            lines.append(f"  {index}. {method}: does not apply ({reason})")
            continue
        try:
            lines.append(f"  {index}. {method}: {target.probe(method)}")
        except (ToolError, OSError) as error:
            lines.append(f"  {index}. {method}: would fail: {error}")
    policy = settings.on_failure_for(config)
    if policy == "start-empty":
        lines.append("  if every method fails: start empty and mark it complete")
    else:
        lines.append("  if every method fails: refuse (exit 1), so the service does not start")
    return lines


def report(settings: BackupSettings, outcome: Outcome) -> None:
    """Log the outcome in plain words and write its metrics file."""
    if outcome.result.ok and outcome.result is not Result.started_empty:
        log.info(outcome.message, target=outcome.target, result=str(outcome.result))
    else:
        log.error(outcome.message, target=outcome.target, result=str(outcome.result))
    write_preseed_metrics(settings.metrics_textfile_directory, outcome)


__all__ = [
    "Attempt",
    "Decision",
    "Outcome",
    "Result",
    "decide",
    "dry_run",
    "preseed_target",
    "report",
]
