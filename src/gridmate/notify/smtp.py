"""Handing one message to the SMTP server."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from email.message import EmailMessage

import aiosmtplib

from gridmate.notify.settings import NotifySettings


class DeliveryFailed(Exception):
    """The SMTP server did not take the message; it stays queued."""


def tls_context(settings: NotifySettings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file is not None else None
    )
    return context


async def deliver(
    settings: NotifySettings, message: EmailMessage, recipients: Sequence[str]
) -> None:
    """Send ``message`` to ``recipients`` or raise :class:`DeliveryFailed`."""
    assert settings.smtp_host is not None
    security = settings.security
    try:
        await aiosmtplib.send(
            message,
            sender=settings.sender,
            recipients=list(recipients),
            hostname=settings.smtp_host,
            port=settings.port,
            username=settings.username,
            password=settings.password.reveal() if settings.password is not None else None,
            use_tls=security == "tls",
            # STARTTLS is required, not opportunistic: a server that does not offer it fails.
            start_tls=security == "starttls",
            tls_context=tls_context(settings) if security != "none" else None,
            timeout=settings.timeout_seconds,
        )
    except aiosmtplib.SMTPException as error:
        raise DeliveryFailed(f"{type(error).__name__}: {error}") from None
    except (OSError, TimeoutError, ssl.SSLError) as error:
        raise DeliveryFailed(
            f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        ) from None
