"""The policy for backfill sites (tide.policy, rule 4): owners first.
Snapshots built by hand with the helpers of test_policy; exact plans expected."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unit.test_policy import NOW, bare, booting, busy, idle, jobs, res, site, snap
from tide.model import Owners, Resource, Snapshot, State
from tide.policy import decide

QUIET = 60.0


def backfill(
    *,
    demand: int = 0,
    resources: tuple[Resource, ...] = (),
    owners: Owners | None = None,
) -> Snapshot:
    limits = replace(site().limits, owner_quiet_s=QUIET)
    s = snap(
        sites=(replace(site(), limits=limits),),
        demand=(jobs(demand * 8, cpus=1),) if demand else (),
        resources=resources,
    )
    return replace(s, owners={"a": owners or Owners()})


def working(rid: str, jobs_running: int) -> Resource:
    return res(rid, State.RUNNING, advertised=True, claimed=jobs_running)


def test_without_owners_waiting_a_backfill_site_scales_like_any_other() -> None:
    assert bare(decide(backfill(demand=3))) == [("create", "a", 3)]


def test_no_boot_while_owners_wait_even_with_free_nodes() -> None:
    plan = decide(backfill(demand=3, owners=Owners(pending_nodes=1, free_nodes=4)))
    assert plan.actions == ()


def test_no_boot_while_the_owners_queue_is_unknown() -> None:
    plan = decide(backfill(demand=3, owners=Owners(known=False, pending_nodes=5)))
    assert plan.actions == ()  # and nothing evacuated on a guess


@pytest.mark.parametrize(
    ("waited_ago", "creates"), [(QUIET - 1, False), (QUIET, True), (QUIET * 10, True)]
)
def test_boots_resume_only_after_the_owners_were_quiet(waited_ago: float, creates: bool) -> None:
    plan = decide(backfill(demand=2, owners=Owners(last_waiting_at=NOW - waited_ago)))
    assert bare(plan) == ([("create", "a", 2)] if creates else [])


def test_owner_jobs_not_yet_scheduled_block_boots_but_evacuate_nothing() -> None:
    plan = decide(backfill(demand=3, resources=(idle("r1"),), owners=Owners(new_nodes=2)))
    assert plan.actions == ()


def test_a_paused_site_boots_nothing() -> None:
    assert decide(backfill(demand=2, owners=Owners(paused=True))).actions == ()


def test_exactly_the_lacking_nodes_are_evacuated_least_work_first() -> None:
    resources = (working("r1", 3), working("r2", 1), idle("r3"), working("r4", 2))
    plan = decide(
        backfill(demand=4, resources=resources, owners=Owners(pending_nodes=3, free_nodes=1))
    )
    assert bare(plan) == [("evacuate", "r3", None), ("evacuate", "r2", None)]
    assert plan.actions[1].reason == (
        "owners wait for 3 nodes, 1 free: given back, 1 running jobs vacated"
    )


def test_free_nodes_cover_the_owners_without_evacuating() -> None:
    plan = decide(
        backfill(resources=(working("r1", 1),), owners=Owners(pending_nodes=2, free_nodes=2))
    )
    assert plan.actions == ()


def test_queued_boots_are_withdrawn_and_running_boots_go_before_busy_machines() -> None:
    queued = replace(booting("q1"), placed=False)
    started = booting("b1")  # its pilot holds a node, its startd not yet advertised
    plan = decide(
        backfill(
            demand=3,
            resources=(queued, started, working("r1", 1)),
            owners=Owners(pending_nodes=1),
        )
    )
    assert bare(plan) == [("evacuate", "q1", None), ("evacuate", "b1", None)]


def test_nodes_already_coming_back_count_against_the_owners_need() -> None:
    timed_out = booting("t1", created=NOW - 1_000)  # destroyed this cycle anyway
    plan = decide(backfill(resources=(timed_out, working("r1", 1)), owners=Owners(pending_nodes=1)))
    assert bare(plan) == [("destroy", "t1", None)]


def test_an_operator_evacuation_gives_back_that_many_regardless_of_free_nodes() -> None:
    resources = (working("r1", 2), idle("r2"), busy("r3"))
    plan = decide(backfill(resources=resources, owners=Owners(evacuate_nodes=2, free_nodes=9)))
    assert bare(plan) == [("evacuate", "r2", None), ("evacuate", "r1", None)]
    assert plan.actions[0].reason.startswith("operator evacuation of 2 nodes")


def test_evacuated_resources_serve_no_grid_demand() -> None:
    # Two idle machines, grid jobs for two, owners want one: one is given
    # back and grid demand gets no new boot while owners wait.
    plan = decide(
        backfill(demand=2, resources=(idle("r1"), idle("r2")), owners=Owners(pending_nodes=1))
    )
    assert bare(plan) == [("evacuate", "r1", None)]


GRACE = 5.0


def graced(owners: Owners, resources: tuple[Resource, ...]) -> Snapshot:
    s = backfill(resources=resources, owners=owners)
    (a,) = s.sites.values()
    return replace(s, sites={"a": replace(a, limits=replace(a.limits, owner_grace_s=GRACE))})


@pytest.mark.parametrize(("waited", "evacuated"), [(0.0, 0), (GRACE - 0.1, 0), (GRACE, 2)])
def test_owner_jobs_within_the_grace_time_block_boots_but_evacuate_nothing(
    waited: float, evacuated: int
) -> None:
    # Job 12 (2 nodes) first seen `waited` ago, timed on the controller's clock
    # from the persisted first-seen time, not from when its site answered.
    owners = Owners(pending_nodes=2, waiting={"12": (2, NOW - waited)})
    plan = decide(graced(owners, (working("r1", 1), working("r2", 2))))
    assert len([a for a in bare(plan) if a[0] == "evacuate"]) == evacuated
    assert not [a for a in bare(plan) if a[0] == "create"]


def test_only_the_jobs_past_their_grace_time_are_evacuated_for() -> None:
    owners = Owners(pending_nodes=3, waiting={"11": (1, NOW - 60), "12": (2, NOW - 1)})
    plan = decide(graced(owners, (working("r1", 1), working("r2", 2), working("r3", 3))))
    assert bare(plan) == [("evacuate", "r1", None)]
    assert plan.actions[0].reason.startswith("owners wait for 1 nodes, 0 free")


def test_an_unnamed_waiting_job_has_waited_out_its_grace_time() -> None:
    # A site that names no job (or a record lost): nothing holds the owners back.
    plan = decide(graced(Owners(pending_nodes=1), (working("r1", 1),)))
    assert bare(plan) == [("evacuate", "r1", None)]


def test_a_timed_out_boot_held_back_while_the_collector_cannot_vouch_frees_no_node() -> None:
    # Its destroy waits for the collector (it may be up and running jobs), so
    # it is no node on its way back: the owners get it by evacuation, now.
    stale = booting("r1", created=NOW - 601)  # past boot_timeout_s (600), never seen
    s = backfill(resources=(stale,), owners=Owners(pending_nodes=1))
    blind = replace(s, slots_known=False)
    plan = decide(blind)
    assert bare(plan) == [("evacuate", "r1", None)]
    assert not plan.held_back
    # With the collector answering, its boot timeout frees the node: no evacuation.
    assert [a for a in bare(decide(s)) if a[0] == "evacuate"] == []
