"""The controller under the ordinary faults of issue 11, one cycle at a time
(the doubles of tests/unit/test_loop.py, a real Store in tmp_path). The
fault simulator (tests/simulation) explores the same on random schedules;
these pin each defect the issue names."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.test_loop import LIMITS, FakeBackfillSite, World, running_world
from tide.cli import main
from tide.htcondor.demand import missing_schedds
from tide.loop import Controller, SlotState
from tide.model import Create, Demand, Drain, Resource, Shape, Site, Snapshot, State
from tide.policy import decide
from tide.sites.base import Owned, OwnerQueue, SiteError
from tide.store import StateFileError, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state.sqlite3") as s:
        yield s


def restarted(w: World) -> Controller:
    """A new daemon on the same state file, sites, pool and clock."""
    return Controller(
        sites=w.controller._sites,
        store=w.store,
        demand=lambda: (w.demand, w.complete),
        slots=w.slots,
        startds=w.startds,
        metrics=None,
        clock=w.clock,
        new_id=w._new_id,
    )


def test_a_create_that_never_returned_is_running_once_its_slot_is_advertised(
    store: Store,
) -> None:
    # Point 2: killed during create: REQUESTED in the store, the worker came up.
    w = World(store)
    rid = "tide-a-0000abcd"
    store.add(rid, "a", w.clock.now, "demand")
    w.sites["a"].owned[rid] = Owned(rid, "ACTIVE", {"server_id": "s1"})
    w.slots.slots[rid] = SlotState(True, 1)  # and runs a job
    w.clock.now += 1000  # far past the boot timeout
    plan = w.controller.cycle()
    assert w.states()[rid] is State.RUNNING
    assert not w.sites["a"].destroyed
    assert not [a for a in plan.actions if a.__class__.__name__ == "Destroy"]
    w.slots.slots[rid] = SlotState(True, 0)  # idle now: it is drained like any other
    w.controller.cycle()  # its idle clock starts
    w.clock.now += LIMITS.idle_timeout_s
    assert [type(a) for a in w.controller.cycle().actions] == [Drain]


def test_a_listed_requested_resource_is_booting(store: Store) -> None:
    w = World(store)
    rid = "tide-a-0000abcd"
    store.add(rid, "a", w.clock.now, "demand")
    w.sites["a"].owned[rid] = Owned(rid, "BUILD", {"server_id": "s1"})
    w.controller.reconcile()
    assert w.states()[rid] is State.BOOTING


def test_a_store_failure_after_a_create_ends_that_create_only(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Point 2: an sqlite3.OperationalError after the create must not abort the cycle.
    w = World(store, ("a", "b"))
    w.demand = (
        Demand("s#1", 1, 4, 8192, 100, ("a",)),
        Demand("s#2", 1, 4, 8192, 100, ("b",)),
    )
    real = store.created

    def locked(rid: str, handle: Mapping[str, str], now: float) -> bool:
        if rid.startswith("tide-a"):
            raise sqlite3.OperationalError("database is locked")
        return real(rid, handle, now)

    monkeypatch.setattr(store, "created", locked)
    w.controller.cycle()
    (a,) = w.sites["a"].created
    (b,) = w.sites["b"].created
    assert w.states()[b] is State.BOOTING
    assert w.states()[a] is State.REQUESTED  # the evidence settles it next cycle
    w.clock.now += 1
    w.controller.cycle()
    assert w.states()[a] is State.BOOTING  # listed by its site


def test_a_pilot_vacating_its_node_is_not_given_back_twice(store: Store) -> None:
    # Point 4: told to go, it holds its node until HTCondor has vacated it.
    w = World(store, backfill=True)
    site = w.sites["a"]
    assert isinstance(site, FakeBackfillSite)
    w.want(2)
    w.controller.cycle()
    w.demand = ()
    rids = list(site.created)
    for rid in rids:
        w.slots.slots[rid] = SlotState(True, 1)
    w.clock.now += 1
    w.controller.cycle()
    vacating: dict[str, Owned] = {}
    real_destroy = site.destroy

    def destroy(resource_id: str, details: Mapping[str, str]) -> None:
        vacating[resource_id] = site.owned[resource_id]
        real_destroy(resource_id, details)
        site.owned[resource_id] = vacating[resource_id]  # still listed: vacating

    site.destroy = destroy  # type: ignore[method-assign]
    site.queue = OwnerQueue(pending_nodes=1, free_nodes=0)
    for _ in range(4):  # the owners wait on while the node is vacated
        w.clock.now += 2
        w.controller.cycle()
    assert len(set(site.destroyed)) == 1  # one node given back, once
    assert len(site.destroyed) == 1  # and not signalled again every cycle
    (gone,) = site.destroyed
    assert w.states()[gone] is State.STOPPING
    del site.owned[gone]  # vacated: its job ended
    site.queue = OwnerQueue(pending_nodes=0, free_nodes=0)
    w.clock.now += 2
    w.controller.cycle()
    assert w.states()[gone] is State.GONE


def test_a_drain_the_startd_forgot_is_told_again(store: Store) -> None:
    # Point 6: the startd restarted (autoheal) and takes jobs again.
    w, rid = running_world(store)
    w.startds.keep_draining = True
    w.slots.slots[rid] = SlotState(True, 1)
    w.controller.cycle()
    store.request_drain(rid, w.clock.now)
    w.controller.cycle()
    assert w.startds.drains == [rid]
    w.slots.slots[rid] = SlotState(True, 1)  # restarted: not draining any more
    w.clock.now += LIMITS.redrain_after_s - 1
    w.controller.cycle()
    assert w.startds.drains == [rid]  # the collector may lag: not yet
    w.clock.now += 1
    plan = w.controller.cycle()
    assert w.startds.drains == [rid, rid]
    assert plan.actions[0].reason.startswith("startd not draining 60s")


def test_an_operator_drain_landing_mid_cycle_is_not_undone(store: Store) -> None:
    # Point 7: `tide drain` between a cycle's observe and its act.
    w, rid = running_world(store)
    w.startds.keep_draining = True
    w.clock.now += 100
    w.controller.cycle()  # drained by demand (idle)
    assert w.states()[rid] is State.DRAINING
    real_cancel = w.startds.cancel_drain

    def cancel(site: str, resource_id: str, request_id: str) -> None:
        store.request_drain(resource_id, w.clock.now)  # the operator, just now
        real_cancel(site, resource_id, request_id)

    w.startds.cancel_drain = cancel  # type: ignore[method-assign]
    w.want(1)  # demand returns: the cycle decides an undrain
    w.controller.cycle()
    r = store.get(rid)
    assert r is not None
    assert (r.state, r.held) == (State.DRAINING, True)
    assert w.startds.drains[-1] == rid  # told to drain again at once
    w.clock.now += 1000
    for _ in range(3):
        w.controller.cycle()
        assert w.states()[rid] is State.DRAINING


def test_a_retiring_site_boots_nothing_and_gives_everything_back() -> None:
    # Point 8: a site removed from the configuration (rebuilt from its last one).
    site = Site("old", Shape(4, 8192, 10000), LIMITS, retiring=True)
    now = 10_000.0
    busy = Resource(
        "r1", "old", State.RUNNING, now - 10, now - 10, advertised=True, claimed_slots=1
    )
    idle = Resource("r2", "old", State.RUNNING, now - 10, now - 10, advertised=True, idle_since=now)
    boot = Resource("r3", "old", State.BOOTING, now - 10, now - 10)
    plan = decide(
        Snapshot(
            now=now,
            sites={"old": site},
            demand=(Demand("s#1", 50, 1, 100, 100, ("old",)),),
            resources=(busy, idle, boot),
        )
    )
    assert not [a for a in plan.actions if isinstance(a, Create)]
    assert sorted((type(a).__name__, a.resource) for a in plan.actions) == [  # type: ignore[union-attr]
        ("Destroy", "r3"),
        ("Drain", "r1"),
        ("Drain", "r2"),
    ]


def test_backoff_and_owner_quiet_time_survive_a_restart(store: Store) -> None:
    # Point 9: timers in the store, not in memory.
    w = World(store)
    w.sites["a"].fail_create = SiteError("quota", retryable=True)
    w.want(1)
    w.controller.cycle()
    w.sites["a"].fail_create = None
    again = restarted(w)
    w.clock.now += 10  # inside the 30 s backoff
    again.cycle()
    assert len(w.sites["a"].created) == 1
    assert again.health("a").consecutive_failures == 1
    w.clock.now += 30
    again.cycle()
    assert len(w.sites["a"].created) == 2


def test_an_orphan_running_a_job_is_adopted_and_kept(store: Store) -> None:
    # Point 12: a lost state file must not kill running jobs.
    w = World(store)
    rid = "tide-a-0000beef"
    w.sites["a"].owned[rid] = Owned(rid, "running", {"container": "c1"})
    w.slots.slots[rid] = SlotState(True, 1)
    for _ in range(3):
        w.controller.cycle()
        w.clock.now += 100
    assert w.states()[rid] is State.RUNNING
    assert not w.sites["a"].destroyed
    w.slots.slots[rid] = SlotState(True, 0)  # its job done: the usual way out
    w.controller.cycle()
    w.clock.now += LIMITS.idle_timeout_s
    w.controller.cycle()
    w.controller.cycle()
    assert w.sites["a"].destroyed == [rid]
    assert w.startds.drains == [rid]  # drained first


def test_a_corrupt_state_file_is_named_with_its_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Point 13: one line, exit 2 (systemd does not restart it), no traceback.
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateFileError) as caught:
        Store.open(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a Tide state file")
    assert f"mv {path} {path}.broken" in message
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE songs (title TEXT)")
    conn.close()
    with pytest.raises(StateFileError):
        Store.open(other)
    config = tmp_path / "tide.yml"
    (tmp_path / "pool.token").write_text("t")
    (tmp_path / "pool.token").chmod(0o600)
    config.write_text(
        "pool: {collector: 127.0.0.1:1, domain: x.org, token_file: "
        f"{tmp_path}/pool.token}}\n"
        f"loop: {{state_file: {path}}}\n"
        "sites:\n  local:\n    kind: docker\n"
        f"    worker_token_file: {tmp_path}/pool.token\n"
        "    shape: {cpus: 1, memory_mb: 1024, disk_mb: 1000}\n"
    )
    assert main(["status", "--no-demand", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "not a Tide state file" in err


def test_gone_resources_are_pruned_and_alive_stays_indexed(store: Store) -> None:
    # Point 14.
    for n in range(50):
        store.add(f"g{n}", "a", float(n), "demand")
        store.move(f"g{n}", State.GONE, float(n) + 1, "destroyed")
    store.add("live", "a", 100.0, "demand")
    assert store.prune(before=26.0) == 25
    assert len(store.all()) == 26
    assert store.history("g0") == []
    assert [r.id for r in store.alive()] == ["live"]
    plan = store._read(  # the partial index, never a scan of the history
        "EXPLAIN QUERY PLAN SELECT id FROM resources INDEXED BY resources_alive"
        " WHERE state != 'gone' ORDER BY created_at, id"
    )
    assert "resources_alive" in str(plan)


def test_schedds_missing_after_a_collector_restart_make_demand_unknown() -> None:
    # Point 5: the collector lists no schedd until its next ad.
    seen = {"schedd1": 1000.0, "schedd2": 1000.0, "retired": 1000.0 - 5000}
    assert missing_schedds([], seen, now=1010.0) == ("schedd1", "schedd2")
    assert missing_schedds(["schedd1"], seen, now=1010.0) == ("schedd2",)
    assert missing_schedds(["schedd1", "schedd2"], seen, now=1010.0) == ()


def test_unknown_demand_holds_back_scale_down_and_says_so(store: Store) -> None:
    w, _rid = running_world(store)
    w.complete = False
    w.clock.now += 1000
    plan = w.controller.cycle()
    assert plan.actions == ()
    assert [type(h.action) for h in plan.held_back] == [Drain]
    assert "demand is unknown" in plan.held_back[0].why
    assert replace(plan, held_back=()).actions == ()


def test_an_idle_drain_the_startd_refuses_for_a_starting_job_is_undone(store: Store) -> None:
    # Found by the lab's crash soak: the schedd had claimed the slot, the
    # collector did not show it yet; a plain drain evicted the starting job.
    # An idle drain is checked by the startd itself (condor_drain -check).
    w, rid = running_world(store)
    w.startds.claimed.add(rid)
    w.clock.now += 100
    plan = w.controller.cycle()
    assert [type(a) for a in plan.actions] == [Drain]
    r = store.get(rid)
    assert r is not None
    assert (r.state, r.idle_since) == (State.RUNNING, w.clock.now)  # busy after all
    assert [t.reason for t in store.history(rid)][-1] == "drain refused: a job started"
    w.startds.claimed.clear()
    w.clock.now += 10
    assert w.controller.cycle().actions == ()  # its idle clock starts again
    store.request_drain(rid, w.clock.now)  # an operator's drain is not checked
    w.startds.claimed.add(rid)
    w.controller.cycle()
    assert w.startds.drains == [rid]
    assert store.get(rid).state is State.DRAINING  # type: ignore[union-attr]
