"""The ``report`` component: ``gridmate report daily``, run once a day by a timer."""

from __future__ import annotations

import argparse

from gridmate.report.settings import ReportSettings
from gridmate.runtime.component import Command, Component


def _daily_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--date",
        metavar="D",
        help="the day to report: YYYY-MM-DD, 'today' or 'yesterday' (default: yesterday, "
        "the last complete day in the site's time zone)",
    )
    parser.add_argument(
        "--no-email",
        action="store_true",
        help="write the metrics file only; send no notification (email, Apprise, Home Assistant)",
    )


async def _daily(settings: ReportSettings, args: argparse.Namespace) -> int:
    from gridmate.report.daily import run_daily

    return await run_daily(settings, args.date, send_email=not args.no_email)


component = Component(
    name="report",
    summary="daily metrics file and email report (run by a timer)",
    description=(
        "Builds a day's figures from the energy service's journal: battery use, grid import "
        "during peak (target 0), state of charge at peak start and end, actions taken, the "
        "thermostat timeline, the precooling decision, API calls against budget, health and "
        "the estimated saving. Writes <state_directory>/metrics/YYYY-MM-DD.json, emails the "
        "report with a chart, warns when the battery did not recover by the end of the day, "
        "and removes metrics older than retention_days. Safe to run again for the same day; "
        "a past day is rebuilt from its journal."
    ),
    settings_model=ReportSettings,
    run=None,
    commands=(
        Command(
            name="daily",
            help="write the day's metrics file and email the daily report",
            execute=_daily,
            add_arguments=_daily_arguments,
        ),
    ),
)
