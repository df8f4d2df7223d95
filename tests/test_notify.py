"""The notifier against a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from gridmate.notify import Event, EventKind, Level, Notifier, NotifySettings
from gridmate.notify.settings import LedgerMqttSettings
from gridmate.notify.store import Store

pytestmark = pytest.mark.services

RECIPIENTS = {
    "info": ["owner@example.test"],
    "warning": ["owner@example.test", "tech@example.test"],
    "critical": ["pager@example.test"],
}


def settings_for(port: int, **overrides) -> NotifySettings:
    values = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "security": "none",
        "sender": "gridmate@example.test",
        "recipients": RECIPIENTS,
        "time_zone": "America/Phoenix",
        "node_name": "node-a",
        "digest_window_seconds": 0.2,
        "resolve_after_seconds": 0.5,
        "retry_initial_seconds": 0.1,
        "retry_max_seconds": 0.3,
    }
    values.update(overrides)
    return NotifySettings(**values)


def stale(vin: str = "5YJ3E7EB0KF000001") -> Event:
    return Event(
        EventKind.telemetry_stale,
        subject=f"No telemetry from the car {vin[-4:]} for 10 minutes",
        what_happened="The car has sent no Fleet Telemetry for 10 minutes.",
        what_gridmate_did="Switched to polling the Fleet API every 5 minutes.",
        what_you_can_do="Check the car's connectivity in the Tesla app.",
        key=vin,
    )


def subject(message) -> str:
    """The subject unfolded (long subjects are folded onto continuation lines)."""
    return " ".join(message["Subject"].split())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def until(condition, timeout: float = 10.0) -> None:
    """Wait for ``condition()`` to hold (an event), failing after ``timeout``."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def close_with_nothing_left(notifier: Notifier, directory: Path) -> None:
    """Close ``notifier`` and prove that no further message can come from it: what was
    due went out during close, and nothing is queued (in memory or on disk) and no
    condition is waiting to send its "Resolved". No waiting for silence."""
    await notifier.close()
    assert notifier.queue_length == 0
    assert Store(directory / "notify").load_queue() == []
    pending = [
        cid
        for cid, state in Store(directory / "notify").load_ledger().conditions.items()
        if state.resolving_since is not None
    ]
    assert pending == []


async def test_each_level_goes_to_its_own_recipients(smtp_server, tmp_path):
    notifier = Notifier(settings_for(smtp_server.port), tmp_path, source="energy")
    await notifier.start()
    await notifier.send(
        Event(
            EventKind.peak_started,
            "Peak started",
            "4 PM peak began.",
            "Reserve set to 20%.",
            occurrence="2026-07-14",
        )
    )
    await notifier.send(stale())
    await notifier.send(
        Event(
            EventKind.grid_import_during_peak,
            "Grid import during peak",
            "1.2 kW import.",
            "Raised the thermostat to 80°F.",
            "Turn off large loads.",
            key="site 1",
        )
    )
    await smtp_server.wait_for(3)
    await notifier.close()
    by_subject = {subject(m): sorted(r) for r, m in smtp_server.messages}
    assert by_subject == {
        "gridmate: Peak started": ["owner@example.test"],
        "gridmate warning: No telemetry from the car 0001 for 10 minutes": [
            "owner@example.test",
            "tech@example.test",
        ],
        "gridmate CRITICAL: Grid import during peak": ["pager@example.test"],
    }


async def test_message_is_plain_text_plus_html_with_the_three_parts(smtp_server, tmp_path):
    notifier = Notifier(settings_for(smtp_server.port), tmp_path, source="vehicles")
    await notifier.start()
    await notifier.send(stale())
    await smtp_server.wait_for(1)
    await notifier.close()
    _, message = smtp_server.messages[0]
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.get_payload()
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    body = text.get_payload(decode=True).decode()
    for words in (
        "has sent no Fleet Telemetry",
        "What gridmate did:",
        "Switched to polling",
        "What you can do:",
        "connectivity",
    ):
        assert words in body
    assert "What you can do" in html.get_payload(decode=True).decode()
    assert message["Message-ID"].startswith("<") and "@gridmate>" in message["Message-ID"]
    assert message["From"] == "gridmate vehicles <gridmate@example.test>"


