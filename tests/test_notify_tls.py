"""Delivery over STARTTLS and implicit TLS to a real aiosmtpd with a self-signed cert."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from gridmate.notify import Event, EventKind, Notifier, NotifySettings
from gridmate.sim.tls import self_signed_certificate

pytestmark = pytest.mark.services

PASSWORD = "correct horse battery staple"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    return self_signed_certificate(
        directory, common_name="gridmate test SMTP", dns_names=("localhost",)
    )


class _Collect:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], object]] = []
        self.tls_seen: list[bool] = []

    async def handle_DATA(self, server, session, envelope):
        # STARTTLS sets session.ssl; with implicit TLS the transport itself is TLS.
        encrypted = session.ssl is not None or server.transport.get_extra_info("ssl_object")
        self.tls_seen.append(bool(encrypted))
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def certificate(tmp_path) -> tuple[Path, ssl.SSLContext]:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


@pytest.fixture
def starttls_server(certificate) -> Iterator[tuple[int, _Collect]]:
    _, context = certificate
    handler, port = _Collect(), _free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
    )
    controller.start()
    yield port, handler
    controller.stop()


@pytest.fixture
def implicit_tls_server(certificate) -> Iterator[tuple[int, _Collect]]:
    _, context = certificate
    handler, port = _Collect(), _free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        ssl_context=context,
        authenticator=_authenticator,
        auth_require_tls=False,  # the whole connection is TLS already
    )
    controller.start()
    yield port, handler
    controller.stop()


def _settings(port: int, security: str, ca_file: Path, password_file: Path) -> NotifySettings:
    return NotifySettings(
        smtp_host="127.0.0.1",
        smtp_port=port,
        security=security,
        ca_file=ca_file,
        username="gridmate",
        password_file=str(password_file),
        sender="gridmate@example.test",
        recipients={"critical": ["pager@example.test"]},
        digest_window_seconds=0,
    )


EVENT = Event(
    EventKind.token_failing,
    subject="Tesla token refresh failing",
    what_happened="The refresh token was rejected (401).",
    what_gridmate_did="Stopped calling the Fleet API to avoid a lockout.",
    what_you_can_do="Sign in again with 'gridmate tesla login'.",
    key="tesla",
)


async def _deliver_one(settings: NotifySettings, state: Path, handler: _Collect) -> None:
    notifier = Notifier(settings, state)
    await notifier.start()
    await notifier.send(EVENT)
    assert await notifier.flush(within_seconds=10)
    await notifier.close()
    for _ in range(100):
        if handler.messages:
            break
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_delivers_over_tls_with_credentials_from_a_file(
    security, certificate, starttls_server, implicit_tls_server, tmp_path
):
    cert, _ = certificate
    port, handler = starttls_server if security == "starttls" else implicit_tls_server
    password_file = tmp_path / "smtp_password"
    password_file.write_text(PASSWORD + "\n")
    await _deliver_one(_settings(port, security, cert, password_file), tmp_path / "s", handler)
    assert [r for r, _ in handler.messages] == [["pager@example.test"]]
    assert handler.tls_seen == [True]


async def test_wrong_certificate_authority_keeps_the_message_queued(starttls_server, tmp_path):
    port, handler = starttls_server
    (tmp_path / "other").mkdir()
    other_ca, _ = _self_signed(tmp_path / "other")
    password_file = tmp_path / "smtp_password"
    password_file.write_text(PASSWORD)
    settings = _settings(port, "starttls", other_ca, password_file)
    notifier = Notifier(settings, tmp_path / "s")
    await notifier.start()
    await notifier.send(EVENT)
    assert not await notifier.flush(within_seconds=1)
    assert "CERTIFICATE_VERIFY_FAILED" in (notifier.health() or "")
    await notifier.close()
    assert handler.messages == []
    assert len(list((tmp_path / "s" / "notify" / "queue").glob("*.json"))) == 1
