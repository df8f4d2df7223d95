"""Which failover node may write: keepalived's role and the lease on the shared broker.

The verdict is a pure function; the lease runs against the real Mosquitto;
the reconciler's writes go to gridmate's Tesla cloud simulator.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_energy_reconciler import World, world

from gridmate.energy.failover.lease import LeaseRecord, WriterLease, lease_verdict
from gridmate.energy.settings import FailoverSettings
from gridmate.notify.settings import LedgerMqttSettings

TTL = 10.0


def record(node: str, acquired: float) -> LeaseRecord:
    return LeaseRecord(node, f"token-{node}", acquired)


def test_alone_and_confirmed_holds_the_lease() -> None:
    verdict = lease_verdict(record("a", 5.0), 99.0, {}, 100.0, TTL, synced=True)
    assert verdict.holds and verdict.reason is None and verdict.others == ()


@pytest.mark.parametrize(
    ("synced", "own_seen_at", "reason"),
    [
        (False, 99.0, "not in touch with the lease broker"),
        (True, None, "own lease not confirmed by the broker lately"),
        (True, 100.0 - TTL - 0.1, "own lease not confirmed by the broker lately"),
    ],
)
def test_no_lease_without_the_brokers_confirmation(
    synced: bool, own_seen_at: float | None, reason: str
) -> None:
    verdict = lease_verdict(record("a", 5.0), own_seen_at, {}, 100.0, TTL, synced=synced)
    assert not verdict.holds and verdict.reason == reason


def test_in_a_split_brain_the_earlier_claim_holds_and_both_see_it() -> None:
    a, b = record("a", 5.0), record("b", 7.0)
    for_a = lease_verdict(a, 99.0, {"b": (b, 99.5)}, 100.0, TTL, synced=True)
    for_b = lease_verdict(b, 99.5, {"a": (a, 99.0)}, 100.0, TTL, synced=True)
    assert for_a.holds and for_a.others == ("b",)
    assert not for_b.holds and for_b.others == ("a",)
    assert for_b.reason == "a is active too and holds the lease"


def test_a_tie_is_broken_by_the_node_name_the_same_way_on_both() -> None:
    a, b = record("a", 5.0), record("b", 5.0)
    assert lease_verdict(a, 99.0, {"b": (b, 99.0)}, 100.0, TTL, synced=True).holds
    assert not lease_verdict(b, 99.0, {"a": (a, 99.0)}, 100.0, TTL, synced=True).holds


def test_a_claim_not_renewed_within_the_lease_time_is_dead() -> None:
    a, b = record("a", 5.0), record("b", 7.0)
    verdict = lease_verdict(b, 99.0, {"a": (a, 100.0 - TTL - 0.1)}, 100.0, TTL, synced=True)
    assert verdict.holds and verdict.others == ()


# ------------------------------------------------------------------ on the broker


def lease(broker: Any, prefix: str, node: str, ttl: float = 6.0) -> WriterLease:
    settings = LedgerMqttSettings(host=broker.host, port=broker.port)
    return WriterLease(settings, prefix, node, ttl=ttl)


async def wait_for(what: str, check: Any, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


@pytest.mark.services
async def test_two_nodes_on_the_broker_agree_who_writes_and_a_release_hands_over(
    mqtt_broker: Any,
) -> None:
    prefix = mqtt_broker.topic_prefix()
    first, second = lease(mqtt_broker, prefix, "node-a"), lease(mqtt_broker, prefix, "node-b")
    await first.start()
    try:
        assert (await first.wait_decided(5.0)).holds
        await second.start()
        try:
            verdict = await second.wait_decided(5.0)
            assert not verdict.holds and verdict.others == ("node-a",)
            await wait_for("node-a sees node-b", lambda: first.verdict().others == ("node-b",))
            assert first.verdict().holds
        finally:
            await second.close()
        await wait_for("node-b's claim gone", lambda: first.verdict().others == ())
        assert first.verdict().holds
    finally:
        await first.close()
    # node-a gave the lease up on the broker: a new node holds it at once.
    third = lease(mqtt_broker, prefix, "node-c")
    await third.start()
    try:
        verdict = await third.wait_decided(5.0)
        assert verdict.holds and verdict.others == ()
    finally:
        await third.close()


# ------------------------------------------------------------------ the reconciler's writes


@pytest.mark.parametrize("role", ["BACKUP", "FAULT", "STOP", None])
async def test_a_node_whose_keepalived_left_master_writes_nothing(
    tmp_path: Path, role: str | None
) -> None:
    role_file = tmp_path / "role"
    role_file.write_text("MASTER\n")
    failover = FailoverSettings(enable=True, role_file=role_file)
    async with world(tmp_path, failover=failover) as w:
        await w.run_until(16, 5)
        assert (w.site.backup_reserve_percent, w.site.operation_mode) == (0, "self_consumption")
        written = len(w.site.writes)
        # keepalived's notify script records the new state before it stops the service.
        if role is None:
            role_file.unlink()
        else:
            role_file.write_text(f"{role}\n")
        await w.run_until(19, 30)
        assert len(w.site.writes) == written
        assert w.site.backup_reserve_percent == 0
        refused = [
            e for e in w.journal() if e["kind"] == "decision" and e["what"] == "write_refused"
        ]
        assert len(refused) == 1
        assert refused[0]["detail"]["reason"] == (
            f"this node is not the active one (keepalived: {role or 'unknown'})"
        )
        # Nothing refused counts against the day's Powerwall writes.
        assert w.runtime.reconciler.state.powerwall_writes == written


@pytest.mark.services
async def test_in_a_split_brain_only_the_lease_holder_writes_and_the_restore_happens_once(
    tmp_path: Path, mqtt_broker: Any
) -> None:
    prefix = mqtt_broker.topic_prefix()
    mqtt = LedgerMqttSettings(host=mqtt_broker.host, port=mqtt_broker.port)
    roles = {node: tmp_path / f"{node}.role" for node in ("a", "b")}
    for path in roles.values():
        path.write_text("MASTER\n")  # keepalived made both active

    def failover(node: str) -> dict[str, Any]:
        from gridmate.notify import NotifySettings

        return {
            "failover": FailoverSettings(enable=True, role_file=roles[node], lease_seconds=6),
            "notify": NotifySettings(node_name=f"node-{node}", mqtt=mqtt, mqtt_topic=prefix),
        }

    async with world(tmp_path / "a", **failover("a")) as a:
        assert a.runtime.lease is not None
        assert (await a.runtime.lease.wait_decided(5.0)).holds
        async with world(tmp_path / "b", site=a.site, **failover("b")) as b:
            assert b.runtime.lease is not None
            assert not (await b.runtime.lease.wait_decided(5.0)).holds
            await wait_for(
                "node-a sees node-b", lambda: a.runtime.lease.verdict().others == ("node-b",)
            )
            for hour, minute in ((16, 5), (17, 0), (19, 30)):
                await a.run_until(hour, minute)
                await b.run_until(hour, minute)
            # One site behind both nodes' simulators: every write is node-a's, once.
            assert [(x.setting, x.value) for x in a.site.writes] == [
                ("default_real_mode", "self_consumption"),
                ("backup_reserve_percent", 0),
                ("backup_reserve_percent", 30),
                ("default_real_mode", "autonomous"),
            ]
            [restored] = _decisions(a, "restored")
            assert restored["detail"]["powerwall"] == "read back"
            assert b.runtime.reconciler.state.powerwall_writes == 0
            refused = _decisions(b, "write_refused")
            assert refused and refused[0]["detail"]["reason"] == (
                "node-a is active too and holds the lease"
            )
            split = [e for e in b.journal() if e["kind"] == "failover"]
            assert split[0]["state"] == "SPLIT_BRAIN" and split[0]["holds_lease"] is False
            split = [e for e in a.journal() if e["kind"] == "failover"]
            assert split[0]["state"] == "SPLIT_BRAIN" and split[0]["holds_lease"] is True
        await wait_for("node-b's claim gone", lambda: a.runtime.lease.verdict().others == ())
        await a.run_until(19, 40)
        assert [e["state"] for e in a.journal() if e["kind"] == "failover"] == [
            "SPLIT_BRAIN",
            "SPLIT_BRAIN_OVER",
        ]


async def test_a_node_that_lost_control_does_not_announce_the_other_nodes_restore(
    tmp_path: Path,
) -> None:
    """Both nodes of a pair read the restored site back; only the one that restored it
    says so. A second announcement would race the mirrored notification ledger and mail
    "Backup reserve restored" twice (seen when a loaded host let its lease lapse)."""
    role_file = tmp_path / "role"
    role_file.write_text("MASTER\n")
    async with world(tmp_path, failover=FailoverSettings(enable=True, role_file=role_file)) as w:
        await w.run_until(16, 5)
        assert (w.site.backup_reserve_percent, w.site.operation_mode) == (0, "self_consumption")
        role_file.write_text("BACKUP\n")
        await w.run_until(19, 2)
        assert w.site.backup_reserve_percent == 0  # not restored by this node: it may not
        # The node now in control restores the site.
        w.site.backup_reserve_percent, w.site.operation_mode = 30, "autonomous"
        await w.run_until(19, 30)
        assert "reserve_restore_verified" not in w.event_kinds()
        [seen] = [e for e in _decisions(w, "reserve") if e["detail"].get("restored")]
        assert seen["detail"]["by"] == "the node in control"


def _decisions(w: World, what: str) -> list[dict[str, Any]]:
    return [e for e in w.journal() if e["kind"] == "decision" and e["what"] == what]


@pytest.mark.services
async def test_a_node_taking_over_mid_peak_restores_the_baseline_the_other_node_kept(
    tmp_path: Path, mqtt_broker: Any
) -> None:
    from gridmate.notify import NotifySettings

    prefix = mqtt_broker.topic_prefix()
    mqtt = LedgerMqttSettings(host=mqtt_broker.host, port=mqtt_broker.port)

    def node(name: str) -> dict[str, Any]:
        role = tmp_path / f"{name}.role"
        role.write_text("MASTER\n")
        return {
            "failover": FailoverSettings(enable=True, role_file=role, lease_seconds=6),
            "notify": NotifySettings(node_name=name, mqtt=mqtt, mqtt_topic=prefix),
        }

    async with world(tmp_path / "a", **node("node-a")) as a:
        assert a.runtime.lease is not None
        assert (await a.runtime.lease.wait_decided(5.0)).holds
        await a.run_until(16, 30)  # saw the settings before the peak: 30 %, autonomous
        site = a.site
        await wait_for(
            "node-a's baseline on the broker",
            lambda: a.runtime.lease is not None and a.runtime.lease.carried is not None,
        )
    peak_writes = [(x.setting, x.value) for x in site.writes]
    assert peak_writes == [("default_real_mode", "self_consumption"), ("backup_reserve_percent", 0)]

    async with world(tmp_path / "b", start=(16, 31), site=site, **node("node-b")) as b:
        assert b.runtime.lease is not None
        assert (await b.runtime.lease.wait_decided(5.0)).holds  # node-a gave it up
        await b.run_until(19, 30)
        assert (site.backup_reserve_percent, site.operation_mode) == (30, "autonomous")
        assert [(x.setting, x.value) for x in site.writes[2:]] == [
            ("backup_reserve_percent", 30),
            ("default_real_mode", "autonomous"),
        ]
        [baseline] = _decisions(b, "baseline")
        assert baseline["detail"]["note"] == "pre-peak settings carried over from the other node"