async def test_flapping_condition_gives_one_message_and_one_resolved(smtp_server, tmp_path):
    notifier = Notifier(settings_for(smtp_server.port), tmp_path)
    await notifier.start()
    for _ in range(50):
        await notifier.send(stale())
        await notifier.resolve(EventKind.telemetry_stale, "5YJ3E7EB0KF000001")
    await smtp_server.wait_for(2)
    await close_with_nothing_left(notifier, tmp_path)
    subjects = [subject(m) for _, m in smtp_server.messages]
    assert subjects == [
        "gridmate warning: No telemetry from the car 0001 for 10 minutes",
        "gridmate warning: Resolved: No telemetry from the car 0001 for 10 minutes",
    ]
    resolved = smtp_server.messages[1][1].get_payload()[0].get_payload(decode=True).decode()
    assert "reported 50 times" in resolved


async def test_condition_is_reported_again_after_it_was_resolved(smtp_server, tmp_path):
    notifier = Notifier(settings_for(smtp_server.port), tmp_path)
    await notifier.start()
    await notifier.send(stale())
    await notifier.resolve(EventKind.telemetry_stale, "5YJ3E7EB0KF000001")
    await smtp_server.wait_for(2)
    await notifier.send(stale())
    await smtp_server.wait_for(3)
    await notifier.close()
    subjects = [subject(m) for _, m in smtp_server.messages]
    assert subjects[0] == subjects[2] != subjects[1]


async def test_many_events_together_become_one_digest(smtp_server, tmp_path):
    notifier = Notifier(settings_for(smtp_server.port, digest_window_seconds=0.5), tmp_path)
    await notifier.start()
    for number in range(6):
        await notifier.send(stale(f"5YJ3E7EB0KF00000{number}"))
    await notifier.send(
        Event(
            EventKind.api_failure,
            "Honeywell API failing",
            "HTTP 500 for 5 minutes.",
            "Retrying with backoff.",
            key="honeywell",
        )
    )
    await smtp_server.wait_for(1)
    await close_with_nothing_left(notifier, tmp_path)
    assert len(smtp_server.messages) == 1
    recipients, message = smtp_server.messages[0]
    assert sorted(recipients) == ["owner@example.test", "tech@example.test"]
    assert subject(message).startswith("gridmate warning: 7 notices: Telemetry is stale")
    text = message.get_payload()[0].get_payload(decode=True).decode()
    assert "7. Honeywell API failing" in text


async def test_same_occurrence_is_sent_once(smtp_server, tmp_path):
    notifier = Notifier(settings_for(smtp_server.port), tmp_path)
    await notifier.start()
    event = Event(
        EventKind.peak_ended,
        "Peak ended",
        "The peak is over.",
        "Restored the reserve.",
        key="site 1",
        occurrence="2026-07-14",
    )
    first = await notifier.send(event)
    second = await notifier.send(event)
    await smtp_server.wait_for(1)
    third = await notifier.send(event)
    await close_with_nothing_left(notifier, tmp_path)
    assert first is not None and second is None and third is None
    assert len(smtp_server.messages) == 1


async def test_rate_limit_holds_a_burst_of_one_kind(smtp_server, tmp_path):
    settings = settings_for(
        smtp_server.port, max_per_kind_per_hour=2, digest_window_seconds=0, digest_min_events=5
    )
    notifier = Notifier(settings, tmp_path)
    await notifier.start()
    for number in range(5):
        await notifier.send(
            Event(
                EventKind.telemetry_source_switched,
                f"Telemetry source switch {number}",
                "Switched.",
                "Nothing.",
            )
        )
        # The first two go out; wait for each before the next, so it counts as sent.
        await smtp_server.wait_for(min(number + 1, 2))
    await notifier.close()
    assert len(smtp_server.messages) == 2
    assert notifier.queue_length == 3  # held for later, still on disk
    assert len(list((tmp_path / "notify" / "queue").glob("*.json"))) == 3


async def test_two_processes_sharing_a_queue_send_each_message_once(smtp_server, tmp_path):
    # The energy service and a failover-notify run share one directory on a node.
    down = settings_for(free_port())
    earlier = Notifier(down, tmp_path)
    await earlier.start()
    await earlier.send(stale())
    await until(lambda: earlier.health() is not None)  # it tried and failed
    await earlier.close()

    # Both load the same queued message at start and deliver at the same moment.
    service = Notifier(settings_for(smtp_server.port), tmp_path, source="energy")
    hook = Notifier(settings_for(smtp_server.port), tmp_path, source="energy")
    await asyncio.gather(service.start(), hook.start())
    await smtp_server.wait_for(1)
    await asyncio.gather(service.flush(5), hook.flush(5))
    await close_with_nothing_left(service, tmp_path)
    await close_with_nothing_left(hook, tmp_path)
    assert len(smtp_server.messages) == 1
    assert not list((tmp_path / "notify" / "queue").glob("*.json"))


