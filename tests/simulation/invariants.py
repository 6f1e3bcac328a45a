"""What must hold after every step of a schedule (and at some calls).

1. No job killed: a running job whose resource is destroyed or vanishes is a
   kill, unless a backfill site vacated it for an evacuation (its owners
   wait, or an operator evacuates): then it returns to idle and must
   complete later. Each job completes at most once.
2. Nothing leaked: every resource at a simulated site has a store record
   that is not GONE - a create is recorded before it is made (checked at the
   create), and a resource without a record (a late create, a lost state
   file) is handled within LEAK_CYCLES cycles. A site removed from the
   configuration must still have its resources destroyed (at the end).
3. Nothing forgotten: after the settling period (no faults, no new demand),
   every live record exists at its site and vice versa, every site holds
   nothing and every job completed exactly once.
4. Evacuation on time: a backfill owner job that waits only because pilots
   hold nodes gets them within its site's owner_grace_s (in whole loop
   intervals: it is judged once a cycle) + 3 loop intervals + the
   longest vacate + the longest call at that site, counted from the last
   fault at that site itself or restart of the controller, whatever other
   sites do.
5. Quotas and boot caps: the resources alive at a site never exceed its
   max_resources; boots in flight never exceed max_booting; a backfill site
   gives back no more nodes than its owners lack (pilots vacating <= owners'
   pending nodes - free nodes, as last answered).
6. An operator's drain is never undone: the resource never returns to
   RUNNING, its startd's drain is never cancelled.
7. No scale-down while the pool cannot be seen: no boot in flight destroyed
   as surplus and no idle worker drained while a schedd holding idle jobs
   for that site has been down or unknown to the collector since before the
   cycle began (issue defect 5).
8. Timers survive a restart: no create at a site within its backoff after
   failed creates, nor at a backfill site within owner_quiet_s of its owners
   last waiting, nor at a site an operator paused.
9. A budget is never overspent: at a Slurm site with an allocation of core
   hours, what its pilots used (the simulated cluster's truth) plus the whole
   walltime of every pilot on a node never exceeds it - no pilot starts that
   could overspend it. (Not checked once the state file is lost: the
   controller's accounting is in it.) Jobs only a budgeted site can run need
   not complete: its budget may run out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tide.model import ALIVE, Resource, State
from tide.sites.base import OwnerQueue

if TYPE_CHECKING:
    from tests.simulation.sites import SlurmSim
    from tests.simulation.world import World

LEAK_CYCLES = 34  # the daemon's full reconcile every 30 cycles, and some slack
VACATE_MAX_S = 20.0
_BOOTS = (State.REQUESTED, State.BOOTING)


@dataclass(frozen=True)
class Violation:
    invariant: str
    message: str
    at: float  # seconds into the schedule

    def __str__(self) -> str:
        return f"invariant {self.invariant} violated at t={self.at:.1f}s: {self.message}"


class Stop(BaseException):
    """The first violation ends the schedule."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(str(violation))
        self.violation = violation


