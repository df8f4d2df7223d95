"""``gridmate energy``: the service and its ``plan`` and ``status`` commands."""

from __future__ import annotations

import argparse
import json
from datetime import date, datetime, timedelta
from typing import Any

from gridmate.energy.failover import add_arguments as failover_arguments
from gridmate.energy.failover import failover_notify
from gridmate.energy.journal import read_day
from gridmate.energy.settings import EnergySettings
from gridmate.energy.state import StateStore, read_status
from gridmate.energy.tariff import format_minutes
from gridmate.runtime.component import Command, Component

__all__ = ["component", "day_timeline"]


def day_timeline(settings: EnergySettings, day: date, forecast_high_f: float | None) -> list[str]:
    """The day's plan as lines: tariff periods and what gridmate will do when."""
    schedule = settings.tariff.build()
    plan = schedule.day_plan(day)
    policy = settings.policy
    controlled = set(settings.tariff.controlled_periods)
    lines = [
        f"{day.isoformat()} ({day.strftime('%A')}), {schedule.tz.key}: "
        f"tariff '{plan.version}', season {plan.season}"
        + (f", holiday: {plan.holiday}" if plan.holiday else ""),
        "",
        "Periods:",
    ]
    for segment in plan.segments:
        price = f"  ${segment.price_per_kwh:.4f}/kWh" if segment.price_per_kwh is not None else ""
        lines.append(
            f"  {format_minutes(segment.start_minute)}-{format_minutes(segment.end_minute)}"
            f"  {segment.period:<15} {segment.label}{price}"
        )
    lines += ["", "Actions:"]
    blocks = []
    when = datetime.combine(day, datetime.min.time(), schedule.tz)
    end_of_day = when + timedelta(days=1)
    while True:
        block = schedule.next_block(when, frozenset(controlled))
        if block is None or block[0] >= end_of_day:
            break
        blocks.append(block)
        when = block[1]
    if not blocks:
        lines.append("  none: no controlled period today")
    reserve = settings.reserve
    mode = "backup" if reserve.peak_reserve_percent == 100 else reserve.peak_mode
    for start, end in blocks:
        local_start, local_end = start.astimezone(schedule.tz), end.astimezone(schedule.tz)
        precool_at = local_start - timedelta(minutes=policy.precool_lead_minutes)
        if forecast_high_f is None:
            lines.append(
                f"  {precool_at:%H:%M}  save the baseline; precool {policy.precool_delta_f:g} °F "
                f"if the forecast high is >= {policy.precool_threshold_f:g} °F"
            )
        elif policy.precool and forecast_high_f >= policy.precool_threshold_f:
            lines.append(
                f"  {precool_at:%H:%M}  save the baseline; precool: cool "
                f"{policy.precool_delta_f:g} °F below the setpoint, hold until {local_start:%H:%M} "
                f"(forecast high {forecast_high_f:g} °F >= {policy.precool_threshold_f:g} °F)"
            )
        else:
            lines.append(
                f"  {precool_at:%H:%M}  save the baseline; no precool (forecast high "
                f"{forecast_high_f:g} °F < {policy.precool_threshold_f:g} °F)"
            )
        lines.append(
            f"  {local_start:%H:%M}  Powerwall reserve {reserve.peak_reserve_percent} % in {mode}"
            + (", pause home charging" if settings.ev.enable else "")
        )
        total = 0.0
        for step in policy.ladder:
            total += step.raise_f
            at = local_end - timedelta(minutes=step.minutes_left)
            if at < local_start:
                at = local_start
            lines.append(
                f"  {at:%H:%M}+ if the battery is at {step.soc_at_most:g} % or less: "
                f"thermostats +{total:g} °F (cooling) / -{total:g} °F (heating)"
            )
        if policy.energy_rule:
            lines.append(
                "         any time: one step more when the house draws more than the battery "
                "can cover until the end"
            )
        restore = (
            f"reserve {reserve.restore_reserve_percent} %"
            if reserve.restore_reserve_percent is not None
            else "the saved reserve and mode"
        )
        lines.append(
            f"  {local_end:%H:%M}  restore {restore}, thermostats to their schedule"
            + (", resume charging" if settings.ev.enable else "")
            + "; verify by reading back"
        )
    if settings.dry_run:
        lines += ["", "dry_run is on: decisions are logged, nothing is written."]
    return lines


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
