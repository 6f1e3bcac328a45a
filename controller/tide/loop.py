"""The control loop: observe -> decide -> act -> record, one cycle at a time.

All I/O sits behind small injected interfaces (the sites' adapters, the
store, a demand callable, a `Slots` observer, a clock and an id maker), so a
cycle runs in a unit test without a pool, a cloud or a real clock.

Write-ahead: a resource is recorded REQUESTED before its site's create call
and STOPPING before its destroy call, so after a crash the store names every
resource that may exist at a site (see tide.store).

SAFETY: the policy scales down what it believes is idle. If the demand is
incomplete (a schedd or the collector did not answer) or the slots are
unknown (the collector query failed), what looks idle may be busy or needed.
In that case every Drain, and every Destroy other than that of a boot past
its boot timeout, is dropped from the plan: an outage of the pool's daemons
must never make the controller kill live resources. Scale-up, undrain and
boot-timeout destroys still happen.

Draining: a Drain is written (DRAINING) before the startd is told (by the
site; where the site cannot reach it, its slot ads are withdrawn from the
collector instead, so no new job is matched there), and a
DRAINING resource whose startd has not accepted a drain yet (a failed
call, a crash in between, or `tide drain` by an operator) is told again
each cycle. An Undrain cancels the startd's drain before it is written, so
the store never shows RUNNING a startd that takes no job.

Backfill sites (tide.sites.base.BackfillSite, e.g. Slurm): their owners'
queue is read every cycle into the snapshot (tide.model.Owners; a failed
read blocks new boots there); the policy evacuates for waiting owners. An
Evacuate withdraws the resource's slot ads first (no new match), then
destroys it: for a Slurm pilot that is scancel, whose SIGTERM makes the
pilot vacate its jobs back to their schedds. `tide evacuate` records an
operator's request on the site (EVACUATE, PAUSED), read here each cycle.

Isolation: every call to a site is wrapped; an exception from one site is
logged and counted, and never stops the other sites or the daemon. A failed
create backs its site off (SiteHealth, see tide.policy); a failed destroy is
retried after 2, 4, 8 ... s (at most DESTROY_RETRY_MAX_S apart); a failed
drain or undrain is retried next cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tide.logs import event
from tide.metrics import Metrics
from tide.model import (
    Action,
    Create,
    Demand,
    Destroy,
    Drain,
    Evacuate,
    Owners,
    Plan,
    Resource,
    Site,
    SiteHealth,
    Snapshot,
    State,
    Undrain,
)
from tide.policy import decide
from tide.sites.base import BackfillSite, Owned, SiteAdapter
from tide.startds import Startds
from tide.store import Store, StoreError

log = logging.getLogger("tide.loop")

RESOURCE_ID_ATTR = "TideResourceId"
SLOT_CONSTRAINT = f"{RESOURCE_ID_ATTR} =!= undefined"
SLOT_PROJECTION = [RESOURCE_ID_ATTR, "SlotType", "State", "Activity"]
_BOOTS = frozenset({State.REQUESTED, State.BOOTING})
_LIVE = frozenset({State.RUNNING, State.DRAINING})
DESTROY_RETRY_MAX_S = 300.0
"""A failed destroy is retried after 2, 4, 8 ... seconds, at most this long apart."""
LISTING_GRACE_S = 120.0
"""A boot this young that its site does not list yet is not marked gone: a
cloud's listing may lag behind its create call."""

# Store details the loop keeps for a resource.
DRAIN_REQUEST = "drain_request"  # the startd's drain request id ("": its site cannot drain)
HELD = "held"  # drained by an operator: demand never undoes it
IDLE_SINCE = "idle_since"  # when it was first seen with no claimed slot
# Store details of a site, written by `tide evacuate` / `tide resume`.
EVACUATE = "evacuate"  # nodes an operator asked to give back now ("all": every one)
PAUSED = "paused"  # an operator evacuated the site: no new boots until `tide resume`


@dataclass(frozen=True)
class SlotState:
    """What the collector says about one resource's startd."""

    advertised: bool
    claimed_slots: int
    drained: bool = False  # every slot of its startd is in state "Drained"


