"""The control loop: observe -> decide -> act -> record, one cycle at a time.

    observe   every call on its lane (tide.runner), within a budget: the
              collector's slots, the schedds' demand, each site's listing
              and owners' queue; then the evidence (tide.observe) is
              recorded and the Snapshot built from the store's records
    decide    tide.policy.decide: every action, retries and what is held
              back included; pure
    act       tide.actuator: each site's actions on its own lane, the store
              written before every external call

All I/O sits behind injected interfaces (the sites' adapters, the store, a
demand callable, a `Slots` observer, a `Startds` drainer, a clock, an id
maker and a Runner), so a cycle runs in a unit test or in the fault
simulator (tests/simulation) without a pool, a cloud or a real clock.

State lives in the store, never here: the controller can be killed at any
moment and a new one picks up from the file. A site still busy with a call
past its budget is left alone (observed and acted on by no one) until that
call returns, so one hung API delays no other site.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tide.actuator import Actuator
from tide.budget import BudgetState, account, crossed, hours, runs_out
from tide.htcondor.slots import Slots, SlotState, slots_from_ads
from tide.htcondor.startds import Startds
from tide.logs import event
from tide.metrics import Metrics
from tide.model import ALIVE, Demand, Owners, Plan, Resource, Site, SiteHealth, Snapshot, State
from tide.observe import Answers, Evidence, evidence, owners
from tide.policy import decide
from tide.runner import InlineRunner, Pending, Runner
from tide.sites.base import Capability, Owned, OwnerQueue, SiteAdapter
from tide.store import Store

log = logging.getLogger("tide.loop")

LISTING_GRACE_S = 120.0
"""A boot this young that its site does not list yet is not marked gone: a
cloud's listing may lag behind its create call."""
RECONCILE_EVERY = 30
"""Every site is listed at least every this many cycles (backfill sites, and
sites with boots in flight or resources leaving, every cycle)."""
OBSERVE_BUDGET_S = 5.0
"""How long a cycle waits for the pool's and the sites' answers; a lane
that has not answered by then is busy, and its site left alone."""
RETENTION_S = 7 * 86400.0
"""GONE resources and their history are kept this long (the audit log)."""
_PRUNE_EVERY = 100
POOL_LANE = "(pool)"
_T = TypeVar("_T")

DemandSource = Callable[[], tuple[tuple[Demand, ...], bool]]

__all__ = ["Controller", "DemandSource", "SlotState", "Slots", "run_forever", "slots_from_ads"]


@dataclass(frozen=True)
class _PoolView:
    demand: tuple[Demand, ...]
    demand_known: bool
    slots: Mapping[str, SlotState] | None
    young: bool = False  # the collector started within its warm-up: absence proves nothing


