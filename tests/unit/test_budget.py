"""A site's allocation of core hours (controller/tide/budget.py), the policy
that never starts a pilot whose walltime could overspend it, its
configuration (bad input names the key), its records in the store and its
metrics."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["store"]  # the fixture, from test_loop

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from tests.unit.test_loop import World, store
from tests.unit.test_policy import NOW, bare, booting, busy, jobs, site, snap
from tide.budget import HOUR_S, BudgetRule, BudgetState, Run, account, crossed, runs_out
from tide.config import SlurmBackfillSiteConfig
from tide.htcondor.slots import SlotState
from tide.metrics import Metrics
from tide.model import Site, State
from tide.policy import decide
from tide.store import Store

WALLTIME_S = 2 * HOUR_S
RULE = BudgetRule(
    core_hours=100.0,
    since=NOW - 10 * HOUR_S,
    warn_at=(0.5, 0.8, 0.9, 1.0),
    pilot_cpus=8,
    pilot_walltime_s=WALLTIME_S,
)  # one pilot may cost 16 core-hours: the allocation pays for 6 whole ones


def test_a_pilot_is_charged_its_cores_while_it_holds_its_machine() -> None:
    runs = [
        Run("ended", 8, started_at=NOW - 3 * HOUR_S, ended_at=NOW - 2.5 * HOUR_S),  # 4 core-h
        Run("running", 8, started_at=NOW - HOUR_S, ended_at=None),  # 8 so far
    ]
    state = account(RULE, runs, {"running": 8}, NOW)
    assert state.used_core_s == pytest.approx(12 * HOUR_S)
    assert state.reserved_core_s == pytest.approx(8 * HOUR_S)  # its last hour
    assert state.cores_in_use == 8
    assert state.left_core_s == pytest.approx(88 * HOUR_S)
    assert state.free_core_s == pytest.approx(80 * HOUR_S)
    assert state.pilots_affordable == 5  # 80 // 16
    assert state.runs_out_at(NOW) == pytest.approx(NOW + 11 * HOUR_S)  # 88 h at 8 cores


def test_only_what_was_used_since_the_budget_counts_and_never_past_the_walltime() -> None:
    before = Run("before", 8, started_at=RULE.since - HOUR_S, ended_at=RULE.since + HOUR_S)
    overdue = Run("overdue", 8, started_at=NOW - 5 * HOUR_S, ended_at=NOW - HOUR_S)  # seen late
    state = account(RULE, [before, overdue], {}, NOW)
    assert state.used_core_s == pytest.approx((8 + 16) * HOUR_S)  # 1 h after since; 2 h walltime
    assert state.cores_in_use == 0
    assert state.runs_out_at(NOW) is None
    assert runs_out(None, NOW) == "not at this rate: no pilot runs"


def test_a_queued_pilot_reserves_its_whole_walltime() -> None:
    state = account(RULE, [], {"queued": 8, "requested": 8}, NOW)
    assert state.used_core_s == 0
    assert state.reserved_core_s == pytest.approx(32 * HOUR_S)
    assert state.pilots_affordable == 4  # (100 - 32) // 16


def test_too_little_left_for_one_whole_walltime_pays_for_no_pilot() -> None:
    spent = Run("spent", 8, started_at=NOW - 3 * HOUR_S, ended_at=NOW - HOUR_S)  # 16 core-h
    many = [replace(spent, resource_id=f"r{i}") for i in range(6)]  # 96 of 100 core-hours
    state = account(RULE, many, {}, NOW)
    assert state.left_core_s == pytest.approx(4 * HOUR_S)
    assert state.pilots_affordable == 0
    assert "one more pilot could use 16.00 (8 cores x 2 h walltime)" in state.why_no_pilot()
    assert "4.00 core-hours free" in state.why_no_pilot()


def test_a_warning_at_each_fraction_reached_once() -> None:
    def used(fraction: float) -> BudgetState:
        return BudgetState(RULE, fraction * RULE.total_core_s, 0.0, 0)

    assert crossed(used(0.4), 0.0) is None
    assert crossed(used(0.55), 0.0) == 0.5
    assert crossed(used(0.85), 0.5) == 0.8
    assert crossed(used(0.85), 0.8) is None
    assert crossed(used(0.95), 0.0) == 0.9  # a start past several: the highest, once
    assert crossed(used(1.2), 0.9) == 1.0


def _budgeted() -> Site:
    return replace(site("a"), budget=RULE)


def test_the_policy_starts_no_pilot_the_budget_cannot_pay_for_and_says_why() -> None:
    state = BudgetState(RULE, 90 * HOUR_S, 0.0, 0)  # 10 core-hours left: not one walltime
    s = replace(snap(sites=(_budgeted(),), demand=(jobs(16),)), budgets={"a": state})
    plan = decide(s)
    assert bare(plan) == []
    (held,) = plan.held_back
    assert held.why.startswith("budget: 10.00 core-hours free of 10.00 left")
    assert "16 idle jobs" in str(held.action)


def test_the_policy_starts_as_many_pilots_as_the_budget_pays_for() -> None:
    state = BudgetState(RULE, 52 * HOUR_S, 0.0, 0)  # 48 left: 3 pilots of 16
    s = replace(snap(sites=(_budgeted(),), demand=(jobs(80),)), budgets={"a": state})
    plan = decide(s)
    assert bare(plan) == [("create", "a", 3)]
    (held,) = plan.held_back
    assert held.why.startswith("budget: 48.00 core-hours free")


def test_demand_the_budget_cannot_pay_for_spills_over_to_the_next_site() -> None:
    state = BudgetState(RULE, 90 * HOUR_S, 0.0, 0)
    s = replace(
        snap(sites=(_budgeted(), site("b")), demand=(jobs(8, sites=("a", "b")),)),
        budgets={"a": state},
    )
    assert bare(decide(s)) == [("create", "b", 1)]


def test_a_budget_not_accounted_this_cycle_starts_nothing() -> None:
    s = snap(sites=(_budgeted(),), demand=(jobs(8),))
    plan = decide(s)
    assert bare(plan) == []
    assert [h.why for h in plan.held_back] == ["budget: not accounted this cycle"]


def test_pilots_alive_are_kept_when_the_budget_runs_low() -> None:
    """A budget stops boots, nothing else: what runs, and what boots, stays."""
    state = BudgetState(RULE, 99 * HOUR_S, 0.0, 8)
    s = replace(
        snap(
            sites=(_budgeted(),),
            demand=(jobs(16),),
            resources=(busy("r1"), booting("r2")),
        ),
        budgets={"a": state},
    )
    assert bare(decide(s)) == []


@pytest.mark.parametrize(
    ("budget", "named"),
    [
        ({"core_hours": -5, "since": "2026-11-01"}, "core_hours"),
        ({"core_hours": 0, "since": "2026-11-01"}, "core_hours"),
        ({"core_hours": "lots", "since": "2026-11-01"}, "core_hours"),
        ({"core_hours": "nan", "since": "2026-11-01"}, "core_hours"),
        ({"core_hours": 1000}, "since"),
        ({"core_hours": 1000, "since": "soon"}, "since"),
        ({"core_hours": 1000, "since": "2026-11-01", "warn_at": [80]}, "warn_at"),
        ({"core_hours": 1000, "since": "2026-11-01", "spend": "wisely"}, "spend"),
    ],
)
def test_a_bad_budget_names_the_key(budget: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as info:
        _slurm(budget=budget)
    assert named in str(info.value)
    assert "budget" in str(info.value)


def test_a_budget_rule_from_the_configuration() -> None:
    config = _slurm(budget={"core_hours": 200000, "since": "2026-11-01"})
    rule = config.budget_rule()
    assert rule is not None
    assert rule.total_core_s == 200000 * HOUR_S
    assert rule.since == 1793491200.0  # 2026-11-01 00:00 UTC
    assert rule.pilot_core_s == 4 * 12 * HOUR_S  # 4 cores x the default 12 h walltime
    assert rule.warn_at == (0.5, 0.8, 0.9, 1.0)
    assert _slurm().budget_rule() is None


def _slurm(**changes: Any) -> SlurmBackfillSiteConfig:
    data: dict[str, Any] = {
        "kind": "slurm_backfill",
        "partition": "backfill",
        "worker_token_file": "/etc/tide/worker.token",
        "shape": {"cpus": 4, "memory_mb": 8000, "disk_mb": 10000},
        **changes,
    }
    return SlurmBackfillSiteConfig.model_validate(data)


def test_the_store_records_each_run_once_and_its_end_when_gone(tmp_path: Path) -> None:
    with Store.open(tmp_path / "state.db") as store:
        store.add("r1", "hpc", NOW - 100, "test")
        store.move("r1", State.BOOTING, NOW - 90, "listed")
        store.started({"r1": ("hpc", 8, NOW - 80)})
        store.started({"r1": ("hpc", 8, NOW - 70)})  # the first record stays
        assert store.started_ids() == {"r1"}
        assert store.runs("hpc", 0.0) == [Run("r1", 8, NOW - 80, None)]
        store.move("r1", State.GONE, NOW - 10, "vanished")
        assert store.started_ids() == set()
        assert store.runs("hpc", 0.0) == [Run("r1", 8, NOW - 80, NOW - 10)]
        assert store.runs("hpc", NOW) == []  # ended before that
        assert store.runs("other", 0.0) == []
        store.prune(NOW + 1)  # the audit log goes after a week; the usage stays
        assert store.runs("hpc", 0.0) == [Run("r1", 8, NOW - 80, NOW - 10)]


def test_the_budget_metrics(tmp_path: Path) -> None:
    metrics = Metrics(["hpc"])
    state = BudgetState(RULE, 40 * HOUR_S, 8 * HOUR_S, 8)
    metrics.observe_budgets({"hpc": state}, NOW)
    text = generate_latest(metrics.registry).decode()
    assert 'tide_budget_core_hours{kind="left",site="hpc"} 60.0' in text
    assert 'tide_budget_core_hours{kind="free",site="hpc"} 52.0' in text
    assert 'tide_budget_cores_in_use{site="hpc"} 8.0' in text
    expected = NOW + 60 * HOUR_S / 8
    assert f'tide_budget_exhausted_timestamp_seconds{{site="hpc"}} {expected:.1f}' in text
    metrics.observe_budgets({"hpc": replace(state, cores_in_use=0)}, NOW)
    assert math.isinf(
        metrics.registry.get_sample_value(
            "tide_budget_exhausted_timestamp_seconds", {"site": "hpc"}
        )
        or 0.0
    )


def test_the_loop_charges_what_its_pilots_hold_and_boots_what_is_left(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    rule = BudgetRule(
        core_hours=10_100 / HOUR_S,  # two and a half pilots of 4 cores x 1000 s
        since=0.0,
        warn_at=(0.3,),
        pilot_cpus=4,
        pilot_walltime_s=1000.0,
    )
    w = World(store, budget=rule, backfill=True)  # listed every cycle, as a Slurm site
    w.want(4)  # jobs for four pilots
    plan = w.controller.cycle()
    site = w.sites["a"]
    assert len(site.created) == 2  # all the budget pays for (and max_booting)
    assert any(h.why.startswith("budget: ") for h in plan.held_back)
    for rid in site.created:
        w.slots.slots[rid] = SlotState(True, 1)  # up, each running a job
    w.clock.now += 1
    w.controller.cycle()  # advertised: each holds its machine from now
    assert store.started_ids() == set(site.created)
    w.clock.now += 500  # 2 x 4 cores x 500 s used, as much reserved: 2100 core-s free
    plan = w.controller.cycle()
    assert len(site.created) == 2
    assert w.metrics.registry.get_sample_value(
        "tide_budget_core_hours", {"site": "a", "kind": "used"}
    ) == pytest.approx(4000 / HOUR_S)
    (warning,) = _budget_warnings(caplog)
    assert warning["used"] == "40% (warns at 30%)"
    assert warning["runs_out"].endswith("(in 0.2 h)")  # 6000 core-s left at 8 cores: 750 s
    site.owned.pop(site.created[0])  # it ended: 2000 core-s charged, its reserve freed
    w.slots.slots.pop(site.created[0])
    w.clock.now += 1
    w.controller.cycle()
    w.clock.now += 1
    w.controller.cycle()
    assert len(site.created) == 3  # 10100 less 2 x 2004 used, 1996 reserved: one more
    assert len(_budget_warnings(caplog)) == 1  # each fraction once


def _budget_warnings(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        dict(getattr(r, "fields", {}))
        for r in caplog.records
        if r.name == "tide.loop" and r.getMessage() == "budget"
    ]


def test_a_pilot_gone_before_it_was_seen_on_a_node_is_charged_from_when_last_seen_queued(
    store: Store,
) -> None:
    """It may have got its node and left it between two listings (a boot
    that failed within seconds): charged more than it used, never less."""
    rule = BudgetRule(core_hours=10.0, since=0.0, warn_at=(), pilot_cpus=4, pilot_walltime_s=1000.0)
    w = World(store, budget=rule, backfill=True)
    w.want(1)
    w.controller.cycle()
    site = w.sites["a"]
    (rid,) = site.created
    site.owned[rid] = replace(site.owned[rid], placed=False, status="PENDING")
    w.clock.now += 10
    w.controller.cycle()  # seen queued at t+10
    queued_at = w.clock.now
    del site.owned[rid]  # placed, failed and gone before the next listing
    w.demand = ()
    w.clock.now += 200  # past the listing grace
    w.controller.cycle()
    assert w.states()[rid] is State.GONE
    assert store.runs("a", 0.0) == [Run(rid, 4, queued_at, w.clock.now)]
