"""The control loop, one cycle at a time, with test doubles for every I/O edge
(a real Store in tmp_path)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tide.budget import BudgetRule
from tide.loop import Controller, SlotState, run_forever, slots_from_ads
from tide.metrics import Metrics
from tide.model import (
    Demand,
    Destroy,
    Drain,
    Shape,
    Site,
    SiteLimits,
    State,
)
from tide.sites.base import (
    Capability,
    DeadlineExceeded,
    DrainRefused,
    Owned,
    OwnerQueue,
    SiteAdapter,
    SiteError,
)
from tide.store import Store

LIMITS = SiteLimits(
    max_resources=4,
    max_booting=2,
    boot_timeout_s=100.0,
    idle_timeout_s=50.0,
    backoff_base_s=30.0,
    backoff_max_s=300.0,
)


class FakeSite(SiteAdapter):
    """Test double of tide.sites.base.SiteAdapter: records calls, keeps the
    resources it "created" in `owned`, and fails on demand. `on_create` runs
    inside create, before it succeeds or fails (to check what the store holds)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.owned: dict[str, Owned] = {}
        self.created: list[str] = []
        self.destroyed: list[str] = []
        self.fail_create: Exception | None = None
        self.fail_destroy: Exception | None = None
        self.fail_list: Exception | None = None
        self.on_create: list[str] = []  # resource ids seen in the store when create ran
        self.listings = 0  # list_owned calls
        self.store: Store | None = None

    def create(self, resource_id: str) -> Mapping[str, str]:
        if self.store is not None and self.store.get(resource_id) is not None:
            self.on_create.append(resource_id)
        self.created.append(resource_id)
        if self.fail_create is not None:
            raise self.fail_create
        details = {"server_id": f"srv-{resource_id}"}
        self.owned[resource_id] = Owned(resource_id, "ACTIVE", details)
        return details

    def list_owned(self) -> list[Owned]:
        self.listings += 1
        if self.fail_list is not None:
            raise self.fail_list
        return list(self.owned.values())

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        self.destroyed.append(resource_id)
        if self.fail_destroy is not None:
            raise self.fail_destroy
        self.owned.pop(resource_id, None)


class FakeBackfillSite(FakeSite):
    """FakeSite whose owners wait for `queue` (Capability.OWNERS)."""

    capabilities = frozenset({Capability.OWNERS})

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.queue = OwnerQueue(pending_nodes=0, free_nodes=0)
        self.fail_queue: Exception | None = None

    def owner_queue(self) -> OwnerQueue:
        if self.fail_queue is not None:
            raise self.fail_queue
        return self.queue


class FakeSlots:
    """Test double of tide.loop.Slots: returns `slots`, or raises `fail`."""

    def __init__(self) -> None:
        self.slots: dict[str, SlotState] = {}
        self.fail: Exception | None = None
        self.fail_withdraw: Exception | None = None
        self.withdrawn: list[str] = []

    def observe(self) -> Mapping[str, SlotState]:
        if self.fail is not None:
            raise self.fail
        return dict(self.slots)

    def withdraw(self, resource_id: str) -> None:
        self.withdrawn.append(resource_id)
        if self.fail is not None:
            raise self.fail
        if self.fail_withdraw is not None:
            raise self.fail_withdraw
        self.slots.pop(resource_id, None)


