"""The controller's policy (controller/tide/policy.py): snapshots built by
hand, exact plans expected. Time is plain seconds around NOW."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import pytest

from tide.model import (
    Action,
    Create,
    Demand,
    Destroy,
    Drain,
    Plan,
    Resource,
    Shape,
    Site,
    SiteHealth,
    SiteLimits,
    Snapshot,
    State,
    Undrain,
)
from tide.policy import decide

NOW = 100_000.0
SHAPE = Shape(cpus=8, memory_mb=16_000, disk_mb=100_000)


def site(
    name: str = "a",
    shape: Shape = SHAPE,
    *,
    max_resources: int = 100,
    max_booting: int = 100,
    boot_timeout_s: float = 600,
    idle_timeout_s: float = 300,
    backoff_base_s: float = 10,
    backoff_max_s: float = 100,
) -> Site:
    limits = SiteLimits(
        max_resources=max_resources,
        max_booting=max_booting,
        boot_timeout_s=boot_timeout_s,
        idle_timeout_s=idle_timeout_s,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
    )
    return Site(name=name, shape=shape, limits=limits)


def jobs(
    n: int,
    *,
    key: str = "schedd#1",
    cpus: int = 1,
    memory_mb: int = 1_000,
    disk_mb: int = 1_000,
    sites: tuple[str, ...] = ("a",),
) -> Demand:
    return Demand(
        key=key, idle_jobs=n, cpus=cpus, memory_mb=memory_mb, disk_mb=disk_mb, sites=sites
    )


def res(
    rid: str,
    state: State,
    *,
    site: str = "a",
    since: float = NOW - 10,
    created: float | None = None,
    advertised: bool = False,
    claimed: int = 0,
    idle_since: float | None = None,
) -> Resource:
    return Resource(
        id=rid,
        site=site,
        state=state,
        state_since=since,
        created_at=since if created is None else created,
        advertised=advertised,
        claimed_slots=claimed,
        idle_since=idle_since,
    )


def booting(rid: str, *, created: float = NOW - 10, site: str = "a") -> Resource:
    return res(rid, State.BOOTING, site=site, since=created, created=created)


def idle(rid: str, *, for_s: float = 10, site: str = "a") -> Resource:
    return res(rid, State.RUNNING, site=site, advertised=True, idle_since=NOW - for_s)


def busy(rid: str, *, site: str = "a", state: State = State.RUNNING) -> Resource:
    r = res(rid, state, site=site, advertised=True, claimed=2)
    if state is State.DRAINING:  # its startd accepted the drain and drains
        r = replace(r, drain_request="req-1", drain_told_at=NOW - 5, draining=True)
    return r


def draining(rid: str, *, site: str = "a", drained: bool = True, held: bool = False) -> Resource:
    """A draining resource whose startd accepted the drain 5 s ago."""
    r = res(rid, State.DRAINING, site=site, advertised=True, idle_since=NOW - 5)
    return replace(
        r,
        drained=drained,
        held=held,
        drain_request="req-1",
        drain_told_at=NOW - 5,
        draining=True,
    )


def snap(
    *,
    sites: tuple[Site, ...] = (site(),),
    demand: tuple[Demand, ...] = (),
    resources: tuple[Resource, ...] = (),
    health: dict[str, SiteHealth] | None = None,
    now: float = NOW,
) -> Snapshot:
    return Snapshot(
        now=now,
        sites={s.name: s for s in sites},
        demand=demand,
        resources=resources,
        health=health or {},
    )


def bare(plan: Plan) -> list[tuple[str, str, int | None]]:
    """The actions without their reasons: (kind, site or resource, count)."""
    out: list[tuple[str, str, int | None]] = []
    for a in plan.actions:
        if isinstance(a, Create):
            out.append(("create", a.site, a.count))
        else:
            out.append((type(a).__name__.lower(), a.resource, None))
    return out


def reasons(plan: Plan) -> list[str]:
    return [a.reason for a in plan.actions]


# --- scale up ------------------------------------------------------------


def test_nothing_to_do_gives_an_empty_plan() -> None:
    assert decide(snap()) == Plan(actions=(), unmatched=())


def test_no_demand_creates_nothing_even_with_room() -> None:
    plan = decide(snap(resources=(busy("r1"),)))
    assert plan == Plan(actions=(), unmatched=())


def test_scales_up_from_zero_at_once() -> None:
    plan = decide(snap(demand=(jobs(12, cpus=4),)))
    assert plan.actions == (
        Create("a", 6, "demand: 12 idle jobs need 6 machines; 0 idle, 0 undrained, 0 booting"),
    )
    assert plan.unmatched == ()


@pytest.mark.parametrize(
    ("n", "cpus", "memory_mb", "disk_mb", "machines"),
    [
        (8, 1, 1_000, 1_000, 1),  # cpu-bound, exactly one machine
        (9, 1, 1_000, 1_000, 2),  # one job over
        (10, 1, 5_000, 1_000, 4),  # memory-bound: 3 per machine
        (10, 1, 1_000, 40_000, 5),  # disk-bound: 2 per machine
        (7, 8, 16_000, 100_000, 7),  # one job fills a machine
        (394, 2, 2_000, 1_000, 99),  # 4 per machine
        (50, 0, 0, 0, 1),  # requests nothing: one machine holds them all
    ],
)
def test_packing_per_autocluster(
    n: int, cpus: int, memory_mb: int, disk_mb: int, machines: int
) -> None:
    demand = jobs(n, cpus=cpus, memory_mb=memory_mb, disk_mb=disk_mb)
    assert bare(decide(snap(demand=(demand,)))) == [("create", "a", machines)]


def test_autoclusters_share_the_last_machine_opened() -> None:
    # 3 x 2 cpus leave 2 cpus in the machine: the 1 x 2 cpus job fits there.
    fits = (jobs(3, key="k1", cpus=2), jobs(1, key="k2", cpus=2))
    assert bare(decide(snap(demand=fits))) == [("create", "a", 1)]
    # A 3-cpu job does not: a second machine.
    spills = (jobs(3, key="k1", cpus=2), jobs(1, key="k2", cpus=3))
    assert bare(decide(snap(demand=spills))) == [("create", "a", 2)]


def test_jobs_bigger_than_the_shape_cannot_go_there() -> None:
    big = jobs(4, cpus=16, sites=("a", "b"))
    plan = decide(snap(sites=(site("a"), site("b", Shape(32, 64_000, 200_000))), demand=(big,)))
    assert bare(plan) == [("create", "b", 2)]  # 2 per 32-cpu machine
    assert plan.unmatched == ()


def test_jobs_bigger_than_every_listed_shape_are_unmatched() -> None:
    big = jobs(4, memory_mb=20_000)
    assert decide(snap(demand=(big,))) == Plan(actions=(), unmatched=(big,))


def test_capacity_already_there_or_coming_is_subtracted() -> None:
    # 5 machines needed; 1 idle running, 1 booting, the busy one counts as full.
    plan = decide(snap(demand=(jobs(40),), resources=(idle("i1"), booting("b1"), busy("x1"))))
    assert plan.actions == (
        Create("a", 3, "demand: 40 idle jobs need 5 machines; 1 idle, 0 undrained, 1 booting"),
    )


def test_enough_capacity_creates_nothing() -> None:
    plan = decide(snap(demand=(jobs(16),), resources=(idle("i1"), booting("b1"))))
    assert plan.actions == ()


# --- limits --------------------------------------------------------------


def test_quota_caps_alive_resources() -> None:
    resources = (busy("x1"), busy("x2", state=State.DRAINING), booting("b1"))
    plan = decide(snap(sites=(site(max_resources=5),), demand=(jobs(80),), resources=resources))
    # 10 machines needed; 3 of the 5 allowed are alive already.
    assert plan.actions == (
        Create(
            "a",
            2,
            "demand: 24 idle jobs need 3 machines (quota full); 0 idle, 0 undrained, 1 booting",
        ),
    )


def test_quota_already_full_creates_nothing() -> None:
    resources = tuple(busy(f"x{i}") for i in range(5))
    plan = decide(snap(sites=(site(max_resources=5),), demand=(jobs(80),), resources=resources))
    assert plan.actions == ()
    assert plan.unmatched == ()  # waiting for room, not unmatched


def test_boots_in_flight_are_capped() -> None:
    resources = (booting("b1"), res("q1", State.REQUESTED))
    plan = decide(snap(sites=(site(max_booting=3),), demand=(jobs(80),), resources=resources))
    assert bare(plan) == [("create", "a", 1)]
    assert plan.actions[0].reason.endswith("2 booting, 2 of 3 boots in flight")


def test_no_boot_room_creates_nothing() -> None:
    resources = (booting("b1"), booting("b2"))
    plan = decide(snap(sites=(site(max_booting=2),), demand=(jobs(80),), resources=resources))
    assert plan.actions == ()


def test_failed_and_gone_resources_hold_no_quota() -> None:
    resources = (
        res("f1", State.FAILED),
        res("s1", State.STOPPING),
        res("g1", State.GONE),
    )
    plan = decide(snap(sites=(site(max_resources=2),), demand=(jobs(16),), resources=resources))
    # ... and the plan cleans them up: a failed create and a destroy to retry.
    assert bare(plan) == [("create", "a", 2), ("destroy", "f1", None), ("destroy", "s1", None)]


@pytest.mark.parametrize(
    ("failures", "ago", "creates"),
    [
        (0, 0, True),  # healthy
        (1, 9, False),  # waits base = 10 s
        (1, 10, True),
        (3, 39, False),  # waits 10 * 2**2 = 40 s
        (3, 40, True),
        (10, 99, False),  # 10 * 2**9 capped at max = 100 s
        (10, 100, True),
        (10_000, 99, False),  # absurd counts do not overflow
    ],
)
def test_backoff_after_failed_boots(failures: int, ago: float, creates: bool) -> None:
    health = {"a": SiteHealth(consecutive_failures=failures, last_failure_at=NOW - ago)}
    plan = decide(snap(demand=(jobs(8),), health=health))
    assert bare(plan) == ([("create", "a", 1)] if creates else [])


def test_backoff_spills_multi_site_demand_to_the_next_site() -> None:
    health = {"a": SiteHealth(consecutive_failures=1, last_failure_at=NOW)}
    demand = (jobs(24, sites=("a", "b")),)
    resources = (idle("i1"),)  # a still uses what it has
    plan = decide(
        snap(sites=(site("a"), site("b")), demand=demand, resources=resources, health=health)
    )
    assert bare(plan) == [("create", "b", 2)]


# --- boots that never register -------------------------------------------


@pytest.mark.parametrize("state", [State.BOOTING, State.REQUESTED])
def test_boot_timeout_destroys_and_backs_off(state: State) -> None:
    stuck = res("late", state, since=NOW - 600)
    young = res("young", state, since=NOW - 599)
    plan = decide(snap(demand=(jobs(24),), resources=(stuck, young)))
    # A failed boot: no Create at that site this cycle; the loop then counts
    # it as a failure, so the site's backoff governs the next boots.
    assert bare(plan) == [("destroy", "late", None)]
    assert plan.actions[0].reason.startswith("boot timeout")


def test_an_advertised_boot_is_not_timed_out() -> None:
    up = res("up", State.BOOTING, since=NOW - 10_000, advertised=True)
    assert decide(snap(demand=(jobs(8),), resources=(up,))).actions == ()


# --- scale down ----------------------------------------------------------


def test_idle_past_the_timeout_is_drained() -> None:
    plan = decide(snap(resources=(idle("old", for_s=300), idle("new", for_s=299))))
    assert plan.actions == (
        Drain("old", "idle 300s, unneeded: 0 idle jobs need 0 machines, 2 idle"),
    )


def test_needed_idle_machines_are_not_drained() -> None:
    plan = decide(snap(demand=(jobs(8),), resources=(idle("i1", for_s=1_000),)))
    assert plan.actions == ()


def test_the_longest_idle_is_drained_first() -> None:
    resources = (idle("i1", for_s=400), idle("i2", for_s=900), idle("i3", for_s=600))
    plan = decide(snap(demand=(jobs(16),), resources=resources))
    assert bare(plan) == [("drain", "i2", None)]


@pytest.mark.parametrize("state", [State.RUNNING, State.DRAINING])
def test_busy_resources_are_never_drained_or_destroyed(state: State) -> None:
    long_busy = res("x", state, since=NOW - 1e6, advertised=True, claimed=1, idle_since=NOW - 1e6)
    if state is State.DRAINING:  # its startd accepted the drain
        long_busy = replace(long_busy, drain_request="req-1", drain_told_at=NOW - 5, draining=True)
    assert decide(snap(resources=(long_busy,))).actions == ()


def test_a_drained_resource_is_destroyed() -> None:
    plan = decide(snap(resources=(draining("d1"), busy("d2", state=State.DRAINING))))
    assert plan.actions == (Destroy("d1", "drained: no job left, demand needs it no more"),)


def test_a_draining_resource_waits_for_its_startd_to_finish_the_drain() -> None:
    # No claimed slot seen, but the startd has not reported "Drained" yet: a
    # job matched just before the drain may be starting there.
    plan = decide(snap(resources=(draining("d1", drained=False),)))
    assert plan.actions == ()


def test_a_live_resource_missing_from_the_collector_is_kept_until_lost() -> None:
    # A restarted collector has lost every ad for a while: the worker may be
    # running jobs, so it counts as busy (not free, not drained) ...
    for r in (draining("d1", drained=False), idle("i1"), busy("b1")):
        gone = replace(r, advertised=False, claimed_slots=0, lost_since=NOW - 899)
        assert bare(decide(snap(resources=(gone,)))) == []
        assert bare(decide(snap(demand=(jobs(8),), resources=(gone,)))) == [("create", "a", 1)]
        # ... until it has been missing for lost_timeout_s (900 s by default).
        lost = replace(gone, lost_since=NOW - 900)
        (action,) = decide(snap(resources=(lost,))).actions
        assert action == Destroy(r.id, "lost: no slot advertised for 900s")


def test_an_operator_drain_is_never_undone_by_demand() -> None:
    held = draining("d1", held=True, drained=False)
    plan = decide(snap(demand=(jobs(8),), resources=(held,)))
    assert bare(plan) == [("create", "a", 1)]  # demand gets a new machine instead
    plan = decide(snap(demand=(jobs(8),), resources=(replace(held, drained=True),)))
    assert bare(plan) == [("destroy", "d1", None), ("create", "a", 1)]
    assert plan.actions[0] == Destroy("d1", "operator drain done: no job left")


def test_held_resources_count_against_the_quota() -> None:
    held = tuple(draining(f"d{i}", held=True, drained=False) for i in range(4))
    plan = decide(snap(sites=(site(max_resources=5),), demand=(jobs(80),), resources=held))
    assert bare(plan) == [("create", "a", 1)]  # 4 of 5 taken until their drains finish


def test_a_timed_out_boot_is_destroyed_as_a_failed_boot() -> None:
    old = booting("b1", created=NOW - 10_000)
    (action,) = decide(snap(resources=(old,))).actions
    assert isinstance(action, Destroy)
    assert action.boot_failed


def test_returning_demand_undrains_before_creating() -> None:
    resources = (draining("d2"), draining("d1"))
    plan = decide(snap(demand=(jobs(8),), resources=resources))
    assert bare(plan) == [("destroy", "d2", None), ("undrain", "d1", None)]
    assert plan.actions[1] == Undrain("d1", "demand returned: 8 idle jobs need 1 machine")
    plan = decide(snap(demand=(jobs(24),), resources=resources))
    assert bare(plan) == [("undrain", "d1", None), ("undrain", "d2", None), ("create", "a", 1)]


def test_idle_running_covers_demand_before_undrain() -> None:
    plan = decide(snap(demand=(jobs(8),), resources=(draining("d1"), idle("i1"))))
    assert bare(plan) == [("destroy", "d1", None)]


def test_surplus_boots_are_destroyed_newest_first_before_any_drain() -> None:
    resources = (
        booting("b_old", created=NOW - 30),
        booting("b_new", created=NOW - 10),
        booting("b_mid", created=NOW - 20),
        idle("i1", for_s=1_000),
        idle("i2", for_s=1_000),
    )
    # 3 machines needed: both idle ones and the oldest boot stay.
    plan = decide(snap(demand=(jobs(24),), resources=resources))
    assert bare(plan) == [("destroy", "b_new", None), ("destroy", "b_mid", None)]
    assert all(r.startswith("surplus boot") for r in reasons(plan))
    # 1 machine needed: every boot goes, then one idle machine is drained.
    plan = decide(snap(demand=(jobs(8),), resources=resources))
    assert bare(plan) == [
        ("destroy", "b_new", None),
        ("destroy", "b_mid", None),
        ("destroy", "b_old", None),
        ("drain", "i2", None),  # equally idle: the id decides
    ]


def test_surplus_boots_go_without_waiting_for_the_idle_timeout() -> None:
    plan = decide(snap(resources=(booting("b1", created=NOW - 1),)))
    assert bare(plan) == [("destroy", "b1", None)]


# --- matching and assignment ---------------------------------------------


def test_demand_matching_no_site_is_reported_not_chased() -> None:
    nowhere = jobs(50, key="k1", sites=())
    unknown = jobs(50, key="k2", sites=("nosuchsite",))
    plan = decide(snap(demand=(unknown, nowhere, jobs(8, key="k3"))))
    assert bare(plan) == [("create", "a", 1)]
    assert plan.unmatched == (nowhere, unknown)


def test_multi_site_demand_fills_sites_in_listed_order_without_double_counting() -> None:
    sites = (site("a", max_resources=2), site("b"))
    plan = decide(snap(sites=sites, demand=(jobs(40, sites=("a", "b")),)))
    assert plan.actions == (
        Create(
            "a",
            2,
            "demand: 16 idle jobs need 2 machines (quota full); 0 idle, 0 undrained, 0 booting",
        ),
        Create("b", 3, "demand: 24 idle jobs need 3 machines; 0 idle, 0 undrained, 0 booting"),
    )
    plan = decide(snap(sites=sites, demand=(jobs(40, sites=("b", "a")),)))
    assert bare(plan) == [("create", "b", 5)]


def test_busy_resources_use_up_a_sites_share() -> None:
    sites = (site("a", max_resources=3), site("b"))
    resources = (busy("x1"), busy("x2"))
    plan = decide(snap(sites=sites, demand=(jobs(24, sites=("a", "b")),), resources=resources))
    assert bare(plan) == [("create", "a", 1), ("create", "b", 2)]


def test_resources_of_an_unknown_site_are_left_alone() -> None:
    stray = (idle("i1", for_s=1e6, site="gone"), booting("b1", created=NOW - 1e6, site="gone"))
    assert decide(snap(resources=stray)).actions == ()


# --- purity --------------------------------------------------------------


def _mixed() -> Snapshot:
    return snap(
        sites=(site("a", max_resources=6, max_booting=2), site("b")),
        demand=(
            jobs(30, key="k1", sites=("a", "b")),
            jobs(5, key="k2", cpus=4, sites=("b",)),
            jobs(3, key="k3", sites=()),
        ),
        resources=(
            busy("x1"),
            idle("i1", for_s=500, site="b"),
            draining("d1"),
            booting("b1", site="b"),
            res("late", State.BOOTING, since=NOW - 700),
        ),
    )


def test_the_same_snapshot_gives_the_same_plan() -> None:
    first = decide(_mixed())
    assert first == decide(_mixed())
    assert bare(first) == [
        ("destroy", "late", None),
        ("undrain", "d1", None),
        ("create", "b", 4),  # a boot at a timed out: its demand spills over to b
    ]


def test_the_plan_does_not_depend_on_input_order() -> None:
    base = _mixed()
    expected = decide(base)
    for demand, resources in itertools.islice(
        zip(
            itertools.permutations(base.demand),
            itertools.permutations(base.resources),
            strict=False,
        ),
        6,
    ):
        shuffled = Snapshot(base.now, base.sites, tuple(demand), tuple(resources), base.health)
        assert decide(shuffled) == expected


def test_decide_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clock() -> float:
        raise AssertionError("the policy read the clock")

    for name in ("time", "monotonic", "perf_counter", "time_ns"):
        monkeypatch.setattr(time, name, no_clock)
    actions: tuple[Action, ...] = decide(_mixed()).actions
    assert actions


# --- resources that end (a Slurm pilot's walltime) ------------------------


def ending_site(margin: float = 600, max_resources: int = 100) -> Site:
    s = site(max_resources=max_resources)
    return replace(s, limits=replace(s.limits, end_margin_s=margin))


def test_a_pilot_near_its_end_is_no_capacity_and_its_replacement_boots() -> None:
    near = replace(idle("near"), ends_at=NOW + 300)  # within the 600 s margin
    far = replace(idle("far"), ends_at=NOW + 3600)
    plan = decide(snap(sites=(ending_site(),), demand=(jobs(16),), resources=(near, far)))
    # Two machines needed: the far one serves, the near one does not: one boots.
    assert bare(plan) == [("create", "a", 1)]


def test_a_pilot_near_its_end_is_never_undrained_and_goes_once_drained() -> None:
    ending = replace(draining("ending", drained=False), ends_at=NOW + 300)
    drained = replace(draining("drained"), ends_at=NOW + 200)
    plan = decide(snap(sites=(ending_site(),), demand=(jobs(8),), resources=(ending, drained)))
    assert bare(plan) == [("destroy", "drained", None), ("create", "a", 1)]
    assert reasons(plan)[0] == "ending in 200s: drained, no job left"


def test_a_pilot_near_its_end_counts_against_the_quota() -> None:
    near = replace(idle("near"), ends_at=NOW + 300)
    plan = decide(snap(sites=(ending_site(max_resources=1),), demand=(jobs(8),), resources=(near,)))
    assert bare(plan) == []  # it still holds its node: the replacement waits for it


def test_an_end_is_ignored_where_the_site_has_no_margin() -> None:
    near = replace(idle("near"), ends_at=NOW + 300)
    assert bare(decide(snap(demand=(jobs(8),), resources=(near,)))) == []