class Slots(Protocol):
    """Observes the pool's slots. Raises if the pool cannot be asked."""

    def observe(self) -> Mapping[str, SlotState]:
        """Slot state by TideResourceId, for every resource with an ad."""
        ...

    def withdraw(self, resource_id: str) -> None:
        """Remove a destroyed resource's startd ads from the collector: a
        machine powered off hard (a deleted server) never withdraws them, and
        until they expire the negotiator matches jobs to a machine that is gone."""
        ...


def slots_from_ads(ads: Any) -> dict[str, SlotState]:
    """Startd ads (anything with .get) -> SlotState per TideResourceId: a resource
    is advertised if any ad names it; its claimed slots are its ads in State
    "Claimed" with an Activity other than "Idle" (the dynamic slots running
    jobs: a claim left idle, e.g. one its schedd could not release while the
    collector was away, runs nothing); it is drained when every ad is in
    State "Drained" (the startd finished a drain: no job left)."""
    out: dict[str, SlotState] = {}
    for ad in ads:
        rid = ad.get(RESOURCE_ID_ATTR)
        if not isinstance(rid, str) or not rid:
            continue
        claimed = 1 if ad.get("State") == "Claimed" and ad.get("Activity") != "Idle" else 0
        drained = ad.get("State") == "Drained"
        old = out.get(rid)
        if old is not None:
            claimed += old.claimed_slots
            drained = drained and old.drained
        out[rid] = SlotState(True, claimed, drained)
    return out


class CollectorSlots:
    """Slots as the pool's collector reports them (htcondor2, imported lazily
    so the daemon can point CONDOR_CONFIG at its own configuration first)."""

    def __init__(self, collector: str) -> None:
        import htcondor2  # noqa: PLC0415

        self._htcondor = htcondor2
        self._collector = htcondor2.Collector(collector)

    def observe(self) -> Mapping[str, SlotState]:
        ads = self._collector.query(
            self._htcondor.AdTypes.Startd,
            constraint=SLOT_CONSTRAINT,
            projection=list(SLOT_PROJECTION),
        )
        return slots_from_ads(ads)

    def withdraw(self, resource_id: str) -> None:
        import classad2  # noqa: PLC0415

        query = classad2.ClassAd()
        query["MyType"] = "Query"
        query["TargetType"] = "Machine"
        query["Requirements"] = classad2.ExprTree(
            f"{RESOURCE_ID_ATTR} == {classad2.quote(resource_id)}"
        )
        self._collector.advertise([query], "INVALIDATE_STARTD_ADS")


DemandSource = Callable[[], tuple[tuple[Demand, ...], bool]]


@dataclass(frozen=True)
class Observation:
    """One cycle's view of the world, and how far it can be trusted."""

    snapshot: Snapshot
    demand_complete: bool
    slots_known: bool
    stale: tuple[Resource, ...]  # STOPPING and FAILED resources still to destroy

    @property
    def safe_to_scale_down(self) -> bool:
        return self.demand_complete and self.slots_known


