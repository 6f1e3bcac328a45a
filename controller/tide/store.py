"""The state store: every resource Tide owns, in one SQLite file.

The controller writes a resource's new state *before* the external call that
makes it true (REQUESTED before the site's create, STOPPING before its
destroy). So each write is its own committed transaction, with
synchronous=FULL: after a crash or restart, the file names every resource
that may exist at a site, and nothing is booted twice or leaked.

WAL mode lets readers (the metrics endpoint, `tide status`) read while the
daemon writes. Every move is also appended to `transitions`, an audit log
that answers "why was this server destroyed?".

The files are owner-only (0600): resource details name servers at sites. The
daemon holds an exclusive lock on `<file>.lock` while it runs, so a second
daemon on the same file, which would boot everything twice, is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from tide.model import TRANSITIONS, Resource, State

SCHEMA_VERSION = 1
_STATES = ", ".join(f"'{s.value}'" for s in State)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS resources (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({_STATES})),
    created_at REAL NOT NULL,
    state_since REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '{{}}'
) STRICT;
CREATE INDEX IF NOT EXISTS resources_site ON resources (site, state);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY,
    resource_id TEXT NOT NULL REFERENCES resources (id),
    from_state TEXT CHECK (from_state IN ({_STATES})),
    to_state TEXT NOT NULL CHECK (to_state IN ({_STATES})),
    at REAL NOT NULL,
    reason TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS transitions_resource ON transitions (resource_id, seq);
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY,
    detail TEXT NOT NULL DEFAULT '{{}}'
) STRICT;
"""
_ID_TOKEN = re.compile(r"^[0-9a-f]{8}$")

JsonScalar = str | int | float | bool | None


class StoreError(Exception):
    """The store cannot do what was asked."""


class UnknownResourceError(StoreError):
    """No resource has this id."""

    def __init__(self, resource_id: str) -> None:
        self.resource_id = resource_id
        super().__init__(f"{resource_id}: no such resource in the store")


class TransitionError(StoreError):
    """A move that model.TRANSITIONS forbids."""

    def __init__(self, resource_id: str, from_state: State, to_state: State) -> None:
        self.resource_id, self.from_state, self.to_state = resource_id, from_state, to_state
        allowed = ", ".join(sorted(TRANSITIONS[from_state])) or "none"
        super().__init__(
            f"{resource_id}: cannot move from {from_state} to {to_state} (allowed: {allowed})"
        )


@dataclass(frozen=True)
class Transition:
    """One row of the audit log; from_state is None for the resource's creation."""

    resource_id: str
    from_state: State | None
    to_state: State
    at: float
    reason: str


def new_resource_id(site: str, token: str) -> str:
    """`tide-<site>-<token>`; the token (8 hex digits) is passed in so this stays pure."""
    if not _ID_TOKEN.match(token):
        raise ValueError(f"resource id token must be 8 lowercase hex digits, got {token!r}")
    return f"tide-{site}-{token}"


def random_suffix() -> str:
    """8 random hex digits for new_resource_id: 2**32 ids per site, collisions negligible."""
    return secrets.token_hex(4)


