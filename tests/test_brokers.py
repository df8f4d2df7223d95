"""The throwaway brokers are real: Kafka clients and MQTT clients work through them."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
import uuid
from pathlib import Path

import aiomqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from gridmate.sim import brokers
from gridmate.sim.brokers import (
    KAFKA_BROKER_ENV,
    MOSQUITTO_ENV,
    TANSU_FAST_GROUP_CONSUMER_CONFIG,
    BrokerUnavailable,
    create_kafka_topics,
    find_kafka_broker_binary,
    free_port,
    kafka_broker,
    mosquitto_broker,
    write_mosquitto_password_file,
)


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def _fake_binary(tmp_path: Path, script: str) -> Path:
    path = tmp_path / "fake-broker"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _group_consumer(address: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=address,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **TANSU_FAST_GROUP_CONSUMER_CONFIG,
    )


# ---------------------------------------------------------------- Kafka


@pytest.mark.services
async def test_kafka_produce_and_consume_with_headers_and_acks_all():
    topic = f"t{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    async with kafka_broker(topics={topic: 3}) as address:
        assert time.monotonic() - started < 5
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1"
        producer = AIOKafkaProducer(bootstrap_servers=address, acks="all")
        await producer.start()
        try:
            sent = [
                await producer.send_and_wait(
                    topic,
                    f"value-{n}".encode(),
                    key=f"vin-{n}".encode(),
                    partition=n % 3,
                    headers=[("schema", b"v1"), ("n", str(n).encode())],
                )
                for n in range(6)
            ]
        finally:
            await producer.stop()
        assert {(md.partition, md.offset) for md in sent} == {
            (p, o) for p in range(3) for o in range(2)
        }

        consumer = AIOKafkaConsumer(topic, bootstrap_servers=address, auto_offset_reset="earliest")
        await consumer.start()
        try:
            assert consumer.partitions_for_topic(topic) == {0, 1, 2}
            received = []
            async with asyncio.timeout(10):
                while len(received) < 6:
                    for messages in (await consumer.getmany(timeout_ms=500)).values():
                        received.extend(messages)
        finally:
            await consumer.stop()
    assert sorted((m.key, m.value) for m in received) == [
        (f"vin-{n}".encode(), f"value-{n}".encode()) for n in range(6)
    ]
    assert all(
        m.headers == (("schema", b"v1"), ("n", m.key.removeprefix(b"vin-"))) for m in received
    )
    assert _refuses_connections(int(port)), "the broker outlived its context"


@pytest.mark.services
async def test_kafka_group_splits_partitions_and_resumes_from_committed_offsets():
    topic, group = f"t{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    async with kafka_broker(topics=[topic], partitions_hint=4) as address:
        producer = AIOKafkaProducer(bootstrap_servers=address, acks="all")
        await producer.start()
        try:
            for n in range(8):
                await producer.send_and_wait(topic, f"first-{n}".encode(), partition=n % 4)

            first, second = (_group_consumer(address, topic, group) for _ in range(2))
            await asyncio.gather(first.start(), second.start())
            seen: dict[AIOKafkaConsumer, list[tuple[int, bytes]]] = {first: [], second: []}
            try:

                async def poll(consumer: AIOKafkaConsumer) -> None:
                    while sum(map(len, seen.values())) < 8 or not (
                        len(first.assignment()) == len(second.assignment()) == 2
                    ):
                        batch = await consumer.getmany(timeout_ms=100)
                        for tp, messages in batch.items():
                            seen[consumer].extend((tp.partition, m.value) for m in messages)
                        if batch:
                            await consumer.commit()

                async with asyncio.timeout(30):
                    await asyncio.gather(poll(first), poll(second))
                mine = {tp.partition for tp in first.assignment()}
                theirs = {tp.partition for tp in second.assignment()}
            finally:
                await asyncio.gather(first.stop(), second.stop())
            assert mine.isdisjoint(theirs) and mine | theirs == {0, 1, 2, 3}
            assert {p for p, _ in seen[first]} == mine
            assert {p for p, _ in seen[second]} == theirs
            assert sorted(v for values in seen.values() for _, v in values) == sorted(
                f"first-{n}".encode() for n in range(8)
            )

            for n in range(4):
                await producer.send_and_wait(topic, f"second-{n}".encode(), partition=n)
        finally:
            await producer.stop()

        # A restarted member of the group carries on where the commits left off.
        resumed = _group_consumer(address, topic, group)
        await resumed.start()
        try:
            for partition in range(4):
                assert await resumed.committed(TopicPartition(topic, partition)) == 2
            values: list[bytes] = []
            async with asyncio.timeout(15):
                while len(values) < 4:
                    for messages in (await resumed.getmany(timeout_ms=200)).values():
                        values.extend(m.value for m in messages)
            await asyncio.sleep(0.3)
            values.extend(
                m.value for ms in (await resumed.getmany(timeout_ms=200)).values() for m in ms
            )
        finally:
            await resumed.stop()
        assert sorted(values) == [f"second-{n}".encode() for n in range(4)]


@pytest.mark.services
async def test_kafka_topic_helper_is_idempotent():
    topic = f"t{uuid.uuid4().hex[:8]}"
    async with kafka_broker() as address:
        await create_kafka_topics(address, {topic: 6})
        await create_kafka_topics(address, {topic: 6})
        consumer = AIOKafkaConsumer(bootstrap_servers=address)
        await consumer.start()
        try:
            assert topic in await consumer.topics()
            assert consumer.partitions_for_topic(topic) == set(range(6))
        finally:
            await consumer.stop()


@pytest.mark.services
async def test_kafka_broker_stops_when_the_body_fails():
    with pytest.raises(RuntimeError, match="boom"):
        async with kafka_broker() as address:
            port = int(address.rpartition(":")[2])
            raise RuntimeError("boom")
    assert _refuses_connections(port)


async def test_missing_kafka_binary_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(KAFKA_BROKER_ENV, str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerUnavailable, match=KAFKA_BROKER_ENV) as caught:
        find_kafka_broker_binary()
    assert "no-such-tansu" in str(caught.value)
    with pytest.raises(BrokerUnavailable, match="not an executable file"):
        async with kafka_broker():
            pytest.fail("no broker should have started")


async def test_kafka_binary_that_exits_reports_its_output(monkeypatch, tmp_path):
    fake = _fake_binary(tmp_path, 'echo "error: unexpected argument --listener-url" >&2; exit 2')
    monkeypatch.setenv(KAFKA_BROKER_ENV, str(fake))
    with pytest.raises(BrokerUnavailable) as caught:
        async with kafka_broker():
            pytest.fail("no broker should have started")
    message = str(caught.value)
    assert "exited with status 2" in message
    assert "unexpected argument --listener-url" in message


async def test_kafka_binary_that_never_answers_times_out_and_is_killed(monkeypatch, tmp_path):
    pid_file = tmp_path / "pid"
    # Ignoring SIGTERM forces the SIGKILL path.
    fake = _fake_binary(tmp_path, f"trap '' TERM; echo $$ > {pid_file}; exec sleep 60")
    monkeypatch.setenv(KAFKA_BROKER_ENV, str(fake))
    monkeypatch.setattr(brokers, "_TERM_GRACE_SECONDS", 0.2)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"did not answer .* within 0\.5 s"):
        async with kafka_broker(startup_timeout=0.5):
            pytest.fail("no broker should have started")
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


# ---------------------------------------------------------------- Mosquitto


@pytest.mark.services
async def test_mosquitto_publish_subscribe():
    async with mosquitto_broker() as (host, port):
        assert host == "127.0.0.1"
        async with (
            aiomqtt.Client(host, port, identifier="sub") as subscriber,
            aiomqtt.Client(host, port, identifier="pub") as publisher,
        ):
            await subscriber.subscribe("gridmate/test/#", qos=1)
            await publisher.publish("gridmate/test/soc", b"81", qos=1, retain=True)
            async with asyncio.timeout(5):
                message = await anext(aiter(subscriber.messages))
        assert (str(message.topic), message.payload) == ("gridmate/test/soc", b"81")
    assert _refuses_connections(port)


@pytest.mark.services
async def test_mosquitto_has_no_persistence_and_restarts_on_the_same_port():
    async with mosquitto_broker() as (host, port), aiomqtt.Client(host, port) as client:
        await client.publish("gridmate/retained", b"old", qos=1, retain=True)
    async with mosquitto_broker(port=port) as (host, again):
        assert again == port
        async with aiomqtt.Client(host, port) as client:
            await client.subscribe("gridmate/retained")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(aiter(client.messages))


@pytest.mark.services
async def test_mosquitto_password_file_is_enforced(tmp_path):
    passwords = write_mosquitto_password_file(tmp_path / "passwd", {"gridmate": "s3cret pass"})
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    assert "s3cret" not in passwords.read_text()
    async with mosquitto_broker(password_file=passwords) as (host, port):
        async with aiomqtt.Client(host, port, username="gridmate", password="s3cret pass") as ok:
            await ok.publish("gridmate/auth", b"1")
        for credentials in ({}, {"username": "gridmate", "password": "wrong"}):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(host, port, **credentials):
                    pass


@pytest.mark.services
async def test_a_pinned_port_that_is_taken_is_a_clear_error():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BrokerUnavailable, match="already listens"):
            async with mosquitto_broker(port=port):
                pytest.fail("the probe must not mistake the squatter for mosquitto")
        with pytest.raises(BrokerUnavailable, match="already listens"):
            async with kafka_broker(port=port):
                pytest.fail("the probe must not mistake the squatter for tansu")


async def test_missing_mosquitto_binary_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(MOSQUITTO_ENV, str(tmp_path / "no-such-mosquitto"))
    with pytest.raises(BrokerUnavailable, match=MOSQUITTO_ENV):
        async with mosquitto_broker():
            pytest.fail("no broker should have started")


def test_free_port_is_bindable():
    port = free_port()
    assert 0 < port < 65536
    # Nothing listens there ...
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # ... and a listener can take it and be reached on it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert listener.getsockname() == ("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
            assert client.getpeername() == ("127.0.0.1", port)
