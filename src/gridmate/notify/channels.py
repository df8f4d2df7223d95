"""Where messages go: email, and each Apprise target.

A channel takes the items of one message (a single event or a digest) and either
delivers them or raises :class:`DeliveryFailed` with a one-line reason that holds no
secret. The notifier keeps each queued message's progress per channel (see
:class:`gridmate.notify.store.Delivery`), so a channel that is down is retried on
its own while the others go on.

Apprise URLs carry tokens, often where a URL has its host (``tgram://<bot token>/...``),
so nothing of a target but its scheme and its position in the file is ever shown, and
Apprise's own log (which names hosts and may print responses) is switched off.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Protocol

from gridmate.notify.events import InlineImage, Level
from gridmate.notify.render import (
    Envelope,
    Item,
    message_title,
    plain_text,
    render_digest,
    render_single,
)
from gridmate.notify.settings import NotifySettings, apprise_scheme
from gridmate.notify.smtp import DeliveryFailed, deliver
from gridmate.notify.store import EMAIL
from gridmate.runtime.logs import get_logger
from gridmate.runtime.secrets import Secret

log = get_logger("notify")


class Channel(Protocol):
    @property
    def name(self) -> str:
        """Stable across restarts and edits of the configuration: it keys the queue files."""

    @property
    def kind(self) -> str:
        """ "email" or "Apprise", for people and logs."""

    @property
    def label(self) -> str:
        """What the logs call it; never holds a secret."""

    def wants(self, level: Level) -> bool: ...

    async def deliver(
        self, items: Sequence[Item], level: Level, message_key: str, date: datetime
    ) -> None: ...


@dataclass
class EmailChannel:
    settings: NotifySettings
    source: str
    node: str
    tz: tzinfo
    name: str = EMAIL
    kind: str = "email"

    @property
    def label(self) -> str:
        return f"email via {self.settings.smtp_host}:{self.settings.port}"

    def recipients(self, level: Level) -> list[str]:
        return list(getattr(self.settings.recipients, level.value))

    def wants(self, level: Level) -> bool:
        return bool(self.recipients(level))

    async def deliver(
        self, items: Sequence[Item], level: Level, message_key: str, date: datetime
    ) -> None:
        recipients = self.recipients(level)
        envelope = Envelope(self.settings.sender, recipients, self.source, self.node, self.tz)
        if len(items) == 1:
            message = render_single(items[0], envelope, date)
        else:
            message = render_digest(items, level, envelope, message_key, date)
        await deliver(self.settings, message, recipients)
        log.info(
            "email sent", subject=message["Subject"], recipients=len(recipients), events=len(items)
        )


# Apprise names a target's host (for many services the token) and prints servers'
# answers; the HTTP libraries under it log each request's path, which holds tokens
# too (json://host/hook/<token>). Only the whole URL is a known secret the log
# scrubber masks, so these loggers are switched off. gridmate's own HTTP goes
# through aiohttp and httpx, which these names do not cover.
_LOGGERS_THAT_SHOW_TARGETS = ("apprise", "urllib3", "requests", "requests_oauthlib", "oauthlib")


def import_apprise() -> Any:
    """The apprise module, with the logging that could show a target switched off."""
    import apprise

    for name in _LOGGERS_THAT_SHOW_TARGETS:
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.setLevel(logging.CRITICAL + 1)
    return apprise


_NOTIFY_TYPE = {Level.INFO: "info", Level.WARNING: "warning", Level.CRITICAL: "failure"}


@dataclass
class AppriseChannel:
    """One Apprise URL: each target is a channel of its own, so a dead one is retried
    without sending the others' messages twice."""

    url: Secret
    position: int
    """1-based line of the URL among the file's URLs."""
    settings: NotifySettings
    source: str
    node: str
    tz: tzinfo
    kind: str = "Apprise"

    @property
    def name(self) -> str:
        # A digest of the URL: stable when lines are added or moved, and no secret.
        digest = hashlib.sha256(self.url.reveal().encode()).hexdigest()[:16]
        return f"apprise-{digest}"

    @property
    def label(self) -> str:
        return f"Apprise target {self.position} ({apprise_scheme(self.url.reveal())})"

    def wants(self, level: Level) -> bool:
        return level in self.settings.apprise_levels

    async def deliver(
        self, items: Sequence[Item], level: Level, message_key: str, date: datetime
    ) -> None:
        envelope = Envelope(self.settings.sender, (), self.source, self.node, self.tz)
        title = message_title(items, level)
        body = plain_text(items, envelope)
        images = [image for item in items for image in item.event.images]
        try:
            delivered = await asyncio.wait_for(
                asyncio.to_thread(self._send, title, body, level, images),
                self.settings.timeout_seconds * 2,
            )
        except TimeoutError:
            raise DeliveryFailed(
                f"no answer within {self.settings.timeout_seconds * 2:g} s"
            ) from None
        except Exception as error:  # a plugin's own failure; its text may hold the URL
            raise DeliveryFailed(f"Apprise failed: {type(error).__name__}") from None
        if not delivered:
            # Apprise says why only in its log, which may show the URL.
            raise DeliveryFailed("the target did not take the message")
        log.info("Apprise message sent", target=self.label, subject=title, events=len(items))

    def _send(self, title: str, body: str, level: Level, images: Sequence[InlineImage]) -> bool:
        apprise = import_apprise()
        notifier = apprise.Apprise()
        if not notifier.add(self.url.reveal()):
            return False
        # Pictures go as files: the one attachment form every Apprise release takes.
        with tempfile.TemporaryDirectory(prefix="gridmate-apprise-") as directory:
            attachments = apprise.AppriseAttachment()
            for image in images:
                path = Path(directory) / f"{image.content_id.split('@')[0]}.png"
                path.write_bytes(image.png)
                attachments.add(str(path))
            return bool(
                notifier.notify(
                    body=body,
                    title=title,
                    notify_type=_NOTIFY_TYPE[level],
                    body_format="text",
                    attach=attachments if images else None,
                )
            )


def build_channels(
    settings: NotifySettings, *, source: str, node: str, tz: tzinfo
) -> list[Channel]:
    """The channels the settings configure, email first."""
    channels: list[Channel] = []
    if settings.email_enabled:
        channels.append(EmailChannel(settings, source, node, tz))
    seen: set[str] = set()
    for position, url in enumerate(settings.apprise_target_urls(), 1):
        channel = AppriseChannel(url, position, settings, source, node, tz)
        if channel.name not in seen:  # the same URL twice would deliver twice
            seen.add(channel.name)
            channels.append(channel)
    return channels
