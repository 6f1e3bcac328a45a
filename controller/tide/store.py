"""The state store: every resource Tide owns, in one SQLite file.

The controller writes a resource's new state *before* the external call that
makes it true (REQUESTED before the site's create, STOPPING before its
destroy). So each write is its own committed transaction, with
synchronous=FULL: after a crash or restart, the file names every resource
that may exist at a site, and nothing is booted twice or leaked.

Typed records, apart from what an adapter needs: each resource's row holds
its state and the loop's own timers in columns (idle and lost clocks, the
drain its startd accepted and when it was told, destroy retries, an
operator's hold); `detail` is the site's handle only (a server id). Each
site's row holds its backoff, when its owners last waited, an operator's
standing requests (`tide evacuate`, `tide resume`) and the configuration it
last ran with; `schedds` remembers which schedds answered lately. The CLI
writes operators' requests through methods of their own (request_drain,
request_evacuate, request_resume), never through the loop's columns.

WAL mode lets readers (the metrics endpoint, `tide status`) read while the
daemon writes. Every move is also appended to `transitions`, an audit log
that answers "why was this server destroyed?"; GONE resources and their
history are pruned after a week (prune). The loop's per-site lanes write
from their own threads: every statement runs under one lock.

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
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tide.budget import Run
from tide.model import TRANSITIONS, Resource, State

SCHEMA_VERSION = 2
_STATES = ", ".join(f"'{s.value}'" for s in State)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS resources (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({_STATES})),
    created_at REAL NOT NULL,
    state_since REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '{{}}',
    idle_since REAL,
    lost_since REAL,
    held INTEGER NOT NULL DEFAULT 0,
    drain_request TEXT,
    drain_told_at REAL,
    destroy_failures INTEGER NOT NULL DEFAULT 0,
    destroy_due REAL
) STRICT;
CREATE INDEX IF NOT EXISTS resources_site ON resources (site, state);
CREATE INDEX IF NOT EXISTS resources_alive ON resources (created_at, id) WHERE state != 'gone';
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
    detail TEXT NOT NULL DEFAULT '{{}}',
    failures INTEGER NOT NULL DEFAULT 0,
    last_failure_at REAL,
    owners_waiting_at REAL,
    paused INTEGER NOT NULL DEFAULT 0,
    evacuate INTEGER,
    config TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS owner_jobs (
    site TEXT NOT NULL,
    job TEXT NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (site, job)
) STRICT;
CREATE TABLE IF NOT EXISTS schedds (
    name TEXT PRIMARY KEY,
    last_seen REAL NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS usage (
    resource_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL
) STRICT;
CREATE INDEX IF NOT EXISTS usage_site ON usage (site, ended_at);
"""
_V2_COLUMNS = {
    "resources": (
        "idle_since REAL",
        "lost_since REAL",
        "held INTEGER NOT NULL DEFAULT 0",
        "drain_request TEXT",
        "drain_told_at REAL",
        "destroy_failures INTEGER NOT NULL DEFAULT 0",
        "destroy_due REAL",
    ),
    "sites": (
        "failures INTEGER NOT NULL DEFAULT 0",
        "last_failure_at REAL",
        "owners_waiting_at REAL",
        "paused INTEGER NOT NULL DEFAULT 0",
        "evacuate INTEGER",
        "config TEXT",
    ),
}
_RESOURCE_COLUMNS = (
    "id, site, state, state_since, created_at, idle_since, lost_since, held,"
    " drain_request, drain_told_at, destroy_failures, destroy_due"
)
_ID_TOKEN = re.compile(r"^[0-9a-f]{8}$")
EVACUATE_ALL = -1
"""The `sites.evacuate` value of an operator's `tide evacuate` without --nodes."""

JsonScalar = str | int | float | bool | None


@dataclass(frozen=True)
class SiteRecord:
    """The loop's persisted state of one site: its backoff, when its owners
    last waited, and the operator's standing requests."""

    name: str
    failures: int = 0  # failed boots in a row
    last_failure_at: float | None = None
    owners_waiting_at: float | None = None  # a backfill site's owners last seen waiting
    paused: bool = False  # `tide evacuate`: no boot until `tide resume`
    evacuate: int | None = None  # nodes to give back now (EVACUATE_ALL: every one)


Timers = Mapping[str, float | None]
"""Timer columns of one resource to write (idle_since, lost_since, drain_told_at)."""
_TIMER_COLUMNS = frozenset({"idle_since", "lost_since", "drain_told_at"})


