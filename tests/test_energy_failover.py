"""Failover of the energy manager: keepalived's notify program.

The wording is a pure function; the command runs as keepalived runs it (a
separate process with the four notify arguments); and the last test runs two
real keepalived daemons in network namespaces of its own.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gridmate.cli import main
from gridmate.energy.failover import STATES, Transition, failover_event, is_news
from gridmate.energy.journal import journal_directory
from gridmate.notify import EventKind, Level, Notifier, NotifySettings

# The CLI through this interpreter, as the Nix check phase (no bin/ beside it) can run it.
GRIDMATE = [sys.executable, "-m", "gridmate"]
# keepalived runs a notify program by its resolved path: the venv's python is a
# symlink to an interpreter outside the venv, so keepalived gets the console script.
GRIDMATE_SCRIPT = str(Path(sys.executable).parent / "gridmate")
AT = datetime(2026, 7, 14, 23, 5, tzinfo=UTC)


def transition(state: str, node: str = "pantry") -> Transition:
    return Transition(node=node, state=state, instance="gridmate-energy", priority=150)  # type: ignore[arg-type]


# ------------------------------------------------------------------ wording and level


def test_master_means_this_node_now_controls_the_powerwall() -> None:
    event = failover_event(transition("MASTER"), AT)
    assert event.kind is EventKind.failover_transition
    assert event.effective_level is Level.INFO
    assert "pantry" in event.subject and "active" in event.subject
    assert "now controlling the Powerwall" in event.what_happened
    assert "fallback_reserve_percent" in event.what_gridmate_did


def test_backup_means_standing_by() -> None:
    event = failover_event(transition("BACKUP"), AT)
    assert event.effective_level is Level.INFO
    assert "standing by" in event.subject and "passive" in event.subject
    assert "does not write to the Powerwall" in event.what_gridmate_did


def test_fault_is_a_warning_with_advice() -> None:
    event = failover_event(transition("FAULT"), AT)
    assert event.effective_level is Level.WARNING
    assert "faulty" in event.subject
    assert event.what_you_can_do is not None and "journalctl -u keepalived" in event.what_you_can_do


def test_stop_is_information() -> None:
    event = failover_event(transition("STOP"), AT)
    assert event.effective_level is Level.INFO
    assert "stopped" in event.subject and "pantry" in event.subject


def test_every_state_has_its_own_message() -> None:
    subjects = {failover_event(transition(state), AT).subject for state in STATES}
    assert len(subjects) == len(STATES)


def test_each_transition_is_its_own_message_but_a_repeated_call_is_not() -> None:
    first = failover_event(transition("MASTER"), AT)
    again = failover_event(transition("MASTER"), AT)
    later = failover_event(transition("MASTER"), AT + timedelta(hours=1))
    other_node = failover_event(transition("MASTER", node="garage"), AT)
    assert first.idempotency_key() == again.idempotency_key()
    assert first.idempotency_key() != later.idempotency_key()
    assert first.idempotency_key() != other_node.idempotency_key()


def test_group_and_priority_are_named() -> None:
    event = failover_event(
        Transition(node="pantry", state="BACKUP", instance="energy", type="GROUP", priority=90),
        AT,
    )
    assert "sync group" in event.what_happened
    assert ("priority", "90") in event.details


# ------------------------------------------------------------------ the command


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["INSTANCE", "gridmate-energy"],
        ["INSTANCE", "gridmate-energy", "PRIMARY"],
        ["VRRP", "gridmate-energy", "MASTER"],
        ["INSTANCE", "gridmate-energy", "MASTER", "300"],
        ["INSTANCE", "gridmate-energy", "MASTER", "100", "extra"],
    ],
)
def test_wrong_arguments_exit_2_with_usage(
    arguments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["energy", "failover-notify", *arguments, "--config", str(tmp_path / "none.toml")])
    assert exit_info.value.code == 2
    assert "usage: gridmate" in capsys.readouterr().err


def write_config(
    path: Path, state: Path, node: str, smtp_host: str, smtp_port: int, **notify: Any
) -> Path:
    lines = [
        f"state_directory = {json.dumps(str(state))}",
        f"runtime_directory = {json.dumps(str(state / 'run'))}",
        "[notify]",
        f"smtp_host = {json.dumps(smtp_host)}",
        f"smtp_port = {smtp_port}",
        'security = "none"',
        f"node_name = {json.dumps(node)}",
        "retry_initial_seconds = 0.2",
        'recipients.info = ["house@example.com"]',
        'recipients.warning = ["house@example.com"]',
    ] + [f"{key} = {json.dumps(value)}" for key, value in notify.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def failover_lines(state: Path) -> list[dict[str, Any]]:
    found = []
    for day in sorted(journal_directory(state).glob("*.jsonl")):
        for line in day.read_text().splitlines():
            event = json.loads(line)
            if event["kind"] == "failover":
                found.append(event)
    return found


def queued_subjects(state: Path) -> list[str]:
    queue = state / "notify" / "queue"
    if not queue.is_dir():
        return []
    subjects = []
    for path in sorted(queue.glob("*.json")):
        try:
            subjects.append(json.loads(path.read_text())["event"]["subject"])
        except (OSError, ValueError, KeyError):
            continue  # being written or removed right now
    return subjects


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def notifier_settings(node: str, host: str, port: int) -> NotifySettings:
    return NotifySettings(
        smtp_host=host,
        smtp_port=port,
        security="none",
        node_name=node,
        recipients={"info": ["house@example.com"], "warning": ["house@example.com"]},
    )


def subjects_of(messages: list[Any]) -> list[str]:
    return [str(message["Subject"]) for _recipients, message in messages]


@pytest.mark.services
async def test_undelivered_transition_stays_queued_and_the_next_notifier_sends_it(
    tmp_path: Path, smtp_server: Any
) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "energy.toml", state, "pantry", "127.0.0.1", closed_port())
    process = await asyncio.create_subprocess_exec(
        *GRIDMATE, "energy", "failover-notify", "INSTANCE", "gridmate-energy", "MASTER",
        "150", "--config", str(config), "--deliver-within", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    [line] = failover_lines(state)
    assert (line["node"], line["state"], line["role"], line["priority"]) == (
        "pantry",
        "MASTER",
        "active",
        150,
    )
    [subject] = queued_subjects(state)
    assert "pantry" in subject and "active" in subject

    notifier = Notifier(
        notifier_settings("pantry", smtp_server.host, smtp_server.port), state, source="energy"
    )
    await notifier.start()
    try:
        assert await notifier.flush(10.0)
    finally:
        await notifier.close()
    [sent] = subjects_of(smtp_server.messages)
    assert sent.endswith(subject)
    assert queued_subjects(state) == []


@pytest.mark.parametrize(
    ("previous", "state", "news"),
    [
        # keepalived starts every instance in BACKUP: routine at every boot
        (None, "BACKUP", False),
        ("STOP", "BACKUP", False),
        ("BACKUP", "BACKUP", False),
        # losing control, or recovering from a fault, is news
        ("MASTER", "BACKUP", True),
        ("FAULT", "BACKUP", True),
        # taking control always is
        (None, "MASTER", True),
        ("BACKUP", "MASTER", True),
        ("MASTER", "MASTER", True),
        # a fault once
        ("BACKUP", "FAULT", True),
        ("FAULT", "FAULT", False),
        # a standby that shuts down is routine; the active node giving up is not
        ("BACKUP", "STOP", False),
        (None, "STOP", False),
        ("MASTER", "STOP", True),
    ],
)
def test_which_transitions_are_news(previous: Any, state: Any, news: bool) -> None:
    assert is_news(previous, state) is news


def run_notify(config: Path, state: str) -> None:
    result = subprocess.run(
        [*GRIDMATE, "energy", "failover-notify", "INSTANCE", "gridmate-energy", state,
         "--config", str(config), "--deliver-within", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_a_boot_into_backup_is_journalled_but_not_announced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "energy.toml", state, "pantry", "127.0.0.1", closed_port())
    run_notify(config, "BACKUP")  # keepalived's first state after every start
    assert [line["state"] for line in failover_lines(state)] == ["BACKUP"]
    assert queued_subjects(state) == []
    run_notify(config, "MASTER")
    run_notify(config, "BACKUP")  # the other node took over: that is news
    assert [line["state"] for line in failover_lines(state)] == ["BACKUP", "MASTER", "BACKUP"]
    subjects = queued_subjects(state)
    assert len(subjects) == 2
    assert any("now active" in s for s in subjects)
    assert any("standing by" in s for s in subjects)


# ------------------------------------------------------------------ keepalived in namespaces


def keepalived_conf(
    node: str, interface: str, own: str, peer: str, priority: int, notify: list[str]
) -> str:
    command = " ".join(notify)
    return f"""
