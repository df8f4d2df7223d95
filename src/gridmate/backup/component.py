"""The ``backup`` component: commands run by systemd oneshots and restic's hooks.

* ``gridmate backup preseed`` (also ``gridmate preseed``): restore targets before
  their services first start;
* ``gridmate backup dump``: a consistent pg_dump for restic's prepare hook;
* ``gridmate backup record``: restic's and syncoid's cleanup hook, recording
  the last successful run for the freshness metrics.
"""

from __future__ import annotations

import argparse
import os
import sys

from gridmate.backup.settings import BackupSettings
from gridmate.runtime.component import Command, Component
from gridmate.runtime.logs import get_logger

log = get_logger("backup")

EXIT_USAGE = 2


def _preseed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        metavar="NAME",
        action="append",
        help="restore this target (repeatable; default: every configured target, in order)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be done on this host, change nothing",
    )


def _chosen_targets(settings: BackupSettings, names: list[str] | None) -> list[str] | None:
    chosen = names or list(settings.targets)
    unknown = [n for n in chosen if n not in settings.targets]
    if unknown:
        known = ", ".join(settings.targets) or "none configured"
        print(
            f"gridmate backup: unknown target {', '.join(unknown)} (configured: {known})",
            file=sys.stderr,
        )
        return None
    return chosen


async def _preseed(settings: BackupSettings, args: argparse.Namespace) -> int:
    from gridmate.backup.notices import notify_outcomes
    from gridmate.backup.preseed import dry_run, preseed_target, report

    names = _chosen_targets(settings, args.target)
    if names is None:
        return EXIT_USAGE
    if args.dry_run:
        for name in names:
            print("\n".join(dry_run(settings, name)))
        return 0
    outcomes = []
    for name in names:
        outcome = preseed_target(settings, name)
        report(settings, outcome)
        outcomes.append(outcome)
    await notify_outcomes(settings, outcomes)
    return max((o.exit_code for o in outcomes), default=0)


def _dump_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", metavar="NAME", required=True, help="a database target")


def _dump(settings: BackupSettings, args: argparse.Namespace) -> int:
    from gridmate.backup.postgres import Postgres
    from gridmate.backup.tools import ToolError

    names = _chosen_targets(settings, [args.target])
    if names is None:
        return EXIT_USAGE
    target = settings.targets[args.target]
    if target.kind != "database" or target.database is None or target.dump_directory is None:
        print(f"gridmate backup: target {args.target} is not a database", file=sys.stderr)
        return EXIT_USAGE
    path = target.dump_directory / f"{target.database.name}.dump"
    try:
        Postgres(target.database).dump(path)
    except (ToolError, OSError) as error:
        log.error(f"could not dump {args.target}: {error}", target=args.target)
        return 1
    log.info(f"dumped {args.target} to {path}", target=args.target, bytes=path.stat().st_size)
    return 0


def _record_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--job", required=True, metavar="NAME", help="the backup or replication job's name"
    )
    parser.add_argument(
        "--kind", choices=("backup", "replication"), default="backup", help="default: backup"
    )
    parser.add_argument(
        "--result",
        choices=("success", "failure"),
        help="the run's result; default: read systemd's $SERVICE_RESULT",
    )


async def _record(settings: BackupSettings, args: argparse.Namespace) -> int:
    from gridmate.backup.freshness import MissingResult, record_run, run_succeeded
    from gridmate.backup.notices import announce, notify_backup_failure

    if args.result is not None:
        succeeded = args.result == "success"
    else:
        try:
            succeeded = run_succeeded(os.environ)
        except MissingResult as error:
            print(f"gridmate backup record: {error}", file=sys.stderr)
            return EXIT_USAGE
    record = record_run(
        settings.state_directory,
        settings.metrics_textfile_directory,
        args.kind,
        args.job,
        succeeded,
    )
    if succeeded:
        log.info(f"{args.kind} {args.job} succeeded; success time recorded", job=args.job)
        await announce(settings)
    else:
        reason = os.environ.get("SERVICE_RESULT", "failure")
        log.error(
            f"{args.kind} {args.job} failed ({reason}); the last success stays recorded",
            job=args.job,
            last_success=record.get("last_success"),
        )
        await notify_backup_failure(settings, args.kind, args.job, reason, record)
    return 0


component = Component(
    name="backup",
    summary="restore before first start (preseed) and backup hooks (dump, record)",
    description=(
        "Commands for backups and first-boot restore, run by systemd oneshots and restic's "
        "hooks. 'preseed' restores each configured target (a ZFS dataset, a directory, "
        "TeslaMate's database) before its service first starts: from the NAS replica with "
        "syncoid, by rolling back to the newest Sanoid snapshot, or from restic; it never "
        "overwrites a target that holds data and never restores one twice. 'dump' writes a "
        "consistent pg_dump for restic's prepare hook; 'record' is restic's cleanup hook and "
        "records the last successful backup for the freshness metrics. See docs/backup.md."
    ),
    settings_model=BackupSettings,
    run=None,
    commands=(
        Command(
            name="preseed",
            help="restore targets that are empty before their services first start",
            execute=_preseed,
            add_arguments=_preseed_arguments,
            description=(
                "For each target: leave it alone when it holds data or was restored before; "
                "otherwise try the configured methods in order (syncoid, local, restic). "
                "Exits 1 when a target could not be restored and on_failure is 'refuse', so "
                "the service ordered after it does not start. --dry-run says what would be "
                "done on this host."
            ),
            shortcut=True,
        ),
        Command(
            name="dump",
            help="write a consistent pg_dump of a database target (restic's prepare hook)",
            execute=_dump,
            add_arguments=_dump_arguments,
        ),
        Command(
            name="record",
            help="record a finished backup or replication run (cleanup hook, $SERVICE_RESULT)",
            execute=_record,
            add_arguments=_record_arguments,
        ),
    ),
)
