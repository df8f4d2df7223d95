"""Active/passive failover of the energy manager with keepalived.

keepalived decides which of two hosts is active (VRRP ``MASTER``) and runs a
notify program on every transition with four arguments: ``INSTANCE`` or
``GROUP``, the instance's name, the new state (``MASTER``, ``BACKUP``,
``FAULT`` or ``STOP``) and the priority. ``gridmate energy failover-notify``
is that program: it records the transition in the energy day journal and
tells people through the notifier. Starting and stopping the energy service
itself is left to the host's service manager (see docs/energy.md, Failover).

keepalived waits for notify programs, so the command tries delivery only for
a few seconds; whatever is not delivered stays in the notifier's on-disk
queue, and the next notifier on the same state directory (the energy
service, or the next transition) delivers it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from gridmate.energy.journal import DayJournal, journal_directory
from gridmate.energy.settings import EnergySettings
from gridmate.notify import Event, EventKind, Level, Notifier
from gridmate.runtime.files import make_private_directory, write_atomically
from gridmate.runtime.logs import get_logger

__all__ = [
    "STATES",
    "Transition",
    "add_arguments",
    "failover_event",
    "failover_notify",
    "is_news",
    "record_transition",
]

log = get_logger("energy.failover")

State = Literal["MASTER", "BACKUP", "FAULT", "STOP"]
STATES: tuple[State, ...] = ("MASTER", "BACKUP", "FAULT", "STOP")
TYPES = ("INSTANCE", "GROUP")

# keepalived waits for its notify programs; together these stay under ~10 s.
DEFAULT_DELIVER_SECONDS = 6.0
LOCK_WAIT_SECONDS = 3.0
CLOSE_GRACE_SECONDS = 1.0

# The last state a notify program saw on this node, beside the journal.
LAST_STATE_FILE = "failover-state"

# What each keepalived state means for this node, in a person's words.
ROLE: dict[State, str] = {
    "MASTER": "active",
    "BACKUP": "passive",
    "FAULT": "faulty",
    "STOP": "stopped",
}


@dataclass(frozen=True)
class Transition:
    """One call of keepalived's notify program."""

    node: str
    state: State
    instance: str
    type: str = "INSTANCE"
    priority: int | None = None

    @property
    def role(self) -> str:
        return ROLE[self.state]


def failover_event(transition: Transition, at: datetime) -> Event:
    """The message about a transition: wording and level, decided from the state alone.

    Every transition is its own happening (``occurrence`` is its time), so a
    node that becomes active twice in a day is reported twice, and two copies
    of the same call produce one message.
    """
    node, what = transition.node, transition.instance
    group = " (sync group)" if transition.type == "GROUP" else ""
    level: Level
    if transition.state == "MASTER":
        level = Level.INFO
        subject = f"Energy manager on {node} is now active and controlling the Powerwall"
        happened = (
            f"keepalived made {node} the active node of the energy manager "
            f"({what}{group}). {node} is now controlling the Powerwall, the thermostats "
            "and home EV charging."
        )
        did = (
            f"The energy service runs on {node} from now on; the other node's is stopped (if "
            "both nodes are active at once, only the one holding the lease on the shared "
            "broker writes). "
            "If this happens during a peak or just after one, the new node finds the "
            "Powerwall in its peak setting and restores it after the peak: to "
            "reserve.restore_reserve_percent if set, else to the reserve and mode from "
            "before the peak that the other node kept on the shared MQTT broker, else to "
            "reserve.fallback_reserve_percent in Self-Powered mode. It reports the restore "
            "once it reads it back."
        )
        you = None
    elif transition.state == "BACKUP":
        level = Level.INFO
        subject = f"Energy manager on {node} is standing by (passive)"
        happened = (
            f"keepalived made {node} the passive node of the energy manager "
            f"({what}{group}); the other node is in control."
        )
        did = (
            f"The energy service on {node} is stopped: it does not write to the Powerwall, "
            "thermostats or cars while standing by. It takes over if the active node fails."
        )
        you = None
    elif transition.state == "FAULT":
        level = Level.WARNING
        subject = f"Energy manager on {node} is faulty and not controlling anything"
        happened = (
            f"keepalived reports a fault on {node} ({what}{group}), for example its "
            "network interface is down. A faulty node cannot take over."
        )
        did = (
            f"The energy service on {node} is stopped. The other node controls the "
            "Powerwall if it is healthy; until this node recovers there is no standby."
        )
        you = (
            f"Check {node}'s network and 'journalctl -u keepalived' there, and check that "
            "the other node reported itself active."
        )
    else:
        level = Level.INFO
        subject = f"Energy manager failover stopped on {node}"
        happened = (
            f"keepalived stopped on {node} ({what}{group}), so {node} takes no part in "
            "failover until it starts again."
        )
        did = (
            f"The energy service on {node} is stopped. The other node becomes active if "
            "its keepalived runs."
        )
        you = None
    details: tuple[tuple[str, str], ...] = (("node", node), ("state", transition.state))
    if transition.priority is not None:
        details += (("priority", str(transition.priority)),)
    return Event(
        EventKind.failover_transition,
        subject=subject,
        what_happened=happened,
        what_gridmate_did=did,
        what_you_can_do=you,
        key=node,
        level=level,
        occurrence=at.astimezone(UTC).isoformat(),
        occurred_at=at,
        details=details,
    )


