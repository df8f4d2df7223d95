"""``gridmate report daily``: the metrics file, the email and the clean-up.

Safe to run again for the same day: the metrics file is rewritten atomically
from the journal, and the email carries the day as its occurrence, so the
notifier's sent-ledger keeps a second run from mailing it twice.
"""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from gridmate.energy.journal import journal_path, journal_time_zone, read_day
from gridmate.notify import Event, EventKind, InlineImage, Level, Notifier
from gridmate.report.metrics import day_metrics, samples_of
from gridmate.report.settings import ReportSettings
from gridmate.runtime.clock import Clock, SystemClock
from gridmate.runtime.files import write_atomically
from gridmate.runtime.logs import get_logger

log = get_logger("report.daily")

METRICS_NAME_FORMAT = "%Y-%m-%d.json"


def site_zone(name: str | None) -> tzinfo:
    if name:
        return ZoneInfo(name)
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def parse_day(text: str | None, now: datetime, tz: tzinfo) -> date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday``; default yesterday (the last full day)."""
    today = now.astimezone(tz).date()
    if text is None or text == "yesterday":
        return today - timedelta(days=1)
    if text == "today":
        return today
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--date {text!r}: expected YYYY-MM-DD, 'today' or 'yesterday'") from None


def write_metrics(directory: Path, metrics: dict[str, Any]) -> Path:
    path = directory / f"{metrics['date']}.json"
    write_atomically(path, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return path


def prune_metrics(directory: Path, today: date, retention_days: int) -> list[Path]:
    """Remove metrics files of days more than ``retention_days`` before ``today``."""
    removed = []
    oldest_kept = today - timedelta(days=retention_days)
    for path in sorted(directory.glob("*.json")):
        try:
            day = datetime.strptime(path.name, METRICS_NAME_FORMAT).date()
        except ValueError:
            continue  # not ours
        if day < oldest_kept:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path)
    return removed


def _clock_time(value: Any, tz: tzinfo) -> str:
    try:
        return datetime.fromisoformat(str(value)).astimezone(tz).strftime("%H:%M")
    except ValueError:
        return "?"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def _money(amount: float, currency: str) -> str:
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}.get(currency)
    return f"{symbol}{amount:.2f}" if symbol else f"{amount:.2f} {currency}"


def key_figures(metrics: dict[str, Any], tz: tzinfo) -> list[tuple[str, str]]:
    peak, battery, money = metrics["peak"], metrics["battery"], metrics["money"]
    windows = ", ".join(
        f"{_clock_time(w['start'], tz)}–{_clock_time(w['end'], tz)}" for w in peak["windows"]
    )
    rows = [
        ("Peak window", windows or "none today"),
        ("Grid import during peak", f"{peak['grid_import_kwh']:.2f} kWh (target 0)"),
        (
            "SoC at peak start / end",
            f"{_pct(peak['soc_at_start_percent'])} / {_pct(peak['soc_at_end_percent'])}",
        ),
        (
            "Battery discharged / charged",
            f"{battery['discharged_kwh']:.1f} / {battery['charged_kwh']:.1f} kWh",
        ),
        (
            "SoC at end of day",
            f"{_pct(battery['soc_end_of_day_percent'])} (target "
            f"{battery['recovery_target_percent']:.0f}%)",
        ),
        (
            "Grid import / export",
            f"{metrics['grid']['import_kwh']:.1f} / {metrics['grid']['export_kwh']:.1f} kWh",
        ),
        ("Estimated saving", _money(money["saved"], money["currency"])),
    ]
    precool = metrics.get("precool")
    if precool:
        rows.append(
            (
                "Precool",
                f"{'yes' if precool['decided'] else 'no'} (forecast high "
                f"{precool['forecast_high_f']}°F from {precool['forecast_source']}, threshold "
                f"{precool['threshold_f']}°F)",
            )
        )
    for api, usage in sorted(metrics["api_usage"].items()):
        budget = usage["budget"]
        rows.append((f"API calls {api}", f"{usage['used']}" + (f" of {budget}" if budget else "")))
    health = metrics["health"]
    rows.append(("Health", "ok" if health["ok"] else "; ".join(health["problems"]) or "problems"))
    return rows


def report_event(metrics: dict[str, Any], tz: tzinfo, chart_png: bytes | None) -> Event:
    """The daily report as a notification, worded for a phone."""
    day = date.fromisoformat(metrics["date"])
    peak, battery, money = metrics["peak"], metrics["battery"], metrics["money"]
    imported = peak["grid_import_kwh"] or 0.0
    headline = (
        f"{imported:.1f} kWh grid import during peak"
        if imported >= 0.05
        else "no grid import during peak"
    )
    subject = f"Daily report {day:%a %d %b}: {headline}"
    if money["saved"] > 0:
        subject += f", saved about {_money(money['saved'], money['currency'])}"
    if peak["windows"]:
        happened = (
            f"During peak the battery went from {_pct(peak['soc_at_start_percent'])} to "
            f"{_pct(peak['soc_at_end_percent'])}; the house drew {imported:.2f} kWh from the grid "
            "in the peak window (the target is 0). "
        )
    else:
        happened = "There was no peak window today. "
    happened += (
        f"Over the day the battery discharged {battery['discharged_kwh']:.1f} kWh and charged "
        f"{battery['charged_kwh']:.1f} kWh, ending at {_pct(battery['soc_end_of_day_percent'])}. "
        f"Estimated saving against the tariff: {_money(money['saved'], money['currency'])}."
    )
    actions = metrics["actions"]
    if actions:
        shown = [
            f"{_clock_time(a['t'], tz)} {a['device']} {a['action']}{'' if a['ok'] else ' (failed)'}"
            for a in actions[:12]
        ]
        more = f"; and {len(actions) - 12} more" if len(actions) > 12 else ""
        did = f"{len(actions)} action(s): " + "; ".join(shown) + more + "."
    else:
        did = "No device changes were needed today."
    precool = metrics.get("precool")
    if precool:
        did += (
            f" Precooling: {'yes' if precool['decided'] else 'no'}, forecast high "
            f"{precool['forecast_high_f']}°F ({precool['forecast_source']})."
        )
    advice = []
    if imported >= 0.05:
        advice.append(
            "The battery did not cover the whole peak: consider a higher reserve before peak, "
            "an earlier thermostat step, or pausing car charging during peak."
        )
    if battery["recovered"] is False:
        advice.append("The battery did not recharge to its target: check solar and charging.")
    if metrics["failed_actions"]:
        advice.append(f"{metrics['failed_actions']} action(s) failed; see the list above.")
    if not metrics["health"]["ok"]:
        advice.append("Health problems were reported: " + "; ".join(metrics["health"]["problems"]))
    for api, usage in metrics["api_usage"].items():
        if usage["share_of_budget"] and usage["share_of_budget"] >= 0.8:
            advice.append(f"API {api} used {usage['share_of_budget']:.0%} of its daily budget.")
    for note in metrics["notes"]:
        advice.append(f"Note: {note}.")
    images: tuple[InlineImage, ...] = ()
    if chart_png is not None:
        images = (
            InlineImage(
                content_id="day-chart@gridmate",
                png=chart_png,
                description="Battery charge, grid power and thermostat setpoint over the day",
            ),
        )
    return Event(
        kind=EventKind.daily_report,
        subject=subject,
        what_happened=happened,
        what_gridmate_did=did,
        what_you_can_do=" ".join(advice) or None,
        key="site",
        occurrence=metrics["date"],
        details=tuple(key_figures(metrics, tz)),
        images=images,
    )


def not_recovered_event(metrics: dict[str, Any]) -> Event | None:
    battery = metrics["battery"]
    if battery["recovered"] is not False:
        return None
    day = date.fromisoformat(metrics["date"])
    return Event(
        kind=EventKind.battery_not_recovered,
        subject=f"Battery ended {day:%a %d %b} at {_pct(battery['soc_end_of_day_percent'])}",
        what_happened=(
            f"At the end of the day the battery was at {_pct(battery['soc_end_of_day_percent'])}, "
            f"below the {battery['recovery_target_percent']:.0f}% it should have recovered to. "
            "Tomorrow's peak may not be covered."
        ),
        what_gridmate_did="Nothing beyond this warning; tomorrow's plan starts from this charge.",
        what_you_can_do=(
            "Check the Powerwall in the Tesla app (operation mode, backup reserve, grid charging) "
            "and whether solar production was low."
        ),
        key="site",
        level=Level.WARNING,
        occurrence=metrics["date"],
    )


async def run_daily(
    settings: ReportSettings,
    day_text: str | None,
    *,
    send_email: bool = True,
    clock: Clock | None = None,
    out: TextIO | None = None,
) -> int:
    """Build, write and mail one day's report; returns the exit code."""
    out = out or sys.stdout
    clock = clock or SystemClock()
    # The energy service records its site's zone next to the journal; an explicit
    # setting still wins, and the system's zone is the last resort.
    tz = site_zone(settings.time_zone or journal_time_zone(settings.journal_state_directory))
    now = clock.now()
    try:
        day = parse_day(day_text, now, tz)
    except ValueError as error:
        print(f"gridmate report daily: {error}", file=sys.stderr)
        return 2
    journal = journal_path(settings.journal_state_directory, day)
    events = read_day(settings.journal_state_directory, day)
    if not events:
        print(
            f"gridmate report daily: no energy journal for {day} at {journal}; nothing to report",
            file=sys.stderr,
        )
        return 1
    metrics = day_metrics(
        events,
        day,
        tz,
        generated_at=now,
        recovery_target_percent=settings.recovery_target_percent,
        currency=settings.currency,
    )
    path = write_metrics(settings.metrics_directory, metrics)
    log.info("metrics written", path=str(path), events=len(events))
    print(f"metrics for {day} written to {path}", file=out)
    for name, value in key_figures(metrics, tz):
        print(f"  {name:<30} {value}", file=out)
    removed = prune_metrics(
        settings.metrics_directory, now.astimezone(tz).date(), settings.retention_days
    )
    if removed:
        log.info("old metrics removed", count=len(removed), retention_days=settings.retention_days)
    if not send_email:
        return 0
    chart = None
    if settings.chart:
        from gridmate.report.chart import render_day_chart

        chart = render_day_chart(samples_of(events), day, tz)
    notifier = Notifier(settings.notify, settings.state_directory, clock=clock, source="report")
    home_assistant = None
    if settings.ha_device.enable:
        from gridmate.homeassistant.notifications import NotificationDevice

        home_assistant = NotificationDevice(settings.ha_device, "report", "Daily report")
        notifier.add_listener(home_assistant.notification)
    await notifier.start()
    try:
        key = await notifier.send(report_event(metrics, tz, chart))
        warning = not_recovered_event(metrics)
        if warning is not None:
            await notifier.send(warning)
        delivered = await notifier.flush(within_seconds=settings.notify.timeout_seconds * 2)
    finally:
        await notifier.close(grace_seconds=0)
    if home_assistant is not None:
        if await home_assistant.try_publish():
            print("home assistant: notifications event fired", file=out)
        else:
            print(
                "home assistant: the notifications event was not published (see the log)",
                file=sys.stderr,
            )
    channels = ", ".join(notifier.channels_for(Level.INFO))
    if not settings.notify.enabled:
        print(
            "notifications: none configured (no notify.smtp_host or notify.apprise_urls_file); "
            "report only logged",
            file=out,
        )
    elif not channels:
        print(
            "notifications: no channel takes info messages (notify.recipients.info, "
            "notify.apprise_levels); report only logged",
            file=out,
        )
    elif key is None:
        print(f"notifications: the report for {day} was already sent; not sent again", file=out)
    elif delivered:
        print(f"notifications: report for {day} sent ({channels})", file=out)
    else:
        print(
            "notifications: not delivered everywhere yet; kept in the queue and retried on "
            "the next run",
            file=sys.stderr,
        )
        return 1
    return 0
