"""Reaching the NAS over ssh the way syncoid does: the same port, key and options.

syncoid gets them as ``--sshport``, ``--sshkey`` and ``--sshoption``; preseed's
own read-only look at a remote replica (``zfs list`` of its snapshots, before
anything on this host is touched) runs ``ssh`` with the very same ones, so the
probe and the replication succeed or fail together.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from gridmate.backup.settings import ZfsSettings
from gridmate.backup.tools import ToolError

SSH_PROGRAM = "ssh"

BATCH_MODE = "BatchMode=yes"
"""A unit that waits for a password or a yes/no about a host key hangs until its
timeout; in batch mode ssh fails at once and says why."""

CONNECT_TIMEOUT = "ConnectTimeout=30"
"""A NAS that is switched off does not refuse connections, it leaves them
unanswered; without a limit ssh waits for the kernel's (minutes)."""


def ssh_options(settings: ZfsSettings) -> list[str]:
    """The ``-o`` options, in order: ssh keeps the first value it reads for each
    option, so batch mode cannot be undone and the user's options beat our defaults."""
    options = [BATCH_MODE, *settings.ssh_options]
    if settings.ssh_key is not None:
        # Only the configured key: another key ssh finds would make "wrong key"
        # depend on whatever lies in root's ~/.ssh.
        options.append("IdentitiesOnly=yes")
    options.append(CONNECT_TIMEOUT)
    return options


def syncoid_ssh_arguments(settings: ZfsSettings) -> list[str]:
    argv = []
    if settings.ssh_key is not None:
        argv.append(f"--sshkey={settings.ssh_key}")
    if settings.ssh_port is not None:
        argv.append(f"--sshport={settings.ssh_port}")
    argv += [f"--sshoption={option}" for option in ssh_options(settings)]
    return argv


def ssh_argv(settings: ZfsSettings, destination: str, command: Sequence[str]) -> list[str]:
    """``ssh`` running ``command`` on ``destination`` (``[user@]host``); the remote
    shell sees the command quoted word by word."""
    argv = [SSH_PROGRAM]
    for option in ssh_options(settings):
        argv += ["-o", option]
    if settings.ssh_port is not None:
        argv += ["-p", str(settings.ssh_port)]
    if settings.ssh_key is not None:
        argv += ["-i", str(settings.ssh_key)]
    return [*argv, destination, shlex.join(command)]


def check_ssh_key(settings: ZfsSettings) -> None:
    """ToolError unless the configured key file can be read. ssh itself only warns
    about a missing key and goes on without it, ending in a misleading refusal."""
    if settings.ssh_key is None:
        return
    try:
        with settings.ssh_key.open("rb"):
            pass
    except OSError as error:
        raise ToolError(
            f"the ssh key {settings.ssh_key} (zfs.ssh_key) cannot be read: {error.strerror}"
        ) from None


def _line_with(text: str, *needles: str) -> str | None:
    for line in text.splitlines():
        if any(needle in line for needle in needles):
            return line.strip()
    return None


def classify_ssh_failure(output: str) -> str | None:
    """What ssh's error output says went wrong, in plain words; None when ssh
    itself did not fail (the remote command did)."""
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in output or (
        "has changed and you have requested strict checking" in output
    ):
        return (
            "the NAS's host key does not match the known one (a reinstalled NAS, or someone "
            "in between): check the key, then update the known hosts file"
        )
    if "Host key verification failed" in output:
        return (
            "the NAS's host key is not known: add it to a known hosts file (zfs.ssh_options "
            "UserKnownHostsFile=..., or programs.ssh.knownHosts on NixOS)"
        )
    line = _line_with(output, "Load key", "UNPROTECTED PRIVATE KEY FILE", "invalid format")
    if line is not None:
        return f"ssh cannot use the key ({line})"
    # ssh's refusal names the methods it tried, "Permission denied (publickey)."; zfs
    # on the NAS says "permission denied" in lower case for a missing delegation.
    line = _line_with(output, "Permission denied (", "Too many authentication failures")
    if line is not None:
        return f"the NAS refused the login with this key ({line})"
    line = _line_with(
        output,
        "Connection refused",
        "Connection timed out",
        "No route to host",
        "Network is unreachable",
        "Could not resolve hostname",
        "Connection closed by",
        "Connection reset",
        "kex_exchange_identification",
    )
    if line is not None:
        return f"the NAS is unreachable ({line})"
    return None