class Controller:
    """One controller: `reconcile()` at start (and now and then), `cycle()` each interval."""

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
        listing_grace_s: float = LISTING_GRACE_S,
    ) -> None:
        self._sites = dict(sites)
        self._store = store
        self._demand = demand
        self._slots = slots
        self._startds = startds
        self._metrics = metrics
        self._clock = clock
        self._new_id = new_id
        self._listing_grace_s = listing_grace_s
        self._health: dict[str, SiteHealth] = {}
        self._destroy_retry: dict[str, tuple[int, float]] = {}  # failures, not before
        # Idle clocks survive a restart: kept in the store, read back here.
        self._idle_since: dict[str, float] = {}
        # Since when a live resource's slot is missing from the collector (in
        # memory: a restart only delays giving a lost resource back).
        self._lost_since: dict[str, float] = {}
        for r in store.alive():
            since = store.detail(r.id).get(IDLE_SINCE)
            if isinstance(since, int | float) and not isinstance(since, bool):
                self._idle_since[r.id] = float(since)
        self._last_slots: Mapping[str, SlotState] = {}
        self._unreconciled: set[str] = set(self._sites)
        # When each backfill site's owners were last seen waiting (in memory:
        # after a restart their queue is read again before any boot).
        self._owners_waiting_at: dict[str, float] = {}
        self._backfill = frozenset(
            name for name, (_s, adapter) in self._sites.items() if isinstance(adapter, BackfillSite)
        )

    @property
    def reconcile_pending(self) -> bool:
        """Whether a site could not be reconciled yet (its list_owned failed)."""
        return bool(self._unreconciled)

    def health(self, site: str) -> SiteHealth:
        return self._health.get(site, SiteHealth())

    # --- reconcile ------------------------------------------------------

    def reconcile(self, only: Collection[str] | None = None) -> dict[str, list[Owned]]:
        """Align the store with what each site (or each of `only`) lists:
        recorded resources the site no longer lists are GONE; resources the
        site lists that the store does not hold alive (orphans, e.g. from a
        crash before the store write of an older Tide) are destroyed. A site
        whose listing fails is skipped and stays pending for the next call.
        Returns the listings it made, by site."""
        now = self._clock()
        listings: dict[str, list[Owned]] = {}
        for name, (_site, adapter) in sorted(self._sites.items()):
            if only is not None and name not in only:
                continue
            try:
                owned = adapter.list_owned()
            except Exception as exc:
                event(
                    log,
                    "reconcile skipped: list failed",
                    level=logging.WARNING,
                    site=name,
                    error=str(exc),
                )
                self._count_failure(name, "list")
                self._unreconciled.add(name)
                continue
            listings[name] = owned
            listed = {o.resource_id: o for o in owned}
            for r in self._store.alive(name):
                young = r.state in _BOOTS and now - r.state_since < self._listing_grace_s
                if r.id not in listed and not young:
                    self._store.move(r.id, State.GONE, now, "vanished: the site no longer lists it")
                    self._idle_since.pop(r.id, None)
                    event(log, "vanished", site=name, resource=r.id, was=r.state.value)
            alive = {r.id for r in self._store.alive(name)}
            for rid, o in sorted(listed.items()):
                if rid in alive:
                    continue
                event(
                    log,
                    "orphan: destroying",
                    level=logging.WARNING,
                    site=name,
                    resource=rid,
                    status=o.status,
                )
                try:
                    adapter.destroy(rid, dict(o.details))
                except Exception as exc:
                    self._failed(name, "destroy", "orphan destroy failed", rid, exc)
            self._unreconciled.discard(name)
        return listings

    # --- one cycle ------------------------------------------------------

    def observe(
        self, now: float, *, write: bool = True, listed: Mapping[str, list[Owned]] | None = None
    ) -> Observation:
        """Read demand, slots and the store into a Snapshot. With `write`,
        BOOTING resources whose slot is advertised move to RUNNING in the store;
        without (`tide plan`), only the snapshot shows them RUNNING. `listed`:
        site listings made this cycle already (reconcile's), not asked again."""
        try:
            demand, complete = self._demand()
        except Exception as exc:
            event(log, "demand unknown", level=logging.WARNING, error=str(exc))
            demand, complete = (), False
        try:
            slots = self._slots.observe()
            slots_known = True
            self._last_slots = slots
        except Exception as exc:
            event(
                log,
                "slots unknown: no scale-down this cycle",
                level=logging.WARNING,
                error=str(exc),
            )
            slots, slots_known = self._last_slots, False

        resources: list[Resource] = []
        stale: list[Resource] = []
        seen: set[str] = set()
        stored_alive = self._store.alive()
        failed, queued = self._failed_boots(stored_alive, listed or {})
        for stored in stored_alive:
            seen.add(stored.id)
            if stored.state in (State.STOPPING, State.FAILED):
                stale.append(stored)
            else:
                r = self._observed(stored, slots, slots_known, now, write)
                resources.append(replace(r, boot_failed=r.id in failed, placed=r.id not in queued))
        for rid in set(self._idle_since) - seen:
            del self._idle_since[rid]
        for rid in set(self._lost_since) - seen:
            del self._lost_since[rid]
        snapshot = Snapshot(
            now=now,
            sites={name: site for name, (site, _adapter) in self._sites.items()},
            demand=tuple(demand),
            resources=tuple(resources),
            health={name: self.health(name) for name in self._sites},
            owners=self._owners(now, write, stored_alive),
        )
        return Observation(snapshot, complete, slots_known, tuple(stale))

    def _owners(self, now: float, write: bool, stored_alive: list[Resource]) -> dict[str, Owners]:
        """The owners of every backfill site: their queue (unknown if it cannot
        be read), when they last waited, and an operator's request."""
        owners: dict[str, Owners] = {}
        for name in sorted(self._backfill):
            adapter = self._sites[name][1]
            assert isinstance(adapter, BackfillSite)
            request = self._store.site_detail(name)
            paused = request.get(PAUSED) is True
            alive = sum(1 for r in stored_alive if r.site == name)
            evacuate = _evacuate_nodes(request.get(EVACUATE), alive)
            try:
                queue = adapter.owner_queue()
            except Exception as exc:
                self._failed(name, "owners", "owners' queue unknown: no boot there", "", exc)
                owners[name] = Owners(
                    known=False,
                    last_waiting_at=self._owners_waiting_at.get(name),
                    paused=paused,
                    evacuate_nodes=evacuate,
                )
                continue
            waiting = queue.pending_nodes + queue.new_nodes > 0
            if waiting and write:
                self._owners_waiting_at[name] = now
            waiting_at = now if waiting else self._owners_waiting_at.get(name)
            owners[name] = Owners(
                pending_nodes=queue.pending_nodes,
                new_nodes=queue.new_nodes,
                free_nodes=queue.free_nodes,
                last_waiting_at=waiting_at,
                paused=paused,
                evacuate_nodes=evacuate,
            )
        return owners

    def _failed_boots(
        self, stored: list[Resource], listed: Mapping[str, list[Owned]]
    ) -> tuple[set[str], set[str]]:
        """Boots their site already reports failed (a server in ERROR), and
        boots still queued at their site (holding no machine): asked only of
        sites with boots in flight (unless `listed` holds this cycle's
        listing), so a failed boot is destroyed and backed off now, not at its
        boot timeout. A failed listing is ignored (the boot timeout still
        applies)."""
        booting = {r.site for r in stored if r.state in _BOOTS}
        failed: set[str] = set()
        queued: set[str] = set()
        for name in sorted(booting):
            entry = self._sites.get(name)
            if entry is None:
                continue
            owned = listed.get(name)
            if owned is None:
                try:
                    owned = entry[1].list_owned()
                except Exception as exc:
                    event(log, "boot check skipped: list failed", site=name, error=str(exc))
                    continue
            failed |= {o.resource_id for o in owned if o.failed}
            queued |= {o.resource_id for o in owned if not o.placed}
        return failed, queued

    def _observed(
        self,
        r: Resource,
        slots: Mapping[str, SlotState],
        slots_known: bool,
        now: float,
        write: bool,
    ) -> Resource:
        """One recorded resource with what the pool says about it; idle_since is
        when it was first seen with no claimed slot (unchanged while slots are unknown)."""
        slot = slots.get(r.id, SlotState(advertised=False, claimed_slots=0))
        held, drained = False, slot.drained
        if r.state is State.DRAINING:
            detail = self._store.detail(r.id)
            held = detail.get(HELD) is True
            if detail.get(DRAIN_REQUEST) == "":  # its site cannot drain the startd
                drained = slot.claimed_slots == 0
        if r.state is State.BOOTING and slot.advertised:
            if write:
                r = self._store.move(r.id, State.RUNNING, now, "slot advertised")
                self._health.pop(r.site, None)  # a boot succeeded: the site's backoff ends
                event(log, "running", site=r.site, resource=r.id)
            else:
                r = replace(r, state=State.RUNNING, state_since=now)
        live = r.state in _LIVE
        return replace(
            r,
            advertised=slot.advertised,
            claimed_slots=slot.claimed_slots,
            idle_since=self._idle_clock(r.id, slot, slots_known, now, write) if live else None,
            lost_since=self._lost_clock(r.id, slot, slots_known, now, write) if live else None,
            drained=drained,
            held=held,
        )

    def _idle_clock(
        self, rid: str, slot: SlotState, slots_known: bool, now: float, write: bool
    ) -> float | None:
        """Since when a live resource has had no claimed slot (None: busy); kept
        in the store too, so a restart does not reset it; unchanged while blind."""
        if not slots_known:
            return self._idle_since.get(rid)
        if slot.claimed_slots > 0:
            if write and self._idle_since.pop(rid, None) is not None:
                self._store.set_detail(rid, IDLE_SINCE, None)
            return None
        since = self._idle_since.get(rid)
        if since is None:
            since = now
            if write:
                self._idle_since[rid] = now
                self._store.set_detail(rid, IDLE_SINCE, now)
        return since

    def _lost_clock(
        self, rid: str, slot: SlotState, slots_known: bool, now: float, write: bool
    ) -> float | None:
        """Since when a live resource's slot has been missing from the collector
        (None: advertised); unchanged while blind."""
        if not slots_known:
            return self._lost_since.get(rid)
        if slot.advertised:
            if write:
                self._lost_since.pop(rid, None)
            return None
        since = self._lost_since.get(rid, now)
        if write:
            self._lost_since[rid] = since
        return since

    def preview(self) -> Plan:
        """The plan a cycle would act on now; changes nothing (for `tide plan`)."""
        obs = self.observe(self._clock(), write=False)
        return self.safe(obs, decide(obs.snapshot))

    def safe(self, obs: Observation, plan: Plan) -> Plan:
        """The plan without its scale-down, when the observation cannot be trusted
        (see SAFETY in the module's docstring)."""
        if obs.safe_to_scale_down:
            return plan
        by_id = {r.id: r for r in obs.snapshot.resources}
        kept: list[Action] = []
        for action in plan.actions:
            if isinstance(action, Drain):
                continue
            if isinstance(action, Destroy) and not self._boot_timed_out(
                by_id.get(action.resource), obs.snapshot.now
            ):
                continue
            kept.append(action)
        dropped = len(plan.actions) - len(kept)
        if dropped:
            event(
                log,
                "scale-down withheld: demand or slots unknown",
                level=logging.WARNING,
                dropped=dropped,
                demand_complete=obs.demand_complete,
                slots_known=obs.slots_known,
            )
        return Plan(tuple(kept), plan.unmatched)

    def _boot_timed_out(self, r: Resource | None, now: float) -> bool:
        if r is None or r.state not in _BOOTS or r.advertised:
            return False
        entry = self._sites.get(r.site)
        if entry is None:
            return False
        return r.boot_failed or now - r.state_since >= entry[0].limits.boot_timeout_s

    def cycle(self) -> Plan:
        """Observe, decide, act and record once; returns the plan acted on."""
        if self._metrics is None:
            return self._cycle()
        with self._metrics.time_loop():
            return self._cycle()

    def _cycle(self) -> Plan:
        # Backfill sites are listed every cycle: their owners take nodes back
        # by themselves (Slurm preemption), and a pilot gone that way must
        # not hold its place in the quota until the next full reconcile.
        listed = self.reconcile(only=self._backfill) if self._backfill else {}
        now = self._clock()
        obs = self.observe(now, listed=listed)
        plan = self.safe(obs, decide(obs.snapshot))
        for r in obs.stale:  # destroys that failed before, and failed creates
            if now >= self._destroy_retry.get(r.id, (0, 0.0))[1]:
                self._destroy(r.id, r.site, now, "retry: still to destroy")
        for action in plan.actions:
            self._act(action, now)
        for name, owners in obs.snapshot.owners.items():  # an operator's request is done once
            if owners.evacuate_nodes:
                self._store.set_site_detail(name, EVACUATE, None)
        acted = {getattr(a, "resource", None) for a in plan.actions}
        for r in obs.snapshot.resources:  # drains not yet accepted by the startd
            if (
                r.state is State.DRAINING
                and r.advertised
                and r.id not in acted
                and self._store.detail(r.id).get(DRAIN_REQUEST) is None
            ):
                self._drain_startd(r.id, r.site, "drain not yet accepted: told again")
        if self._metrics is not None:
            site_of = {r.id: r.site for r in obs.snapshot.resources}
            self._metrics.observe_demand(obs.snapshot.demand)
            self._metrics.count_plan(plan, site_of)
            self._metrics.observe_resources(self._store.alive())
        return plan

    # --- acting ---------------------------------------------------------

    def _act(self, action: Action, now: float) -> None:
        if isinstance(action, Create):
            self._create(action, now)
            return
        r = self._store.get(action.resource)
        if r is None:
            event(
                log,
                "action on unknown resource skipped",
                level=logging.WARNING,
                resource=action.resource,
            )
            return
        if isinstance(action, Destroy):
            if action.boot_failed:
                self._failed_boot(r.site, now)
            self._destroy(r.id, r.site, now, action.reason)
        elif isinstance(action, Drain):
            if self._move(r.id, State.DRAINING, now, action.reason):
                self._drain_startd(r.id, r.site, action.reason)
        elif isinstance(action, Undrain):
            self._undrain(r.id, r.site, now, action.reason)
        elif isinstance(action, Evacuate):
            self._evacuate(r.id, r.site, now, action.reason)

    def _evacuate(self, rid: str, site: str, now: float, reason: str) -> None:
        """No new match there (its slot ads withdrawn), then destroy it: the
        site's destroy vacates running jobs (a Slurm pilot's SIGTERM trap)."""
        try:
            self._slots.withdraw(rid)
        except Exception as exc:  # the destroy that follows ends its matches anyway
            self._failed(site, "withdraw", "withdrawing its slot ads failed", rid, exc)
        event(log, "evacuating", site=site, resource=rid, reason=reason)
        self._destroy(rid, site, now, reason, withdraw=False)

    def _drain_startd(self, rid: str, site: str, reason: str) -> None:
        """Tell the resource's startd to drain; remember the request. A failure
        is retried next cycle (the resource stays DRAINING meanwhile)."""
        if self._startds is None:
            return
        try:
            request = self._startds.drain(site, rid, f"tide: {reason}")
        except Exception as exc:
            self._failed(site, "drain", "startd drain failed: retried next cycle", rid, exc)
            return
        if request is not None:
            self._store.set_detail(rid, DRAIN_REQUEST, request)
            event(log, "startd draining", site=site, resource=rid, request=request)
            return
        # The site cannot reach the startd: take its slot out of the collector
        # instead, so the negotiator matches no new job there; a job matched
        # just before shows up claimed in the startd's next update and keeps
        # the resource alive. Recorded only once done, so a failed withdrawal
        # is told again next cycle.
        try:
            self._slots.withdraw(rid)
        except Exception as exc:
            self._failed(site, "withdraw", "withdrawing its slot ads failed", rid, exc)
            return
        self._store.set_detail(rid, DRAIN_REQUEST, "")
        event(log, "slot withdrawn from the collector", site=site, resource=rid)

    def _undrain(self, rid: str, site: str, now: float, reason: str) -> None:
        """Cancel the startd's drain, then record RUNNING (never the other way
        round: RUNNING in the store must mean the startd takes jobs)."""
        request = self._store.detail(rid).get(DRAIN_REQUEST)
        if isinstance(request, str) and request and self._startds is not None:
            try:
                self._startds.cancel_drain(site, rid, request)
            except Exception as exc:
                self._failed(site, "undrain", "startd undrain failed: retried next cycle", rid, exc)
                return
        if self._move(rid, State.RUNNING, now, reason):
            self._store.set_detail(rid, DRAIN_REQUEST, None)

    def _failed_boot(self, site: str, now: float) -> None:
        old = self.health(site)
        self._health[site] = SiteHealth(old.consecutive_failures + 1, now)

    def _move(self, rid: str, to: State, now: float, reason: str) -> bool:
        try:
            self._store.move(rid, to, now, reason)
        except StoreError as exc:
            event(
                log,
                "move refused",
                level=logging.WARNING,
                resource=rid,
                to=to.value,
                error=str(exc),
            )
            return False
        event(log, to.value, resource=rid, reason=reason)
        return True

    def _create(self, action: Create, now: float) -> None:
        entry = self._sites.get(action.site)
        if entry is None:
            return
        adapter = entry[1]
        for _ in range(action.count):
            rid = self._new_id(action.site)
            try:
                self._store.add(rid, action.site, now, action.reason)
            except StoreError as exc:
                event(
                    log,
                    "create skipped: store refused",
                    level=logging.ERROR,
                    site=action.site,
                    resource=rid,
                    error=str(exc),
                )
                return
            try:
                details = adapter.create(rid)
            except Exception as exc:
                self._store.move(rid, State.FAILED, now, f"create failed: {exc}")
                self._count_failure(action.site, "create")
                old = self.health(action.site)
                self._failed_boot(action.site, now)
                event(
                    log,
                    "create failed",
                    level=logging.WARNING,
                    site=action.site,
                    resource=rid,
                    error=str(exc),
                    failures=old.consecutive_failures + 1,
                )
                return  # no more creates at this site this cycle
            for key, val in details.items():
                self._store.set_detail(rid, key, val)
            self._store.move(rid, State.BOOTING, now, "created")
            event(log, "created", site=action.site, resource=rid)

    def _destroy(
        self, rid: str, site: str, now: float, reason: str, *, withdraw: bool = True
    ) -> None:
        if not self._move(rid, State.STOPPING, now, reason):
            return
        entry = self._sites.get(site)
        if entry is None:
            event(
                log,
                "destroy postponed: site not configured",
                level=logging.WARNING,
                site=site,
                resource=rid,
            )
            return
        details = {k: str(v) for k, v in self._store.detail(rid).items() if v is not None}
        try:
            entry[1].destroy(rid, details)
        except Exception as exc:
            failures = self._destroy_retry.get(rid, (0, 0.0))[0] + 1
            wait = min(2.0**failures, DESTROY_RETRY_MAX_S)
            self._destroy_retry[rid] = (failures, now + wait)
            self._failed(site, "destroy", f"destroy failed: retried in {wait:.0f}s", rid, exc)
            return
        self._destroy_retry.pop(rid, None)
        self._store.move(rid, State.GONE, now, "destroyed")
        self._idle_since.pop(rid, None)
        event(log, "destroyed", site=site, resource=rid)
        if not withdraw:
            return
        try:
            self._slots.withdraw(rid)
        except Exception as exc:  # the ads expire on their own; a failure only delays that
            self._failed(site, "withdraw", "withdrawing its slot ads failed", rid, exc)

    def _failed(self, site: str, operation: str, what: str, rid: str, exc: Exception) -> None:
        """A site call failed: counted, logged, and left for a later cycle."""
        self._count_failure(site, operation)
        event(log, what, level=logging.WARNING, site=site, resource=rid, error=str(exc))

    def _count_failure(self, site: str, operation: str) -> None:
        if self._metrics is not None:
            self._metrics.count_failure(site, operation)


def _evacuate_nodes(request: object, alive: int) -> int:
    """Nodes an operator's EVACUATE request asks for: a count, or "all"."""
    if request == "all":
        return alive
    if isinstance(request, int) and not isinstance(request, bool):
        return max(0, request)
    return 0


def run_forever(
    controller: Controller,
    interval_s: float,
    stop: threading.Event,
    *,
    reconcile_every: int = 30,
) -> None:
    """Reconcile, then cycle every `interval_s` until `stop` is set. A failed
    reconcile is retried every cycle until it succeeds; a full reconcile also
    runs every `reconcile_every` cycles. A cycle that raises is logged and the
    loop goes on."""
    cycles = 0
    pending = True
    while not stop.is_set():
        started = time.monotonic()
        if pending or controller.reconcile_pending or (cycles and cycles % reconcile_every == 0):
            try:
                controller.reconcile()
                pending = False
            except Exception:
                log.exception("reconcile failed")
        try:
            controller.cycle()
        except Exception:
            log.exception("cycle failed")
        cycles += 1
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