class Store:
    """Resources and their history in one SQLite connection (one thread uses it)."""

    def __init__(self, conn: sqlite3.Connection, lock_fd: int | None = None) -> None:
        self._conn = conn
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, path: Path, *, exclusive: bool = True) -> Store:
        """Open (creating if needed) the store at `path`; its folder is made private (0700)
        and its files owner-only (0600).

        exclusive (the daemon) holds `<path>.lock` until close(), so a second daemon on
        the same file is refused. Readers such as `tide status` pass exclusive=False."""
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
            path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
        lock_fd = _lock(path) if exclusive else None
        try:
            _private_files(path, tighten=exclusive)
            conn = _connect(path)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)  # closing the only descriptor releases the lock
            raise
        return cls(conn, lock_fd)

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction. IMMEDIATE takes the write lock before the reads,
        so a check-then-write (a move's transition check) cannot race another writer."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            yield self._conn

    def add(self, resource_id: str, site: str, now: float, reason: str) -> Resource:
        """Record a new resource as REQUESTED (before the site is asked to create it)."""
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO resources (id, site, state, created_at, state_since)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (resource_id, site, State.REQUESTED.value, now, now),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"{resource_id}: already recorded") from exc
            self._log(conn, resource_id, old=None, new=State.REQUESTED, at=now, reason=reason)
        return Resource(resource_id, site, State.REQUESTED, state_since=now, created_at=now)

    def move(self, resource_id: str, to: State, now: float, reason: str) -> Resource:
        """Move a resource along model.TRANSITIONS; moving to its own state does nothing."""
        with self._write() as conn:
            current = self._get(conn, resource_id)
            if current.state == to:
                return current
            if to not in TRANSITIONS[current.state]:
                raise TransitionError(resource_id, current.state, to)
            conn.execute(
                "UPDATE resources SET state = ?, state_since = ? WHERE id = ?",
                (to.value, now, resource_id),
            )
            self._log(conn, resource_id, old=current.state, new=to, at=now, reason=reason)
        return Resource(
            resource_id, current.site, to, state_since=now, created_at=current.created_at
        )

    def set_detail(self, resource_id: str, key: str, value: JsonScalar) -> None:
        """Remember a fact about a resource, e.g. the site's server id for it."""
        with self._write() as conn:
            detail = self._detail(conn, resource_id)
            detail[key] = value
            conn.execute(
                "UPDATE resources SET detail = ? WHERE id = ?",
                (json.dumps(detail, sort_keys=True), resource_id),
            )

    def detail(self, resource_id: str) -> dict[str, JsonScalar]:
        return self._detail(self._conn, resource_id)

    def set_site_detail(self, site: str, key: str, value: JsonScalar) -> None:
        """Remember a fact about a site, e.g. an operator's evacuation request."""
        with self._write() as conn:
            detail = self._site_detail(conn, site)
            detail[key] = value
            conn.execute(
                "INSERT INTO sites (name, detail) VALUES (?1, ?2)"
                " ON CONFLICT (name) DO UPDATE SET detail = ?2",
                (site, json.dumps(detail, sort_keys=True)),
            )

    def site_detail(self, site: str) -> dict[str, JsonScalar]:
        return self._site_detail(self._conn, site)

    def get(self, resource_id: str) -> Resource | None:
        try:
            return self._get(self._conn, resource_id)
        except UnknownResourceError:
            return None

    def alive(self, site: str | None = None) -> list[Resource]:
        """Every resource not GONE: ALIVE ones, and STOPPING and FAILED ones still to clean up."""
        rows = self._conn.execute(
            "SELECT id, site, state, state_since, created_at FROM resources"
            " WHERE state != ?1 AND (?2 IS NULL OR site = ?2) ORDER BY created_at, id",
            (State.GONE.value, site),
        ).fetchall()
        return [_resource(row) for row in rows]

    def all(self) -> list[Resource]:
        rows = self._conn.execute(
            "SELECT id, site, state, state_since, created_at FROM resources ORDER BY created_at, id"
        ).fetchall()
        return [_resource(row) for row in rows]

    def history(self, resource_id: str) -> list[Transition]:
        rows = self._conn.execute(
            "SELECT resource_id, from_state, to_state, at, reason FROM transitions"
            " WHERE resource_id = ? ORDER BY seq",
            (resource_id,),
        ).fetchall()
        return [
            Transition(rid, None if old is None else State(old), State(new), at, reason)
            for rid, old, new, at, reason in rows
        ]

    @staticmethod
    def _get(conn: sqlite3.Connection, resource_id: str) -> Resource:
        row = conn.execute(
            "SELECT id, site, state, state_since, created_at FROM resources WHERE id = ?",
            (resource_id,),
        ).fetchone()
        if row is None:
            raise UnknownResourceError(resource_id)
        return _resource(row)

    @staticmethod
    def _detail(conn: sqlite3.Connection, resource_id: str) -> dict[str, JsonScalar]:
        row = conn.execute("SELECT detail FROM resources WHERE id = ?", (resource_id,)).fetchone()
        if row is None:
            raise UnknownResourceError(resource_id)
        detail: dict[str, JsonScalar] = json.loads(row[0])
        return detail

    @staticmethod
    def _site_detail(conn: sqlite3.Connection, site: str) -> dict[str, JsonScalar]:
        row = conn.execute("SELECT detail FROM sites WHERE name = ?", (site,)).fetchone()
        detail: dict[str, JsonScalar] = {} if row is None else json.loads(row[0])
        return detail

    @staticmethod
    def _log(
        conn: sqlite3.Connection,
        resource_id: str,
        *,
        old: State | None,
        new: State,
        at: float,
        reason: str,
    ) -> None:
        conn.execute(
            "INSERT INTO transitions (resource_id, from_state, to_state, at, reason)"
            " VALUES (?, ?, ?, ?, ?)",
            (resource_id, None if old is None else old.value, new.value, at, reason),
        )


def _lock(path: Path) -> int:
    """Hold an exclusive lock on `<path>.lock` (0600); the descriptor keeps it until closed."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(
            f"{path}: another tide daemon holds this state file (lock {lock_path})"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _private_files(path: Path, *, tighten: bool) -> None:
    """Create the database file 0600 (SQLite gives its -wal and -shm files the database
    file's mode); with `tighten`, also chmod existing files made looser by older Tides."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, 0o600)  # the umask may have filtered the mode above
        finally:
            os.close(fd)
    if tighten:
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                path.with_name(path.name + suffix).chmod(0o600)


def _connect(path: Path) -> sqlite3.Connection:
    """Connect in WAL mode with durable commits, creating or checking the schema."""
    # isolation_level=None: transactions are begun explicitly, see Store._write().
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":  # readers would block the daemon's writes
            raise StoreError(f"{path}: SQLite refused WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {version} is newer than this Tide's")
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def _resource(row: tuple[str, str, str, float, float]) -> Resource:
    rid, site, state, state_since, created_at = row
    return Resource(rid, site, State(state), state_since=state_since, created_at=created_at)
