"""Demo: the daily report for a day of the energy journal, mailed to a local SMTP server."""

from __future__ import annotations

import json
import socket
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from io import StringIO
from pathlib import Path
from typing import Any

from gridmate.demo import DemoContext, Scenario
from gridmate.energy.journal import iter_day, journal_time_zone, read_day
from gridmate.report.daily import run_daily
from gridmate.report.sample_day import write_synthetic_day
from gridmate.report.settings import ReportSettings


class _FixedClock:
    """The report runs shortly after midnight following the reported day."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(min(seconds, 0.1))


def _interest(path: Path) -> tuple[bool, int, int]:
    """How much a day's journal has to show: a precool decided, then actions, then lines."""
    precooled, actions, lines = False, 0, 0
    for event in iter_day(path.parents[2], date.fromisoformat(path.stem)):
        lines += 1
        if event.get("kind") == "action":
            actions += 1
        detail = event.get("detail")
        if event.get("what") == "precool" and isinstance(detail, dict) and detail.get("decided"):
            precooled = True
    return precooled, actions, lines


def _energy_demo_journal(workdir: Path) -> tuple[Path, date] | None:
    """The most interesting day journal an earlier energy scenario left in the workdir."""
    best: tuple[tuple[bool, int, int], Path] | None = None
    for path in sorted(workdir.glob("**/energy/journal/*.jsonl")):
        score = _interest(path)
        if best is None or score > best[0]:
            best = (score, path)
    if best is None or best[0][2] < 10:
        return None
    path = best[1]
    return path.parents[2], date.fromisoformat(path.stem)


async def run(ctx: DemoContext) -> list[str]:
    from aiosmtpd.controller import Controller

    found = _energy_demo_journal(ctx.workdir)
    report_state = ctx.workdir / "report"
    if found is not None:
        energy_state, day = found
        ctx.say("report", f"using the energy demo's journal for {day}")
    else:
        energy_state, day = ctx.workdir / "report-energy", date(2026, 7, 14)
        write_synthetic_day(energy_state, day, short_battery=True)
        ctx.say(
            "report", f"no energy journal from an earlier scenario; wrote a hazy {day:%a %d %b}"
        )
    events = len(read_day(energy_state, day))
    zone = journal_time_zone(energy_state)
    ctx.expect(zone is not None, "the energy journal records the site's time zone")
    ctx.say("report", f"journal has {events} events; the site's time zone is {zone}")

    received: list[tuple[list[str], Message]] = []

    class Collect:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Collect(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = ReportSettings(
            state_directory=report_state,
            energy_state_directory=energy_state,
            notify={
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "security": "none",
                "sender": "gridmate@home.example",
                "time_zone": zone,
                "recipients": {"info": ["owner@home.example"], "warning": ["owner@home.example"]},
            },
        )
        now = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) + timedelta(
            hours=7, minutes=10
        )
        out = StringIO()
        code = await run_daily(settings, day.isoformat(), clock=_FixedClock(now), out=out)
        ctx.expect(code == 0, f"'gridmate report daily' exited {code}: {out.getvalue()}")
        for line in out.getvalue().splitlines():
            ctx.say("report", line.strip())
        again = StringIO()
        await run_daily(settings, day.isoformat(), clock=_FixedClock(now), out=again)
        ctx.say("report", "ran again for the same day: " + again.getvalue().splitlines()[-1])
    finally:
        controller.stop()

    metrics_file = report_state / "metrics" / f"{day}.json"
    ctx.expect(metrics_file.exists(), "metrics file written")
    money = json.loads(metrics_file.read_text())["money"]
    ctx.expect(
        money["saved"] > 0 and money["unpriced_hours"] == 0,
        f"a priced journal gives an estimated saving (got {money['saved']} {money['currency']})",
    )
    reports = [m for _, m in received if "Daily report" in str(m["Subject"])]
    ctx.expect(len(reports) == 1, f"exactly one daily report email (got {len(reports)})")
    message = reports[0]
    subject = " ".join(str(message["Subject"]).split())
    ctx.say("mail", f"subject: {subject}")
    chart = next((p for p in message.walk() if p.get_content_type() == "image/png"), None)
    ctx.expect(chart is not None, "the chart is attached")
    assert chart is not None
    png = chart.get_payload(decode=True)
    assert isinstance(png, bytes)
    chart_copy = ctx.workdir / "daily-report-chart.png"
    chart_copy.write_bytes(png)
    ctx.say(
        "mail",
        f"chart: {len(png) // 1024} kB PNG inline in the HTML part as {chart['Content-ID']} "
        f"(multipart/related); a copy is at {chart_copy}",
    )
    others = [" ".join(str(m["Subject"]).split()) for _, m in received if m not in reports]
    for other in others:
        ctx.say("mail", f"also sent: {other}")
    return [
        f"metrics file {metrics_file.name} (schema 1) from {events} journal events",
        f"estimated saving {money['saved']:.2f} {money['currency']} "
        f"(grid cost {money['grid_cost']:.2f}, {money['grid_cost_without_battery']:.2f} "
        "without the battery)",
        f"email: {subject}",
        "chart inline via Content-ID; a second run sent nothing twice",
    ]


scenario = Scenario(name="report", title="Daily metrics and the emailed daily report", run=run)
