"""A service that stops with an error tells a person once, and again after it recovered."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

from gridmate.cli import _serve_and_report
from gridmate.notify import Notifier, NotifySettings
from gridmate.notify.failures import resolve_failure
from gridmate.runtime.component import Component
from gridmate.runtime.daemon import Daemon
from gridmate.runtime.settings import ComponentSettings, MetricsSettings

pytestmark = pytest.mark.services


class FlakySettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDMATE_FLAKY_")
    notify: NotifySettings = NotifySettings()


def settings_for(smtp_server, tmp_path) -> FlakySettings:
    return FlakySettings(
        state_directory=tmp_path,
        metrics=MetricsSettings(enable=False),
        notify=NotifySettings(
            smtp_host=smtp_server.host,
            smtp_port=smtp_server.port,
            security="none",
            sender="gridmate@example.test",
            recipients={"critical": ["pager@example.test"]},
            digest_window_seconds=0.1,
            resolve_after_seconds=0.1,
        ),
    )


def nothing_queued(state_directory: Path) -> bool:
    queue = state_directory / "notify" / "queue"
    return not queue.exists() or not any(queue.iterdir())


async def cannot_start(_settings: FlakySettings, _daemon: Daemon) -> None:
    raise ConnectionRefusedError("Kafka at 127.0.0.1:9 refused the connection")


async def test_start_failure_mails_once_until_resolved(smtp_server, tmp_path):
    settings = settings_for(smtp_server, tmp_path)
    component = Component("flaky", "test", "test", FlakySettings, run=cannot_start)

    assert await _serve_and_report(component, settings) == 1
    await smtp_server.wait_for(1)
    recipients, message = smtp_server.messages[0]
    assert recipients == ["pager@example.test"]
    assert "flaky stopped with an error" in message["Subject"]
    body = message.get_body(("plain",)).get_content()
    assert "could not start: ConnectionRefusedError: Kafka at 127.0.0.1:9" in body
    assert "journalctl -u gridmate-flaky" in body

    # systemd restarts it and it fails again: no second message while it keeps failing.
    # The failure notice has returned, its notifier closed: nothing can come later from
    # it unless it left something queued.
    assert await _serve_and_report(component, settings) == 1
    assert nothing_queued(tmp_path)
    assert len(smtp_server.messages) == 1

    # It runs again: the component's own notifier resolves the condition ...
    notifier = Notifier(settings.notify, settings.state_directory, source="flaky")
    await notifier.start()
    await resolve_failure(notifier, "flaky")
    # The notifier's own loop sends "Resolved" once it has settled (resolve_after_seconds).
    await smtp_server.wait_for(2)
    await notifier.close()
    assert "Resolved" in smtp_server.messages[1][1]["Subject"]

    # ... so a later failure is reported again.
    assert await _serve_and_report(component, settings) == 1
    await smtp_server.wait_for(3)
    assert "flaky stopped with an error" in smtp_server.messages[2][1]["Subject"]


async def test_clean_stop_sends_nothing(smtp_server, tmp_path):
    settings = settings_for(smtp_server, tmp_path)

    async def serves_then_stops(_settings: FlakySettings, daemon: Daemon) -> None:
        daemon.ready("up")
        daemon.request_stop("test over")

    component = Component("calm", "test", "test", FlakySettings, run=serves_then_stops)
    assert await _serve_and_report(component, settings) == 0
    # Everything has returned; no notifier ran, nothing is queued to go out later.
    assert nothing_queued(tmp_path)
    assert smtp_server.messages == []
