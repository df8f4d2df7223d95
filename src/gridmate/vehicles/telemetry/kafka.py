"""The Kafka side: a consumer of fleet-telemetry's topics with the configured security."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.helpers import create_ssl_context

from gridmate.vehicles.settings import KafkaSettings
from gridmate.vehicles.telemetry.records import RecordType


def topic_names(namespace: str) -> list[str]:
    """fleet-telemetry's topics: ``<namespace>_V`` and so on."""
    return [f"{namespace}_{record_type.value}" for record_type in RecordType]


def consumer_options(settings: KafkaSettings) -> dict[str, Any]:
    """AIOKafkaConsumer arguments; the password is revealed here and nowhere else."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "group_id": settings.group_id,
        "client_id": settings.client_id,
        # Offsets are committed by the hub, only for records whose MQTT messages were
        # acknowledged.
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "security_protocol": settings.security_protocol,
        # A record that arrives should reach Home Assistant in milliseconds; brokers
        # answer a waiting fetch as soon as data arrives, this bounds those that do not.
        "fetch_max_wait_ms": 20,
        # Bounded prefetch (memory): a record larger than these is still fetched on
        # its own, so they need not exceed the largest record.
        "max_partition_fetch_bytes": 1024 * 1024,
        "fetch_max_bytes": 4 * 1024 * 1024,
        "metadata_max_age_ms": 60_000,
        "group_instance_id": settings.instance_id,
        "session_timeout_ms": int(settings.session_timeout * 1000),
        "heartbeat_interval_ms": int(settings.heartbeat_interval * 1000),
    }
    if settings.security_protocol.endswith("SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
    if settings.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.password.reveal() if settings.password else None
    return options


def make_consumer(settings: KafkaSettings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(**consumer_options(settings))


def bootstrap_addresses(settings: KafkaSettings) -> list[tuple[str, int]]:
    """The bootstrap servers as (host, port); 9092 where no port is given."""
    addresses = []
    for server in settings.bootstrap_servers.split(","):
        server = server.strip()
        if not server:
            continue
        host, colon, port = server.rpartition(":")
        if not colon or not port.isascii() or not port.isdigit():
            host, port = server, "9092"
        addresses.append((host.strip("[]"), int(port)))
    return addresses
