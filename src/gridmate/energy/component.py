"""``gridmate energy``: the service and its ``plan`` and ``status`` commands."""

from __future__ import annotations

import argparse
import json
from datetime import date, datetime
from typing import Any

from gridmate.energy.failover.notify import add_arguments as failover_arguments
from gridmate.energy.failover.notify import failover_notify
from gridmate.energy.journal import read_day
from gridmate.energy.settings import EnergySettings
from gridmate.energy.state import StateStore, read_status
from gridmate.energy.timeline import day_timeline
from gridmate.runtime.component import Command, Component

__all__ = ["component"]


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--date", type=date.fromisoformat, default=None, help="YYYY-MM-DD (default: today)"
    )
    parser.add_argument(
        "--forecast-high", type=float, default=None, metavar="F",
        help="assume this forecast high in °F for the precool decision",
    )  # fmt: skip


def _plan(settings: EnergySettings, args: argparse.Namespace) -> int:
    schedule = settings.tariff.build()
    day = args.date or datetime.now(schedule.tz).date()
    print("\n".join(day_timeline(settings, day, args.forecast_high)))
    return 0


def _status(settings: EnergySettings, args: argparse.Namespace) -> int:
    status = read_status(settings.runtime_directory)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0 if status else 1
    if status is None:
        print("The energy service is not running (no status file); saved state:")
        state = StateStore(settings.state_directory).load()
        print(json.dumps(state.to_json(), indent=2, default=str))
        return 1
    site: dict[str, Any] = status.get("site") or {}
    print(f"updated     {status.get('updated')}")
    print(f"phase       {status.get('phase', '?')} (period {status.get('period', '?')})"
          + ("  [dry run]" if status.get("dry_run") else ""))  # fmt: skip
    if status.get("block"):
        print(f"block       {status['block'][0]} to {status['block'][1]}")
    print(
        f"battery     {site.get('soc')} %  reserve {site.get('reserve')} %  mode {site.get('mode')}"
    )
    print(f"house       load {site.get('load_kw')} kW  grid {site.get('grid_kw')} kW")
    for tid, t in (site.get("thermostats") or {}).items():
        print(f"thermostat  {tid}: {t.get('mode')} {t.get('cool_setpoint_f')} °F "
              f"hold {t.get('hold')} indoor {t.get('indoor_f')} °F")  # fmt: skip
    if status.get("forecast"):
        f = status["forecast"]
        print(f"forecast    high {f.get('high_f')} °F ({f.get('source')})")
    print(f"writes      {status.get('powerwall_writes_today')} of {status.get('writes_per_day')}"
          " Powerwall writes today")  # fmt: skip
    baseline = (status.get("memory") or {}).get("baseline")
    if baseline:
        print(f"baseline    reserve {baseline['reserve_percent']} % mode {baseline['mode']}")
    problems = status.get("problems") or []
    print("health      " + ("ok" if not problems else "; ".join(problems)))
    today = (
        datetime.fromisoformat(str(status["updated"])).astimezone(settings.tariff.build().tz).date()
    )
    actions = [e for e in read_day(settings.state_directory, today) if e["kind"] == "action"]
    for action in actions[-8:]:
        print(f"action      {action['t'][11:16]}Z {action['device']} {action['action']} "
              f"{'ok' if action['ok'] else 'FAILED ' + str(action.get('error'))}")  # fmt: skip
    return 0 if not problems else 1


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")


def _run(settings: EnergySettings, daemon: Any) -> Any:
    from gridmate.energy.service import run

    return run(settings, daemon)


component = Component(
    name="energy",
    summary="time-of-use control of the Powerwall, thermostats and home EV charging",
    description=(
        "The energy manager follows the utility's time-of-use schedule: before a peak it "
        "saves the Powerwall's settings and precools the house on hot days, during the peak "
        "it runs the house from the battery and raises thermostat setpoints as the battery "
        "drains (and can pause home charging), after the peak it restores everything and "
        "verifies it. Every cycle is level-triggered, so a restart continues where it was."
    ),
    settings_model=EnergySettings,
    run=_run,
    commands=(
        Command(
            "plan",
            "print a day's plan as a timeline",
            _plan,
            _plan_arguments,
            description="Show the tariff periods of a day and what gridmate will do "
            "when. Reads only the configuration.",
        ),
        Command(
            "status", "show what the running service sees and did today", _status, _status_arguments
        ),
        Command(
            "failover-notify",
            "keepalived notify program: record and announce a failover transition",
            failover_notify,
            failover_arguments,
            description="Called by keepalived as 'notify' with TYPE NAME STATE [PRIORITY]: "
            "records the transition in the day journal and e-mails it through the notifier, "
            "trying delivery for a few seconds; the rest stays queued. Exits 0 unless the "
            "arguments are wrong (2).",
        ),
    ),
)