class StoreError(Exception):
    """The store cannot do what was asked."""


class StateFileError(StoreError):
    """The state file is not a Tide state file (corrupt, or something else):
    restarting cannot help, moving it aside does."""


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
    """Resources, sites and their history in one SQLite connection. Thread-safe:
    the loop's per-site actors write from their own threads, one statement
    at a time under a lock (each write is short and local)."""

    def __init__(self, conn: sqlite3.Connection, lock_fd: int | None = None) -> None:
        self._conn = conn
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()

    @classmethod
    def open(cls, path: Path, *, exclusive: bool = True) -> Store:
        """Open (creating if needed) the store at `path`; its folder is made private (0700)
        and its files owner-only (0600).

        exclusive (the daemon) holds `<path>.lock` until close(), so a second daemon on
        the same file is refused. Readers such as `tide status` pass exclusive=False.
        A file that is not a Tide state file raises StoreError saying how to recover."""
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
        """One committed transaction, the only way anything is written.
        IMMEDIATE takes the write lock before the reads, so a check-then-write
        (a move's transition check) cannot race another writer."""
        with self._mutex, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            yield self._conn

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._mutex:
            return self._conn.execute(sql, args).fetchall()

    # --- resources: lifecycle ---------------------------------------------

    def add(
        self,
        resource_id: str,
        site: str,
        now: float,
        reason: str,
        *,
        state: State = State.REQUESTED,
        handle: Mapping[str, str] | None = None,
    ) -> Resource:
        """Record a new resource: REQUESTED before the site is asked to create it,
        or an adopted orphan in the state the evidence gives, with its handle
        (one recorded GONE that its site lists again - a create that went on
        after its resource was given up - is recorded anew)."""
        with self._write() as conn:
            if state is not State.REQUESTED:
                row = conn.execute(
                    "SELECT state FROM resources WHERE id = ?", (resource_id,)
                ).fetchone()
                if row is not None and row[0] == State.GONE.value:
                    conn.execute(
                        "UPDATE resources SET state = ?, state_since = ?, detail = ?,"
                        " idle_since = NULL, lost_since = NULL, held = 0, drain_request = NULL,"
                        " drain_told_at = NULL, destroy_failures = 0, destroy_due = NULL"
                        " WHERE id = ?",
                        (
                            state.value,
                            now,
                            json.dumps(dict(handle or {}), sort_keys=True),
                            resource_id,
                        ),
                    )
                    # It held its machine all along, as far as anyone can tell.
                    conn.execute(
                        "UPDATE usage SET ended_at = NULL WHERE resource_id = ?", (resource_id,)
                    )
                    self._log(conn, resource_id, old=State.GONE, new=state, at=now, reason=reason)
                    return Resource(resource_id, site, state, state_since=now, created_at=now)
            try:
                conn.execute(
                    "INSERT INTO resources (id, site, state, created_at, state_since, detail)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        resource_id,
                        site,
                        state.value,
                        now,
                        now,
                        json.dumps(dict(handle or {}), sort_keys=True),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"{resource_id}: already recorded") from exc
            self._log(conn, resource_id, old=None, new=state, at=now, reason=reason)
        return Resource(resource_id, site, state, state_since=now, created_at=now)

    def move(
        self, resource_id: str, to: State, now: float, reason: str, *, unless_held: bool = False
    ) -> Resource:
        """Move a resource along model.TRANSITIONS; moving to its own state does nothing.
        Leaving DRAINING clears the drain's record. `unless_held`: refuse (StoreError)
        if an operator drained it or asked to, checked in the same transaction."""
        with self._write() as conn:
            current = self._get(conn, resource_id)
            if current.state == to:
                return current
            if to not in TRANSITIONS[current.state]:
                raise TransitionError(resource_id, current.state, to)
            if unless_held and current.held:
                raise StoreError(f"{resource_id}: an operator drains it: not moved to {to}")
            extra = ""
            if current.state is State.DRAINING:
                extra = ", drain_request = NULL, drain_told_at = NULL"
            if to in (State.RUNNING, State.DRAINING) and current.state not in (
                State.RUNNING,
                State.DRAINING,
            ):
                extra += ", idle_since = NULL, lost_since = NULL"
            conn.execute(
                f"UPDATE resources SET state = ?, state_since = ?{extra} WHERE id = ?",  # noqa: S608
                (to.value, now, resource_id),
            )
            if to is State.GONE:  # its use of a machine ends (tide.budget)
                conn.execute(
                    "UPDATE usage SET ended_at = ? WHERE resource_id = ? AND ended_at IS NULL",
                    (now, resource_id),
                )
            self._log(conn, resource_id, old=current.state, new=to, at=now, reason=reason)
        return replace(current, state=to, state_since=now)

    def started(self, runs: Mapping[str, tuple[str, int, float]]) -> None:
        """Record that these resources (id -> (site, cpus, since when)) hold
        their machines, each once: the first record stays (tide.budget)."""
        if not runs:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO usage (resource_id, site, cpus, started_at)"
                " VALUES (?, ?, ?, ?)",
                [(rid, *run) for rid, run in sorted(runs.items())],
            )

    def charged(self, resource_id: str, site: str, cpus: int, since: float, until: float) -> None:
        """Record a use of a machine seen neither start nor end (a pilot that
        got its node and left it between two listings): from `since`, the last
        moment it was seen without one, to `until`. A recorded use stays."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO usage (resource_id, site, cpus, started_at, ended_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (resource_id, site, cpus, since, until),
            )

    def started_ids(self) -> set[str]:
        """Resources whose use of a machine is recorded and has not ended."""
        return {
            row[0] for row in self._read("SELECT resource_id FROM usage WHERE ended_at IS NULL")
        }

    def runs(self, site: str, since: float) -> list[Run]:
        """The site's recorded uses of a machine that had not ended by `since`."""
        rows = self._read(
            "SELECT resource_id, cpus, started_at, ended_at FROM usage"
            " WHERE site = ? AND (ended_at IS NULL OR ended_at >= ?)",
            (site, since),
        )
        return [Run(rid, cpus, started, ended) for rid, cpus, started, ended in rows]

    def drain(self, resource_id: str, now: float, reason: str, *, held: bool) -> Resource:
        """Record DRAINING (an operator's drain: held, and the request done)."""
        with self._write() as conn:
            current = self._get(conn, resource_id)
            if current.state is not State.DRAINING:
                if State.DRAINING not in TRANSITIONS[current.state]:
                    raise TransitionError(resource_id, current.state, State.DRAINING)
                conn.execute(
                    "UPDATE resources SET state = ?, state_since = ? WHERE id = ?",
                    (State.DRAINING.value, now, resource_id),
                )
                self._log(
                    conn, resource_id, old=current.state, new=State.DRAINING, at=now, reason=reason
                )
            if held:
                conn.execute(
                    "UPDATE resources SET held = 1 WHERE id = ?",
                    (resource_id,),
                )
        return self._get(self._conn, resource_id)

    # --- resources: the loop's own columns --------------------------------

    def set_timers(self, updates: Mapping[str, Timers]) -> None:
        """Write the observed timers of many resources in one transaction."""
        if not updates:
            return
        with self._write() as conn:
            for rid, timers in sorted(updates.items()):
                for column, value in sorted(timers.items()):
                    if column not in _TIMER_COLUMNS:
                        raise StoreError(f"{column}: not a timer column")
                    conn.execute(
                        f"UPDATE resources SET {column} = ? WHERE id = ?",  # noqa: S608
                        (value, rid),
                    )

    def drain_told(self, resource_id: str, request: str | None, now: float) -> None:
        """Its startd was told to drain (`request`: the drain it accepted)."""
        with self._write() as conn:
            self._get(conn, resource_id)
            conn.execute(
                "UPDATE resources SET drain_request = ?, drain_told_at = ? WHERE id = ?",
                (request, now, resource_id),
            )

    def destroy_failed(self, resource_id: str, now: float, max_wait_s: float) -> float:
        """Count a failed destroy; it is retried after 2, 4, 8 ... s (at most
        `max_wait_s`). Returns the wait."""
        with self._write() as conn:
            failures = self._get(conn, resource_id).destroy_failures + 1
            wait = min(2.0 ** min(failures, 64), max_wait_s)
            conn.execute(
                "UPDATE resources SET destroy_failures = ?, destroy_due = ? WHERE id = ?",
                (failures, now + wait, resource_id),
            )
        return wait

    def destroy_pending(self, resource_id: str, due: float) -> None:
        """Its site accepted the destroy but still lists it (a pilot vacating
        its jobs): STOPPING until the site no longer lists it, destroyed
        again if it still does at `due`."""
        with self._write() as conn:
            self._get(conn, resource_id)
            conn.execute(
                "UPDATE resources SET destroy_failures = 0, destroy_due = ? WHERE id = ?",
                (due, resource_id),
            )

    def request_drain(self, resource_id: str, now: float) -> Resource:
        """An operator's drain (`tide drain`), in one transaction: DRAINING and
        held. The daemon tells its startd at its next cycle (a drain never
        told is told); nothing undoes it (an undrain is refused in the store's
        own transaction, see move(unless_held=True))."""
        with self._write() as conn:
            current = self._get(conn, resource_id)
            if current.state not in (State.RUNNING, State.DRAINING):
                raise StoreError(
                    f"{resource_id} is {current.state.value}: only a running or draining"
                    " resource can be drained (a boot is removed by the daemon when demand goes)"
                )
            if current.state is State.RUNNING:
                conn.execute(
                    "UPDATE resources SET state = ?, state_since = ? WHERE id = ?",
                    (State.DRAINING.value, now, resource_id),
                )
                self._log(
                    conn,
                    resource_id,
                    old=current.state,
                    new=State.DRAINING,
                    at=now,
                    reason="operator drain (tide drain)",
                )
            conn.execute("UPDATE resources SET held = 1 WHERE id = ?", (resource_id,))
        return self._get(self._conn, resource_id)

    # --- resources: the site's handle -------------------------------------

    def created(self, resource_id: str, handle: Mapping[str, str], now: float) -> bool:
        """Its site accepted the create: record the handle and BOOTING in one
        transaction; False (handle kept) if the evidence moved it on already."""
        with self._write() as conn:
            current = self._get(conn, resource_id)
            detail = self._detail(conn, resource_id)
            detail.update(handle)
            conn.execute(
                "UPDATE resources SET detail = ? WHERE id = ?",
                (json.dumps(detail, sort_keys=True), resource_id),
            )
            if current.state is not State.REQUESTED:
                return False
            conn.execute(
                "UPDATE resources SET state = ?, state_since = ? WHERE id = ?",
                (State.BOOTING.value, now, resource_id),
            )
            self._log(
                conn, resource_id, old=State.REQUESTED, new=State.BOOTING, at=now, reason="created"
            )
        return True

    def set_detail(self, resource_id: str, key: str, value: JsonScalar) -> None:
        """Remember what the site needs to find the resource (e.g. its server id)."""
        with self._write() as conn:
            detail = self._detail(conn, resource_id)
            detail[key] = value
            conn.execute(
                "UPDATE resources SET detail = ? WHERE id = ?",
                (json.dumps(detail, sort_keys=True), resource_id),
            )

    def detail(self, resource_id: str) -> dict[str, JsonScalar]:
        with self._mutex:
            return self._detail(self._conn, resource_id)

    def handle(self, resource_id: str) -> dict[str, str]:
        """The site's handle as its adapter takes it (strings, no empty values)."""
        return {k: str(v) for k, v in self.detail(resource_id).items() if v is not None}

    # --- sites ------------------------------------------------------------

    def site(self, name: str) -> SiteRecord:
        rows = self._read(
            "SELECT failures, last_failure_at, owners_waiting_at, paused, evacuate"
            " FROM sites WHERE name = ?",
            (name,),
        )
        if not rows:
            return SiteRecord(name)
        failures, last, waiting, paused, evacuate = rows[0]
        return SiteRecord(name, failures, last, waiting, bool(paused), evacuate)

    def sites(self) -> list[SiteRecord]:
        names = [row[0] for row in self._read("SELECT name FROM sites ORDER BY name")]
        return [self.site(name) for name in names]

    def _site_update(self, name: str, assignments: str, args: tuple[object, ...]) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sites (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (name,)
            )
            conn.execute(
                f"UPDATE sites SET {assignments} WHERE name = ?",  # noqa: S608
                (*args, name),
            )

    def boot_failed(self, name: str, now: float) -> None:
        """One more failed boot in a row at this site (its backoff grows)."""
        self._site_update(name, "failures = failures + 1, last_failure_at = ?", (now,))

    def boot_succeeded(self, name: str) -> None:
        """A boot registered: the site's backoff ends."""
        if self.site(name).failures:
            self._site_update(name, "failures = 0, last_failure_at = NULL", ())

    def owners_waited(self, name: str, now: float) -> None:
        self._site_update(name, "owners_waiting_at = ?", (now,))

    def request_evacuate(self, name: str, nodes: int | None) -> None:
        """`tide evacuate`: pause the site and give `nodes` back (None: all)."""
        self._site_update(
            name, "paused = 1, evacuate = ?", (EVACUATE_ALL if nodes is None else nodes,)
        )

    def evacuate_done(self, name: str, seen: int) -> None:
        """The loop acted on an evacuation request it saw as `seen`; a newer
        request (another value) stays."""
        self._site_update(
            name, "evacuate = CASE WHEN evacuate = ? THEN NULL ELSE evacuate END", (seen,)
        )

    def request_resume(self, name: str) -> None:
        """`tide resume`: boots allowed again, a pending evacuation dropped."""
        self._site_update(name, "paused = 0, evacuate = NULL", ())

    def site_detail(self, name: str) -> dict[str, JsonScalar]:
        """An operator's standing requests for a site, as `tide status` says them."""
        record = self.site(name)
        evacuate: JsonScalar = record.evacuate
        if evacuate == EVACUATE_ALL:
            evacuate = "all"
        return {"evacuate": evacuate, "paused": record.paused}

    def set_site_config(self, name: str, config: str) -> None:
        """The site's configuration as the daemon last ran it (JSON, paths only:
        no secret), so a site removed from the file can still be retired."""
        self._site_update(name, "config = ?", (config,))

    def site_config(self, name: str) -> str | None:
        rows = self._read("SELECT config FROM sites WHERE name = ?", (name,))
        return None if not rows else rows[0][0]

    def forget_site(self, name: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM sites WHERE name = ?", (name,))
            conn.execute("DELETE FROM owner_jobs WHERE site = ?", (name,))

    # --- owners' waiting jobs (a backfill site's grace time) --------------

    def owner_jobs_seen(self, site: str) -> dict[str, float]:
        """The owners' jobs last seen waiting at `site`, and when each was first seen so."""
        rows = self._read("SELECT job, first_seen FROM owner_jobs WHERE site = ?", (site,))
        return {job: at for job, at in rows}

    def saw_owner_jobs(self, site: str, jobs: Collection[str], now: float) -> dict[str, float]:
        """These owner jobs wait at `site` now: each keeps when it was first seen
        waiting (new ones: now); jobs no longer waiting are forgotten. Returns
        job -> first seen."""
        seen = self.owner_jobs_seen(site)
        kept = {job: seen.get(job, now) for job in jobs}
        gone, new = sorted(set(seen) - set(kept)), sorted(set(kept) - set(seen))
        if gone or new:  # asked every cycle: no transaction (and fsync) when nothing changed
            with self._write() as conn:
                for job in gone:
                    conn.execute("DELETE FROM owner_jobs WHERE site = ? AND job = ?", (site, job))
                for job in new:
                    conn.execute(
                        "INSERT INTO owner_jobs (site, job, first_seen) VALUES (?, ?, ?)",
                        (site, job, now),
                    )
        return kept

    # --- schedds ----------------------------------------------------------

    def schedds_seen(self) -> dict[str, float]:
        """Every schedd that answered, and when it last did."""
        return {name: at for name, at in self._read("SELECT name, last_seen FROM schedds")}

    def saw_schedds(self, names: Collection[str], now: float, forget_before: float) -> None:
        """These schedds answered now; schedds silent since `forget_before` are
        forgotten (a schedd taken out of the pool for good)."""
        with self._write() as conn:
            for name in sorted(names):
                conn.execute(
                    "INSERT INTO schedds (name, last_seen) VALUES (?1, ?2)"
                    " ON CONFLICT (name) DO UPDATE SET last_seen = ?2",
                    (name, now),
                )
            conn.execute("DELETE FROM schedds WHERE last_seen < ?", (forget_before,))

    # --- reading ----------------------------------------------------------

    def get(self, resource_id: str) -> Resource | None:
        try:
            with self._mutex:
                return self._get(self._conn, resource_id)
        except UnknownResourceError:
            return None

    def alive(self, site: str | None = None) -> list[Resource]:
        """Every resource not GONE: ALIVE ones, and STOPPING and FAILED ones still to
        clean up (the partial index resources_alive keeps this cheap however much
        history the file holds)."""
        if site is None:
            rows = self._read(
                f"SELECT {_RESOURCE_COLUMNS} FROM resources INDEXED BY resources_alive"  # noqa: S608
                " WHERE state != 'gone' ORDER BY created_at, id"
            )
        else:
            rows = self._read(
                f"SELECT {_RESOURCE_COLUMNS} FROM resources"  # noqa: S608
                " WHERE state != 'gone' AND site = ? ORDER BY created_at, id",
                (site,),
            )
        return [_resource(row) for row in rows]

    def all(self) -> list[Resource]:
        rows = self._read(
            f"SELECT {_RESOURCE_COLUMNS} FROM resources ORDER BY created_at, id"  # noqa: S608
        )
        return [_resource(row) for row in rows]

    def history(self, resource_id: str) -> list[Transition]:
        rows = self._read(
            "SELECT resource_id, from_state, to_state, at, reason FROM transitions"
            " WHERE resource_id = ? ORDER BY seq",
            (resource_id,),
        )
        return [
            Transition(rid, None if old is None else State(old), State(new), at, reason)
            for rid, old, new, at, reason in rows
        ]

    def prune(self, before: float, *, limit: int = 10_000) -> int:
        """Delete up to `limit` resources GONE before `before`, with their
        history; returns how many (the daemon prunes a little every cycle)."""
        with self._write() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM resources WHERE state = 'gone' AND state_since < ? LIMIT ?",
                    (before, limit),
                ).fetchall()
            ]
            for rid in ids:
                conn.execute("DELETE FROM transitions WHERE resource_id = ?", (rid,))
                conn.execute("DELETE FROM resources WHERE id = ?", (rid,))
        return len(ids)

    @staticmethod
    def _get(conn: sqlite3.Connection, resource_id: str) -> Resource:
        row = conn.execute(
            f"SELECT {_RESOURCE_COLUMNS} FROM resources WHERE id = ?",  # noqa: S608
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
    """Connect in WAL mode with durable commits, creating, migrating or checking
    the schema. A file that is not a SQLite database, or not Tide's, raises
    StoreError naming it and the way out."""
    # isolation_level=None: transactions are begun explicitly, see Store._write().
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0, check_same_thread=False)
    try:
        try:
            _prepare(conn, path)
        except sqlite3.DatabaseError as exc:
            raise StateFileError(
                f"{path}: not a Tide state file ({exc}). Move it aside"
                f" (mv {path} {path}.broken) and start again: the daemon then adopts"
                " what its sites list as this controller's"
            ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":  # readers would block the daemon's writes
        raise StoreError(f"{path}: SQLite refused WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: schema version {version} is newer than this Tide's")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if version == 0 and tables and "resources" not in tables:
        raise sqlite3.DatabaseError("a SQLite database of something else")
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        if version == 1:
            _migrate_v1(conn)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Schema 1 kept the loop's state in the detail JSON: move it to columns."""
    for table, columns in _V2_COLUMNS.items():
        for column in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    for rid, text in conn.execute("SELECT id, detail FROM resources").fetchall():
        detail = json.loads(text)
        held = 1 if detail.pop("held", None) is True else 0
        idle = detail.pop("idle_since", None)
        request = detail.pop("drain_request", None)
        conn.execute(
            "UPDATE resources SET detail = ?, held = ?, idle_since = ?, drain_request = ?"
            " WHERE id = ?",
            (
                json.dumps(detail, sort_keys=True),
                held,
                idle if isinstance(idle, int | float) else None,
                request if isinstance(request, str) else None,
                rid,
            ),
        )
    for name, text in conn.execute("SELECT name, detail FROM sites").fetchall():
        detail = json.loads(text)
        evacuate = detail.get("evacuate")
        conn.execute(
            "UPDATE sites SET detail = '{}', paused = ?, evacuate = ? WHERE name = ?",
            (
                1 if detail.get("paused") is True else 0,
                EVACUATE_ALL
                if evacuate == "all"
                else evacuate
                if isinstance(evacuate, int)
                else None,
                name,
            ),
        )


_STATE_OF = {s.value: s for s in State}


def _resource(row: tuple[Any, ...]) -> Resource:
    (
        rid,
        site,
        state,
        state_since,
        created_at,
        idle_since,
        lost_since,
        held,
        drain_request,
        drain_told_at,
        destroy_failures,
        destroy_due,
    ) = row
    return Resource(
        rid,
        site,
        _STATE_OF[state],
        state_since=state_since,
        created_at=created_at,
        idle_since=idle_since,
        lost_since=lost_since,
        held=bool(held),
        drain_request=drain_request,
        drain_told_at=drain_told_at,
        destroy_failures=destroy_failures,
        destroy_due=destroy_due,
    )
