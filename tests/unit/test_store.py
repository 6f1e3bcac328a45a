"""The state store on a real SQLite file: moves follow the lifecycle, every
move is logged, and what was committed survives a restart."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tide.model import ALIVE, TRANSITIONS, Resource, State
from tide.store import (
    Store,
    StoreError,
    Transition,
    TransitionError,
    UnknownResourceError,
    new_resource_id,
    random_suffix,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "lib" / "tide" / "state.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store.open(path) as opened:
        yield opened


def test_open_makes_a_private_folder_and_a_durable_wal_database(path: Path) -> None:
    with Store.open(path):
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"resources", "transitions"} <= tables
    finally:
        conn.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_files_are_owner_only(path: Path) -> None:
    old_umask = os.umask(0o022)  # a usual umask would leave new files world-readable
    try:
        with Store.open(path) as store:
            store.add("r1", "local", 1.0, "demand")
            files = [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", ".lock"))]
            assert all(f.exists() for f in files)
            assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        os.umask(old_umask)


def test_open_tightens_files_left_readable(path: Path) -> None:
    with Store.open(path):
        pass
    path.chmod(0o644)
    with Store.open(path):
        assert _mode(path) == 0o600


def test_a_second_daemon_on_the_same_file_is_refused(path: Path) -> None:
    first = Store.open(path)
    try:
        with pytest.raises(StoreError) as caught:
            Store.open(path)
        assert str(caught.value) == (
            f"{path}: another tide daemon holds this state file (lock {path}.lock)"
        )
        first.add("r1", "local", 1.0, "demand")  # the refusal did not disturb the holder
    finally:
        first.close()
    with Store.open(path) as second:
        assert [r.id for r in second.all()] == ["r1"]


def test_a_reader_takes_no_lock(path: Path) -> None:
    with Store.open(path) as daemon:
        daemon.add("r1", "local", 1.0, "demand")
        with Store.open(path, exclusive=False) as reader:
            assert [r.id for r in reader.alive()] == ["r1"]
    with Store.open(path, exclusive=False) as reader, Store.open(path) as daemon:
        daemon.move("r1", State.BOOTING, 2.0, "created")
        assert reader.get("r1") == Resource("r1", "local", State.BOOTING, 2.0, 1.0)


def test_add_move_and_history(store: Store) -> None:
    added = store.add("tide-local-0000abcd", "local", 100.0, "demand: 3 idle jobs")
    assert added == Resource("tide-local-0000abcd", "local", State.REQUESTED, 100.0, 100.0)
    assert (added.advertised, added.claimed_slots, added.idle_since) == (False, 0, None)
    store.move("tide-local-0000abcd", State.BOOTING, 101.0, "created")
    moved = store.move("tide-local-0000abcd", State.RUNNING, 130.5, "slot advertised")
    assert moved == Resource("tide-local-0000abcd", "local", State.RUNNING, 130.5, 100.0)
    assert store.get("tide-local-0000abcd") == moved
    assert store.history("tide-local-0000abcd") == [
        Transition("tide-local-0000abcd", None, State.REQUESTED, 100.0, "demand: 3 idle jobs"),
        Transition("tide-local-0000abcd", State.REQUESTED, State.BOOTING, 101.0, "created"),
        Transition("tide-local-0000abcd", State.BOOTING, State.RUNNING, 130.5, "slot advertised"),
    ]


def test_moving_to_the_same_state_changes_nothing(store: Store) -> None:
    store.add("r1", "local", 1.0, "demand")
    assert store.move("r1", State.REQUESTED, 5.0, "again") == store.get("r1")
    assert store.get("r1") == Resource("r1", "local", State.REQUESTED, 1.0, 1.0)
    assert len(store.history("r1")) == 1


FORBIDDEN = [
    (start, to) for start in State for to in State if to != start and to not in TRANSITIONS[start]
]


@pytest.mark.parametrize(("start", "to"), FORBIDDEN)
def test_forbidden_moves_raise_and_change_nothing(store: Store, start: State, to: State) -> None:
    store.add("r1", "local", 1.0, "demand")
    path_to = {
        State.REQUESTED: [],
        State.BOOTING: [State.BOOTING],
        State.RUNNING: [State.BOOTING, State.RUNNING],
        State.DRAINING: [State.BOOTING, State.RUNNING, State.DRAINING],
        State.STOPPING: [State.STOPPING],
        State.GONE: [State.GONE],
        State.FAILED: [State.FAILED],
    }
    for step in path_to[start]:
        store.move("r1", step, 2.0, "setup")
    before = store.history("r1")
    with pytest.raises(TransitionError) as caught:
        store.move("r1", to, 3.0, "bad")
    assert caught.value.resource_id == "r1"
    assert f"r1: cannot move from {start} to {to}" in str(caught.value)
    assert store.get("r1") == Resource("r1", "local", start, 2.0 if path_to[start] else 1.0, 1.0)
    assert store.history("r1") == before


def test_unknown_and_duplicate_ids(store: Store) -> None:
    assert store.get("nope") is None
    with pytest.raises(UnknownResourceError, match="nope"):
        store.move("nope", State.BOOTING, 1.0, "x")
    with pytest.raises(UnknownResourceError):
        store.set_detail("nope", "server_id", "abc")
    store.add("r1", "local", 1.0, "demand")
    with pytest.raises(StoreError, match="r1: already recorded"):
        store.add("r1", "local", 2.0, "demand")
    assert len(store.history("r1")) == 1


def test_state_survives_a_restart(path: Path) -> None:
    first = Store.open(path)
    first.add("r1", "cloud", 10.0, "demand")
    first.move("r1", State.BOOTING, 11.0, "created")
    first.set_detail("r1", "server_id", "4f1c")
    first.set_detail("r1", "attempt", 2)
    first.add("r2", "cloud", 12.0, "demand")
    first.close()
    with Store.open(path) as again:
        assert again.all() == [
            Resource("r1", "cloud", State.BOOTING, 11.0, 10.0),
            Resource("r2", "cloud", State.REQUESTED, 12.0, 12.0),
        ]
        assert again.detail("r1") == {"server_id": "4f1c", "attempt": 2}
        assert again.detail("r2") == {}
        assert [t.to_state for t in again.history("r1")] == [State.REQUESTED, State.BOOTING]


def test_alive_is_everything_not_gone_and_filters_by_site(store: Store) -> None:
    for n, site in enumerate(["local", "cloud", "local", "local", "cloud"]):
        store.add(f"r{n}", site, float(n), "demand")
    store.move("r1", State.FAILED, 10.0, "create failed")
    store.move("r2", State.GONE, 10.0, "vanished")
    store.move("r3", State.STOPPING, 10.0, "idle")
    assert [r.id for r in store.alive()] == ["r0", "r1", "r3", "r4"]
    assert [r.id for r in store.alive("local")] == ["r0", "r3"]
    assert [r.id for r in store.alive("cloud")] == ["r1", "r4"]
    assert store.alive("elsewhere") == []
    assert [r.id for r in store.all()] == ["r0", "r1", "r2", "r3", "r4"]
    assert all(r.state in ALIVE | {State.STOPPING, State.FAILED} for r in store.alive())


def test_readers_see_commits_and_do_not_block_the_writer(store: Store, path: Path) -> None:
    store.add("r1", "local", 1.0, "demand")
    reader = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT state FROM resources").fetchall() == [("requested",)]
        # An open read transaction does not block the writer (WAL) ...
        store.move("r1", State.BOOTING, 2.0, "created")
        # ... and keeps its consistent snapshot until it ends.
        assert reader.execute("SELECT state FROM resources").fetchall() == [("requested",)]
        reader.execute("COMMIT")
        assert reader.execute("SELECT state FROM resources").fetchall() == [("booting",)]
    finally:
        reader.close()


def test_concurrent_readers_in_threads(store: Store, path: Path) -> None:
    for n in range(20):
        store.add(f"r{n}", "local", float(n), "demand")
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with Store.open(path, exclusive=False) as mine:
                for _ in range(20):
                    seen.append(len(mine.alive()))
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for n in range(20):
        store.move(f"r{n}", State.GONE, 100.0, "vanished")
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(seen) == 80
    assert all(0 <= count <= 20 for count in seen)
    assert store.alive() == []


def test_resource_ids() -> None:
    assert new_resource_id("cloud", "0a1b2c3d") == "tide-cloud-0a1b2c3d"
    with pytest.raises(ValueError, match="8 lowercase hex"):
        new_resource_id("cloud", "XYZ")
    token = random_suffix()
    assert len(token) == 8
    assert new_resource_id("local", token) == f"tide-local-{token}"
    assert random_suffix() != random_suffix()


def test_owner_jobs_keep_when_they_were_first_seen_waiting_across_a_restart(path: Path) -> None:
    with Store.open(path) as first:
        assert first.saw_owner_jobs("hpc", {"11", "12"}, 100.0) == {"11": 100.0, "12": 100.0}
        assert first.saw_owner_jobs("hpc", {"12", "13"}, 105.0) == {"12": 100.0, "13": 105.0}
        first.saw_owner_jobs("other", {"12"}, 50.0)
    with Store.open(path) as second:  # a restarted daemon times job 12 from 100, not anew
        assert second.owner_jobs_seen("hpc") == {"12": 100.0, "13": 105.0}
        assert second.saw_owner_jobs("hpc", set(), 110.0) == {}
        assert second.owner_jobs_seen("other") == {"12": 50.0}
        second.forget_site("other")
        assert second.owner_jobs_seen("other") == {}
