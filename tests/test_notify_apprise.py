"""Apprise as a second channel beside email, against real local endpoints.

The Apprise targets are ``json://`` and ``form://`` URLs pointing at an aiohttp
receiver on loopback, so Apprise's own plugins make real HTTP requests; email goes
to the aiosmtpd server of the fixtures.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from test_notify import close_with_nothing_left, free_port, settings_for, stale, subject, until

from gridmate.notify import Event, EventKind, InlineImage, Level, Notifier, NotifySettings
from gridmate.notify.store import Store
from gridmate.report.settings import ReportSettings
from gridmate.runtime.logs import configure_logging
from gridmate.runtime.settings import ConfigError, load_settings
from gridmate.sim.http import serve_on_loopback

pytestmark = pytest.mark.services

TOKEN = "k7Qx9ZsecretTOKEN"
"""Stands for the token an Apprise URL carries; must never show up anywhere."""
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@dataclass
class Receiver:
    """An HTTP endpoint Apprise's json:// and form:// plugins post to."""

    base: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    down: bool = False

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            self.refused += 1
            return web.Response(status=503, text="down for maintenance")
        if request.content_type == "application/json":
            body = await request.json()
        else:
            body = dict(await request.post())
        self.received.append({"path": request.path, **body})
        return web.Response(text="ok")

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://{self.base.removeprefix('http://')}{path}"

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        await until(lambda: len(self.received) >= count, timeout)


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    target = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", target.handle)
    async with serve_on_loopback(app) as base:
        target.base = base
        yield target


def apprise_settings(
    tmp_path: Path, urls: list[str], smtp_port: int | None = None, **overrides: Any
) -> NotifySettings:
    urls_file = tmp_path / "apprise-urls"
    urls_file.write_text("# where gridmate's messages go\n" + "\n".join(urls) + "\n")
    if smtp_port is None:
        values: dict[str, Any] = {
            "time_zone": "America/Phoenix",
            "node_name": "node-a",
            "digest_window_seconds": 0.2,
            "resolve_after_seconds": 0.5,
            "retry_initial_seconds": 0.1,
            "retry_max_seconds": 0.3,
            "apprise_urls_file": str(urls_file),
            **overrides,
        }
        return NotifySettings(**values)
    return settings_for(smtp_port, apprise_urls_file=str(urls_file), **overrides)


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    configure_logging("debug", "text", stream)
    try:
        yield stream
    finally:
        logging.getLogger().handlers.clear()


async def test_each_message_goes_to_email_and_to_every_apprise_target(smtp_server, tmp_path):
    async with receiver() as target:
        urls = [target.url("json", f"/phone/{TOKEN}"), target.url("form", "/chat")]
        settings = apprise_settings(tmp_path, urls, smtp_server.port)
        notifier = Notifier(settings, tmp_path, source="energy")
        await notifier.start()
        await notifier.send(stale())
        await smtp_server.wait_for(1)
        await target.wait_for(2)
        await close_with_nothing_left(notifier, tmp_path)

    assert [subject(m) for _, m in smtp_server.messages] == [
        "gridmate warning: No telemetry from the car 0001 for 10 minutes"
    ]
    by_path = {message["path"]: message for message in target.received}
    assert sorted(by_path) == ["/chat", f"/phone/{TOKEN}"]
    for message in by_path.values():
        assert message["title"] == "gridmate warning: No telemetry from the car 0001 for 10 minutes"
        assert message["type"] == "warning"
        assert "The car has sent no Fleet Telemetry for 10 minutes." in message["message"]
        assert "What gridmate did:" in message["message"]
        assert "gridmate energy on node-a" in message["message"]
    assert notifier.channels_for(Level.WARNING) == [
        f"email via 127.0.0.1:{smtp_server.port}",
        "Apprise target 1 (json)",
        "Apprise target 2 (form)",
    ]


