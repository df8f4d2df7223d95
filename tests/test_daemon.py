"""The daemon runtime: systemd notifications, watchdog, metrics, graceful stop, logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from gridmate.runtime.backoff import Backoff, reconnecting
from gridmate.runtime.daemon import Daemon, serve
from gridmate.runtime.logs import configure_logging, get_logger
from gridmate.runtime.secrets import Secret
from gridmate.runtime.settings import ComponentSettings, MetricsSettings


class NotifySocket:
    """A stand-in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    listener = NotifySocket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield listener
    listener.sock.close()


def settings(**metrics) -> ComponentSettings:
    return ComponentSettings(metrics=MetricsSettings(**({"enable": False} | metrics)))


async def until(condition, timeout: float = 10.0) -> None:
    """Wait for ``condition()`` to hold (an event), failing after ``timeout``."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_ready_status_watchdog_and_stopping(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    async def run(_settings, daemon: Daemon) -> None:
        daemon.ready("Serving 2 vehicles")
        await until(lambda: notify_socket.drain().count("WATCHDOG=1") >= 2)
        daemon.request_stop("test over")
        await daemon.stop.wait()

    assert await serve("sample", settings(), run) == 0
    messages = notify_socket.drain()
    assert "READY=1\nSTATUS=Serving 2 vehicles" in messages
    assert messages.count("WATCHDOG=1") >= 2
    assert any(m.startswith("STOPPING=1") for m in messages)
    assert messages.index("READY=1\nSTATUS=Serving 2 vehicles") < max(
        i for i, m in enumerate(messages) if m.startswith("STOPPING=1")
    )


async def test_watchdog_withheld_while_unhealthy(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    healthy = {"value": False}
    checks = {"while unhealthy": 0}

    def broker() -> str | None:
        if not healthy["value"]:
            checks["while unhealthy"] += 1
        return None if healthy["value"] else "disconnected"

    async def run(_settings, daemon: Daemon) -> None:
        # Registering the check and discarding earlier pings happen in one step of the
        # event loop, so no ping from before the check can be counted below.
        daemon.add_health_check("broker", broker)
        notify_socket.drain().clear()
        daemon.ready("up")
        # Three rounds of the watchdog loop with the check failing ...
        await until(lambda: checks["while unhealthy"] >= 3)
        during = list(notify_socket.drain())
        assert during.count("WATCHDOG=1") == 0, during
        assert sum("Unhealthy: broker: disconnected" in m for m in during) >= 2
        # ... then healthy again: pings resume.
        healthy["value"] = True
        notify_socket.drain().clear()
        await until(lambda: notify_socket.drain().count("WATCHDOG=1") >= 2)
        daemon.request_stop()

    assert await serve("sample", settings(), run) == 0


@pytest.mark.parametrize(("pid_offset", "pinged"), [(0, True), (1, False)])
async def test_watchdog_ignored_when_meant_for_another_process(
    notify_socket, monkeypatch, pid_offset, pinged
):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + pid_offset))

    async def run(_settings, daemon: Daemon) -> None:
        # The watchdog task is created before the component's: its first ping (sent at
        # once, before its first sleep) precedes this step when the watchdog runs at all.
        await asyncio.sleep(0)
        daemon.request_stop()

    await serve("sample", settings(), run)
    assert ("WATCHDOG=1" in notify_socket.drain()) == pinged


async def test_sigterm_stops_gracefully_after_in_flight_work():
    finished = []

    async def run(_settings, daemon: Daemon) -> None:
        daemon.ready("up")
        await daemon.stop.wait()
        await asyncio.sleep(0.05)  # finishing in-flight work
        finished.append(True)

    async def send_sigterm() -> None:
        await asyncio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = asyncio.create_task(send_sigterm())
    assert await serve("sample", settings(), run) == 0
    await sender
    assert finished == [True]


async def test_overrunning_component_is_cancelled_after_timeout():
    cancelled = []

    async def run(_settings, daemon: Daemon) -> None:
        daemon.request_stop()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    assert await serve("sample", settings(), run, shutdown_timeout=0.1) == 0
    assert cancelled == [True]


async def test_component_error_gives_exit_code_1():
    async def run(_settings, _daemon: Daemon) -> None:
        raise RuntimeError("broker address unusable")

    assert await serve("sample", settings(), run) == 1


async def test_metrics_endpoint_serves_process_and_component_metrics():
    async def run(_settings, daemon: Daemon) -> None:
        daemon.add_health_check("always", lambda: None)
        daemon.ready("up")
        port = daemon.metrics_port
        assert port
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        )
        assert "process_resident_memory_bytes" in body
        assert "gridmate_healthy 1.0" in body
        assert 'gridmate_build_info{component="sample"' in body
        daemon.request_stop()

    assert await serve("sample", settings(enable=True, port=0), run) == 0


def test_logs_are_one_event_per_line_with_fields_and_no_secrets():
    stream = io.StringIO()
    configure_logging("info", "text", stream)
    secret = Secret("s3cr3t-token-value", source="test")
    log = get_logger("vehicles.kafka")
    log.warning("record skipped", topic="tesla_V", offset=991, reason="bad protobuf data")
    log.info(f"leaky message {secret.reveal()}", token=secret.reveal())
    log.debug("not shown at info")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "WARNING gridmate.vehicles.kafka: record skipped topic=tesla_V offset=991" in lines[0]
    assert 'reason="bad protobuf data"' in lines[0]
    assert "s3cr3t-token-value" not in stream.getvalue()


def test_journal_format_has_priority_and_no_timestamp():
    stream = io.StringIO()
    configure_logging("debug", "journal", stream)
    get_logger("energy").error("reserve write failed", site=42)
    get_logger("energy").debug("cycle")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "<3>gridmate.energy: reserve write failed site=42",
        "<7>gridmate.energy: cycle",
    ]


def test_json_format():
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    get_logger("report").info("report written", day="2026-07-01", kwh=1.5)
    event = json.loads(stream.getvalue())
    assert event["event"] == "report written"
    assert event["day"] == "2026-07-01"
    assert event["kwh"] == 1.5
    logging.getLogger().handlers.clear()


def test_backoff_grows_with_jitter_to_cap_and_resets():
    backoff = Backoff(initial=1, cap=8, jitter=False)
    assert [backoff.next_delay() for _ in range(5)] == [1, 2, 4, 8, 8]
    backoff.reset()
    assert backoff.next_delay() == 1
    jittered = Backoff(initial=1, cap=8)
    delays = [jittered.next_delay() for _ in range(50)]
    assert all(0.1 <= d <= 8 for d in delays)
    assert len(set(delays)) > 10


async def test_reconnecting_retries_until_session_succeeds():
    attempts = []
    stop = asyncio.Event()

    async def session(backoff: Backoff) -> None:
        attempts.append(backoff.attempts)
        if len(attempts) < 3:
            raise ConnectionRefusedError("refused")
        backoff.reset()

    await reconnecting(
        session, peer="test broker", stop=stop, backoff=Backoff(initial=0.01, cap=0.02)
    )
    assert attempts == [0, 1, 2]


async def test_reconnecting_gives_up_when_stopped():
    stop = asyncio.Event()

    async def session(_backoff: Backoff) -> None:
        stop.set()
        raise ConnectionRefusedError("refused")

    await asyncio.wait_for(reconnecting(session, peer="x", stop=stop), timeout=1)


@pytest.mark.parametrize(
    ("address", "warned"), [("0.0.0.0", True), ("::", True), ("127.0.0.1", False), ("::1", False)]
)
async def test_metrics_on_a_network_address_warns_that_it_is_unauthenticated(address, warned):
    if ":" in address and not _ipv6_available():
        pytest.skip("this host has no IPv6 loopback to listen on")
    stream = io.StringIO()
    configure_logging("info", "text", stream)

    async def run(_settings, daemon: Daemon) -> None:
        daemon.request_stop()

    try:
        assert (
            await serve("sample", settings(enable=True, listen_address=address, port=0), run) == 0
        )
    finally:
        logging.getLogger().handlers.clear()
    log = stream.getvalue()
    assert "metrics endpoint listening" in log  # the endpoint did start on that address
    assert ("unauthenticated and reachable from the network" in log) == warned, log
    if warned:
        assert f"address={address}" in log


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