def record_transition(
    state_directory: Path, tz: ZoneInfo, transition: Transition, at: datetime
) -> dict[str, Any]:
    """Append a ``failover`` line to the day journal of the site's local date."""
    return DayJournal(state_directory, tz).append(
        "failover",
        at=at,
        node=transition.node,
        state=transition.state,
        role=transition.role,
        instance=transition.instance,
        type=transition.type,
        priority=transition.priority,
    )


def is_news(previous: State | None, state: State) -> bool:
    """Whether a transition from ``previous`` (None: never seen) is worth a message.

    keepalived starts every instance in BACKUP and reports STOP when it shuts
    down, so a node that was standing by (or has never been anything) entering
    BACKUP or STOP is routine: it happens at every boot. What people need to
    hear: a node taking control, losing it, failing, and recovering from a fault.
    """
    if state == "MASTER":
        return True
    if state == "FAULT":
        return previous != "FAULT"
    if state == "BACKUP":
        return previous in ("MASTER", "FAULT")
    return previous == "MASTER"  # STOP: the active node gave control up


def _swap_last_state(state_directory: Path, state: State) -> State | None:
    """Remember ``state`` as this node's last one and return the one before it."""
    path = journal_directory(state_directory).parent / LAST_STATE_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    previous: State | None = next((s for s in STATES if s == text), None)
    write_atomically(path, state + "\n")
    return previous


@contextlib.contextmanager
def _serialized(state_directory: Path, wait_seconds: float) -> Iterator[bool]:
    """One transition at a time per state directory, waiting at most ``wait_seconds``.

    keepalived may start the next notify program while the last one still
    delivers (BACKUP at start, MASTER three adverts later); two notifiers on one
    queue could both send the same message. Yields whether the lock was taken.
    """
    directory = journal_directory(state_directory).parent
    make_private_directory(directory)
    fd = os.open(directory / "failover.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    locked = False
                    break
                time.sleep(0.1)
        yield locked
    finally:
        os.close(fd)


async def _announce(
    settings: EnergySettings, event: Event, *, deliver_seconds: float, locked: bool
) -> None:
    notifier = Notifier(settings.notify, settings.state_directory, source="energy")
    await notifier.start()
    try:
        if await notifier.send(event) is None:
            return
        if not locked:
            # Another transition is delivering from the same queue; it (or the
            # energy service) sends this one too.
            log.info("failover message queued; another notifier is delivering")
            return
        if not await notifier.flush(deliver_seconds):
            log.warning(
                "failover message not delivered yet; kept queued on disk",
                queued=notifier.queue_length,
            )
    finally:
        await notifier.close(CLOSE_GRACE_SECONDS if locked else 0.0)


async def failover_notify(settings: EnergySettings, args: argparse.Namespace) -> int:
    """``gridmate energy failover-notify TYPE NAME STATE [PRIORITY]``."""
    now = datetime.now(UTC)
    transition = Transition(
        node=settings.notify.node_name or socket.gethostname(),
        state=args.state,
        instance=args.name,
        type=args.type,
        priority=args.priority,
    )
    log.info(
        "failover transition",
        node=transition.node,
        state=transition.state,
        role=transition.role,
        instance=transition.instance,
    )
    record_transition(settings.state_directory, ZoneInfo(settings.tariff.zone), transition, now)
    event = failover_event(transition, now)
    # keepalived only logs a notify program's exit status; a failure to notify
    # must not look like a failed transition, so it is logged and the exit is 0.
    try:
        with _serialized(settings.state_directory, LOCK_WAIT_SECONDS) as locked:
            previous = _swap_last_state(settings.state_directory, transition.state)
            if not is_news(previous, transition.state):
                log.info(
                    "failover transition is routine; no message",
                    state=transition.state,
                    previous=previous or "none",
                )
                return 0
            await _announce(settings, event, deliver_seconds=args.deliver_within, locked=locked)
    except Exception as error:
        log.error("failover message not queued", error=f"{type(error).__name__}: {error}")
    return 0


def vrrp_priority(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 255:
        raise ValueError(text)
    return value


def seconds_0_to_9(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 9:
        raise ValueError(text)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", metavar="TYPE", choices=TYPES, help="INSTANCE or GROUP")
    parser.add_argument("name", metavar="NAME", help="the VRRP instance or group name")
    parser.add_argument("state", metavar="STATE", choices=STATES, help=" | ".join(STATES))
    parser.add_argument(
        "priority", metavar="PRIORITY", type=vrrp_priority, nargs="?", default=None,
        help="this node's VRRP priority (0-255)",
    )  # fmt: skip
    parser.add_argument(
        "--deliver-within", type=seconds_0_to_9, default=DEFAULT_DELIVER_SECONDS, metavar="SECONDS",
        help="try e-mail delivery this long (0-9, default %(default)s); the rest stays queued",
    )  # fmt: skip
