"""restic through its command line, with the repository's secrets in the environment."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gridmate.backup.settings import ResticSettings
from gridmate.backup.tools import ToolError, last_lines, run


@dataclass(frozen=True)
class ResticSnapshot:
    id: str
    time: datetime
    paths: tuple[str, ...]
    tags: tuple[str, ...]


def parse_environment(text: str) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile style; '#' comments, optional quotes)."""
    result: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"restic environment file, line {number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        result[key] = value
    return result


def _parse_time(value: str) -> datetime:
    # restic writes nanoseconds; Python takes at most microseconds.
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", value)
    if match:
        fraction = (match.group(2) or "")[:7]
        zone = match.group(3).replace("Z", "+00:00")
        value = match.group(1) + fraction + zone
    return datetime.fromisoformat(value)


def classify_failure(stderr: str, where: str) -> str:
    """restic's error output in plain words."""
    text = stderr.lower()
    if "wrong password" in text:
        return f"the restic password does not open the repository at {where} (wrong password)"
    if "is there a repository" in text or "unable to open" in text:
        return f"the restic repository at {where} is unreachable or missing: {last_lines(stderr)}"
    if "unable to create lock" in text or "repository is already locked" in text:
        return f"the restic repository at {where} is locked by another process: " + last_lines(
            stderr
        )
    return f"restic failed: {last_lines(stderr)}"


def _display(location: str) -> str:
    """The repository location without a password in it."""
    return re.sub(r"(://[^/:@]+):[^@/]+@", r"\1:********@", location)


class Restic:
    def __init__(self, settings: ResticSettings, default_cache: Path | None = None) -> None:
        self.settings = settings
        # Under systemd HOME may be unset, which would leave restic without a cache.
        self.cache_directory = settings.cache_directory or default_cache

    @property
    def where(self) -> str:
        if self.settings.repository:
            return _display(self.settings.repository)
        if self.settings.repository_file:
            return f"the location in {self.settings.repository_file}"
        return "(no repository configured)"

    def _environment(self) -> dict[str, str]:
        if not self.settings.configured:
            raise ToolError(
                "restic is not configured (set restic.repository and restic.password_file)"
            )
        env: dict[str, str] = {}
        if self.settings.environment is not None:
            try:
                env.update(parse_environment(self.settings.environment.reveal()))
            except ValueError as error:
                raise ToolError(str(error)) from None
        if self.settings.repository:
            env["RESTIC_REPOSITORY"] = self.settings.repository
        elif self.settings.repository_file:
            env["RESTIC_REPOSITORY_FILE"] = str(self.settings.repository_file)
        assert self.settings.password is not None
        env["RESTIC_PASSWORD"] = self.settings.password.reveal()
        if self.cache_directory:
            env["RESTIC_CACHE_DIR"] = str(self.cache_directory)
        return env

    def _run(self, *args: str, what: str) -> str:
        env = self._environment()
        argv = [self.settings.binary, *args]
        try:
            return run(argv, env=env, timeout=self.settings.timeout_seconds, what=what).stdout
        except ToolError as error:
            if not error.output:
                raise
            raise ToolError(classify_failure(error.output, self.where)) from None

    def check_access(self) -> None:
        """Open the repository (password, reachability) without reading data."""
        self._run("cat", "config", what="open the restic repository")

    def snapshots(self, tag: str) -> list[ResticSnapshot]:
        """Snapshots carrying ``tag``, oldest first."""
        out = self._run("snapshots", "--json", "--tag", tag, what="list restic snapshots")
        try:
            raw = json.loads(out or "[]") or []
        except json.JSONDecodeError:
            raise ToolError("restic snapshots returned something that is not JSON") from None
        result = [
            ResticSnapshot(
                id=str(item["id"]),
                time=_parse_time(str(item["time"])),
                paths=tuple(item.get("paths") or ()),
                tags=tuple(item.get("tags") or ()),
            )
            for item in raw
        ]
        return sorted(result, key=lambda s: s.time)

    def newest(self, tag: str, path: Path) -> ResticSnapshot | None:
        """The newest snapshot with ``tag`` that holds ``path``."""
        wanted = str(path)
        candidates = [
            s
            for s in self.snapshots(tag)
            if any(wanted == p or wanted.startswith(p.rstrip("/") + "/") for p in s.paths)
        ]
        return candidates[-1] if candidates else None

    def restore(self, snapshot: ResticSnapshot, path: Path, target: Path) -> Path:
        """Restore ``path`` of ``snapshot`` under ``target``; returns where it landed."""
        self._run(
            "restore",
            snapshot.id,
            "--target",
            str(target),
            "--include",
            str(path),
            what=f"restore {path} from restic snapshot {snapshot.id[:8]}",
        )
        return target / str(path).lstrip("/")
