"""The service fixtures reach real services."""

from __future__ import annotations

import aiosmtplib
import asyncpg


async def test_postgres_database_is_private_and_writable(postgres_dsn):
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute("CREATE TABLE probe (id int)")
        await connection.execute("INSERT INTO probe VALUES (1)")
        assert await connection.fetchval("SELECT count(*) FROM probe") == 1
        assert (
            await connection.fetchval("SELECT current_database()") == postgres_dsn.rsplit("/")[-1]
        )
    finally:
        await connection.close()


async def test_smtp_server_receives_mail(smtp_server):
    await aiosmtplib.send(
        "Subject: hello\r\n\r\nbody\r\n",
        sender="gridmate@example.test",
        recipients=["owner@example.test"],
        hostname=smtp_server.host,
        port=smtp_server.port,
    )
    await smtp_server.wait_for(1)
    recipients, message = smtp_server.messages[0]
    assert recipients == ["owner@example.test"]
    assert message["Subject"] == "hello"
