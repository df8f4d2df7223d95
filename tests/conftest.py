"""Fixtures for the real services the tests talk to.

PostgreSQL and Mosquitto are expected on 127.0.0.1 (override with
GRIDMATE_TEST_POSTGRES_DSN / GRIDMATE_TEST_MQTT); when no Mosquitto answers, a
private one is started. The Kafka-protocol broker and the SMTP server are
started by the fixtures. A service that cannot be reached or started fails the
test with the reason; nothing is skipped silently.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
import pytest_asyncio

# Tests run in one event loop (see pyproject.toml), so session fixtures may be async.


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- PostgreSQL

POSTGRES_ADMIN_DSN = os.environ.get(
    "GRIDMATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest_asyncio.fixture(scope="module")
async def postgres_dsn(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A throwaway database for one test module; dropped afterwards."""
    import asyncpg

    module = re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])
    name = f"gm_{module}_{uuid.uuid4().hex[:8]}".lower()
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_DSN} ({error}); start it or set "
            "GRIDMATE_TEST_POSTGRES_DSN",
            pytrace=False,
        )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# ---------------------------------------------------------------- MQTT


@dataclass(frozen=True)
class MqttBroker:
    host: str
    port: int

    def topic_prefix(self) -> str:
        """A prefix no other test uses, since the broker may be shared."""
        return f"t{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture(scope="session")
async def mqtt_broker() -> AsyncIterator[MqttBroker]:
    configured = os.environ.get("GRIDMATE_TEST_MQTT", "127.0.0.1:1883")
    host, _, port = configured.rpartition(":")
    if _reachable(host, int(port)):
        yield MqttBroker(host, int(port))
        return
    from gridmate.sim.brokers import BrokerUnavailable, mosquitto_broker

    try:
        async with mosquitto_broker() as (private_host, private_port):
            yield MqttBroker(private_host, private_port)
    except BrokerUnavailable as error:
        pytest.fail(f"no MQTT broker at {configured} and none could be started: {error}")


@pytest_asyncio.fixture
async def private_mqtt_broker() -> AsyncIterator[MqttBroker]:
    """A Mosquitto of the test's own, for tests that stop and restart the broker."""
    from gridmate.sim.brokers import mosquitto_broker

    async with mosquitto_broker() as (host, port):
        yield MqttBroker(host, port)


# ---------------------------------------------------------------- Kafka


@pytest_asyncio.fixture(scope="session")
async def kafka_bootstrap() -> AsyncIterator[str]:
    """A real Kafka-protocol broker shared by the session; use unique topic names."""
    from gridmate.sim.brokers import BrokerUnavailable, kafka_broker

    try:
        async with kafka_broker() as address:
            yield address
    except BrokerUnavailable as error:
        pytest.fail(f"the Kafka-protocol broker could not be started: {error}")


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------- SMTP


@dataclass
class SmtpServer:
    host: str
    port: int
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async def enough() -> None:
            while len(self.messages) < count:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(enough(), timeout)


class _CollectingHandler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, _server: object, session: object, envelope: object) -> str:
        recipients = list(envelope.rcpt_tos)  # type: ignore[attr-defined]
        message = message_from_bytes(envelope.content, policy=policy.default)  # type: ignore[attr-defined]
        self.server.messages.append((recipients, message))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free loopback port, collecting messages."""
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = SmtpServer("127.0.0.1", port)
    controller = Controller(_CollectingHandler(server), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


# ------------------------------------------------------------ network namespaces


def run_checked(*argv: str) -> None:
    """Run a setup command; fail with its error output."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str, str]]:
    """Two network namespaces joined by a veth pair: (ns A, ns B, interface name)."""
    if os.geteuid() != 0:
        pytest.fail("this test creates network namespaces and runs keepalived: run it as root")
    for tool in ("ip", "keepalived"):
        if shutil.which(tool) is None:
            pytest.fail(f"'{tool}' is not installed (./dev installs keepalived and iproute2)")
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"gmfo-{tag}-a", f"gmfo-{tag}-b"
    created: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            run_checked("ip", "netns", "add", ns)
            created.append(ns)
        # Created in the root namespace under unique names, then moved.
        run_checked("ip", "link", "add", f"gfa{tag}", "type", "veth", "peer", "name", f"gfb{tag}")
        for ns, end, address in ((ns_a, "a", "10.231.0.1/24"), (ns_b, "b", "10.231.0.2/24")):
            run_checked("ip", "link", "set", f"gf{end}{tag}", "netns", ns)
            run_checked("ip", "-n", ns, "link", "set", f"gf{end}{tag}", "name", "gmfo0")
            run_checked("ip", "-n", ns, "addr", "add", address, "dev", "gmfo0")
            run_checked("ip", "-n", ns, "link", "set", "gmfo0", "up")
            run_checked("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns_a, ns_b, "gmfo0"
    finally:
        for ns in created:  # deleting a namespace removes its end of the veth pair
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10)
