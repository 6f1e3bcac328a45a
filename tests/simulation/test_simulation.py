"""The fault simulator's tests: thousands of seeded schedules, and one
hand-built schedule per defect of issue 11 that lives in the loop (points 1,
2, 4, 5, 6, 7, 8, 9, 12), each asserting that every invariant holds.

Replay a failing seed with `.venv/bin/python -m tests.simulation --seed N -v`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.simulation.faults import FaultRates, When
from tests.simulation.invariants import Violation
from tests.simulation.pool import Autocluster
from tests.simulation.schedule import Scenario, replay_command, run, run_many
from tests.simulation.sites import SiteSpec, SlurmSim
from tests.simulation.world import World
from tide.model import Shape, SiteLimits

SCHEDULES = int(os.environ.get("TIDE_SIM_SCHEDULES", "5000"))
JOBS = int(os.environ.get("TIDE_SIM_JOBS", "2"))


def test_seeded_schedules_keep_every_invariant() -> None:
    started = time.monotonic()
    results = sorted(run_many(range(SCHEDULES), JOBS), key=lambda r: r.seed)
    took = time.monotonic() - started
    failed = [r for r in results if r.violation is not None]
    summary = {
        "schedules": SCHEDULES,
        "seconds": round(took, 1),
        "crashes": sum(r.crashes for r in results),
        "cycles": sum(r.cycles for r in results),
        "jobs": sum(r.jobs for r in results),
        "failed": len(failed),
    }
    print(f"simulation: {json.dumps(summary)}")
    out = os.environ.get("TIDE_STATE_DIR")
    if out and Path(out).is_dir():
        (Path(out) / "simulation.json").write_text(json.dumps(summary) + "\n", encoding="utf-8")
    report = "\n".join(
        f"seed {r.seed}: {r.violation}\n  replay: {replay_command(r.seed)}" for r in failed[:10]
    )
    assert not failed, f"{len(failed)} of {SCHEDULES} schedules failed ({took:.0f}s):\n{report}"


# --- hand-built schedules, one per defect -------------------------------------------

SHAPE = Shape(4, 8192, 20000)
WHOLE = Autocluster("whole", 4, 4096, 1000, ("a-docker",))  # one job fills a machine


def site(name: str, *, nodes: int = 0, **limits: float) -> SiteSpec:
    values: dict[str, float] = {
        "max_resources": 2,
        "max_booting": 2,
        "boot_timeout_s": 180.0,
        "idle_timeout_s": 30.0,
        "backoff_base_s": 30.0,
        "backoff_max_s": 120.0,
        "lost_timeout_s": 300.0,
        "owner_quiet_s": 30.0,
    }
    values.update(limits)
    return SiteSpec(
        name=name,
        kind=name.split("-", 1)[1],
        shape=SHAPE,
        limits=SiteLimits(
            max_resources=int(values["max_resources"]),
            max_booting=int(values["max_booting"]),
            boot_timeout_s=values["boot_timeout_s"],
            idle_timeout_s=values["idle_timeout_s"],
            backoff_base_s=values["backoff_base_s"],
            backoff_max_s=values["backoff_max_s"],
            lost_timeout_s=values["lost_timeout_s"],
            owner_quiet_s=values["owner_quiet_s"],
        ),
        nodes=nodes,
        call_s=(0.1, 0.5),
    )


def scenario(
    *sites: SiteSpec,
    acs: tuple[Autocluster, ...] = (WHOLE,),
    duration_s: float = 400.0,
    events: tuple[tuple[float, str], ...] = (),
    lose_state: bool = False,
    remove_site: str | None = None,
) -> Scenario:
    return Scenario(
        seed=0,
        sites=sites,
        schedds=("schedd1",),
        autoclusters=acs,
        rates=FaultRates(),
        duration_s=duration_s,
        events=events,
        lose_state=lose_state,
        remove_site=remove_site,
    )


def at(w: World, t: float, fn: Callable[[], None]) -> None:
    w.after(t, fn, None)


def submit(w: World, t: float, ac: Autocluster, count: int, duration_s: float) -> None:
    at(w, t, lambda: w.pool.submit("schedd1", ac, count, duration_s))


def operator_drain(w: World, rid: str) -> None:
    assert w.operator is not None
    if w.operator.drain(rid):
        w.log(f"OPERATOR tide drain {rid}")
        w.operator_drained.add(rid)


def once(
    point: str, when: When, action: str | Callable[[], None]
) -> Callable[[str, When], str | None]:
    """A scripted fault: `action` ("crash", an outcome, or a callable run
    there) the first time the schedule reaches `point` `when`."""
    fired = False

    def hook(p: str, w: When) -> str | None:
        nonlocal fired
        if fired or p != point or w != when:
            return None
        fired = True
        if callable(action):
            action()
            return None
        return action

    return hook


def check(sc: Scenario, setup: Callable[[World], None]) -> Violation | None:
    return run(sc, setup=setup, out=print).violation


def test_defect_1_an_operator_drain_never_destroys_a_busy_server_that_cannot_drain() -> None:
    sc = scenario(site("a-openstack"), acs=(Autocluster("whole", 4, 4096, 1000, ("a-openstack",)),))

    def setup(w: World) -> None:
        submit(w, 1.0, sc.autoclusters[0], 1, 350.0)
        at(w, 200.0, lambda: operator_drain(w, "tide-a-openstack-00000001"))

    assert check(sc, setup) is None


def test_defect_2_a_crash_during_create_never_leaves_a_boot_that_is_later_killed() -> None:
    sc = scenario(site("a-docker"))

    def setup(w: World) -> None:
        submit(w, 1.0, WHOLE, 1, 300.0)
        w.faults.scripted.append(once("a-docker.create", "after", "crash"))

    assert check(sc, setup) is None


def test_defect_4_an_evacuation_gives_back_only_the_nodes_owners_lack() -> None:
    ac = Autocluster("half", 2, 2048, 1000, ("a-slurm",))
    sc = scenario(site("a-slurm", nodes=2), acs=(ac,))

    def setup(w: World) -> None:
        slurm = w.sites["a-slurm"]
        assert isinstance(slurm, SlurmSim)
        slurm.vacate_s = (19.0, 20.0)  # HTCondor takes its time to vacate
        submit(w, 1.0, ac, 4, 300.0)
        at(w, 150.0, lambda: slurm.owners_submit(1, nodes=1, duration_s=60.0))

    assert check(sc, setup) is None


def test_defect_5_a_collector_restart_never_looks_like_no_demand() -> None:
    sc = scenario(site("a-docker", max_resources=3))

    def setup(w: World) -> None:
        w.pool.relearn_s = (250.0, 260.0)  # the schedd's next ad
        submit(w, 1.0, WHOLE, 2, 100.0)
        at(w, 160.0, w.pool.restart_collector)
        submit(w, 170.0, WHOLE, 2, 100.0)

    assert check(sc, setup) is None


def test_defect_6_a_drain_the_startd_forgot_is_told_again() -> None:
    sc = scenario(site("a-docker"), duration_s=250.0)

    def setup(w: World) -> None:
        submit(w, 1.0, WHOLE, 1, 200.0)
        at(w, 60.0, lambda: operator_drain(w, "tide-a-docker-00000001"))
        at(w, 90.0, lambda: w.pool.restart_startd("tide-a-docker-00000001"))

    assert check(sc, setup) is None


def test_defect_7_an_operator_drain_between_observe_and_act_is_not_undone() -> None:
    b = Autocluster("b", 4, 4096, 1000, ("b-docker",))
    a = Autocluster("a", 4, 4096, 1000, ("a-docker",))
    sc = scenario(site("a-docker"), site("b-docker"), acs=(a, b))
    x = "tide-b-docker-00000001"

    def setup(w: World) -> None:
        submit(w, 1.0, b, 1, 30.0)

        def demand_returns() -> None:  # while the idle worker x is being drained
            w.pool.submit("schedd1", b, 1, 60.0)
            w.pool.submit("schedd1", a, 1, 60.0)
            # the next cycle plans x's undrain; the operator drains x before it acts
            w.faults.scripted.append(
                once("a-docker.create", "before", lambda: operator_drain(w, x))
            )

        w.faults.scripted.append(once("b-docker.drain", "before", demand_returns))

    assert check(sc, setup) is None


def test_defect_8_a_site_removed_from_the_configuration_is_emptied() -> None:
    b = Autocluster("b", 4, 4096, 1000, ("b-docker",))
    sc = scenario(
        site("a-docker"),
        site("b-docker"),
        acs=(WHOLE, b),
        events=((100.0, "kill"),),
        remove_site="b-docker",
    )

    def setup(w: World) -> None:
        submit(w, 1.0, b, 2, 60.0)

    assert check(sc, setup) is None


def test_defect_9_the_backoff_survives_a_restart() -> None:
    sc = scenario(site("a-openstack"), acs=(Autocluster("whole", 4, 4096, 1000, ("a-openstack",)),))

    def setup(w: World) -> None:
        submit(w, 1.0, sc.autoclusters[0], 1, 60.0)
        failures = 0

        def hook(point: str, when: When) -> str | None:
            nonlocal failures
            if point != "a-openstack.create" or when != "outcome" or failures >= 3:
                return None
            failures += 1
            if failures == 3:  # killed in the 120 s backoff after the third failure
                at(w, 20.0, lambda: setattr(w, "kill_pending", True))
            return "fail"

        w.faults.scripted.append(hook)

    assert check(sc, setup) is None


def test_defect_12_a_lost_state_file_never_kills_running_jobs() -> None:
    sc = scenario(site("a-docker"), events=((120.0, "kill"),), lose_state=True)

    def setup(w: World) -> None:
        submit(w, 1.0, WHOLE, 1, 300.0)

    assert check(sc, setup) is None
