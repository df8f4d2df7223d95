"""Turn events into email a person reads on a phone: plain text plus HTML.

The layout is always the same: a subject that says what it is about, then
what happened, what gridmate did and what the reader may want to do.
Pictures go inline (``multipart/related``) so they show in the message.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from gridmate.notify.events import Event, Level

_LEVEL_PREFIX = {
    Level.INFO: "gridmate",
    Level.WARNING: "gridmate warning",
    Level.CRITICAL: "gridmate CRITICAL",
}
_LEVEL_COLOUR = {Level.INFO: "#2563eb", Level.WARNING: "#d97706", Level.CRITICAL: "#dc2626"}


@dataclass(frozen=True)
class Envelope:
    """What every message needs besides its content."""

    sender: str
    recipients: Sequence[str]
    source: str
    """The component speaking, e.g. 'energy'."""
    node: str
    tz: tzinfo


@dataclass(frozen=True)
class Item:
    """One event as queued: the event, its level, key and when it was accepted."""

    event: Event
    level: Level
    idempotency_key: str
    accepted_at: datetime


def subject_line(level: Level, text: str) -> str:
    return f"{_LEVEL_PREFIX[level]}: {text}"


def _when(item: Item, tz: tzinfo) -> str:
    moment = (item.event.occurred_at or item.accepted_at).astimezone(tz)
    return moment.strftime("%a %d %b %Y, %H:%M %Z").strip()


def _text_section(item: Item, tz: tzinfo) -> list[str]:
    event = item.event
    lines = [f"{event.what_happened}", "", f"When: {_when(item, tz)}", ""]
    lines += ["What gridmate did:", event.what_gridmate_did]
    if event.what_you_can_do:
        lines += ["", "What you can do:", event.what_you_can_do]
    if event.details:
        lines += ["", "Details:"]
        width = max(len(name) for name, _ in event.details)
        lines += [f"  {name.ljust(width)}  {value}" for name, value in event.details]
    return lines


def _html_section(item: Item, tz: tzinfo, heading: str | None) -> str:
    event = item.event
    esc = html.escape
    parts = []
    if heading:
        colour = _LEVEL_COLOUR[item.level]
        parts.append(f'<h3 style="margin:18px 0 4px;color:{colour}">{esc(heading)}</h3>')
    parts.append(f'<p style="margin:4px 0">{esc(event.what_happened)}</p>')
    parts.append(f'<p style="margin:4px 0;color:#555;font-size:90%">{esc(_when(item, tz))}</p>')
    parts.append(
        '<p style="margin:10px 0 2px"><b>What gridmate did</b></p>'
        f'<p style="margin:2px 0">{esc(event.what_gridmate_did)}</p>'
    )
    if event.what_you_can_do:
        parts.append(
            '<p style="margin:10px 0 2px"><b>What you can do</b></p>'
            f'<p style="margin:2px 0">{esc(event.what_you_can_do)}</p>'
        )
    for image in event.images:
        parts.append(
            f'<p><img src="cid:{esc(image.content_id)}" alt="{esc(image.description)}" '
            'style="max-width:100%;height:auto"></p>'
        )
    if event.details:
        rows = "".join(
            f'<tr><td style="padding:2px 12px 2px 0;color:#555">{esc(name)}</td>'
            f"<td>{esc(value)}</td></tr>"
            for name, value in event.details
        )
        parts.append(f'<table style="border-collapse:collapse;margin-top:8px">{rows}</table>')
    return "\n".join(parts)


def _footer(envelope: Envelope, references: Sequence[str]) -> str:
    refs = ", ".join(r[:12] for r in references)
    return f"gridmate {envelope.source} on {envelope.node} · ref {refs}"


def _html_document(title: str, level: Level, body: str, footer: str) -> str:
    colour = _LEVEL_COLOUR[level]
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
        '<body style="font-family:-apple-system,Segoe UI,Roboto,sans-serif;font-size:16px;'
        'line-height:1.4;color:#111;margin:0;padding:12px;max-width:640px">'
        f'<div style="border-left:4px solid {colour};padding-left:10px">'
        f'<h2 style="margin:0 0 8px;font-size:20px">{html.escape(title)}</h2>'
        f"{body}</div>"
        f'<p style="color:#888;font-size:12px;margin-top:24px">{html.escape(footer)}</p>'
        "</body></html>"
    )


def _base_message(
    envelope: Envelope, subject: str, message_key: str, date: datetime
) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = Address(display_name=f"gridmate {envelope.source}", addr_spec=envelope.sender)
    message["To"] = ", ".join(envelope.recipients)
    message["Date"] = format_datetime(date)
    # A stable Message-ID lets mail clients drop a duplicate that slipped through.
    message["Message-ID"] = f"<{message_key}@gridmate>"
    message["X-Gridmate-Idempotency-Key"] = message_key
    return message


def _assemble(message: EmailMessage, text: str, html_doc: str, items: Sequence[Item]) -> None:
    message.set_content(text)
    message.add_alternative(html_doc, subtype="html")
    images = [image for item in items for image in item.event.images]
    if images:
        html_part = message.get_payload()[1]  # type: ignore[index]
        assert isinstance(html_part, EmailMessage)
        for image in images:
            html_part.add_related(
                image.png,
                maintype="image",
                subtype="png",
                cid=f"<{image.content_id}>",
                filename=f"{image.content_id.split('@')[0]}.png",
                disposition="inline",
            )


def _digest_intro(items: Sequence[Item]) -> str:
    return f"{len(items)} things happened close together; each is below, oldest first."


def message_title(items: Sequence[Item], level: Level) -> str:
    """The subject of the message carrying ``items``: the event's, or a digest's."""
    if len(items) == 1:
        return subject_line(level, items[0].event.subject)
    return digest_subject(level, items)


def plain_text(items: Sequence[Item], envelope: Envelope) -> str:
    """The plain-text body of the message carrying ``items`` (one, or a digest)."""
    footer = _footer(envelope, [item.idempotency_key for item in items])
    if len(items) == 1:
        lines = _text_section(items[0], envelope.tz)
    else:
        lines = [_digest_intro(items)]
        for number, item in enumerate(items, 1):
            lines += ["", f"{number}. {item.event.subject}", *_text_section(item, envelope.tz)]
    return "\n".join([*lines, "", "-- ", footer, ""])


def render_single(item: Item, envelope: Envelope, now: datetime) -> EmailMessage:
    event = item.event
    message = _base_message(envelope, message_title([item], item.level), item.idempotency_key, now)
    footer = _footer(envelope, [item.idempotency_key])
    html_doc = _html_document(
        event.subject, item.level, _html_section(item, envelope.tz, None), footer
    )
    _assemble(message, plain_text([item], envelope), html_doc, [item])
    return message


def digest_subject(level: Level, items: Sequence[Item]) -> str:
    titles: list[str] = []
    for item in items:
        if item.event.kind.label not in titles:
            titles.append(item.event.kind.label)
    shown = ", ".join(titles[:3]) + (", …" if len(titles) > 3 else "")
    return subject_line(level, f"{len(items)} notices: {shown}")


def render_digest(
    items: Sequence[Item], level: Level, envelope: Envelope, digest_key: str, now: datetime
) -> EmailMessage:
    subject = digest_subject(level, items)
    message = _base_message(envelope, subject, digest_key, now)
    footer = _footer(envelope, [item.idempotency_key for item in items])
    body = f"<p>{html.escape(_digest_intro(items))}</p>" + "\n".join(
        _html_section(item, envelope.tz, f"{n}. {item.event.subject}")
        for n, item in enumerate(items, 1)
    )
    _assemble(
        message,
        plain_text(items, envelope),
        _html_document(subject.split(": ", 1)[1], level, body, footer),
        items,
    )
    return message