async def test_apprise_alone_gets_digests_and_the_daily_chart(tmp_path):
    async with receiver() as target:
        settings = apprise_settings(tmp_path, [target.url("json", "/hook")])
        notifier = Notifier(settings, tmp_path, source="report")
        await notifier.start()
        for number in range(3):
            await notifier.send(stale(f"5YJ3E7EB0KF00000{number}"))
        await notifier.send(
            Event(
                EventKind.daily_report,
                "Daily report Tue 14 Jul",
                "No grid import during peak.",
                "Nothing to do.",
                occurrence="2026-07-14",
                images=(InlineImage("chart@gridmate", PNG, "The day's chart"),),
            )
        )
        assert await notifier.flush(10)
        await close_with_nothing_left(notifier, tmp_path)

    titles = sorted(message["title"] for message in target.received)
    assert titles == [
        "gridmate warning: 3 notices: Telemetry is stale",
        "gridmate: Daily report Tue 14 Jul",
    ]
    [digest] = [m for m in target.received if "notices" in m["title"]]
    assert digest["message"].count("What gridmate did:") == 3
    [report] = [m for m in target.received if "Daily report" in m["title"]]
    [attachment] = report["attachments"]
    assert attachment["mimetype"] == "image/png" and attachment["filename"] == "chart.png"
    assert attachment["base64"]


async def test_levels_left_out_of_apprise_only_go_by_email(smtp_server, tmp_path):
    async with receiver() as target:
        settings = apprise_settings(
            tmp_path, [target.url("json", "/hook")], smtp_server.port, apprise_levels=["critical"]
        )
        notifier = Notifier(settings, tmp_path)
        await notifier.start()
        await notifier.send(stale())  # a warning
        await notifier.send(
            Event(
                EventKind.token_failing,
                "Access token failing",
                "Tesla refused the token.",
                "Polling paused.",
                key="tesla",
            )
        )
        await smtp_server.wait_for(2)
        await target.wait_for(1)
        await close_with_nothing_left(notifier, tmp_path)
    assert [m["title"] for m in target.received] == ["gridmate CRITICAL: Access token failing"]


async def test_a_dead_apprise_target_is_retried_and_email_goes_out_once(
    smtp_server, tmp_path, log_stream
):
    async with receiver() as target:
        target.down = True
        settings = apprise_settings(
            tmp_path, [target.url("json", f"/phone/{TOKEN}")], smtp_server.port
        )
        registry = CollectorRegistry()
        notifier = Notifier(settings, tmp_path, registry=registry)
        await notifier.start()
        await notifier.send(stale())
        await smtp_server.wait_for(1)
        await until(lambda: target.refused >= 3)  # retried with backoff, still down
        health = notifier.health()
        assert health is not None and "Apprise target 1 (json)" in health
        assert len(smtp_server.messages) == 1  # email is not held up, nor repeated

        # What the "notifier stuck" alert reads: the dead channel's oldest message ages
        # while email, which took it, shows nothing waiting.
        def oldest(channel: str) -> float | None:
            return registry.get_sample_value(
                "gridmate_notify_oldest_undelivered_seconds", {"channel": channel}
            )

        assert oldest("email") == 0.0
        first_age = oldest("apprise")
        assert first_age is not None and first_age > 0
        await until(lambda: (oldest("apprise") or 0) > first_age)
        # Across a restart the queue remembers that email already took it.
        await notifier.close()
        [queued] = Store(tmp_path / "notify").load_queue()
        assert [name for name, d in queued.deliveries.items() if d.done] == ["email"]

        target.down = False
        again = Notifier(settings, tmp_path)
        await again.start()
        await target.wait_for(1)
        await close_with_nothing_left(again, tmp_path)
        assert again.health() is None

    assert len(target.received) == 1
    assert target.received[0]["title"].endswith("No telemetry from the car 0001 for 10 minutes")
    assert len(smtp_server.messages) == 1
    output = log_stream.getvalue()
    assert "Apprise message not delivered; kept in the queue" in output
    assert "Apprise message sent" in output
    assert TOKEN not in output and "/phone/" not in output