class FakeStartds:
    """Test double of tide.htcondor.startds.Startds over FakeSlots: a drain of an
    advertised startd with no claimed slot completes at once (its slots turn
    "Drained"), as HTCondor's does; one with jobs stays draining."""

    def __init__(self, slots: FakeSlots) -> None:
        self.slots = slots
        self.drains: list[str] = []
        self.cancels: list[tuple[str, str]] = []
        self.fail: Exception | None = None
        self.keep_draining = False  # a drain never completes (jobs retiring)
        self.claimed: set[str] = set()  # startds holding a claim the collector does not show
        self.later = False  # the startd acts later, not in the call (OpenStack's metadata)

    def drain(self, site: str, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        if self.fail is not None:
            raise self.fail
        slot = self.slots.slots.get(resource_id)
        if slot is None:
            raise SiteError(f"{resource_id}: no startd", retryable=True)
        if self.later:
            self.drains.append(resource_id)
            return f"req-{len(self.drains)}"
        if only_idle and resource_id in self.claimed:  # a claim the collector did not show
            raise DrainRefused(f"the startd of {resource_id} holds a claim: drain refused")
        self.drains.append(resource_id)
        done = slot.claimed_slots == 0 and not self.keep_draining
        self.slots.slots[resource_id] = SlotState(True, slot.claimed_slots, done, draining=True)
        return f"req-{len(self.drains)}"

    def cancel_drain(self, site: str, resource_id: str, request_id: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.cancels.append((resource_id, request_id))
        slot = self.slots.slots[resource_id]
        self.slots.slots[resource_id] = SlotState(True, slot.claimed_slots, False)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class World:
    """A controller over fake sites "a" and "b", a real store and a fake clock."""

    def __init__(
        self,
        store: Store,
        sites: tuple[str, ...] = ("a",),
        *,
        backfill: bool = False,
        budget: BudgetRule | None = None,
    ) -> None:
        self.store = store
        self.clock = Clock()
        self.slots = FakeSlots()
        self.startds = FakeStartds(self.slots)
        self.demand: tuple[Demand, ...] = ()
        self.complete = True
        kind = FakeBackfillSite if backfill else FakeSite
        self.sites = {name: kind(name) for name in sites}
        for site in self.sites.values():
            site.store = store
        self.counter = 0
        self.metrics = Metrics(sites)
        self.controller = Controller(
            sites={
                name: (Site(name, Shape(4, 8192, 10000), LIMITS, budget=budget), site)
                for name, site in self.sites.items()
            },
            store=store,
            demand=lambda: (self.demand, self.complete),
            slots=self.slots,
            startds=self.startds,
            metrics=self.metrics,
            clock=self.clock,
            new_id=self._new_id,
        )

    def _new_id(self, site: str) -> str:
        self.counter += 1
        return f"tide-{site}-{self.counter:08x}"

    def want(self, jobs: int, sites: tuple[str, ...] = ("a",)) -> None:
        self.demand = (Demand("s#1", jobs, 4, 8192, 100, sites),)

    def states(self) -> dict[str, State]:
        return {r.id: r.state for r in self.store.all()}


def _drain_request(store: Store, rid: str) -> str | None:
    r = store.get(rid)
    assert r is not None
    return r.drain_request


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state.sqlite3") as s:
        yield s


def running_world(store: Store, idle: bool = True) -> tuple[World, str]:
    """One resource at site a, RUNNING, with no claimed slot if idle."""
    w = World(store)
    w.want(1)
    w.controller.cycle()
    (rid,) = w.sites["a"].created
    w.slots.slots[rid] = SlotState(True, 0 if idle else 1)
    w.demand = ()
    w.clock.now += 1
    w.controller.cycle()
    assert w.states()[rid] is State.RUNNING
    assert w.sites["a"].created == [rid]
    return w, rid


def test_scale_up_records_requested_before_create(store: Store) -> None:
    w = World(store)
    w.want(2)
    plan = w.controller.cycle()
    site = w.sites["a"]
    assert len(site.created) == 2
    assert site.on_create == site.created  # the store held each id when create ran
    for rid in site.created:
        assert store.get(rid) is not None
        assert w.states()[rid] is State.BOOTING
        assert [t.to_state for t in store.history(rid)] == [State.REQUESTED, State.BOOTING]
        assert store.detail(rid) == {"server_id": f"srv-{rid}"}
    assert plan.actions[0].__class__.__name__ == "Create"


def test_failed_create_marks_failed_and_backs_off(store: Store) -> None:
    w = World(store)
    site = w.sites["a"]
    site.fail_create = SiteError("quota", retryable=True)
    w.want(2)
    w.controller.cycle()
    assert len(site.created) == 1  # stopped creating at that site this cycle
    rid = site.created[0]
    assert w.states()[rid] is State.FAILED
    assert w.controller.health("a").consecutive_failures == 1
    site.fail_create = None

    w.clock.now += 10  # inside the 30 s backoff
    w.controller.cycle()
    assert len(site.created) == 1
    # the failed one is cleaned up at the site: FAILED -> STOPPING -> GONE
    assert w.states()[rid] is State.GONE
    assert State.FAILED in [t.to_state for t in store.history(rid)]

    w.clock.now += 30  # backoff over
    w.controller.cycle()
    assert len(site.created) == 3
    assert w.controller.health("a").consecutive_failures == 1  # until a boot succeeds
    w.slots.slots[site.created[1]] = SlotState(True, 1)
    w.controller.cycle()
    assert w.controller.health("a").consecutive_failures == 0


def test_booting_becomes_running_when_advertised(store: Store) -> None:
    w = World(store)
    w.want(1)
    w.controller.cycle()
    (rid,) = w.sites["a"].created
    w.controller.cycle()
    assert w.states()[rid] is State.BOOTING
    w.slots.slots[rid] = SlotState(True, 0)  # idle: it serves the one idle job
    w.controller.cycle()
    assert w.states()[rid] is State.RUNNING
    assert len(w.sites["a"].created) == 1


def test_idle_past_timeout_is_drained_then_destroyed(store: Store) -> None:
    w, rid = running_world(store)
    w.clock.now += 10
    plan = w.controller.cycle()
    assert not plan.actions  # idle, but not for the idle timeout yet
    w.clock.now += 60
    plan = w.controller.cycle()
    assert [type(a) for a in plan.actions] == [Drain]
    assert w.states()[rid] is State.DRAINING
    w.clock.now += 1
    plan = w.controller.cycle()
    assert [type(a) for a in plan.actions] == [Destroy]
    assert w.states()[rid] is State.GONE
    assert w.sites["a"].destroyed == [rid]
    assert w.slots.withdrawn == [rid]  # its ads are taken out of the collector


def test_busy_resource_is_not_drained(store: Store) -> None:
    w, rid = running_world(store, idle=False)
    w.clock.now += 1000
    assert not w.controller.cycle().actions
    assert w.states()[rid] is State.RUNNING


def test_stopping_is_retried_after_a_failed_destroy(store: Store) -> None:
    w, rid = running_world(store)
    site = w.sites["a"]
    site.fail_destroy = SiteError("api down", retryable=True)
    w.clock.now += 100
    w.controller.cycle()  # drain
    w.controller.cycle()  # destroy fails
    assert w.states()[rid] is State.STOPPING
    w.controller.cycle()  # not retried at once: the API had trouble
    assert site.destroyed == [rid]
    w.clock.now += 2
    w.controller.cycle()  # retried after 2 s, fails again
    assert site.destroyed == [rid, rid]
    assert w.states()[rid] is State.STOPPING
    site.fail_destroy = None
    w.clock.now += 2
    w.controller.cycle()  # 4 s after the last failure: not yet
    assert site.destroyed == [rid, rid]
    w.clock.now += 2
    w.controller.cycle()
    assert w.states()[rid] is State.GONE
    assert site.destroyed == [rid, rid, rid]


@pytest.mark.parametrize("outage", ["demand", "slots", "demand-raises"])
def test_no_scale_down_of_running_when_blind(store: Store, outage: str) -> None:
    w, rid = running_world(store)
    w.clock.now += 100
    if outage == "demand":
        w.complete = False
    elif outage == "slots":
        w.slots.fail = RuntimeError("collector down")
    else:

        def broken() -> tuple[tuple[Demand, ...], bool]:
            raise RuntimeError("collector down")

        w.controller._demand = broken
    for _ in range(3):
        plan = w.controller.cycle()
        assert not [a for a in plan.actions if isinstance(a, Drain | Destroy)]
        w.clock.now += 100
    assert w.states()[rid] is State.RUNNING
    assert not w.sites["a"].destroyed


def test_draining_is_not_destroyed_when_slots_unknown(store: Store) -> None:
    w, rid = running_world(store)
    w.clock.now += 100
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING
    w.slots.fail = RuntimeError("collector down")
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING
    w.slots.fail = None
    w.controller.cycle()
    assert w.states()[rid] is State.GONE


def test_boot_timeout_waits_for_the_collector(store: Store) -> None:
    # Issue 11 (evidence, not assumption): only a boot seen never to register
    # is given up; while the collector cannot be seen it may be up and busy.
    w = World(store)
    w.want(1)
    w.controller.cycle()
    (rid,) = w.sites["a"].created
    w.slots.fail = RuntimeError("collector down")
    w.clock.now += LIMITS.boot_timeout_s + 1
    plan = w.controller.cycle()
    assert rid not in w.sites["a"].destroyed
    assert [h.why for h in plan.held_back] == ["boot timeout withheld: the collector cannot vouch"]
    w.slots.fail = None  # the collector answers, and has no ad of it: given up
    w.controller.cycle()
    assert rid in w.sites["a"].destroyed
    assert w.states()[rid] is State.GONE


def test_reconcile_vanished_and_orphans(store: Store) -> None:
    w = World(store)
    site = w.sites["a"]
    store.add("tide-a-00000001", "a", 1.0, "test")
    store.move("tide-a-00000001", State.BOOTING, 2.0, "test")
    site.owned["tide-a-99999999"] = Owned("tide-a-99999999", "ACTIVE", {"server_id": "x"})
    w.controller.reconcile()
    assert w.states()["tide-a-00000001"] is State.GONE
    assert store.history("tide-a-00000001")[-1].reason.startswith("vanished")
    # An orphan (a lost state file, an older Tide) may run jobs: it is adopted
    # with what its site says (here: not advertised, so booting), never
    # destroyed at once; its handle is recorded for its destroy.
    assert site.destroyed == []
    assert w.states()["tide-a-99999999"] is State.BOOTING
    assert store.detail("tide-a-99999999") == {"server_id": "x"}


def test_reconcile_keeps_listed_resources(store: Store) -> None:
    w = World(store)
    w.want(1)
    w.controller.cycle()
    (rid,) = w.sites["a"].created
    w.controller.reconcile()
    assert w.states()[rid] is State.BOOTING
    assert not w.sites["a"].destroyed


def test_reconcile_retries_a_site_whose_list_failed(store: Store) -> None:
    w = World(store, ("a", "b"))
    store.add("tide-a-00000001", "a", 1.0, "test")
    store.add("tide-b-00000001", "b", 1.0, "test")
    w.sites["a"].fail_list = SiteError("down", retryable=True)
    w.controller.reconcile()
    assert w.controller.reconcile_pending
    assert w.states()["tide-a-00000001"] is State.REQUESTED  # skipped, not guessed
    assert w.states()["tide-b-00000001"] is State.GONE
    w.sites["a"].fail_list = None
    w.controller.reconcile()
    assert not w.controller.reconcile_pending
    assert w.states()["tide-a-00000001"] is State.GONE


def test_one_site_raising_does_not_stop_another(store: Store) -> None:
    w = World(store, ("a", "b"))
    w.sites["a"].fail_create = RuntimeError("bug in adapter a")
    w.demand = (
        Demand("s#1", 1, 4, 8192, 100, ("a",)),
        Demand("s#2", 1, 4, 8192, 100, ("b",)),
    )
    w.controller.cycle()
    assert len(w.sites["b"].created) == 1
    assert w.states()[w.sites["b"].created[0]] is State.BOOTING
    assert w.states()[w.sites["a"].created[0]] is State.FAILED
    failures = w.metrics.site_failures.labels(site="a", operation="create")._value.get()
    assert failures == 1


def test_slots_from_ads_counts_claimed_dynamic_slots() -> None:
    ads = [
        {"TideResourceId": "r1", "SlotType": "Partitionable", "State": "Unclaimed"},
        {"TideResourceId": "r1", "SlotType": "Dynamic", "State": "Claimed", "Activity": "Busy"},
        {"TideResourceId": "r1", "SlotType": "Dynamic", "State": "Claimed", "Activity": "Busy"},
        # A claim its schedd keeps but runs nothing on is not a job.
        {"TideResourceId": "r2", "SlotType": "Dynamic", "State": "Claimed", "Activity": "Idle"},
        {"TideResourceId": "r2", "SlotType": "Partitionable", "State": "Unclaimed"},
        {"SlotType": "Partitionable", "State": "Claimed"},
    ]
    assert slots_from_ads(ads) == {"r1": SlotState(True, 2), "r2": SlotState(True, 0)}


def test_a_resource_ends_at_the_earliest_end_its_ads_advertise() -> None:
    ads = [
        {"TideResourceId": "r1", "SlotType": "Partitionable", "TideEndTime": 2000},
        {"TideResourceId": "r1", "SlotType": "Dynamic", "TideEndTime": 1500},
        {"TideResourceId": "r2", "SlotType": "Partitionable", "TideEndTime": "soon"},
        {"TideResourceId": "r3", "SlotType": "Partitionable", "TideEndTime": True},
    ]
    ends = {rid: s.ends_at for rid, s in slots_from_ads(ads).items()}
    assert ends == {"r1": 1500.0, "r2": None, "r3": None}  # a number or nothing


def _pslot(rid: str, state: str, children: list[tuple[str, str]]) -> dict[str, object]:
    return {
        "TideResourceId": rid,
        "SlotType": "Partitionable",
        "State": state,
        "PslotRollupInformation": True,
        "ChildState": [s for s, _ in children],
        "ChildActivity": [a for _, a in children],
    }


def test_a_busy_machine_whose_dynamic_slot_ads_vanished_stays_busy() -> None:
    """Someone invalidated the dynamic slots' ads (or an update was lost):
    the partitionable slot's own roll-up still says a job runs there."""
    ads = [_pslot("r1", "Unclaimed", [("Claimed", "Busy"), ("Claimed", "Idle")])]
    assert slots_from_ads(ads) == {"r1": SlotState(True, 1)}


def test_a_drain_is_not_over_while_the_partitionable_slot_has_a_child() -> None:
    """Every ad left says Drained, but the partitionable slot still holds a
    retiring job: draining, not drained (giving it back would kill the job)."""
    ads = [_pslot("r1", "Drained", [("Claimed", "Retiring")])]
    assert slots_from_ads(ads) == {"r1": SlotState(True, 1, drained=False, draining=True)}
    ads = [_pslot("r1", "Drained", [])]
    assert slots_from_ads(ads) == {"r1": SlotState(True, 0, drained=True, draining=True)}


def test_the_larger_of_the_two_claimed_counts_holds() -> None:
    ads = [
        _pslot("r1", "Unclaimed", [("Claimed", "Busy")]),  # an update behind its children
        {"TideResourceId": "r1", "SlotType": "Dynamic", "State": "Claimed", "Activity": "Busy"},
        {"TideResourceId": "r1", "SlotType": "Dynamic", "State": "Claimed", "Activity": "Busy"},
    ]
    assert slots_from_ads(ads) == {"r1": SlotState(True, 2)}


def test_run_forever_survives_a_failing_cycle(store: Store) -> None:
    w = World(store)
    stop = threading.Event()
    calls: list[str] = []
    real_cycle = w.controller.cycle

    def cycle() -> object:
        calls.append("cycle")
        if len(calls) == 1:
            raise RuntimeError("boom")
        if len(calls) >= 3:
            stop.set()
        return real_cycle()

    w.controller.cycle = cycle  # type: ignore[method-assign,assignment]
    run_forever(w.controller, 0.0, stop)
    assert len(calls) == 3


def test_preview_changes_nothing(store: Store) -> None:
    w = World(store)
    w.want(1)
    w.controller.cycle()
    (rid,) = w.sites["a"].created
    w.slots.slots[rid] = SlotState(True, 0)
    w.want(3)
    plan = w.controller.preview()
    assert [type(a).__name__ for a in plan.actions] == ["Create"]
    assert w.sites["a"].created == [rid]  # no create called
    assert w.states() == {rid: State.BOOTING}  # not even the move to RUNNING


def test_drain_tells_the_startd_and_waits_for_it(store: Store) -> None:
    w, rid = running_world(store)
    w.slots.slots[rid] = SlotState(True, 0)
    w.clock.now += 100
    w.controller.cycle()  # drain: written DRAINING, then the startd is told
    assert w.states()[rid] is State.DRAINING
    assert w.startds.drains == [rid]
    assert _drain_request(store, rid) == "req-1"
    # A job matched just before the drain: the startd keeps running it.
    w.slots.slots[rid] = SlotState(True, 1, drained=False)
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING
    assert not w.sites["a"].destroyed
    w.slots.slots[rid] = SlotState(True, 0, drained=True)  # the job finished
    w.controller.cycle()
    assert w.states()[rid] is State.GONE
    assert w.startds.drains == [rid]  # told once


def test_a_failed_startd_drain_is_told_again(store: Store) -> None:
    w, rid = running_world(store)
    w.startds.fail = RuntimeError("startd unreachable")
    w.clock.now += 100
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING
    assert _drain_request(store, rid) is None
    w.controller.cycle()  # still failing: not destroyed, the startd is not drained
    assert w.states()[rid] is State.DRAINING
    w.startds.fail = None
    w.controller.cycle()  # told again, drains at once (idle)
    assert w.startds.drains == [rid]
    w.controller.cycle()
    assert w.states()[rid] is State.GONE
    failures = w.metrics.site_failures.labels(site="a", operation="drain")._value.get()
    assert failures == 2


def test_undrain_cancels_the_startd_drain_before_recording_running(store: Store) -> None:
    w, rid = running_world(store)
    w.clock.now += 100
    w.slots.slots[rid] = SlotState(True, 0)
    w.startds.keep_draining = True
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING
    w.startds.fail = RuntimeError("startd unreachable")
    w.want(1)
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING  # cancel failed: not RUNNING yet
    w.startds.fail = None
    w.controller.cycle()
    assert w.startds.cancels == [(rid, "req-1")]
    assert w.states()[rid] is State.RUNNING
    assert _drain_request(store, rid) is None


def test_an_operator_drain_is_carried_out_and_not_undone(store: Store) -> None:
    w, rid = running_world(store)
    w.slots.slots[rid] = SlotState(True, 1)  # busy: the operator drains it anyway
    store.request_drain(rid, w.clock.now)  # as `tide drain` does
    w.want(1)
    w.controller.cycle()
    assert w.startds.drains == [rid]  # the daemon told its startd
    assert w.states()[rid] is State.DRAINING  # demand did not undo it
    w.slots.slots[rid] = SlotState(True, 0, drained=True)
    w.controller.cycle()
    assert w.states()[rid] is State.GONE


def test_boot_timeouts_feed_the_backoff(store: Store) -> None:
    w = World(store)
    w.want(1)
    w.controller.cycle()
    (first,) = w.sites["a"].created
    w.clock.now += LIMITS.boot_timeout_s + 1
    w.controller.cycle()  # destroyed as a failed boot; no new create while backing off
    assert w.states()[first] is State.GONE
    assert w.controller.health("a").consecutive_failures == 1
    assert w.sites["a"].created == [first]
    w.clock.now += LIMITS.backoff_base_s
    w.controller.cycle()
    assert len(w.sites["a"].created) == 2


def test_reconcile_spares_a_young_boot_the_site_does_not_list_yet(store: Store) -> None:
    w = World(store)
    w.want(1)
    w.controller.cycle()
    (rid,) = w.sites["a"].created
    w.sites["a"].owned.clear()  # the site's listing lags behind its create call
    w.controller.reconcile()
    assert w.states()[rid] is State.BOOTING
    w.clock.now += 121
    w.controller.reconcile()
    assert w.states()[rid] is State.GONE


def test_idle_clocks_survive_a_restart(store: Store) -> None:
    w, _rid = running_world(store)
    started_idle = w.clock.now
    w.clock.now += 40
    w.controller.cycle()
    again = Controller(
        sites=w.controller._sites,
        store=store,
        demand=lambda: ((), True),
        slots=w.slots,
        startds=w.startds,
        metrics=None,
        clock=w.clock,
        new_id=lambda site: "unused",
    )
    w.clock.now = started_idle + LIMITS.idle_timeout_s
    plan = again.cycle()
    assert [type(a) for a in plan.actions] == [Drain]  # 50 s idle in all, across the restart


def test_a_boot_its_site_reports_failed_is_destroyed_at_once(store: Store) -> None:
    w = World(store)
    w.want(1)
    w.controller.cycle()
    (rid,) = w.sites["a"].created
    w.sites["a"].owned[rid] = Owned(rid, "ERROR", {"server_id": f"srv-{rid}"}, failed=True)
    w.clock.now += 5  # long before the boot timeout
    plan = w.controller.cycle()
    (destroy,) = plan.actions
    assert isinstance(destroy, Destroy)
    assert destroy.reason.startswith("boot failed at the site")
    assert w.states()[rid] is State.GONE
    assert w.controller.health("a").consecutive_failures == 1  # and the site backs off


def test_a_boot_that_ended_failed_at_its_site_is_a_failed_boot_and_then_gone(
    store: Store,
) -> None:
    """A Slurm pilot whose daemons failed: the site lists only a record of it."""
    w = World(store)
    w.want(1)
    w.controller.cycle()
    (rid,) = w.sites["a"].created
    ended = Owned(rid, "FAILED", {"job_id": "71"}, failed=True, placed=False, ended=True)
    w.sites["a"].owned[rid] = ended
    w.clock.now += 5  # long before the boot timeout
    (destroy,) = w.controller.cycle().actions
    assert isinstance(destroy, Destroy)
    assert destroy.reason.startswith("boot failed at the site")
    assert w.controller.health("a").consecutive_failures == 1
    w.sites["a"].owned[rid] = ended  # its site still keeps the record: it is gone all the same
    w.clock.now += 5
    w.controller.cycle()
    assert w.states()[rid] is State.GONE


def test_a_running_resource_of_which_only_a_record_is_left_is_gone(store: Store) -> None:
    w, rid = running_world(store)
    w.sites["a"].owned[rid] = Owned(rid, "FAILED", {}, failed=True, placed=False, ended=True)
    w.slots.slots = {}
    w.clock.now += 1
    w.controller.reconcile()
    assert w.states()[rid] is State.GONE
    assert store.history(rid)[-1].reason.startswith("vanished")
    assert w.controller.health("a").consecutive_failures == 0  # it booted: no failed boot


def test_a_record_of_an_ended_resource_is_no_orphan(store: Store) -> None:
    w = World(store)
    w.sites["a"].owned["tide-a-99999999"] = Owned(
        "tide-a-99999999", "FAILED", {}, failed=True, placed=False, ended=True
    )
    w.controller.reconcile()
    assert "tide-a-99999999" not in w.states()
    assert w.sites["a"].destroyed == []


def test_a_collector_that_lost_every_ad_never_costs_a_live_worker(store: Store) -> None:
    w, rid = running_world(store, idle=False)
    w.slots.slots = {}  # the collector restarted: it answers, but knows no slot yet
    for _ in range(5):
        w.clock.now += 100  # far past the idle timeout
        plan = w.controller.cycle()
        assert not [a for a in plan.actions if isinstance(a, Drain | Destroy)]
    assert w.states()[rid] is State.RUNNING
    w.slots.slots[rid] = SlotState(True, 1)  # the startd's next update
    w.controller.cycle()
    w.slots.slots = {}  # and if it never comes back, it is given back as lost
    w.controller.cycle()
    w.clock.now += 900
    plan = w.controller.cycle()
    assert [a.reason for a in plan.actions if isinstance(a, Destroy)] == [
        "lost: no slot advertised for 900s"
    ]
    assert w.states()[rid] is State.GONE


def test_a_drain_the_startd_takes_later_is_given_back_only_once_drained(store: Store) -> None:
    # A site whose startds act on the request after the call (OpenStack: the
    # server reads it from its metadata): the call's success is no evidence.
    w, rid = running_world(store)
    w.startds.later = True
    w.clock.now += 100
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING
    assert _drain_request(store, rid) == "req-1"
    w.slots.slots[rid] = SlotState(True, 1)  # a job matched before the startd got it
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING  # kept while the job runs
    w.slots.slots[rid] = SlotState(True, 1, False, draining=True)  # the startd drains now
    w.controller.cycle()
    assert not w.sites["a"].destroyed
    w.slots.slots[rid] = SlotState(True, 0, True, draining=True)  # done
    w.controller.cycle()
    assert w.states()[rid] is State.GONE


def test_a_drain_the_startd_never_shows_is_told_again(store: Store) -> None:
    # The startd refused an idle drain (a job got there first) or never read
    # the request: after redrain_after_s it is told again, with a new request.
    w, rid = running_world(store)
    w.startds.later = True
    w.clock.now += 100
    w.controller.cycle()
    w.slots.slots[rid] = SlotState(True, 1)
    w.clock.now += 30
    w.controller.cycle()
    assert w.startds.drains == [rid]
    w.clock.now += 31
    w.controller.cycle()
    assert w.startds.drains == [rid, rid]
    assert _drain_request(store, rid) == "req-2"
    assert w.states()[rid] is State.DRAINING


def test_a_draining_resource_whose_ads_vanish_is_not_taken_for_drained(store: Store) -> None:
    # Issue 11, point 1: a collector that restarts empty (or ads withdrawn)
    # says nothing about the jobs there; only "Drained", or lost_timeout_s.
    w, rid = running_world(store)
    w.startds.later = True
    w.clock.now += 100
    w.controller.cycle()
    del w.slots.slots[rid]  # the collector lost it
    for _ in range(3):
        w.clock.now += 10
        w.controller.cycle()
        assert w.states()[rid] is State.DRAINING  # no ad: not taken for idle
    assert not w.sites["a"].destroyed
    w.slots.slots[rid] = SlotState(True, 1)  # the startd's next update: a job runs
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING
    w.slots.slots[rid] = SlotState(True, 0)  # no claimed slot, but not Drained: kept
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING
    w.slots.slots[rid] = SlotState(True, 0, True, draining=True)
    w.controller.cycle()
    assert w.states()[rid] is State.GONE


# --- backfill sites ----------------------------------------------------------


def backfill_world(
    store: Store, busy: tuple[int, ...]
) -> tuple[World, FakeBackfillSite, list[str]]:
    """Site a as a backfill site with one running resource per entry of
    `busy` (its claimed slots)."""
    w = World(store, backfill=True)
    site = w.sites["a"]
    assert isinstance(site, FakeBackfillSite)
    w.want(len(busy))
    w.controller.cycle()
    w.demand = ()
    rids = list(site.created)
    for rid, claimed in zip(rids, busy, strict=True):
        w.slots.slots[rid] = SlotState(True, claimed)
    w.clock.now += 1
    w.controller.cycle()
    assert all(w.states()[rid] is State.RUNNING for rid in rids)
    return w, site, rids


def test_waiting_owners_get_the_least_busy_resource_back(store: Store) -> None:
    w, site, (r1, r2) = backfill_world(store, busy=(2, 1))
    site.queue = OwnerQueue(pending_nodes=1, free_nodes=0)
    w.want(10)  # grid demand too: owners come first
    w.clock.now += 1
    plan = w.controller.cycle()
    assert [type(a).__name__ for a in plan.actions] == ["Evacuate"]
    assert w.slots.withdrawn == [r2]  # no new match there (after its SIGTERM: owners first)
    assert site.destroyed == [r2]
    # Told to go, it holds its node while HTCondor vacates its jobs: STOPPING
    # until its site no longer lists it (issue 11, point 4).
    assert w.states()[r2] is State.STOPPING
    assert w.states()[r1] is State.RUNNING
    assert len(site.created) == 2  # no boot while owners wait
    w.clock.now += 1
    w.controller.cycle()
    assert w.states()[r2] is State.GONE  # its site lists it no more


def test_boots_resume_after_the_owners_quiet_time(store: Store) -> None:
    w, site, _ = backfill_world(store, busy=(1,))
    site.queue = OwnerQueue(pending_nodes=1, free_nodes=1)
    w.want(2)
    w.controller.cycle()
    site.queue = OwnerQueue(pending_nodes=0, free_nodes=0)
    w.clock.now += LIMITS.owner_quiet_s - 1
    w.controller.cycle()
    assert len(site.created) == 1  # still quiet time
    w.clock.now += 1
    w.controller.cycle()
    assert len(site.created) == 3  # two machines for two jobs: the busy one serves none


def test_an_unreadable_owner_queue_blocks_boots_and_evacuates_nothing(store: Store) -> None:
    w, site, (rid,) = backfill_world(store, busy=(1,))
    site.fail_queue = SiteError("squeue: connection refused", retryable=True)
    w.want(3)
    w.clock.now += 1
    plan = w.controller.cycle()
    assert plan.actions == ()
    assert w.states()[rid] is State.RUNNING
    assert (
        w.metrics.registry.get_sample_value(
            "tide_site_failures_total", {"site": "a", "operation": "owners"}
        )
        == 1
    )


def test_an_operator_evacuation_is_done_once_and_pauses_the_site(store: Store) -> None:
    w, site, rids = backfill_world(store, busy=(1, 0))
    store.request_evacuate("a", None)  # as `tide evacuate` does
    w.clock.now += 1
    w.controller.cycle()
    assert sorted(site.destroyed) == sorted(rids)
    assert store.site_detail("a")["evacuate"] is None  # done: not repeated
    w.want(2)
    w.clock.now += 1000
    w.controller.cycle()
    assert len(site.created) == 2  # paused: no boot until `tide resume`
    store.request_resume("a")
    w.controller.cycle()
    assert len(site.created) == 4


def test_a_backfill_site_is_listed_every_cycle(store: Store) -> None:
    # Slurm took a node back by itself (preemption): its pilot is gone at
    # once, not at the next full reconcile, and demand gets a new one.
    w, site, (rid,) = backfill_world(store, busy=(1,))
    del site.owned[rid]
    del w.slots.slots[rid]
    w.want(1)
    w.clock.now += 1
    w.controller.cycle()
    assert w.states()[rid] is State.GONE
    assert len(site.created) == 2


def test_a_backfill_site_is_listed_once_per_cycle_with_boots_in_flight(store: Store) -> None:
    w = World(store, backfill=True)
    w.want(1)
    w.controller.cycle()  # a boot in flight now
    site = w.sites["a"]
    before = site.listings
    w.clock.now += 1
    w.controller.cycle()
    assert site.listings == before + 1  # reconcile's listing serves the boot check too


def surplus_boot(store: Store) -> tuple[World, str]:
    """A boot at a site that drains its startds, no longer wanted."""
    w = World(store)
    w.sites["a"].capabilities = frozenset({Capability.DRAIN})
    w.want(1)
    w.controller.cycle()
    (rid,) = w.sites["a"].created
    w.demand = ()
    w.clock.now += 1
    return w, rid


def test_a_surplus_boot_is_told_to_drain_if_idle_before_it_is_destroyed(store: Store) -> None:
    # A startd still starting (OpenStack: the server reads the request from
    # its metadata before its first match) takes no job once up, even if the
    # destroy call hangs and lands late.
    w, rid = surplus_boot(store)
    calls: list[str] = []
    drain, destroy = w.startds.drain, w.sites["a"].destroy
    w.startds.later = True
    w.slots.slots[rid] = SlotState(False, 0)  # known to the fake startds, not advertised

    def drained(site: str, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        calls.append(f"drain only_idle={only_idle}")
        return drain(site, resource_id, reason, only_idle=only_idle)

    def destroyed(resource_id: str, details: Mapping[str, str]) -> None:
        calls.append("destroy")
        destroy(resource_id, details)

    w.startds.drain = drained  # type: ignore[method-assign]
    w.sites["a"].destroy = destroyed  # type: ignore[method-assign]
    w.controller.cycle()
    assert calls == ["drain only_idle=True", "destroy"]
    assert w.states()[rid] is State.GONE


def test_a_surplus_boot_whose_startd_took_a_job_meanwhile_is_kept(store: Store) -> None:
    w, rid = surplus_boot(store)
    w.startds.fail = DrainRefused(f"the startd of {rid} holds a claim: drain refused")
    w.controller.cycle()
    assert w.sites["a"].destroyed == []
    assert w.states()[rid] is State.BOOTING  # seen running once its slot is advertised


def test_a_surplus_boot_whose_drain_call_hangs_is_destroyed_only_later(store: Store) -> None:
    w, rid = surplus_boot(store)
    w.startds.fail = DeadlineExceeded("a: drain: no answer within 30s")
    w.controller.cycle()
    assert w.sites["a"].destroyed == []
    w.startds.fail = None  # no startd up yet: nothing can run there, destroyed
    w.clock.now += 1
    w.controller.cycle()
    assert w.sites["a"].destroyed == [rid]
    assert w.states()[rid] is State.GONE


def test_a_pilot_told_to_go_that_runs_jobs_later_is_drained_not_vacated(store: Store) -> None:
    # Told to go before a create that outlived its deadline submitted it (the
    # signal found no job), it runs jobs now and no owner waits: SIGTERM again
    # would vacate them. Past the recheck it is drained instead (issue 11, point 1).
    w, site, (rid,) = backfill_world(store, busy=(0,))
    site.queue = OwnerQueue(pending_nodes=1, free_nodes=0)
    w.clock.now += 1
    w.controller.cycle()
    assert site.destroyed == [rid]
    site.queue = OwnerQueue(pending_nodes=0, free_nodes=0)
    site.owned[rid] = Owned(rid, "RUNNING")  # still listed: the late pilot
    w.slots.slots[rid] = SlotState(True, 1)
    w.slots.fail = SiteError("collector: no answer", retryable=True)
    w.clock.now += 61  # past the recheck, and the collector cannot vouch
    w.controller.cycle()
    assert site.destroyed == [rid]  # no second SIGTERM while no owner waits
    w.slots.fail = None
    w.clock.now += 1
    w.controller.cycle()
    assert w.states()[rid] is State.DRAINING
    assert site.destroyed == [rid]


class _TokenSite(FakeSite):
    """A FakeSite whose workers have tokens of their own, renewed when asked."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.issued: dict[str, float] = {}
        self.renewed: list[list[str]] = []
        self.fail_renew: Exception | None = None
        self.now = 0.0

    def tokens_due(self, resource_ids: Sequence[str], now: float) -> list[str]:
        self.now = now
        return [r for r in resource_ids if now - self.issued.get(r, float("-inf")) >= 50]

    def renew_tokens(self, resource_ids: Sequence[str]) -> None:
        self.renewed.append(list(resource_ids))
        if self.fail_renew is not None:
            raise self.fail_renew
        for r in resource_ids:
            self.issued[r] = self.now


def test_live_workers_tokens_are_renewed_when_due_and_a_failure_is_asked_again(
    store: Store,
) -> None:
    w, rid = running_world(store)
    site = _TokenSite("a")
    site.owned = w.sites["a"].owned
    w.controller._sites["a"] = (w.controller._sites["a"][0], site)
    w.slots.slots[rid] = SlotState(True, 1)  # busy: no decision touches it
    site.fail_renew = SiteError("engine away", retryable=True)
    w.clock.now += 1
    w.controller.cycle()
    assert site.renewed == [[rid]]
    assert w.metrics.site_failures.labels(site="a", operation="renew")._value.get() == 1
    site.fail_renew = None
    w.clock.now += 1
    w.controller.cycle()  # due still: asked again
    assert site.renewed == [[rid], [rid]]
    w.clock.now += 10
    w.controller.cycle()  # renewed 10 s ago: not due
    assert len(site.renewed) == 2
    w.clock.now += 50
    w.controller.cycle()
    assert site.renewed[-1] == [rid]
