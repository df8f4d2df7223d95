"""TeslaMate's PostgreSQL database through psql, pg_dump and pg_restore.

The connection follows libpq conventions (PGHOST, PGPORT, PGUSER,
PGPASSWORD in the environment), so the password never appears in argv.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from gridmate.backup.settings import DatabaseSettings
from gridmate.backup.tools import ToolError, last_lines, run

MARKER_PREFIX = "gridmate-preseed "
"""Preseed's marker is the database's comment (COMMENT ON DATABASE): it belongs
to this database, so a new database on a rebuilt host starts without one, and
pg_dump does not carry it into dumps."""

PRECREATED_EXTENSIONS = ("cube", "earthdistance")
"""TeslaMate's recipe creates these before loading a dump; the dump's own
entries for them are left out so the load does not trip over them."""

PINNED_FUNCTIONS = (
    "ll_to_earth(float8, float8)",
    "latitude(public.earth)",
    "longitude(public.earth)",
)
"""earthdistance functions that may appear in index expressions. Their bodies
name cube's functions and types without a schema, and pg_restore empties
search_path, so a gist index on ll_to_earth() fails to build unless the
functions carry a search_path of their own."""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def restore_list(toc: str) -> str:
    """pg_restore's table of contents without what the recipe already created."""
    names = "|".join(PRECREATED_EXTENSIONS)
    skip = re.compile(
        rf"^\d+; \d+ \d+ (EXTENSION - ({names})|COMMENT - EXTENSION ({names})|SCHEMA - public)\b"
    )
    return "".join(line for line in toc.splitlines(keepends=True) if not skip.match(line))


class Postgres:
    def __init__(self, settings: DatabaseSettings, timeout: float = 6 * 3600.0) -> None:
        self.settings = settings
        self.timeout = timeout

    @property
    def where(self) -> str:
        s = self.settings
        location = s.host if s.host.startswith("/") else f"{s.host}:{s.port}"
        return f"database {s.name} at {location}"

    def _env(self, database: str) -> dict[str, str]:
        s = self.settings
        env = {
            "PGHOST": s.host,
            "PGPORT": str(s.port),
            "PGUSER": s.user,
            "PGDATABASE": database,
            "PGCONNECT_TIMEOUT": "10",
            "PGAPPNAME": "gridmate-backup",
        }
        if s.password is not None:
            env["PGPASSWORD"] = s.password.reveal()
        return env

    def _psql(self, sql: str, *, database: str | None = None, what: str) -> list[str]:
        try:
            out = run(
                ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                env=self._env(database or self.settings.name),
                timeout=self.timeout,
                what=what,
                input_text=sql,
            ).stdout
        except ToolError as error:
            raise self._explain(error) from None
        return [line for line in out.splitlines() if line]

    def _explain(self, error: ToolError) -> ToolError:
        text = error.output.lower()
        if (
            "connection" in text
            and ("refused" in text or "failed" in text)
            and ("could not connect" in text or "connection to server" in text)
        ):
            return ToolError(
                f"PostgreSQL for {self.where} is not reachable: {last_lines(error.output, 1)}"
            )
        if "password authentication failed" in text:
            return ToolError(f"PostgreSQL refused the password of role {self.settings.user}")
        return error

    # ------------------------------------------------------------ inspection

    def exists(self) -> bool:
        rows = self._psql(
            f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(self.settings.name)};",
            database=self.settings.maintenance_database,
            what="look for the database",
        )
        return bool(rows)

    def marker(self) -> str | None:
        rows = self._psql(
            "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database "
            f"WHERE datname = {quote_literal(self.settings.name)};",
            database=self.settings.maintenance_database,
            what="read the database comment",
        )
        comment = rows[0] if rows else ""
        return comment.removeprefix(MARKER_PREFIX) if comment.startswith(MARKER_PREFIX) else None

    def set_marker(self, text: str) -> None:
        self._psql(
            f"COMMENT ON DATABASE {quote_ident(self.settings.name)} IS "
            f"{quote_literal(MARKER_PREFIX + text)};",
            what="mark the database",
        )

    def clear_marker(self) -> None:
        self._psql(
            f"COMMENT ON DATABASE {quote_ident(self.settings.name)} IS NULL;",
            what="clear the database comment",
        )

    def tables(self) -> list[str]:
        return self._psql(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
            "AND tablename <> 'schema_migrations' ORDER BY 1;",
            what="list the tables",
        )

    def holds_data(self) -> bool:
        """Any row in any table (TeslaMate's migration bookkeeping aside)."""
        tables = self.tables()
        if not tables:
            return False
        probe = " OR ".join(f"EXISTS (SELECT 1 FROM {t})" for t in tables)
        return self._psql(f"SELECT {probe};", what="look for rows") == ["t"]

    # ------------------------------------------------------------ changes

    def create(self) -> None:
        owner = self.settings.owner
        clause = f" OWNER {quote_ident(owner)}" if owner else ""
        self._psql(
            f"CREATE DATABASE {quote_ident(self.settings.name)}{clause};",
            database=self.settings.maintenance_database,
            what="create the database",
        )

    def reset_schemas(self) -> None:
        """TeslaMate's restore recipe, before a dump is loaded into the database."""
        owner = self.settings.owner
        authorization = f" AUTHORIZATION {quote_ident(owner)}" if owner else ""
        extensions = "".join(
            f"CREATE EXTENSION IF NOT EXISTS {name} WITH SCHEMA public;\n"
            for name in PRECREATED_EXTENSIONS
        )
        pinned = "".join(
            f"ALTER FUNCTION public.{signature} SET search_path = public;\n"
            for signature in PINNED_FUNCTIONS
        )
        self._psql(
            "BEGIN;\n"
            "DROP SCHEMA IF EXISTS public CASCADE;\n"
            "DROP SCHEMA IF EXISTS private CASCADE;\n"
            f"CREATE SCHEMA public{authorization};\n"
            f"{extensions}{pinned}"
            "COMMIT;\n",
            what="reset the schemas public and private",
        )

    def load(self, dump: Path) -> None:
        """Load a custom-format dump in one transaction: all of it or nothing."""
        env = self._env(self.settings.name)
        toc = run(["pg_restore", "--list", str(dump)], what=f"read the dump {dump}").stdout
        with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as handle:
            handle.write(restore_list(toc))
            listing = handle.name
        argv = [
            "pg_restore",
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            f"--use-list={listing}",
            f"--dbname={self.settings.name}",
        ]
        if self.settings.owner:
            argv.append(f"--role={self.settings.owner}")
        try:
            run([*argv, str(dump)], env=env, timeout=self.timeout, what=f"load the dump {dump}")
        except ToolError as error:
            raise self._explain(error) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(listing)

    def dump(self, target: Path) -> None:
        """A consistent custom-format dump, replacing ``target`` only once complete."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            run(
                ["pg_dump", "--format=custom", f"--file={partial}", self.settings.name],
                env=self._env(self.settings.name),
                timeout=self.timeout,
                what=f"dump {self.where}",
            )
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, target)
        except ToolError as error:
            raise self._explain(error) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


def newest_dump(directory: Path) -> Path | None:
    """The most recent complete ``*.dump`` file (partial files start with a dot)."""
    try:
        dumps = [p for p in directory.rglob("*.dump") if not p.name.startswith(".") and p.is_file()]
    except OSError:
        return None
    return max(dumps, key=lambda p: p.stat().st_mtime, default=None)