class Checker:
    def __init__(self, world: World) -> None:
        self.w = world
        self._unrecorded: dict[str, int] = {}  # rid -> daemon cycle first seen without a record
        # invariant 8: (failed creates in a row, the cycle start of the last), per site
        self._streak: dict[str, tuple[int, float]] = {}
        self._waited: dict[str, float] = {}  # site -> cycle start when owners last waited
        self._pending_failures: list[str] = []
        self._pending_waits: list[str] = []

    def _records(self) -> dict[str, Resource]:
        store = self.w.operator_store()
        return {} if store is None else {r.id: r for r in store.all()}

    def _record(self, rid: str) -> Resource | None:
        store = self.w.operator_store()
        return None if store is None else store.get(rid)

    # --- cycles ---------------------------------------------------------------

    def cycle_done(self) -> None:
        """What a cycle saw counts once the cycle completed (it could record it)."""
        for site in self._pending_failures:
            n, _ = self._streak.get(site, (0, 0.0))
            self._streak[site] = (n + 1, self.w.cycle_started_at)
        for site in self._pending_waits:
            self._waited[site] = self.w.cycle_started_at
        self.cycle_crashed()

    def cycle_crashed(self) -> None:
        self._pending_failures = []
        self._pending_waits = []

    def restarted(self) -> None:
        """The controller restarted: evacuation deadlines count from now."""
        for site in self.w.sites.values():
            if getattr(site, "blocked_since", None) is not None:
                site.blocked_since = self.w.clock.now  # type: ignore[attr-defined]

    # --- hooks at calls ---------------------------------------------------------

    def call_failed(self, site: str | None, point: str) -> None:
        if site is None:
            return
        s = self.w.sites[site]
        if getattr(s, "blocked_since", None) is not None:
            s.blocked_since = self.w.clock()  # type: ignore[attr-defined]
        if point.endswith(".create"):
            self._pending_failures.append(site)

    def booted(self, site: str) -> None:
        self._streak.pop(site, None)

    def _registered_since(self, site: str, t: float) -> bool:
        """Whether the controller recorded a boot at `site` as running since t."""
        store = self.w.operator_store()
        if store is None:
            return False
        return any(
            tr.to_state is State.RUNNING and tr.reason == "slot advertised" and tr.at >= t
            for r in store.all()
            if r.site == site
            for tr in store.history(r.id)
        )

    def state_lost(self) -> None:
        """The state file is lost: the timers it kept (backoff, the owners'
        last wait) are gone with it; invariant 8 starts again."""
        self._streak.clear()
        self._waited.clear()

    def owner_answer(self, site: str, answer: OwnerQueue) -> None:
        if answer.pending_nodes + answer.new_nodes > 0:
            self._pending_waits.append(site)

    def create_call(self, site: str, rid: str) -> None:
        w = self.w
        limits = w.specs[site].limits
        started = w.cycle_started_at
        n, failed_at = self._streak.get(site, (0, 0.0))
        if n > 0 and self._registered_since(site, failed_at):
            n = 0  # a boot registered since (the controller saw its slot): the backoff ends
        if n > 0:
            wait = min(limits.backoff_base_s * 2.0 ** (n - 1), limits.backoff_max_s)
            if started < failed_at + wait - 1e-6:
                w.violate(
                    "8 timers survive a restart",
                    f"create {rid} at {site} {started - failed_at:.0f}s after {n} failed creates"
                    f" (backoff {wait:.0f}s)",
                )
        waited = self._waited.get(site)
        if site in self._pending_waits or (
            waited is not None and started < waited + limits.owner_quiet_s
        ):
            w.violate(
                "8 timers survive a restart",
                f"pilot {rid} submitted at {site} while its owners wait or within owner_quiet_s"
                f" ({limits.owner_quiet_s:.0f}s) of their last wait",
            )
        paused = w.paused_since.get(site)
        if paused is not None and paused < started:
            w.violate(
                "8 timers survive a restart", f"create {rid} at {site}, paused by an operator"
            )

    def created(self, site: str, rid: str, *, late: bool) -> None:
        r = self._record(rid)
        if not late and (r is None or r.state not in ALIVE):
            self.w.violate(
                "2 nothing leaked",
                f"{rid} created at {site} with no live record (write-ahead broken): {r}",
            )

    def destroy_call(self, site: str, rid: str) -> None:
        w = self.w
        store = w.operator_store()
        res = w.sites[site].resources.get(rid)
        if store is None or res is None or res.failed:
            return
        history = store.history(rid)
        if len(history) < 2 or history[-2].to_state not in _BOOTS:
            return
        if history[-1].at < w.cycle_started_at:
            return  # a destroy decided before this cycle, retried: not a new scale-down
        if w.clock() - res.created_at >= w.specs[site].limits.boot_timeout_s - 5.0:
            return
        s = w.pool.startds.get(rid)
        if s is not None and (s.jobs or s.draining):
            return  # a kill, or a drained worker: checked elsewhere
        self._blind_scale_down(site, rid, "boot in flight destroyed")

    def drain_call(self, site: str, rid: str) -> None:
        self._idle_drain(site, rid)

    def withdraw_call(self, rid: str) -> None:
        s = self.w.pool.startds.get(rid)
        if s is not None and s.advertised and not s.draining:
            self._idle_drain(s.site, rid)

    def _idle_drain(self, site: str, rid: str) -> None:
        w = self.w
        store = w.operator_store()
        s = w.pool.startds.get(rid)
        if store is None or s is None or s.jobs or rid in w.operator_drained:
            return
        history = store.history(rid)
        if len(history) < 2 or history[-1].to_state is not State.DRAINING:
            return
        if history[-2].to_state is not State.RUNNING or history[-1].at < w.cycle_started_at:
            return  # not this cycle's decision (a drain told again)
        self._blind_scale_down(site, rid, "idle worker drained")

    def _blind_scale_down(self, site: str, rid: str, what: str) -> None:
        w = self.w
        if w.evacuation_context(site) or rid in w.operator_drained:
            return
        started = w.cycle_started_at
        for name, sd in sorted(w.pool.schedds.items()):
            if sd.blind_since is None or sd.blind_since >= started:
                continue
            waiting = [
                j.id
                for j in w.pool.jobs.values()
                if j.schedd == name
                and j.state == "idle"
                and site in j.ac.sites
                and j.idle_since < started
            ]
            if waiting:
                why = " and ".join(
                    x
                    for x, on in (("down", not sd.up), ("unknown to the collector", not sd.listed))
                    if on
                )
                w.violate(
                    "7 no scale-down while the pool cannot be seen",
                    f"{what}: {rid} at {site}, while schedd {name} ({why} since"
                    f" t={sd.blind_since - _t0(w):.1f}s) holds {len(waiting)} idle jobs for it",
                )

    def cancel_drain_call(self, site: str, rid: str) -> None:
        if rid in self.w.operator_drained:
            self.w.violate(
                "6 an operator's drain is never undone", f"drain of {rid} at {site} cancelled"
            )

    def evacuate(self, site: SlurmSim, rid: str) -> None:
        """Invariant 5: a pilot given back for its owners beyond what they lack."""
        w = self.w
        if site.name in w.paused_since or not site.waiting():
            return
        resumed = w.resumed_at.get(site.name)
        if resumed is not None and resumed >= w.cycle_started_at:
            return  # an operator's evacuation, resumed while this cycle carried it out
        r = self._record(rid)
        if r is None or r.state is State.GONE:
            return  # an orphan's destroy: not given back for the owners
        if rid in w.operator_drained or r.held:
            return  # an operator's drain, done: given back for the operator
        s = w.pool.startds.get(rid)
        if s is not None and s.draining and not s.jobs:
            return  # drained by demand, done: given back as idle, not for the owners
        answer = site.last_answer
        lack = 0 if answer is None else answer.pending_nodes - answer.free_nodes
        vacating = site.vacating() + 1
        if vacating > lack:
            w.violate(
                "5 quotas and boot caps",
                f"{site.name}: pilot {rid} given back while {vacating - 1} already vacate,"
                f" owners lack only {lack} nodes (pending {answer and answer.pending_nodes},"
                f" free {answer and answer.free_nodes})",
            )

    # --- after every step -----------------------------------------------------

    def check(self) -> None:
        w = self.w
        store = w.operator_store()
        records = {} if store is None else {r.id: r for r in store.alive()}
        for name in sorted(w.sites):
            if name in w.configured:  # a removed site's resources are checked at the end
                self._check_leaks(name, records)
                self._check_limits(name, records)
                self._check_evacuation(name)
            self._check_budget(name)
        for rid in sorted(w.operator_drained):
            r = records.get(rid)
            if r is not None and r.state is State.RUNNING:
                w.violate("6 an operator's drain is never undone", f"{rid} is RUNNING again")

    def _check_leaks(self, name: str, records: dict[str, Resource]) -> None:
        w = self.w
        for rid, res in sorted(w.sites[name].resources.items()):
            if res.vacating:
                continue
            if rid in records:
                self._unrecorded.pop(rid, None)
                continue
            since = self._unrecorded.setdefault(rid, w.daemon_cycles)
            if w.daemon_cycles - since > LEAK_CYCLES:
                w.violate(
                    "2 nothing leaked",
                    f"{rid} exists at {name} without a live record for"
                    f" {w.daemon_cycles - since} cycles",
                )

    def _adopted(self, rid: str) -> bool:
        store = self.w.operator_store()
        if store is None:
            return False
        history = store.history(rid)
        return bool(history) and history[0].reason.startswith("adopted")

    def _check_limits(self, name: str, records: dict[str, Resource]) -> None:
        w = self.w
        limits = w.specs[name].limits
        # Resources adopted from a lost state file were not created by this
        # controller: they may exceed the caps it keeps for its own creates.
        alive = [
            r
            for r in records.values()
            if r.site == name and r.state in ALIVE and not self._adopted(r.id)
        ]
        boots = [r for r in alive if r.state in _BOOTS]
        quota = "5 quotas and boot caps"
        if len(alive) > limits.max_resources:
            w.violate(quota, f"{name}: {len(alive)} alive > max_resources {limits.max_resources}")
        if len(boots) > limits.max_booting:
            w.violate(quota, f"{name}: {len(boots)} booting > max_booting {limits.max_booting}")
        held = sorted(
            rid
            for rid, res in w.sites[name].resources.items()
            if not (res.vacating or res.failed or res.late)
            and (rid not in records or records[rid].state in ALIVE)
        )
        if len(held) > limits.max_resources:
            w.violate(quota, f"{name} holds {held} > max_resources {limits.max_resources}")

    def _check_budget(self, name: str) -> None:
        w = self.w
        spec = w.specs[name]
        if spec.budget_core_h <= 0 or w.scenario.lose_state:
            return
        committed = getattr(w.sites[name], "committed_core_s", None)
        if committed is None:
            return
        total = spec.budget_core_h * 3600.0
        if committed() > total + 1e-6:
            w.violate(
                "9 a budget is never overspent",
                f"{name}: pilots used and may still use {committed():.0f} core-s of {total:.0f}",
            )

    def _check_evacuation(self, name: str) -> None:
        w = self.w
        blocked = getattr(w.sites[name], "blocked_since", None)
        if blocked is None:
            return
        spec, interval = w.specs[name], w.scenario.interval_s
        # The grace time is judged once per cycle: whole intervals of it.
        grace = math.ceil(spec.limits.owner_grace_s / interval) * interval
        deadline = grace + 3 * interval + VACATE_MAX_S + spec.max_call_s
        if w.clock.now - blocked > deadline:
            w.violate(
                "4 evacuation on time",
                f"{name}: owners waited {w.clock.now - blocked:.0f}s for nodes pilots hold"
                f" (deadline {deadline:.0f}s)",
            )

    def progress(self) -> tuple[int, int, frozenset[str], int, int]:
        """What changes while the world settles: completed jobs, jobs started,
        the resources at the sites (which: one replaced by another within a
        cycle, a pilot at its walltime, is progress too), owners' jobs, live
        records."""
        w = self.w
        store = w.operator_store()
        return (
            len(w.pool.history),
            sum(j.runs for j in w.pool.jobs.values()),
            frozenset(rid for s in w.sites.values() for rid in s.resources),
            sum(len(getattr(s, "owner_jobs", ())) for s in w.sites.values()),
            0 if store is None else len(store.alive()),
        )

    def settled(self) -> bool:
        w = self.w
        store = w.operator_store()
        if store is not None and store.alive():
            return False
        if any(s.resources for s in w.sites.values()):
            return False
        if any(getattr(s, "owner_jobs", None) for s in w.sites.values()):
            return False
        return not any(
            j.state != "done" and self._runnable(j.ac.sites) for j in w.pool.jobs.values()
        )

    def _runnable(self, sites: tuple[str, ...]) -> bool:
        """Whether some site must run these jobs in the end: a configured one
        without a budget (which may run out)."""
        w = self.w
        return any(s in w.configured and w.specs[s].budget_core_h <= 0 for s in sites)

    def final(self, settle_s: float) -> None:
        """Invariants 2 and 3 after the settling period."""
        w = self.w
        records = self._records()
        alive = {rid: r for rid, r in records.items() if r.state is not State.GONE}
        for name in sorted(set(w.sites) - w.configured):
            left = sorted(w.sites[name].resources)
            if left:
                w.violate(
                    "2 nothing leaked",
                    f"site {name} removed from the configuration: {len(left)} resources"
                    f" never destroyed {left}",
                )
        at_sites = {rid: name for name, s in w.sites.items() for rid in s.resources}
        missing = sorted(f"{rid} ({r.state})" for rid, r in alive.items() if rid not in at_sites)
        unknown = sorted(f"{rid} at {site}" for rid, site in at_sites.items() if rid not in alive)
        held = sorted(
            f"{rid} at {site} ({alive[rid].state})"
            for rid, site in at_sites.items()
            if rid in alive
        )
        jobs = [j for j in w.pool.jobs.values() if j.state != "done" and self._runnable(j.ac.sites)]
        if missing or unknown or held or jobs:
            parts = []
            if missing:
                parts.append(f"records with no resource: {missing}")
            if unknown:
                parts.append(f"resources with no live record: {unknown}")
            if held:
                parts.append(f"still held: {held}")
            if jobs:
                parts.append(
                    f"{len(jobs)} jobs never completed ({sorted(j.id for j in jobs)[:5]}...)"
                )
            w.violate("3 nothing forgotten", f"after settling {settle_s:.0f}s: " + "; ".join(parts))


def _t0(w: World) -> float:
    from tests.simulation.world import T0  # noqa: PLC0415

    return T0
