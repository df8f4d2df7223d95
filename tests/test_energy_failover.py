"""Failover of the energy manager: keepalived's notify program.

The wording is a pure function; the command runs as keepalived runs it (a
separate process with the four notify arguments); and the last test runs two
real keepalived daemons in network namespaces of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from failover_pair import SharedClock

from gridmate.cli import main
from gridmate.energy.failover.notify import STATES, Transition, failover_event, is_news
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


# ------------------------------------------------------------------ two nodes in namespaces
#
# Two hosts (network namespaces joined by a direct link) run real keepalived with
# the module's VRRP settings and its notify script (modules/energy-failover-notify.sh,
# systemctl replaced by tests/failover_pair.py, which starts and stops the energy
# service as systemd would). A third namespace is the house's network: the Tesla
# cloud simulator, Mosquitto and an SMTP server, reached by each host over its own
# link, so every write names the host that sent it. A short critical-peak event
# passes on a clock shared by every process, 60 times faster than real time;
# keepalived, the broker and the lease run in real time.

SPEED = 60.0
SATURDAY = date(2026, 7, 11)  # the "original" preset has no weekend peak: only the event
PEAK_START = datetime(2026, 7, 11, 12, 0, tzinfo=ZoneInfo("America/Phoenix"))
PEAK_END = PEAK_START + timedelta(minutes=10)
SITE_ADDRESS = "10.232.0.254"
HOST_ADDRESS = {"node-a": "10.232.0.1", "node-b": "10.232.0.2"}
LINK_ADDRESS = {"node-a": "10.231.0.1", "node-b": "10.231.0.2"}
PRIORITY = {"node-a": 150, "node-b": 100}
RESTORE_RESERVE = 30
CLONE_NEWNET = 0x40000000
SMTP_PORT, MQTT_PORT = 2525, 1883


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the block's socket calls in ``namespace`` (this thread only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


@pytest.fixture
def house_network(namespaces: tuple[str, str, str]) -> Iterator[str]:
    """A third namespace, the house's network, with a link to each host."""
    from conftest import run_checked

    ns_a, ns_b, _ = namespaces
    tag = uuid.uuid4().hex[:6]
    site = f"gmfo-{tag}-s"
    run_checked("ip", "netns", "add", site)
    try:
        run_checked("ip", "-n", site, "link", "add", "br0", "type", "bridge")
        run_checked("ip", "-n", site, "addr", "add", f"{SITE_ADDRESS}/24", "dev", "br0")
        run_checked("ip", "-n", site, "link", "set", "br0", "up")
        run_checked("ip", "-n", site, "link", "set", "lo", "up")
        for ns, node in ((ns_a, "node-a"), (ns_b, "node-b")):
            host, bridge = f"gh{node[-1]}{tag}", f"gb{node[-1]}{tag}"
            run_checked("ip", "link", "add", host, "type", "veth", "peer", "name", bridge)
            run_checked("ip", "link", "set", host, "netns", ns)
            run_checked("ip", "-n", ns, "link", "set", host, "name", "house0")
            run_checked("ip", "-n", ns, "addr", "add", f"{HOST_ADDRESS[node]}/24", "dev", "house0")
            run_checked("ip", "-n", ns, "link", "set", "house0", "up")
            run_checked("ip", "link", "set", bridge, "netns", site)
            run_checked("ip", "-n", site, "link", "set", bridge, "master", "br0")
            run_checked("ip", "-n", site, "link", "set", bridge, "up")
        yield site
    finally:
        subprocess.run(["ip", "netns", "delete", site], capture_output=True, timeout=10)


def pair_keepalived_conf(node: str, notify: Path) -> str:
    """keepalived.conf as modules/energy.nix renders it for this host (tests/test_nix.py
    checks the module's rendering: state BACKUP, unicast peers, the notify script run
    as root, dont_track_primary)."""
    peer = LINK_ADDRESS["node-b" if node == "node-a" else "node-a"]
    return f"""global_defs {{
    router_id {node}
    enable_script_security
}}
vrrp_instance gridmate-energy {{
    interface gmfo0
    state BACKUP
    virtual_router_id 51
    priority {PRIORITY[node]}
    unicast_peer {{
        {peer}
    }}
    notify "{notify}" root
    dont_track_primary
}}
"""


def notify_script(node_dir: Path) -> str:
    """The module's notify script with this test's systemctl stand-in and role file."""
    text = (Path(__file__).parent.parent / "modules" / "energy-failover-notify.sh").read_text()
    role_dir = node_dir / "failover-role"
    for placeholder, value in (
        ("@systemctl@", str(node_dir / "systemctl")),
        ("@roleDirectory@", str(role_dir)),
        ("@roleFile@", str(role_dir / "state")),
    ):
        text = text.replace(placeholder, value)
    return "#!/bin/bash\n" + text


