"""A day's plan in words: what ``gridmate energy plan`` prints and Home Assistant shows."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from gridmate.energy.settings import EnergySettings
from gridmate.energy.tariff.schedule import format_minutes


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