async def test_undelivered_messages_survive_a_restart_and_go_out_once(smtp_server, tmp_path):
    down = settings_for(free_port())  # nothing listens there: the SMTP server is "down"
    first = Notifier(down, tmp_path)
    await first.start()
    await first.send(stale())
    await first.send(
        Event(
            EventKind.reserve_restore_failed,
            "Backup reserve not restored",
            "Tesla refused the 80% reserve.",
            "Will retry in 15 minutes.",
            key="site 1",
        )
    )
    await until(lambda: first.health() is not None)
    assert "undelivered" in first.health()
    await first.close()
    assert len(list((tmp_path / "notify" / "queue").glob("*.json"))) == 2

    second = Notifier(settings_for(smtp_server.port), tmp_path)
    await second.start()
    await smtp_server.wait_for(2)
    await close_with_nothing_left(second, tmp_path)
    third = Notifier(settings_for(smtp_server.port), tmp_path)
    await third.start()
    assert await third.send(stale()) is None  # still the same open condition: nothing new
    await close_with_nothing_left(third, tmp_path)
    assert len(smtp_server.messages) == 2
    assert list((tmp_path / "notify" / "queue").glob("*.json")) == []


async def test_flush_delivers_without_waiting_for_the_digest_window(smtp_server, tmp_path):
    notifier = Notifier(settings_for(smtp_server.port, digest_window_seconds=3600), tmp_path)
    await notifier.start()
    await notifier.send(stale())
    assert await notifier.flush(within_seconds=5)
    await notifier.close()
    assert len(smtp_server.messages) == 1


async def test_disabled_notifier_only_logs_and_writes_nothing(tmp_path):
    notifier = Notifier(NotifySettings(), tmp_path)
    await notifier.start()
    assert await notifier.send(stale()) is None
    await notifier.close()
    assert not (tmp_path / "notify").exists()


async def test_failover_new_active_node_does_not_repeat(smtp_server, mqtt_broker, tmp_path):
    topic = f"{mqtt_broker.topic_prefix()}/notify"
    mqtt = LedgerMqttSettings(host=mqtt_broker.host, port=mqtt_broker.port)
    node_a = Notifier(
        settings_for(smtp_server.port, mqtt=mqtt, mqtt_topic=topic, node_name="node-a"),
        tmp_path / "a",
    )
    await node_a.start()
    await node_a.send(stale())
    await node_a.send(
        Event(
            EventKind.peak_started,
            "Peak started",
            "4 PM peak began.",
            "Reserve set to 20%.",
            key="site 1",
            occurrence="2026-07-14",
        )
    )
    await smtp_server.wait_for(2)
    # Node A fails; node B (own disk, same broker) takes over.
    await close_with_nothing_left(node_a, tmp_path / "a")

    node_b = Notifier(
        settings_for(smtp_server.port, mqtt=mqtt, mqtt_topic=topic, node_name="node-b"),
        tmp_path / "b",
    )
    await node_b.start()
    assert await node_b.send(stale()) is None
    assert (
        await node_b.send(
            Event(
                EventKind.peak_started,
                "Peak started",
                "4 PM peak began.",
                "Reserve set to 20%.",
                key="site 1",
                occurrence="2026-07-14",
            )
        )
        is None
    )
    await node_b.resolve(EventKind.telemetry_stale, "5YJ3E7EB0KF000001")
    await smtp_server.wait_for(3)
    await close_with_nothing_left(node_b, tmp_path / "b")
    subjects = [subject(m) for _, m in smtp_server.messages]
    assert len(subjects) == 3
    assert (
        subjects[2] == "gridmate warning: Resolved: No telemetry from the car 0001 for 10 minutes"
    )
    assert "node-b" in smtp_server.messages[2][1].get_payload()[0].get_payload(decode=True).decode()


def test_settings_reject_a_password_without_encryption(tmp_path):
    secret = tmp_path / "smtp_password"
    secret.write_text("hunter22\n")
    with pytest.raises(ValueError, match="clear text"):
        NotifySettings(
            smtp_host="mail.example.test",
            security="none",
            username="gridmate",
            password_file=str(secret),
        )


def test_settings_reject_a_bad_address():
    with pytest.raises(ValueError, match="not an email address"):
        NotifySettings(recipients={"critical": ["pager at example"]})


def test_every_kind_has_a_level_and_a_label():
    for kind in EventKind:
        assert isinstance(kind.default_level, Level)
        assert kind.label
