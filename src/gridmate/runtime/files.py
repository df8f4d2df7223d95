"""Replacing state files so that a crash leaves the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomically(
    path: Path, content: str | bytes, *, mode: int = 0o600, create_parents: bool = True
) -> None:
    """Write ``content`` to a temporary file, fsync it, rename it over ``path``, fsync the
    directory. ``mode`` applies to the new file (the service's umask may narrow it).
    Without ``create_parents`` a missing directory is an error (FileNotFoundError)."""
    if create_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