def energy_config(node: str, node_dir: Path, cloud: Any, site_id: int, topic: str) -> str:
    lines = f"""
state_directory = "{node_dir / "state"}"
runtime_directory = "{node_dir / "run"}"
cycle_seconds = 5
[log]
level = "info"
[metrics]
enable = false
[tariff]
preset = "original"
[[tariff.events]]
date = {SATURDAY.isoformat()}
start = "{PEAK_START:%H:%M}"
end = "{PEAK_END:%H:%M}"
name = "critical peak"
[reserve]
restore_reserve_percent = {RESTORE_RESERVE}
[tesla]
token_source = "oauth"
base_url = "{cloud.base_url}"
[tesla.oauth]
client_id = "{cloud.client_id}"
token_url = "{cloud.token_url}"
refresh_token_file = "{node_dir / "tesla-refresh-token"}"
[powerwall]
site_id = {site_id}
[failover]
enable = true
role_file = "{node_dir / "failover-role" / "state"}"
lease_seconds = 3
[notify]
smtp_host = "{SITE_ADDRESS}"
smtp_port = {SMTP_PORT}
security = "none"
node_name = "{node}"
digest_window_seconds = 0
retry_initial_seconds = 0.5
recipients.info = ["house@example.com"]
recipients.warning = ["house@example.com"]
recipients.critical = ["house@example.com"]
mqtt_topic = "{topic}"
[notify.mqtt]
host = "{SITE_ADDRESS}"
port = {MQTT_PORT}
"""
    return lines


@dataclass
class Node:
    name: str
    namespace: str
    directory: Path
    keepalived: subprocess.Popen[bytes] | None = None

    def calls(self) -> list[tuple[float, list[str]]]:
        path = self.directory / "systemctl.log"
        if not path.exists():
            return []
        return [(c["wall"], c["args"]) for c in map(json.loads, path.read_text().splitlines())]

    def service_calls(self, verb: str) -> list[float]:
        return [
            t
            for t, args in self.calls()
            if args[0] == verb and args[-1] == "gridmate-energy.service"
        ]

    def energy_pid(self) -> int | None:
        path = self.directory / "energy.pid"
        return int(path.read_text()) if path.exists() else None

    def journal(self) -> list[dict[str, Any]]:
        found = []
        for day in sorted(journal_directory(self.directory / "state").glob("*.jsonl")):
            found += [json.loads(line) for line in day.read_text().splitlines()]
        return found

    def decisions(self, what: str) -> list[dict[str, Any]]:
        return [e for e in self.journal() if e["kind"] == "decision" and e["what"] == what]

    def start_keepalived(self) -> None:
        log = (self.directory / "keepalived.log").open("wb")
        self.keepalived = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, "keepalived", "-n", "-l", "-D",
             "-f", str(self.directory / "keepalived.conf"),
             "-p", str(self.directory / "keepalived.pid"),
             "-r", str(self.directory / "vrrp.pid")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def crash(self) -> None:
        """The host dies: keepalived and the energy service are killed, nothing runs."""
        assert self.keepalived is not None
        os.killpg(self.keepalived.pid, signal.SIGKILL)
        self.keepalived.wait(timeout=10)
        pid = self.energy_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def shut_down(self) -> None:
        if self.keepalived is not None and self.keepalived.poll() is None:
            self.keepalived.send_signal(signal.SIGTERM)
            try:
                self.keepalived.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.keepalived.pid, signal.SIGKILL)
                self.keepalived.wait(timeout=5)

    def stop_energy(self) -> None:
        pid = self.energy_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def tails(self) -> str:
        out = []
        for name in ("keepalived.log", "energy.log", "systemctl.log", "failover-notify.log"):
            path = self.directory / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-25:]
                out.append(f"--- {self.name} {name}\n" + "\n".join(lines))
        return "\n".join(out)


async def wait_for_pair(what: str, check: Any, seconds: float, nodes: list[Node]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {seconds:g} s: {what}\n" +
                                 "\n".join(n.tails() for n in nodes))  # fmt: skip
        await asyncio.sleep(0.05)


async def serve_in(namespace: str, app: Any) -> tuple[Any, int]:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with inside(namespace):
        await web.TCPSite(runner, SITE_ADDRESS, 0).start()
    return runner, int(runner.addresses[0][1])


