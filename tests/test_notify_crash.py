"""A notifier killed (SIGKILL) while the SMTP server holds its reply to DATA re-sends
the message after a restart: the re-send carries the same Message-ID and Date as the
first attempt, so mail clients fold the two copies. Real processes, real aiosmtpd."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.services

# One notifier process: queue the given events, deliver them, exit 0 when all went out.
CHILD = """
import asyncio, json, sys
from pathlib import Path
from gridmate.notify import Event, EventKind, Notifier, NotifySettings

config = json.loads(sys.argv[1])

async def main() -> int:
    notifier = Notifier(NotifySettings(**config["settings"]), Path(config["state"]),
                        source="energy")
    await notifier.start()
    for kind, subject in config["events"]:
        await notifier.send(Event(EventKind(kind), subject, "It happened.", "Nothing.",
                                  occurrence=subject))
    delivered = await notifier.flush(within_seconds=30)
    await notifier.close()
    return 0 if delivered else 1

sys.exit(asyncio.run(main()))
"""


class HoldingHandler:
    """Takes every message; holds its reply to the first DATA until released."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.holding = threading.Event()
        self.release = threading.Event()
        self._held_once = False

    async def handle_DATA(self, _server: object, _session: object, envelope: object) -> str:
        content = envelope.content  # type: ignore[attr-defined]
        self.messages.append(message_from_bytes(content, policy=policy.default))  # type: ignore[arg-type]
        if not self._held_once:
            self._held_once = True
            self.holding.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait)
        return "250 Message accepted for delivery"


async def run_child(config: dict) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        json.dumps(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_resend_after_sigkill_during_data_has_the_same_message_id_and_date(tmp_path):
    from aiosmtpd.controller import Controller
    from test_notify import free_port

    handler = HoldingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = {
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "security": "none",
            "sender": "gridmate@example.test",
            "recipients": {"info": ["owner@example.test"]},
            "time_zone": "America/Phoenix",
            "node_name": "node-a",
            "retry_initial_seconds": 0.1,
            "retry_max_seconds": 0.3,
        }
        first_events = [
            ["peak_started", "Peak started"],
            ["precool_decided", "Precool decided"],
            ["reserve_restore_verified", "Reserve restored"],
        ]
        first = await run_child(
            {"settings": settings, "state": str(tmp_path), "events": first_events}
        )
        held = await asyncio.to_thread(handler.holding.wait, 30)
        assert held, "the notifier never reached DATA"
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        handler.release.set()  # the reply goes to a dead connection

        (original,) = handler.messages
        original_date = parsedate_to_datetime(original["Date"])
        # Date has one-second resolution: let the clock pass it, so a Date taken at
        # the re-send could not equal the first one by chance.
        while datetime.now(original_date.tzinfo) < original_date + timedelta(seconds=1.5):
            await asyncio.sleep(0.05)

        # The restarted notifier also has a new event to send.
        second = await run_child(
            {
                "settings": settings,
                "state": str(tmp_path),
                "events": [["peak_ended", "Peak ended"]],
            }
        )
        _, errors = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 0, errors.decode()
    finally:
        controller.stop()

    resent = [m for m in handler.messages[1:] if m["Message-ID"] == original["Message-ID"]]
    assert len(resent) == 1, [m["Subject"] for m in handler.messages]
    assert resent[0]["Date"] == original["Date"]
    assert resent[0]["Subject"] == original["Subject"]
    assert (
        resent[0].get_body(("plain",)).get_content() == original.get_body(("plain",)).get_content()
    )
    # The new event went in a message of its own; nothing was lost.
    others = [m for m in handler.messages[1:] if m["Message-ID"] != original["Message-ID"]]
    assert [" ".join(m["Subject"].split()) for m in others] == ["gridmate: Peak ended"]
    assert not list((Path(tmp_path) / "notify" / "queue").iterdir())