async def test_a_dead_mail_server_does_not_hold_up_or_repeat_apprise(smtp_server, tmp_path):
    async with receiver() as target:
        urls = [target.url("json", "/hook")]
        first = Notifier(apprise_settings(tmp_path, urls, free_port()), tmp_path)
        await first.start()
        await first.send(stale())
        await target.wait_for(1)
        await until(lambda: first.health() is not None)  # email failed meanwhile
        await first.close()

        second = Notifier(apprise_settings(tmp_path, urls, smtp_server.port), tmp_path)
        await second.start()
        await smtp_server.wait_for(1)
        await close_with_nothing_left(second, tmp_path)
    assert len(target.received) == 1 and len(smtp_server.messages) == 1


async def test_a_queue_written_before_apprise_existed_is_still_mailed(smtp_server, tmp_path):
    queue = tmp_path / "notify" / "queue"
    queue.mkdir(parents=True)
    (queue / "0123456789abcdef0123456789abcdef.json").write_text(
        json.dumps(
            {
                "idempotency_key": "0123456789abcdef0123456789abcdef",
                "level": "warning",
                "accepted_at": "2026-07-14T16:00:00+00:00",
                "not_before": "2026-07-14T16:00:30+00:00",
                "attempts": 2,
                "last_error": "SMTPServerDisconnected: Connection lost",
                "message_key": None,
                "message_date": None,
                "event": {
                    "kind": "telemetry_stale",
                    "subject": "No telemetry from the car 0001 for 10 minutes",
                    "what_happened": "The car has sent no Fleet Telemetry for 10 minutes.",
                    "what_gridmate_did": "Switched to polling.",
                },
            }
        )
    )
    notifier = Notifier(settings_for(smtp_server.port, max_queue_age_hours=10**6), tmp_path)
    await notifier.start()
    await smtp_server.wait_for(1)
    await close_with_nothing_left(notifier, tmp_path)
    assert subject(smtp_server.messages[0][1]).endswith(
        "No telemetry from the car 0001 for 10 minutes"
    )


def test_apprise_urls_never_show_in_configuration_output_or_errors(tmp_path):
    urls = tmp_path / "urls"
    urls.write_text(f"json://127.0.0.1:9/hook/{TOKEN}\n")
    config = tmp_path / "report.toml"
    config.write_text(f'[notify]\napprise_urls_file = "{urls}"\n[metrics]\nenable = false\n')
    shown = subprocess.run(
        [sys.executable, "-m", "gridmate", "report", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert '"apprise_urls": "******** (from ' in shown.stdout
    assert TOKEN not in shown.stdout + shown.stderr

    urls.write_text(f"json://127.0.0.1:9/hook/{TOKEN}\nnope://{TOKEN}/x\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(ReportSettings, config)
    [line] = refused.value.lines()
    assert "URL 2 (scheme nope) is not one Apprise can use" in line
    assert TOKEN not in line

    urls.write_text("# nothing yet\n\n")
    with pytest.raises(ConfigError, match="holds no URL"):
        load_settings(ReportSettings, config)

    config.write_text(f'[notify]\napprise_urls = "json://127.0.0.1:9/{TOKEN}"\n')
    with pytest.raises(ConfigError) as inline:
        load_settings(ReportSettings, config)
    assert "apprise_urls_file" in str(inline.value) and TOKEN not in str(inline.value)


async def test_an_apprise_channel_can_be_the_only_one_for_a_level(tmp_path):
    # No SMTP server and no recipients: the Apprise target alone makes the notifier send.
    async with receiver() as target:
        settings = apprise_settings(tmp_path, [target.url("json", "/hook")])
        assert settings.enabled and not settings.email_enabled
        notifier = Notifier(settings, tmp_path)
        await notifier.start()
        assert await notifier.send(stale()) is not None
        await target.wait_for(1)
        await close_with_nothing_left(notifier, tmp_path)
