"""State files: private whatever the umask, and replaced so that a crash leaves the old
file or the new one, never half.

Everything gridmate keeps (status files, the journal, the notification queue, tokens)
is created 0600 in directories created 0700, also outside systemd, where no
``UMask=0077`` narrows what a process creates.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIRECTORY_MODE = 0o700


def make_private_directory(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700, whatever the umask.
    Directories that already exist are left as they are (the operator chose them)."""
    missing: list[Path] = []
    current = Path(path)
    while not os.path.lexists(current):
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIRECTORY_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile
        # mkdir's mode is narrowed by the umask; chmod makes it exact.
        os.chmod(directory, PRIVATE_DIRECTORY_MODE)
    if not path.is_dir():
        # What is in the way (a file, a dangling link) is the caller's error to report.
        path.mkdir(mode=PRIVATE_DIRECTORY_MODE, exist_ok=True)


def open_private_for_append(path: Path) -> int:
    """A descriptor for appending to ``path``, created 0600 and kept 0600 (a file
    left 0640 by an older version is narrowed)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_atomically(
    path: Path,
    content: str | bytes,
    *,
    mode: int = PRIVATE_FILE_MODE,
    create_parents: bool = True,
) -> None:
    """Write ``content`` to a temporary file, fsync it, rename it over ``path``, fsync the
    directory. The new file gets exactly ``mode`` (0600 by default), whatever the umask;
    missing parent directories are created 0700. Without ``create_parents`` a missing
    directory is an error (FileNotFoundError)."""
    if create_parents:
        make_private_directory(path.parent)
    data = content.encode("utf-8") if isinstance(content, str) else content
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & PRIVATE_FILE_MODE)
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