global_defs {{
    router_id {node}
    script_user root
}}
vrrp_instance gridmate-energy {{
    interface {interface}
    state BACKUP
    virtual_router_id 51
    priority {priority}
    advert_int 1
    unicast_src_ip {own}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        10.231.0.10/24
    }}
    notify "{command}"
}}
"""


async def wait_until(what: str, check: Any, seconds: float, logs: list[Path]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        if loop.time() > deadline:
            tails = "\n".join(
                f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                for log in logs
                if log.exists()
            )
            raise AssertionError(f"not within {seconds:g} s: {what}\n{tails}")
        await asyncio.sleep(0.2)


def roles(state: Path) -> list[str]:
    return [line["role"] for line in failover_lines(state)]


def wait_for_notify_programs(state: Path) -> None:
    """Block until no notify program works on ``state`` (they hold this lock while delivering)."""
    lock = journal_directory(state).parent / "failover.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        fcntl.flock(handle, fcntl.LOCK_UN)


def start_keepalived(ns: str, conf: Path, work: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, "keepalived", "-n", "-l", "-D", "-f", str(conf),
             "-p", str(work / "keepalived.pid"), "-r", str(work / "vrrp.pid")],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.mark.netns
@pytest.mark.services
async def test_keepalived_fails_over_and_the_takeover_message_is_delivered_later(
    namespaces: tuple[str, str, str], tmp_path: Path, smtp_server: Any
) -> None:
    ns_a, ns_b, interface = namespaces
    nodes = {
        "node-a": (ns_a, "10.231.0.1", "10.231.0.2", 150),
        "node-b": (ns_b, "10.231.0.2", "10.231.0.1", 100),
    }
    states: dict[str, Path] = {}
    logs: list[Path] = []
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for node, (ns, own, peer, priority) in nodes.items():
            work = tmp_path / node
            work.mkdir()
            states[node] = work / "state"
            # Inside the namespace nothing listens on this port: mail stays queued.
            config = write_config(work / "energy.toml", states[node], node, "127.0.0.1", 9)
            notify = [GRIDMATE_SCRIPT, "energy", "failover-notify", "--config", str(config),
                      "--deliver-within", "1"]  # fmt: skip
            conf = work / "keepalived.conf"
            conf.write_text(keepalived_conf(node, interface, own, peer, priority, notify))
            log = work / "keepalived.log"
            logs.append(log)
            daemons[node] = start_keepalived(ns, conf, work, log)

        await wait_until(
            "node-a active and node-b standing by",
            lambda: "active" in roles(states["node-a"]) and "passive" in roles(states["node-b"]),
            15,
            logs,
        )
        assert "active" not in roles(states["node-b"])

        stop(daemons["node-a"])  # SIGTERM by pid: keepalived gives up mastership
        await wait_until(
            "node-b active after node-a stopped",
            lambda: "active" in roles(states["node-b"]),
            8,
            logs,
        )
        assert roles(states["node-b"])[-1] == "active"
        wait_for_notify_programs(states["node-b"])
        queued = queued_subjects(states["node-b"])
        assert any("node-b" in s and "active" in s for s in queued), queued
    finally:
        for process in daemons.values():
            stop(process)

    # Later, with mail reachable: a notifier on node-b's state directory sends what waited.
    notifier = Notifier(
        notifier_settings("node-b", smtp_server.host, smtp_server.port),
        states["node-b"],
        source="energy",
    )
    await notifier.start()
    try:
        assert await notifier.flush(10.0)
    finally:
        await notifier.close()
    # node-b's stop at the end of the test queued one more notice, so they may come
    # as one digest whose text lists each subject.
    texts = [
        str(message["Subject"]) + "\n" + message.get_body(("plain",)).get_content()
        for _recipients, message in smtp_server.messages
    ]
    takeover = "Energy manager on node-b is now active and controlling the Powerwall"
    assert any(takeover in text for text in texts), texts
    assert queued_subjects(states["node-b"]) == []