def start_broker(namespace: str, conf: Path) -> subprocess.Popen[bytes]:
    from gridmate.sim.brokers import find_mosquitto_binary

    conf.write_text(f"listener {MQTT_PORT} {SITE_ADDRESS}\nallow_anonymous true\n")
    return subprocess.Popen(
        ["ip", "netns", "exec", namespace, str(find_mosquitto_binary()), "-c", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def set_link_down(namespace: str, interface: str) -> None:
    from conftest import run_checked

    run_checked("ip", "-n", namespace, "link", "set", interface, "down")


def iptables(namespace: str, *rule: str) -> None:
    from conftest import run_checked

    run_checked("ip", "netns", "exec", namespace, "iptables", "-w", *rule)


FAULTS = ["clean stop", "crash", "cut link", "dropped VRRP", "stop just before peak end"]


@pytest.mark.netns
@pytest.mark.services
@pytest.mark.parametrize("fault", FAULTS)
async def test_a_pair_in_network_namespaces_keeps_one_writer_and_restores_once(
    namespaces: tuple[str, str, str], house_network: str, tmp_path: Path, fault: str
) -> None:
    from aiosmtpd.controller import Controller
    from conftest import SmtpServer, _CollectingHandler

    from gridmate.sim.tesla_cloud import SimulatedEnergySite, TeslaCloudSimulator

    ns_a, ns_b, _interface = namespaces
    site_ns = house_network
    os.chmod(tmp_path, 0o755)
    # The simulated clock: the event starts 8 s (real) from now.
    clock = SharedClock(PEAK_START - timedelta(minutes=8), time.time(), SPEED)
    clock.save(tmp_path / "clock.json")
    site = SimulatedEnergySite(percentage_charged=90.0, backup_reserve_percent=RESTORE_RESERVE,
                               operation_mode="autonomous",
                               installation_time_zone="America/Phoenix")  # fmt: skip
    cloud = TeslaCloudSimulator(sites=[site], vehicles=[], clock=clock,
                                client_id="gridmate-sim-client", region="na",
                                access_token_lifetime=8 * 3600,
                                refresh_token_lifetime=timedelta(days=90))  # fmt: skip
    runner, port = await serve_in(site_ns, cloud.application())
    cloud.base_url = f"http://{SITE_ADDRESS}:{port}"
    cloud.token_url = f"{cloud.base_url}/oauth2/v3/token"
    smtp = SmtpServer(SITE_ADDRESS, SMTP_PORT)
    with inside(site_ns):
        controller = Controller(_CollectingHandler(smtp), hostname=SITE_ADDRESS, port=SMTP_PORT)
        controller.start()
    broker = start_broker(site_ns, tmp_path / "mosquitto.conf")
    topic = f"t{uuid.uuid4().hex[:10]}/notify"
    nodes = {
        "node-a": Node("node-a", ns_a, tmp_path / "node-a"),
        "node-b": Node("node-b", ns_b, tmp_path / "node-b"),
    }
    a, b = nodes["node-a"], nodes["node-b"]
    try:
        for node in nodes.values():
            d = node.directory
            d.mkdir(mode=0o755)
            # Each host its own Tesla login (docs/energy.md, Tesla logins for two hosts).
            _access, refresh = cloud.issue_tokens()
            (d / "tesla-refresh-token").write_text(refresh)
            (d / "energy.toml").write_text(energy_config(node.name, d, cloud, site.site_id, topic))
            wrapper = d / "systemctl"
            wrapper.write_text(
                "#!/bin/sh\n"
                f"export PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', ''))}\n"
                f"exec {shlex.quote(sys.executable)} "
                f"{shlex.quote(str(Path(__file__).parent / 'failover_pair.py'))} systemctl "
                f'{shlex.quote(str(d))} "$@"\n'
            )
            wrapper.chmod(0o755)
            notify = d / "notify"
            notify.write_text(notify_script(d))
            notify.chmod(0o755)
            (d / "keepalived.conf").write_text(pair_keepalived_conf(node.name, notify))
        a.start_keepalived()
        await wait_for_pair("node-a active", lambda: a.service_calls("start"), 15, [a, b])
        b.start_keepalived()
        await wait_for_pair(
            "node-a writes the peak setting",
            lambda: (site.backup_reserve_percent, site.operation_mode) == (0, "self_consumption"),
            30, [a, b],
        )  # fmt: skip

        # The fault, in the middle of the event or in its last seconds.
        at = PEAK_END - timedelta(seconds=5) if fault == "stop just before peak end" else (
            PEAK_START + timedelta(minutes=4))  # fmt: skip
        await asyncio.sleep(max(0.0, clock.wall_at(at) - time.time()))
        fault_wall = time.time()
        if fault in ("clean stop", "stop just before peak end"):
            a.shut_down()
        elif fault == "crash":
            a.crash()
        elif fault == "cut link":
            set_link_down(ns_a, "gmfo0")
        else:  # the link stays up; every VRRP advert is dropped
            for ns in (ns_a, ns_b):
                iptables(ns, "-A", "INPUT", "-p", "112", "-j", "DROP")
        await wait_for_pair("node-b active", lambda: b.service_calls("start"), 15, [a, b])
        master_after = b.service_calls("start")[0] - fault_wall

        def restored() -> bool:
            return site.backup_reserve_percent == RESTORE_RESERVE and any(
                "Backup reserve restored" in text for text in mail_texts(smtp.messages)
            )

        await wait_for_pair("the reserve restored after the event", restored, 60, [a, b])
        split = fault in ("cut link", "dropped VRRP")
        if split:
            await wait_for_pair(
                "the split brain announced",
                lambda: any("at once" in text for text in mail_texts(smtp.messages)), 20, [a, b],
            )  # fmt: skip
        expected = ["node-b is now active and controlling the Powerwall"]
        if fault in ("clean stop", "stop just before peak end"):
            expected.append("failover stopped on node-a")
        for words in expected:  # each node's failover-notify delivers within seconds
            await wait_for_pair(
                f"a message saying {words!r}",
                lambda words=words: any(words in t for t in mail_texts(smtp.messages)),
                20, [a, b],
            )  # fmt: skip
        writes = list(site.writes)
        messages = list(smtp.messages)  # before the test's own shutdown adds its notices
    finally:
        for node in nodes.values():
            node.shut_down()
        for node in nodes.values():
            node.stop_energy()
        broker.terminate()
        broker.wait(timeout=10)
        controller.stop()
        await runner.cleanup()

    first_cycle = [e for e in b.journal() if e["kind"] == "sample"]
    taken = (clock.wall_at(datetime.fromisoformat(first_cycle[0]["t"])) - fault_wall
             if first_cycle else float("nan"))  # fmt: skip
    print(f"\n{fault}: node-b MASTER (energy service started) {master_after:.2f} s after the "
          f"fault, its first control cycle {taken:.2f} s after it")  # fmt: skip

    by_host = {address: node for node, address in HOST_ADDRESS.items()}
    writers = [(by_host.get(str(w.client)), w.setting, w.value, clock.wall_at(w.t)) for w in writes]
    assert all(writer is not None for writer, *_ in writers), writers
    # No duplicate write: each setting written once per value, the restore once.
    changes = [(setting, value) for _, setting, value, _ in writers]
    assert len(changes) == len(set(changes)), writers
    assert changes[:2] == [("default_real_mode", "self_consumption"),
                           ("backup_reserve_percent", 0)], writers  # fmt: skip
    assert ("backup_reserve_percent", RESTORE_RESERVE) in changes[2:], writers
    # No write by a host that is not the active one (by the calls keepalived's notify
    # script made: started .. stopped), and in a split brain node-b writes nothing.
    for writer, setting, value, wall in writers:
        node = nodes[writer]
        starts, stops = node.service_calls("start"), node.service_calls("stop")
        assert any(s <= wall and not any(s <= t <= wall for t in stops) for s in starts), (
            writer, setting, value, wall, starts, stops,
        )  # fmt: skip
    if split:
        assert {w for w, *_ in writers} == {"node-a"}, writers
        refused = b.decisions("write_refused")
        assert refused and "node-a is active too" in refused[0]["detail"]["reason"]
    else:
        assert all(w == "node-a" for w, *_ in writers[:2]), writers
    if fault in ("clean stop", "crash"):
        # Taken over mid-peak: node-b found the peak setting and restored it.
        assert {w for w, *_ in writers[2:]} == {"node-b"}, writers
    # Stopped in the event's last seconds, node-a may still have restored it before
    # its stop; otherwise node-b did. Either way one host wrote the restore.
    assert len({w for w, *_ in writers[2:]}) == 1, writers
    # Exactly one verified restore, journalled by the host that read it back.
    restorer = nodes[writers[-1][0]]
    verified = [
        d for d in restorer.decisions("restored") if d["detail"]["powerwall"] == "read back"
    ]
    assert len(verified) == 1, restorer.decisions("restored")
    # Notifications as documented.
    texts = mail_texts(messages)
    assert len([m for m in messages if "Backup reserve restored" in str(m[1]["Subject"])]) == 1
    assert any("node-b is now active and controlling the Powerwall" in t for t in texts), texts
    stopped = any("failover stopped on node-a" in t for t in texts)
    assert stopped is (fault in ("clean stop", "stop just before peak end")), texts
    split_messages = [m for m in messages if "at once" in str(m[1]["Subject"])]
    assert len(split_messages) == (1 if split else 0), texts


def mail_texts(messages: list[Any]) -> list[str]:
    return [
        str(message["Subject"]) + "\n" + message.get_body(("plain",)).get_content()
        for _recipients, message in list(messages)
    ]
