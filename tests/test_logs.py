"""Secrets never reach the log, whatever the format and however they are quoted:
messages, fields, tracebacks and a running daemon's stderr."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gridmate.runtime.logs import configure_logging, get_logger
from gridmate.runtime.secrets import MASK, Secret

# Quotes and backslashes: escaped differently by JSON, by repr() and by the text format.
AWKWARD = ['pa"ss\\word-1', 'it\'s\\\\a "secret" 2', "back\\slash\\tail\\", 'tab\there"q']


def escaped_forms(secret: str) -> set[str]:
    """The secret as written by JSON, by repr() (exception arguments) and both nested."""
    forms = {secret}
    for _ in range(2):
        for form in list(forms):
            forms |= {json.dumps(form)[1:-1], repr(form)[1:-1]}
    return forms


def assert_no_secret(output: str, secrets: list[str]) -> None:
    for secret in secrets:
        for form in escaped_forms(secret):
            assert form not in output, (form, output)


@pytest.fixture
def captured():
    stream = io.StringIO()
    yield stream
    logging.getLogger().handlers.clear()


@pytest.mark.parametrize("fmt", ["text", "journal", "json"])
@pytest.mark.parametrize("secret", AWKWARD)
def test_secret_with_quotes_and_backslashes_is_scrubbed_in_every_part(captured, fmt, secret):
    Secret(secret, source="test")
    configure_logging("info", fmt, captured)
    log = get_logger("sample")
    log.warning(f"message with {secret} inside", token=secret, note=f"[{secret}]", count=3)
    try:
        raise KeyError(secret)  # repr()-escaped inside the traceback
    except KeyError:
        log.error(f"failed: {secret}", exc_info=True)
    try:
        raise RuntimeError(f"cannot log in with {secret}")
    except RuntimeError as error:
        log.error("stopped", error=str(error), exc_info=error)
    output = captured.getvalue()
    assert_no_secret(output, [secret])
    assert MASK in output
    if fmt == "json":
        events = [json.loads(line) for line in output.splitlines()]
        assert events[0]["token"] == MASK
        assert events[0]["count"] == 3
        assert "Traceback" in events[1]["exception"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_url_passwords_are_masked_in_logs(captured, fmt):
    configure_logging("info", fmt, captured)
    get_logger("sample").warning(
        "cannot connect", dsn="postgresql://teslamate:url-pass-77@db/teslamate"
    )
    assert "url-pass-77" not in captured.getvalue()
    assert "teslamate:" + MASK + "@db" in captured.getvalue()


DAEMON = textwrap.dedent(
    """
    import asyncio, sys, threading
    from pathlib import Path
    from typing import Annotated
    from pydantic_settings import SettingsConfigDict
    from gridmate.runtime.daemon import serve
    from gridmate.runtime.logs import configure_logging, get_logger
    from gridmate.runtime.settings import ComponentSettings, Credential, Secret, load_settings

    class Settings(ComponentSettings):
        model_config = SettingsConfigDict(env_prefix="GRIDMATE_LEAKY_")
        api_token: Annotated[Secret | None, Credential("api_token")] = None

    settings = load_settings(Settings, Path(sys.argv[1]))
    configure_logging("info", sys.argv[2])
    log = get_logger("leaky")

    async def run(settings, daemon):
        token = settings.api_token.reveal()
        daemon.ready("up")
        log.warning(f"sending {token}", header=f"Bearer {token}")
        thread = threading.Thread(target=lambda: {}[token])
        thread.start()
        thread.join()
        raise PermissionError(f"server refused {token!r}")

    code = asyncio.run(serve("leaky", settings, run))
    # And one nobody catches: Python would print it to stderr itself.
    raise SystemError(f"final {settings.api_token.reveal()}")
    """
)


@pytest.mark.parametrize("fmt", ["text", "journal", "json"])
def test_a_running_daemons_stderr_carries_no_secret(tmp_path: Path, fmt: str) -> None:
    secret = "daemon\"se\\cret'9"
    (tmp_path / "token").write_text(secret)
    config = tmp_path / "leaky.toml"
    config.write_text(
        f'api_token_file = "{tmp_path / "token"}"\nstate_directory = "{tmp_path}"\n'
        "[metrics]\nenable = false\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", DAEMON, str(config), fmt],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    stderr = result.stderr
    # The daemon really logged each thing, with the secret masked.
    for words in ("sending", "uncaught exception in a thread", "stopped by an error", "final"):
        assert words in stderr, (words, stderr)
    assert stderr.count(MASK) >= 5
    assert_no_secret(stderr + result.stdout, [secret])
