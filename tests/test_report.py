"""The daily metrics file and the emailed report, from a real energy journal."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from pathlib import Path
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from gridmate.cli import build_parser
from gridmate.energy.journal import DayJournal
from gridmate.homeassistant.view import HomeAssistantView
from gridmate.report.component import component
from gridmate.report.daily import parse_day, run_daily
from gridmate.report.metrics import SCHEMA_VERSION, day_metrics
from gridmate.report.sample_day import write_synthetic_day
from gridmate.report.settings import ReportSettings

PHOENIX = ZoneInfo("America/Phoenix")
DAY = date(2026, 7, 14)
NOW = datetime(2026, 7, 15, 7, 10, tzinfo=UTC)  # 00:10 the next day in Phoenix


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(min(seconds, 0.05))


def settings_for(state: Path, smtp_port: int | None = None, **overrides) -> ReportSettings:
    notify = {}
    if smtp_port is not None:
        notify = {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_port,
            "security": "none",
            "sender": "gridmate@example.test",
            "time_zone": "America/Phoenix",
            "recipients": {
                "info": ["owner@example.test"],
                "warning": ["owner@example.test", "tech@example.test"],
            },
        }
    return ReportSettings(
        state_directory=state, time_zone="America/Phoenix", notify=notify, **overrides
    )


# ---------------------------------------------------------------- figures (pure)


def _hand_made_day(state: Path) -> None:
    """Two hours at one-minute steps: an hour off peak, an hour of peak with import."""
    journal = DayJournal(state, PHOENIX)
    start = datetime(2026, 7, 14, 15, 0, tzinfo=PHOENIX)
    journal.append("peak", at=start + timedelta(hours=1), event="start", soc=90.0)
    for minute in range(120):
        peak = minute >= 60
        journal.append(
            "sample",
            at=start + timedelta(minutes=minute),
            soc=90.0 - minute * 0.5,
            battery_kw=1.0,
            grid_kw=2.0 if peak else 0.0,
            load_kw=3.0 if peak else 1.0,
            solar_kw=0.0,
            reserve=20 if peak else 80,
            mode="self_consumption",
            period="peak" if peak else "off_peak",
            price_per_kwh=0.30 if peak else 0.10,
            thermostats={
                "hall": {"setpoint_f": 78.0 if peak else 76.0, "indoor_f": 77.0, "mode": "cool"}
            },
        )
    journal.append("api_usage", at=start, api="tesla_energy", used=3, budget=100)
    journal.append(
        "api_usage", at=start + timedelta(hours=1), api="tesla_energy", used=9, budget=100
    )
    journal.append("health", at=start, ok=False, problems=["honeywell: HTTP 503"])
    journal.append(
        "action",
        at=start + timedelta(hours=1),
        device="powerwall",
        action="set_backup_reserve",
        detail={"percent": 20},
        ok=False,
        error="429",
    )


def test_figures_integrate_power_over_time_and_price_the_saving(tmp_path):
    from gridmate.energy.journal import read_day

    _hand_made_day(tmp_path)
    metrics = day_metrics(
        read_day(tmp_path, DAY), DAY, PHOENIX, generated_at=NOW, recovery_target_percent=50
    )
    assert metrics["schema_version"] == SCHEMA_VERSION
    peak = metrics["peak"]
    assert peak["grid_import_kwh"] == pytest.approx(2.0)
    assert peak["grid_import_minutes"] == 60
    assert peak["soc_at_start_percent"] == 90.0
    assert peak["soc_at_end_percent"] == pytest.approx(30.5)
    assert metrics["battery"]["discharged_kwh"] == pytest.approx(2.0)
    # Without the battery: 1 kWh more at 0.10 and 1 kWh more at 0.30.
    assert metrics["money"]["saved"] == pytest.approx(0.40)
    assert metrics["api_usage"]["tesla_energy"] == {
        "used": 9,
        "budget": 100,
        "share_of_budget": 0.09,
    }
    assert metrics["health"]["ok"] is False
    assert metrics["health"]["problems"] == ["honeywell: HTTP 503"]
    assert metrics["failed_actions"] == 1
    assert [p["setpoint_f"] for p in metrics["thermostats"]["hall"]["timeline"]] == [76.0, 78.0]
    assert metrics["battery"]["recovered"] is False  # ends at 30.5% < 50%
    assert any("partial" in note for note in metrics["notes"])


def test_parse_day_defaults_to_yesterday_in_the_site_zone():
    assert parse_day(None, NOW, PHOENIX) == DAY
    assert parse_day("today", NOW, PHOENIX) == DAY + timedelta(days=1)
    assert parse_day("2026-01-02", NOW, PHOENIX) == date(2026, 1, 2)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_day("14/07/2026", NOW, PHOENIX)


# ---------------------------------------------------------------- the command


@pytest.mark.services
async def test_daily_report_writes_metrics_and_mails_the_chart_inline(smtp_server, tmp_path):
    write_synthetic_day(tmp_path, DAY, short_battery=True)
    out = StringIO()
    code = await run_daily(
        settings_for(tmp_path, smtp_server.port), None, clock=FixedClock(NOW), out=out
    )
    assert code == 0, out.getvalue()
    metrics = json.loads((tmp_path / "metrics" / "2026-07-14.json").read_text())
    assert metrics["date"] == "2026-07-14" and metrics["schema_version"] == SCHEMA_VERSION
    assert metrics["peak"]["grid_import_kwh"] > 0.5
    assert metrics["precool"]["forecast_high_f"] == 109
    assert len(metrics["peak"]["windows"]) == 1
    assert "Grid import during peak" in out.getvalue()

    await smtp_server.wait_for(1)
    recipients, message = smtp_server.messages[0]
    assert recipients == ["owner@example.test"]
    assert " ".join(message["Subject"].split()).startswith(
        "gridmate: Daily report Tue 14 Jul: 1.2 kWh grid import during peak"
    )
    assert message.get_content_type() == "multipart/alternative"
    text, related = message.get_payload()
    assert text.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, image = related.get_payload()
    assert html.get_content_type() == "text/html"
    assert image.get_content_type() == "image/png"
    content_id = image["Content-ID"].strip("<>")
    assert f'src="cid:{content_id}"' in html.get_payload(decode=True).decode()
    assert image.get_payload(decode=True).startswith(b"\x89PNG\r\n\x1a\n")
    assert "inline" in image["Content-Disposition"]
    body = text.get_payload(decode=True).decode()
    assert "Grid import during peak" in body and "higher reserve" in body


@pytest.mark.services
async def test_running_twice_is_safe_and_a_past_day_is_rebuilt(smtp_server, tmp_path):
    write_synthetic_day(tmp_path, DAY)
    settings = settings_for(tmp_path, smtp_server.port)
    assert await run_daily(settings, "2026-07-14", clock=FixedClock(NOW), out=StringIO()) == 0
    await smtp_server.wait_for(1)
    path = tmp_path / "metrics" / "2026-07-14.json"
    first = json.loads(path.read_text())
    path.unlink()
    out = StringIO()
    later = FixedClock(NOW + timedelta(days=3))
    assert await run_daily(settings, "2026-07-14", clock=later, out=out) == 0
    rebuilt = json.loads(path.read_text())
    first.pop("generated_at"), rebuilt.pop("generated_at")
    assert rebuilt == first
    assert "already sent" in out.getvalue()
    assert len(smtp_server.messages) == 1


def _ha_device(broker, base: str, **extra) -> dict:
    return {
        "enable": True,
        "mqtt": {"host": broker.host, "port": broker.port},
        "discovery_prefix": f"{base}/ha",
        "base_topic": base,
        **extra,
    }


async def _events(client, count: int) -> list:
    """The next ``count`` messages on the subscribed event topic."""
    got = []
    async with asyncio.timeout(20):
        async for message in client.messages:
            got.append(message)
            if len(got) == count:
                return got
    return got


@pytest.mark.services
async def test_home_assistant_gets_the_report_device_and_its_events(
    smtp_server, mqtt_broker, tmp_path
):
    write_synthetic_day(tmp_path, DAY)
    base = mqtt_broker.topic_prefix()
    settings = settings_for(
        tmp_path,
        smtp_server.port,
        recovery_target_percent=95,
        ha_device=_ha_device(mqtt_broker, base),
    )
    view = HomeAssistantView(
        mqtt_broker.host, mqtt_broker.port, discovery_prefix=f"{base}/ha", base=base
    )
    async with view.running(), aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as ha:
        await ha.subscribe(f"{base}/report/notifications", qos=1)
        out = StringIO()
        assert await run_daily(settings, "2026-07-14", clock=FixedClock(NOW), out=out) == 0
        assert "home assistant: notifications event fired" in out.getvalue()
        first = await _events(ha, 2)
        entities = await view.wait_for(lambda e: ("gridmate report", "Notifications") in e)
        # A second run (the same day again) announces nothing new and fires again.
        assert await run_daily(settings, "2026-07-14", clock=FixedClock(NOW), out=out) == 0
        second = await _events(ha, 2)

    entity = entities[("gridmate report", "Notifications")]
    assert entity.platform == "event"
    assert entity.config["event_types"] == ["info", "warning", "critical"]
    assert entity.unique_id == "gridmate_report_notifications"
    # No availability topic: the entity stays available while no report runs.
    assert "availability" not in entity.config and entity.available
    assert view.retained[f"{base}/ha/device/gridmate_report/config"]
    assert view.config_messages == 1

    for message in first + second:
        assert not message.retain  # an event happens once
    payloads = [json.loads(m.payload) for m in first]
    assert [(p["event_type"], p["kind"]) for p in payloads] == [
        ("info", "daily_report"),
        ("warning", "battery_not_recovered"),
    ]
    assert payloads[0]["title"].startswith("Daily report Tue 14 Jul")
    assert "During peak the battery went from 96% to 77%" in payloads[0]["text"]
    assert [json.loads(m.payload)["kind"] for m in second] == [p["kind"] for p in payloads]
    await smtp_server.wait_for(2)
    assert len(smtp_server.messages) == 2  # the email went once; the events each run


@pytest.mark.services
async def test_an_unreachable_home_assistant_broker_leaves_the_email_alone(
    smtp_server, tmp_path, capsys
):
    write_synthetic_day(tmp_path, DAY)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broker = type("Broker", (), {"host": "127.0.0.1", "port": port})()
    settings = settings_for(
        tmp_path, smtp_server.port, ha_device=_ha_device(broker, "gm", timeout_seconds=5)
    )
    out = StringIO()
    assert await run_daily(settings, "2026-07-14", clock=FixedClock(NOW), out=out) == 0
    await smtp_server.wait_for(1)
    assert "notifications: report for 2026-07-14 sent (email via 127.0.0.1:" in out.getvalue()
    assert "the notifications event was not published" in capsys.readouterr().err


@pytest.mark.services
async def test_battery_that_did_not_recover_gives_a_warning(smtp_server, tmp_path):
    write_synthetic_day(tmp_path, DAY)
    settings = settings_for(tmp_path, smtp_server.port, recovery_target_percent=95)
    assert await run_daily(settings, "2026-07-14", clock=FixedClock(NOW), out=StringIO()) == 0
    await smtp_server.wait_for(2)
    by_subject = {" ".join(m["Subject"].split()): sorted(r) for r, m in smtp_server.messages}
    warning = next(s for s in by_subject if s.startswith("gridmate warning: Battery ended"))
    assert by_subject[warning] == ["owner@example.test", "tech@example.test"]


async def test_old_metrics_are_removed_and_other_files_kept(tmp_path):
    write_synthetic_day(tmp_path, DAY)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    old = metrics / "2026-06-01.json"
    recent = metrics / "2026-07-10.json"
    unrelated = metrics / "notes.json"
    for path in (old, recent, unrelated):
        path.write_text("{}")
    settings = settings_for(tmp_path, retention_days=30)
    assert await run_daily(settings, "2026-07-14", clock=FixedClock(NOW), out=StringIO()) == 0
    assert not old.exists()
    assert recent.exists() and unrelated.exists()


async def test_without_a_time_zone_the_report_takes_the_journals(tmp_path):
    # Tokyo's day 2026-07-14 is not Phoenix's: the report must cut the day where the
    # energy service did, which it learns from the journal.
    tokyo = ZoneInfo("Asia/Tokyo")
    journal = DayJournal(tmp_path, tokyo)
    for hour in range(24):
        at = datetime(2026, 7, 14, hour, 30, tzinfo=tokyo)
        journal.append("sample", at=at, soc=50.0, battery_kw=0.0, grid_kw=1.0, load_kw=1.0,
                       solar_kw=0.0, reserve=20, mode="self_consumption", period="off_peak",
                       price_per_kwh=0.1, thermostats={})  # fmt: skip
    settings = ReportSettings(state_directory=tmp_path)
    now = datetime(2026, 7, 15, 0, 10, tzinfo=tokyo)
    assert await run_daily(settings, None, clock=FixedClock(now), out=StringIO()) == 0
    metrics = json.loads((tmp_path / "metrics" / "2026-07-14.json").read_text())
    assert metrics["time_zone"] == "Asia/Tokyo"
    assert metrics["journal"]["samples"] == 24


async def test_missing_journal_is_an_error_without_a_metrics_file(tmp_path, capsys):
    settings = settings_for(tmp_path)
    assert await run_daily(settings, "2026-07-14", clock=FixedClock(NOW), out=StringIO()) == 1
    assert "no energy journal for 2026-07-14" in capsys.readouterr().err
    assert not (tmp_path / "metrics" / "2026-07-14.json").exists()


def test_command_line_runs_daily_with_date(tmp_path, capsys):
    write_synthetic_day(tmp_path, DAY)
    config = tmp_path / "report.toml"
    config.write_text(
        f'state_directory = "{tmp_path}"\ntime_zone = "America/Phoenix"\n'
        "[metrics]\nenable = false\n"
    )
    parser = build_parser([component])
    args = parser.parse_args(
        ["report", "daily", "--config", str(config), "--date", "2026-07-14", "--no-email"]
    )
    assert args.handler(args) == 0
    assert (tmp_path / "metrics" / "2026-07-14.json").exists()
    assert "Peak window" in capsys.readouterr().out


def test_help_does_not_import_matplotlib():
    code = (
        "import sys\n"
        "from gridmate.cli import build_parser\n"
        "from gridmate.report.component import component\n"
        "build_parser([component]).format_help()\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at start-up'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
