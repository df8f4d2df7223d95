"""Running the outside programs backups depend on (zfs, syncoid, restic, pg_restore).

Secrets travel in the environment, never in argv. Every failure becomes a
:class:`ToolError` whose message is one plain sentence a person can act on.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gridmate.runtime.logs import get_logger

log = get_logger("backup.tools")


class ToolError(Exception):
    """An outside program failed; ``str()`` is the reason in plain words."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output
        """The program's error output, for callers that explain it better."""


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str


_ERROR_LINE = re.compile(r"\b(error|fatal|critical)\b", re.IGNORECASE)


def last_lines(text: str, count: int = 2) -> str:
    """The gist of a program's error output: its first error line, else its last lines."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "no error message"
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    if errors and count > 1:
        tail = lines[-1]
        return errors[0] if tail == errors[0] else f"{errors[0]} / {tail}"
    return " / ".join(lines[-count:])


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    what: str | None = None,
    input_text: str | None = None,
) -> Result:
    """Run ``argv`` and return its output; a non-zero exit raises ToolError.

    ``env`` is added to this process's environment. ``what`` names the action
    in error messages ("restore the dump"). ``input_text`` is written to stdin.
    """
    program = argv[0]
    environment = {**os.environ, **(env or {})}
    log.debug("running", command=" ".join(argv))
    try:
        completed = subprocess.run(
            list(argv),
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        raise ToolError(f"{program} is not installed (not found on PATH)") from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"{what or program} did not finish within {timeout:.0f} seconds") from None
    if completed.returncode != 0:
        raise ToolError(
            f"{what or program} failed (exit {completed.returncode}): "
            f"{last_lines(completed.stderr or completed.stdout)}",
            completed.stderr or completed.stdout,
        )
    return Result(completed.stdout, completed.stderr)