class Controller:
    """One controller: `cycle()` each interval; `reconcile()` lists every site."""

    def __init__(
        self,
        *,
        sites: Mapping[str, tuple[Site, SiteAdapter]],
        store: Store,
        demand: DemandSource,
        slots: Slots,
        startds: Startds | None,
        metrics: Metrics | None,
        clock: Callable[[], float],
        new_id: Callable[[str], str],
        runner: Runner | None = None,
        listing_grace_s: float = LISTING_GRACE_S,
        act_budget_s: float = 2.0,
        collector_warmup_s: float = 0.0,
    ) -> None:
        self._sites = dict(sites)
        self._store = store
        self._demand = demand
        self._slots = slots
        self._metrics = metrics
        self._clock = clock
        self._runner: Runner = runner or InlineRunner()
        self._listing_grace_s = listing_grace_s
        self._act_budget_s = act_budget_s
        self._collector_warmup_s = collector_warmup_s
        self._actuator = Actuator(
            sites=self._sites,
            store=store,
            slots=slots,
            startds=startds,
            metrics=metrics,
            clock=clock,
            new_id=new_id,
        )
        self._unreconciled: set[str] = set(self._sites)
        self._started: set[str] | None = None  # resources whose start is recorded (lazy)
        self._unplaced_at: dict[str, float] = {}  # when each was last seen without its machine
        self._budget_warned: dict[str, float] = {}  # the highest warn_at fraction logged
        self._last_held: tuple[int, str] | None = None  # what the last cycle held back, and why
        self._cycles = 0
        self._backfill = frozenset(
            name
            for name, (_s, adapter) in self._sites.items()
            if Capability.OWNERS in adapter.capabilities
        )

    @property
    def reconcile_pending(self) -> bool:
        """Whether a site has not been listed successfully since the start."""
        return bool(self._unreconciled)

    def health(self, site: str) -> SiteHealth:
        record = self._store.site(site)
        return SiteHealth(record.failures, record.last_failure_at)

    # --- observe ----------------------------------------------------------

    def reconcile(self, only: Collection[str] | None = None) -> None:
        """List every site (or each of `only`) and record what the evidence
        says: vanished resources GONE, orphans adopted, boots promoted."""
        names = set(self._sites) if only is None else set(only) & set(self._sites)
        self.observe(self._clock(), write=True, listing=names, pool=False)

    def observe(
        self,
        now: float,
        *,
        write: bool = True,
        listing: Collection[str] | None = None,
        pool: bool = True,
    ) -> Snapshot:
        """Ask the pool and the sites (each on its lane, within the budget),
        record the evidence (with `write`; `tide plan` passes False) and
        return the Snapshot. `listing`: sites to list (default: those due)."""
        records = self._store.alive()
        busy = frozenset(name for name in self._sites if self._runner.busy(name))
        to_list = self._due(records) if listing is None else set(listing)
        to_list -= busy
        listings: dict[str, Pending[list[Owned]]] = {
            name: self._runner.submit(name, self._sites[name][1].list_owned)
            for name in sorted(to_list)
        }
        queues: dict[str, Pending[OwnerQueue]] = {}
        for name in sorted(self._backfill - busy if pool else set()):
            queues[name] = self._runner.submit(name, self._sites[name][1].owner_queue)
        view: Pending[_PoolView] | None = None
        if pool and not self._runner.busy(POOL_LANE):
            view = self._runner.submit(POOL_LANE, self._ask_pool)
        self._runner.wait(
            [*listings.values(), *queues.values(), *([view] if view else [])], OBSERVE_BUDGET_S
        )

        answered = {
            name: owned
            for name, p in listings.items()
            if (owned := self._answer(name, "list", p)) is not None
        }
        for name in answered:
            self._unreconciled.discard(name)
        pool_view = _PoolView((), False, None)
        if view is not None:
            got = self._answer(POOL_LANE, "pool", view)
            if got is not None:
                pool_view = got
        found = evidence(
            records,
            Answers(pool_view.slots, answered, slots_complete=not pool_view.young),
            now,
            self._listing_grace_s,
        )
        unrecorded: set[str] = set()
        if write:
            unrecorded = self._record(found, now, records)
            self._record_starts(found.resources, now)
        # A site whose evidence could not be recorded is decided on next cycle:
        # this cycle's snapshot would disagree with the store.
        # ... and so is one not listed once since the start (a lost state file:
        # it may hold resources the store does not know yet).
        site_busy = (
            busy
            | {name for name, p in listings.items() if not p.done()}
            | unrecorded
            | (self._unreconciled & set(self._sites))
        )
        owner_views: dict[str, Owners] = {}
        for name, p in queues.items():
            queue = self._answer(name, "owners", p)
            record = self._store.site(name)
            alive = sum(1 for r in found.resources if r.site == name and r.state in ALIVE)
            if write and queue is not None:
                seen = self._store.saw_owner_jobs(name, queue.waiting, now)
            else:
                seen = self._store.owner_jobs_seen(name)
            owner_views[name] = owners(record, queue, alive, now, seen)
            waiting = queue is None or queue.pending_nodes + queue.new_nodes > 0
            if write and waiting:
                self._store.owners_waited(name, now)
        for name in sorted(self._backfill - set(queues)):  # busy: not asked this cycle
            record = self._store.site(name)
            owner_views[name] = owners(record, None, 0, now)
            if write and pool:
                self._store.owners_waited(name, now)
        return Snapshot(
            now=now,
            sites={name: site for name, (site, _adapter) in self._sites.items()},
            demand=pool_view.demand,
            resources=found.resources,
            health={name: self.health(name) for name in self._sites},
            owners=owner_views,
            demand_known=pool_view.demand_known and not pool_view.young,
            slots_known=pool_view.slots is not None and not pool_view.young,
            collector_young=pool_view.young,
            busy=site_busy,
            budgets=self._budgets(found.resources, now),
        )

    def _record_starts(self, resources: Sequence[Resource], now: float) -> None:
        """Record when each resource got its machine (its site's own count,
        else when it is first seen with it: its slot advertised, or its site
        lists it placed): a budget is charged from then until it is gone
        (tide.budget)."""
        for r in resources:
            if r.listed is True and not r.placed:
                self._unplaced_at[r.id] = now
        try:
            if self._started is None:
                self._started = self._store.started_ids()
            new = {
                r.id: (r.site, self._sites[r.site][0].shape.cpus, min(now, r.started_at or now))
                for r in resources
                if r.id not in self._started
                and r.site in self._sites
                and r.state is not State.GONE
                and (r.advertised or (r.listed is True and r.placed))
            }
            self._store.started(new)
        except Exception as exc:  # seen again next cycle: charged from then
            event(log, "usage not recorded", level=logging.WARNING, error=str(exc))
            return
        alive = {r.id for r in resources}
        self._started = (self._started | set(new)) & alive
        self._unplaced_at = {rid: at for rid, at in self._unplaced_at.items() if rid in alive}

    def _charge_unseen(self, rid: str, site: str, created_at: float, now: float) -> None:
        """A resource gone that was never seen holding its machine may have
        held it between two listings (a Slurm pilot whose boot failed within
        seconds): charged from when it was last seen without one (its
        creation, after a restart) until now - more than it used, never less."""
        if site not in self._sites or (self._started is not None and rid in self._started):
            return
        cpus = self._sites[site][0].shape.cpus
        since = self._unplaced_at.pop(rid, created_at)
        try:
            self._store.charged(rid, site, cpus, since, now)
        except Exception as exc:
            event(log, "usage not recorded", level=logging.WARNING, resource=rid, error=str(exc))

    def _budgets(self, resources: Sequence[Resource], now: float) -> dict[str, BudgetState]:
        """Each budgeted site's allocation now. One that cannot be accounted
        (the store did not answer) is left out: the site then boots nothing."""
        budgets: dict[str, BudgetState] = {}
        for name, (site, _adapter) in self._sites.items():
            rule = site.budget
            if rule is None:
                continue
            alive = [r.id for r in resources if r.site == name and r.state is not State.GONE]
            try:
                runs = self._store.runs(name, rule.since)
            except Exception as exc:
                event(log, "budget unknown", level=logging.WARNING, site=name, error=str(exc))
                continue
            budgets[name] = account(rule, runs, alive, now)
        return budgets

    def _warn_budgets(self, budgets: Mapping[str, BudgetState], now: float) -> None:
        """Log a warning when a site's budget reaches one of its warn_at fractions."""
        for name, state in sorted(budgets.items()):
            reached = crossed(state, self._budget_warned.get(name, 0.0))
            if reached is None:
                continue
            self._budget_warned[name] = reached
            ends = state.runs_out_at(now)
            event(
                log,
                "budget",
                level=logging.WARNING,
                site=name,
                used=f"{state.fraction_used:.0%} (warns at {reached:.0%})",
                left_core_hours=hours(state.left_core_s),
                total_core_hours=hours(state.rule.total_core_s),
                cores_in_use=state.cores_in_use,
                runs_out=runs_out(ends, now),
            )

    def _due(self, records: Sequence[Resource]) -> set[str]:
        """Sites to list this cycle: backfill sites (owners take nodes back by
        themselves), sites with boots in flight or resources leaving (their
        failures and departures are seen at once), sites not yet listed, and
        every site every RECONCILE_EVERY cycles."""
        if self._cycles % RECONCILE_EVERY == 0:
            return set(self._sites)
        due = set(self._backfill) | (self._unreconciled & set(self._sites))
        due |= {r.site for r in records if r.state not in _SETTLED and r.site in self._sites}
        return due

    def _ask_pool(self) -> _PoolView:
        try:
            demand, complete = self._demand()
        except Exception as exc:
            event(log, "demand unknown", level=logging.WARNING, error=str(exc))
            demand, complete = (), False
        try:
            slots: Mapping[str, SlotState] | None = self._slots.observe()
        except Exception as exc:
            event(
                log,
                "slots unknown: no scale-down this cycle",
                level=logging.WARNING,
                error=str(exc),
            )
            slots = None
        return _PoolView(tuple(demand), complete, slots, slots is not None and self._young())

    def _young(self) -> bool:
        """Whether the collector started within its warm-up (an optional
        capability of the Slots observer; an error counts as young)."""
        started_at = getattr(self._slots, "started_at", None)
        if self._collector_warmup_s <= 0 or started_at is None:
            return False
        try:
            started = started_at()
        except Exception as exc:
            event(log, "collector age unknown", level=logging.WARNING, error=str(exc))
            return True
        if started is None:
            return False
        age = self._clock() - started
        if age < self._collector_warmup_s:
            event(
                log,
                "collector restarted recently: absence proves nothing yet",
                level=logging.WARNING,
                age_s=round(age),
                warmup_s=self._collector_warmup_s,
            )
            return True
        return False

    def _answer(self, lane: str, operation: str, pending: Pending[_T]) -> _T | None:
        if not pending.done():
            event(
                log,
                "no answer within the budget: site left alone until it answers",
                level=logging.WARNING,
                site=lane,
                operation=operation,
                budget_s=OBSERVE_BUDGET_S,
            )
            self._count(lane, operation)
            return None
        try:
            return pending.result()
        except Exception as exc:
            self._failed(lane, operation, exc)
            return None

    def _record(self, found: Evidence, now: float, records: Sequence[Resource]) -> set[str]:
        """Write what the evidence says, before anything is decided on it.
        Returns the sites where a write failed."""
        failed: set[str] = set()
        site_of = {r.id: r.site for r in found.resources}
        created = {r.id: r.created_at for r in records}
        for move in found.moves:
            try:
                self._store.move(move.resource, move.to, now, move.reason)
            except Exception as exc:
                failed.add(move.site)
                event(
                    log,
                    "record refused",
                    level=logging.WARNING,
                    resource=move.resource,
                    error=str(exc),
                )
                continue
            event(log, move.to.value, site=move.site, resource=move.resource, reason=move.reason)
            if move.to is State.GONE:
                self._charge_unseen(move.resource, move.site, created.get(move.resource, now), now)
            if move.to is State.RUNNING:
                try:
                    self._store.boot_succeeded(move.site)  # a boot succeeded: its backoff ends
                except Exception as exc:  # told again by the next boot that registers
                    failed.add(move.site)
                    event(log, "backoff not reset", level=logging.WARNING, error=str(exc))
        for orphan, state in found.adopt:
            try:
                self._store.add(
                    orphan.resource_id,
                    orphan.site,
                    now,
                    "adopted: its site lists it as ours, the store did not know it",
                    state=state,
                    handle=dict(orphan.handle),
                )
            except Exception as exc:
                failed.add(orphan.site)
                event(
                    log,
                    "adoption refused",
                    level=logging.WARNING,
                    resource=orphan.resource_id,
                    error=str(exc),
                )
                continue
            event(
                log,
                "adopted",
                level=logging.WARNING,
                site=orphan.site,
                resource=orphan.resource_id,
                state=state.value,
            )
        try:
            self._store.set_timers(found.timers)
        except Exception as exc:  # the clocks start again next cycle: nothing decided on them
            event(log, "timers not recorded", level=logging.WARNING, error=str(exc))
            failed |= {site_of.get(rid, "") for rid in found.timers}
        failed.discard("")
        return failed

    # --- one cycle ----------------------------------------------------------

    def preview(self) -> Plan:
        """The plan a cycle would act on now; changes nothing (for `tide plan`)."""
        return decide(self.observe(self._clock(), write=False))

    def cycle(self) -> Plan:
        """Observe, decide, act and record once; returns the plan acted on."""
        if self._metrics is None:
            return self._cycle()
        with self._metrics.time_loop():
            return self._cycle()

    def _cycle(self) -> Plan:
        snapshot = self.observe(self._clock())
        self._cycles += 1
        plan = decide(snapshot)
        held = (len(plan.held_back), plan.held_back[0].why) if plan.held_back else None
        if held is not None and held != self._last_held:  # said once while it lasts
            event(log, "actions held back", level=logging.WARNING, held=held[0], why=held[1])
        self._last_held = held
        site_of = {r.id: r.site for r in snapshot.resources}
        batches = self._actuator.batches(plan, site_of)
        pending = [self._runner.submit(site, batch) for site, batch in sorted(batches.items())]
        self._runner.wait(pending, self._act_budget_s)
        self._renew_tokens(snapshot)
        for name, view in snapshot.owners.items():  # an operator's request is done once
            record = self._store.site(name)
            if view.evacuate_nodes and record.evacuate is not None:
                self._store.evacuate_done(name, record.evacuate)
        if self._cycles % _PRUNE_EVERY == 0:
            self._store.prune(snapshot.now - RETENTION_S)
        self._warn_budgets(snapshot.budgets, snapshot.now)
        if self._metrics is not None:
            self._metrics.observe_budgets(snapshot.budgets, snapshot.now)
            self._metrics.observe_demand(snapshot.demand)
            self._metrics.count_plan(plan, site_of)
            self._metrics.observe_resources(self._store.alive())
        return plan

    def _renew_tokens(self, snapshot: Snapshot) -> None:
        """Hand the workers whose own token is due a new one (sites whose
        workers have such tokens): on the site's lane, after this cycle's
        actions, not waited for. A renewal that fails is logged and due
        again next cycle; a token lives twice as long as its renewal period."""
        live: dict[str, list[str]] = {}
        for r in snapshot.resources:
            if r.state in _HOLDS_TOKEN:
                live.setdefault(r.site, []).append(r.id)
        for name, ids in sorted(live.items()):
            if name not in self._sites or name in snapshot.busy or self._runner.busy(name):
                continue
            adapter = self._sites[name][1]
            due = adapter.tokens_due(sorted(ids), snapshot.now)
            if due:
                self._runner.submit(name, functools.partial(self._renew, adapter, due))

    def _renew(self, adapter: SiteAdapter, due: list[str]) -> None:
        try:
            adapter.renew_tokens(due)
        except Exception as exc:
            self._failed(adapter.name, "renew", exc)

    def _failed(self, lane: str, operation: str, exc: Exception) -> None:
        event(log, f"{operation} failed", level=logging.WARNING, site=lane, error=str(exc))
        self._count(lane, operation)

    def _count(self, site: str, operation: str) -> None:
        if self._metrics is not None and site != POOL_LANE:
            self._metrics.count_failure(site, operation)


_SETTLED = frozenset({State.RUNNING, State.DRAINING})
_HOLDS_TOKEN = frozenset({State.BOOTING, State.RUNNING, State.DRAINING})


def run_forever(controller: Controller, interval_s: float, stop: threading.Event) -> None:
    """Cycle every `interval_s` until `stop` is set. A cycle that raises is
    logged and the loop goes on."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            controller.cycle()
        except Exception:
            log.exception("cycle failed")
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
