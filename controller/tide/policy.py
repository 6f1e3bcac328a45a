"""The controller's policy: one pure function from what it sees (a Snapshot)
to what to do now (a Plan). No I/O, no clock (time is `snapshot.now`), no
randomness: the same snapshot always gives the same plan, in the same order,
so a decision can be replayed from a log and tested without a pool.

How a decision is made:

1. Resources are sorted per site into boots that timed out, boots in flight
   (requested or booting), idle running, idle draining, drained and busy
   ones (a running or draining resource with a claimed slot counts as fully
   used; one with none as one free machine). A draining resource is
   destroyed only once its startd reports the drain done: a job that
   started in the moment before the drain is never killed. One an operator
   drained (`held`) is never undrained by demand. A live resource whose slot
   is missing from the collector counts as busy (a restarted collector has
   lost every ad for a while) until `lost_timeout_s`, then it is destroyed.
   One within its site's `end_margin_s` of the end its startd advertises
   (TideEndTime: a Slurm pilot's walltime) takes no new job and drains
   itself: it counts as busy (no capacity; its replacement boots while
   demand lasts, within the quota) until it reports the drain done, then
   it is destroyed.
2. Demand is assigned to sites and packed into their machine shape (see
   `_Packer`): an autocluster's jobs go to its sites in the order it lists
   them, each site taking what fits under its quota before the next gets the
   rest, so no job is counted at two sites.
3. Each site covers the machines its demand needs with what it already has,
   cheapest first: idle running machines, then draining ones (undrained),
   then boots in flight; it creates the rest at once, within its quota, its
   boots-in-flight cap and its backoff. What is left over is scaled down:
   surplus boots are destroyed (newest first) before any running machine is
   drained, and only machines idle for the idle timeout are drained.
4. A backfill site (one with `Owners` in the snapshot) serves its owners
   first. While their jobs wait, or their queue cannot be read, it boots
   nothing, and again only after they have waited for nothing for
   `owner_quiet_s` (hysteresis: owners' jobs come in bursts). For waiting
   owner jobs it evacuates exactly the nodes they lack (wanted, less those
   free or already being given back), least running work first: queued
   boots hold no node and are simply withdrawn. Jobs the site's scheduler
   has not looked at yet block boots but get no evacuation: the scheduler
   may make room itself (preemption), and its choice shows as nodes being
   given back by the next cycle. So do jobs waiting for less than the site's
   `owner_grace_s` (owners_due_nodes), timed from when each was first seen
   waiting (persisted): a cluster that preempts for its owners itself gets
   the first chance, and the two never give back a node each.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from tide.budget import BudgetState
from tide.model import (
    Action,
    Create,
    Demand,
    Destroy,
    Drain,
    Evacuate,
    HeldBack,
    Owners,
    Plan,
    Resource,
    Shape,
    Site,
    SiteHealth,
    SiteLimits,
    Snapshot,
    State,
    TellDrain,
    Undrain,
)

_BOOTS = frozenset({State.REQUESTED, State.BOOTING})
_UNBOUNDED = sys.maxsize  # jobs per machine when a job requests nothing


def decide(snapshot: Snapshot) -> Plan:
    """What to do now, given everything observed in `snapshot`."""
    now = snapshot.now
    resources = snapshot.resources
    pools = _classify(resources, snapshot.sites, now)
    evacuations = {
        name: _evacuate(
            pools[name],
            owners,
            owners_due_nodes(owners, snapshot.sites[name], now),
            slots_known=snapshot.slots_known,
        )
        for name, owners in snapshot.owners.items()
        if name in pools
    }
    may_create = {  # a boot timing out now is a failure too: no Create beside its Destroy
        name: not site.retiring
        and not _backing_off(site, snapshot.health.get(name), now)
        and not pools[name].timed_out
        and not _owners_first(site, snapshot.owners.get(name), now)
        for name, site in snapshot.sites.items()
    }
    affordable = {
        name: _affordable(site, snapshot.budgets.get(name)) for name, site in snapshot.sites.items()
    }
    packers = {
        name: _Packer(site.shape, *_room(site, pools[name], may_create[name], affordable[name]))
        for name, site in snapshot.sites.items()
    }
    unmatched = _assign(snapshot.demand, packers)
    actions: list[Action] = []
    unpaid: list[HeldBack] = []
    for name in sorted(snapshot.sites):
        actions += evacuations.get(name, [])
        actions += _site_actions(
            snapshot.sites[name], pools[name], packers[name], may_create[name], now
        )
        if packers[name].full and packers[name].budget_bound:
            unpaid.append(_unpaid(name, packers[name], snapshot.budgets.get(name)))
    actions += _upkeep(resources, snapshot, {_target(a) for a in actions})
    plan = _withhold(snapshot, actions, unmatched)
    return replace(plan, held_back=(*plan.held_back, *unpaid)) if unpaid else plan


def _affordable(site: Site, budget: BudgetState | None) -> int | None:
    """How many more resources the site's budget pays for (None: no budget;
    a budget not accounted this cycle pays for none)."""
    if site.budget is None:
        return None
    return 0 if budget is None else budget.pilots_affordable


def _unpaid(name: str, packer: _Packer, budget: BudgetState | None) -> HeldBack:
    """The boot demand wants and the site's budget does not pay for, and why."""
    why = "budget: not accounted this cycle" if budget is None else budget.why_no_pilot()
    return HeldBack(
        Create(name, 1, f"demand: {packer.turned_away} idle jobs it has no room for"), why
    )


def _target(action: Action) -> str:
    return action.site if isinstance(action, Create) else action.resource


def _upkeep(resources: Iterable[Resource], snapshot: Snapshot, acted: set[str]) -> list[Action]:
    """What keeps records and startds in step, beyond demand: operators'
    drain requests, drains a startd never accepted or forgot, destroys to
    retry, and failed creates to clean up."""
    now = snapshot.now
    actions: list[Action] = []
    for r in sorted(resources, key=lambda r: r.id):
        site = snapshot.sites.get(r.site)
        if site is None or r.id in acted:
            continue
        if r.state is State.DRAINING and r.advertised:
            tell = _retell(r, site.limits, now, snapshot.slots_known)
            if tell:
                actions.append(TellDrain(r.id, tell))
        elif r.state is State.STOPPING and (r.destroy_due is None or now >= r.destroy_due):
            actions.append(Destroy(r.id, "retry: still to destroy"))
        elif r.state is State.FAILED and not r.advertised:
            actions.append(Destroy(r.id, "failed: cleaned up at the site"))
    return actions


def _retell(r: Resource, limits: SiteLimits, now: float, slots_known: bool) -> str | None:
    """Why a draining startd must be told to drain again, or None."""
    if r.drain_request is None:
        return "drain not yet accepted: told again"
    if not slots_known or r.draining or r.drained:
        return None  # it drains (or the pool cannot be seen)
    told = r.drain_told_at
    if told is not None and now - told >= limits.redrain_after_s:
        return f"startd not draining {now - told:.0f}s after it was told (restarted?): told again"
    return None


def _withhold(snapshot: Snapshot, actions: list[Action], unmatched: list[Demand]) -> Plan:
    """The plan, less what must wait: every action at a site still busy with
    an earlier call, and the scale-down when the observation cannot be
    trusted (a schedd or the collector did not answer: what looks idle may
    be busy or needed; an outage of the pool's daemons never costs a live
    resource). Scale-up, undrains, evacuations for the owners, operators'
    drains, boots that never registered and destroys already under way
    still go ahead."""
    by_id = {r.id: r for r in snapshot.resources}
    kept: list[Action] = []
    held: list[HeldBack] = []
    for action in actions:
        r = None if isinstance(action, Create) else by_id.get(action.resource)
        site = action.site if isinstance(action, Create) else (r.site if r else None)
        if site in snapshot.busy:
            held.append(
                HeldBack(action, f"site {site} not seen this cycle: busy, or never listed yet")
            )
        elif not snapshot.slots_known and _timed_out_boot(action, r):
            # Only a boot seen never to register is given up: it may be up and
            # running a job while the collector cannot be seen (or has
            # restarted and not heard from it yet).
            held.append(HeldBack(action, "boot timeout withheld: the collector cannot vouch"))
        elif not snapshot.safe_to_scale_down and _scales_down(
            action, r, snapshot.slots_known, evacuating=_evacuating(snapshot.owners.get(site or ""))
        ):
            held.append(HeldBack(action, _blind(snapshot)))
        else:
            kept.append(action)
    return Plan(tuple(kept), tuple(unmatched), tuple(held))


def _evacuating(owners: Owners | None) -> bool:
    """Whether a backfill site's resources are being given back to its owners
    now: their jobs wait, or an operator evacuated it."""
    return owners is not None and (
        owners.pending_nodes > 0 or owners.evacuate_nodes > 0 or owners.paused
    )


def _scales_down(
    action: Action, r: Resource | None, slots_known: bool, *, evacuating: bool = False
) -> bool:
    if isinstance(action, Drain):
        return not action.held
    if not isinstance(action, Destroy) or r is None:
        return False
    if r.state is State.FAILED:  # its create failed: it may have come up since (a
        return not slots_known  # deadline, then the cloud went on), so only if seen not to
    if r.state is State.STOPPING:  # a destroy to retry: it may have come up meanwhile
        # and run jobs, so only while the collector vouches - except at a
        # backfill site whose owners wait (its destroy vacates jobs back to
        # idle: an evacuation, which no collector outage may delay)
        return not slots_known and not evacuating
    if action.boot_failed:
        return False  # a boot that timed out (see _withhold while the collector is unseen)
    return not (r.held and r.drained)  # an operator's drain, done


def _timed_out_boot(action: Action, r: Resource | None) -> bool:
    """A Destroy of a boot that timed out by absence (not one its site reports failed)."""
    return (
        isinstance(action, Destroy) and action.boot_failed and r is not None and not r.boot_failed
    )


def _blind(snapshot: Snapshot) -> str:
    if not snapshot.slots_known:
        return "scale-down withheld: the collector's slots are unknown"
    return "scale-down withheld: a schedd did not answer, demand is unknown"


@dataclass
class _Pool:
    """One site's resources, sorted by what they can do for demand."""

    timed_out: list[Resource] = field(default_factory=list)
    booting: list[Resource] = field(default_factory=list)
    idle: list[Resource] = field(default_factory=list)
    draining_idle: list[Resource] = field(default_factory=list)
    drained: list[Resource] = field(default_factory=list)  # to destroy: nothing runs there
    ended: list[Resource] = field(default_factory=list)  # near its end and drained: to destroy
    lost: list[Resource] = field(default_factory=list)  # no slot advertised for lost_timeout_s
    busy: list[Resource] = field(default_factory=list)  # jobs running, or may be: fully used
    leaving: list[Resource] = field(default_factory=list)  # stopping or failed: no quota
    # held, unless it is seen still there (a failed destroy, an advertised slot)

    @property
    def occupied(self) -> int:
        """Machines that count against the quota but serve no idle job."""
        # Still there: a destroy failed, or its slot is advertised.
        stuck = sum(1 for r in self.leaving if r.destroy_failures > 0 or r.advertised)
        return len(self.busy) + len(self.drained) + len(self.ended) + len(self.lost) + stuck

    @property
    def usable(self) -> int:
        """Machines that are free now or coming, without creating any."""
        return len(self.idle) + len(self.draining_idle) + len(self.booting)


def _classify(
    resources: Iterable[Resource], sites: Mapping[str, Site], now: float
) -> dict[str, _Pool]:
    """One pass over the resources. Those of a site not in the snapshot are
    left alone: without its limits, nothing safe can be decided for them.
    An unclaimed running resource without `idle_since` counts as free but
    is never drained: how long it has been idle is unknown."""
    pools = {name: _Pool() for name in sites}
    for r in resources:
        pool = pools.get(r.site)
        if pool is None:
            continue
        if r.state in _BOOTS:
            timeout = sites[r.site].limits.boot_timeout_s
            expired = not r.advertised and (r.boot_failed or now - r.state_since >= timeout)
            (pool.timed_out if expired else pool.booting).append(r)
        elif r.state in (State.RUNNING, State.DRAINING):
            _classify_live(pool, r, sites[r.site], now)
        else:
            pool.leaving.append(r)
    return pools


def _classify_live(pool: _Pool, r: Resource, site: Site, now: float) -> None:
    """A running or draining resource, by what it can do for demand now. Only
    evidence gives a resource back: an ad whose every slot is Drained, or no
    ad for `lost_timeout_s` from a collector that answers; a missing ad is
    never taken for an idle machine."""
    if not r.advertised:  # gone from the collector: dead, or it (or the collector) restarted
        lost_for = None if r.lost_since is None else now - r.lost_since
        if lost_for is not None and lost_for >= site.limits.lost_timeout_s:
            pool.lost.append(r)
        else:
            pool.busy.append(r)  # may be running jobs: kept, and never counted free
    elif ending(r, site, now):  # it takes no job and drains itself: no capacity, kept until drained
        (pool.ended if r.drained else pool.busy).append(r)
    elif r.claimed_slots > 0:
        pool.busy.append(r)
    elif r.state is State.RUNNING:
        pool.idle.append(r)
    elif r.held or site.retiring:
        if r.drained:
            pool.drained.append(r)
        else:
            pool.busy.append(r)  # an operator's drain still in progress
    else:
        pool.draining_idle.append(r)


def ending(r: Resource, site: Site, now: float) -> bool:
    """Whether the resource is within its site's end margin of the end its
    startd advertises (a Slurm pilot's walltime): it takes no new job, so it
    is no capacity for any, and its replacement boots while demand lasts."""
    margin = site.limits.end_margin_s
    return margin > 0 and r.ends_at is not None and r.ends_at - now <= margin


def _owners_first(site: Site, owners: Owners | None, now: float) -> bool:
    """Whether a backfill site must boot nothing now: its owners' jobs wait,
    or did within `owner_quiet_s`, or their queue is unknown, or an operator
    evacuated it."""
    if owners is None:
        return False
    if not owners.known or owners.paused or owners.pending_nodes + owners.new_nodes > 0:
        return True
    waited = owners.last_waiting_at
    return waited is not None and now - waited < site.limits.owner_quiet_s


def owners_due_nodes(owners: Owners, site: Site, now: float) -> int:
    """Nodes the owners' waiting jobs want that have waited out the site's
    `owner_grace_s` (each job timed from when it was first seen waiting; a
    job the site did not name has waited long enough)."""
    grace = site.limits.owner_grace_s
    young = sum(nodes for nodes, since in owners.waiting.values() if now - since < grace)
    return max(0, owners.pending_nodes - young)


def _evacuate(pool: _Pool, owners: Owners, due: int, *, slots_known: bool) -> list[Action]:
    """Give the owners' waiting jobs (`due`: the nodes of those past their
    grace time) the nodes they lack, plus what an
    operator asked for, and take what is given out of `pool` (it serves no
    grid demand any more). Nodes already on their way back count against
    the owners' need: free ones, those of boots timing out, drained (also
    at their end) and lost resources (destroyed this cycle anyway) - but not a boot timed out by
    absence while the collector cannot vouch: its destroy is held back, so
    it frees nothing and is evacuated like any other boot. The resources
    with the fewest running jobs go first, boots before running machines."""
    waiting = owners.known and due > 0
    if not waiting and owners.evacuate_nodes <= 0:
        return []
    if waiting:
        why = f"owners wait for {due} nodes, {owners.free_nodes} free"
    else:
        why = f"operator evacuation of {owners.evacuate_nodes} nodes"
    actions: list[Action] = [
        Evacuate(r.id, f"{why}: queued boot withdrawn")
        for r in sorted(pool.booting, key=lambda r: r.id)
        if not r.placed
    ]
    pool.booting = [r for r in pool.booting if r.placed]
    # Pilots told to go that their site still lists hold their nodes while
    # HTCondor vacates them: on their way back, never given twice.
    vacating = sum(1 for r in pool.leaving if r.placed and r.listed is not False)
    held = [r for r in pool.timed_out if not slots_known and not r.boot_failed]
    timing_out = sum(r.placed for r in pool.timed_out if r not in held)
    freeing = timing_out + len(pool.drained) + len(pool.ended) + len(pool.lost) + vacating
    owners_lack = due - owners.free_nodes - freeing if waiting else 0
    lacking = max(0, owners_lack) + owners.evacuate_nodes
    if lacking <= 0:
        return actions
    candidates = sorted(
        [*pool.booting, *held, *pool.idle, *pool.draining_idle, *pool.busy],
        key=lambda r: (r.claimed_slots, r.state not in _BOOTS, r.id),
    )
    chosen = candidates[:lacking]
    gone = {r.id for r in chosen}
    pool.booting = [r for r in pool.booting if r.id not in gone]
    pool.timed_out = [r for r in pool.timed_out if r.id not in gone]
    pool.idle = [r for r in pool.idle if r.id not in gone]
    pool.draining_idle = [r for r in pool.draining_idle if r.id not in gone]
    pool.busy = [r for r in pool.busy if r.id not in gone]
    actions += [
        Evacuate(r.id, f"{why}: given back, {r.claimed_slots} running jobs vacated") for r in chosen
    ]
    return actions


def _backing_off(site: Site, health: SiteHealth | None, now: float) -> bool:
    """After n failed boots in a row, a site gets no Create for
    min(base * 2**(n-1), max) seconds after the last one: a broken site is
    retried ever more slowly instead of burning quota on boots that fail."""
    if health is None or health.consecutive_failures <= 0 or health.last_failure_at is None:
        return False
    limits = site.limits
    wait = min(
        limits.backoff_base_s * 2.0 ** min(health.consecutive_failures - 1, 64),
        limits.backoff_max_s,
    )
    return now < health.last_failure_at + wait


def _room(site: Site, pool: _Pool, can_create: bool, affordable: int | None) -> tuple[int, bool]:
    """Machines of this site that idle demand may fill: its quota less the
    busy ones. A site in backoff offers only what it already has, so its
    share of multi-site demand spills over to the next site; so does one
    whose budget pays for fewer boots (`affordable`) than its quota allows.
    Returns the room and whether the budget is what bounds it."""
    if site.retiring:
        return 0, False
    room = max(0, site.limits.max_resources - pool.occupied)
    if not can_create:
        return min(room, pool.usable), False
    if affordable is not None and pool.usable + affordable < room:
        return pool.usable + affordable, True
    return room, False


@dataclass
class _Packer:
    """Next-fit packing of the jobs assigned to one site into machines of its
    shape, arithmetic per autocluster (never per job): the jobs first fill
    the last machine opened, then whole machines of `per_machine` jobs, the
    remainder opening one more. Only the last machine's leftover room is
    reused, so the count may exceed an optimal packing slightly, never fall
    short of a real one."""

    shape: Shape
    room: int  # machines it may fill (see _room)
    budget_bound: bool = False  # the room is what the site's budget pays for, below its quota
    machines: int = 0
    jobs: int = 0
    full: bool = False  # turned jobs away for want of room
    turned_away: int = 0  # ... this many
    free: tuple[int, int, int] = (0, 0, 0)  # cpus, memory, disk left in the last machine

    def per_machine(self, d: Demand) -> int:
        """How many of d's jobs one empty machine holds (0: they cannot run here)."""
        return _fits((self.shape.cpus, self.shape.memory_mb, self.shape.disk_mb), d)

    def add(self, d: Demand, jobs: int) -> int:
        """Place up to `jobs` of d's jobs within the room; return how many fit."""
        placed = min(jobs, _fits(self.free, d)) if self.machines else 0
        self.free = _less(self.free, d, placed)
        per = self.per_machine(d)
        left = jobs - placed
        new = min(-(-left // per), self.room - self.machines) if left and per else 0
        if new > 0:
            taken = min(left, new * per)
            self.machines += new
            shape = (self.shape.cpus, self.shape.memory_mb, self.shape.disk_mb)
            self.free = _less(shape, d, taken - (new - 1) * per)
            placed += taken
        self.jobs += placed
        self.full = self.full or placed < jobs
        self.turned_away += jobs - placed
        return placed


def _fits(room: tuple[int, int, int], d: Demand) -> int:
    """How many of d's jobs fit in this room; a request of 0 never limits."""
    return _fits_request(room, d.cpus, d.memory_mb, d.disk_mb)


@functools.lru_cache(maxsize=65536)
def _fits_request(room: tuple[int, int, int], cpus: int, memory_mb: int, disk_mb: int) -> int:
    """_fits by value (few distinct requests and rooms: cached)."""
    best = _UNBOUNDED
    for have, want in ((room[0], cpus), (room[1], memory_mb), (room[2], disk_mb)):
        if want > 0:
            best = min(best, have // want)
    return best


def _less(room: tuple[int, int, int], d: Demand, jobs: int) -> tuple[int, int, int]:
    return (room[0] - jobs * d.cpus, room[1] - jobs * d.memory_mb, room[2] - jobs * d.disk_mb)


def _assign(demand: Iterable[Demand], packers: Mapping[str, _Packer]) -> list[Demand]:
    """Pack every autocluster's idle jobs into its sites, in the order it
    lists them, each site up to its room. Autoclusters go by key, so the
    plan does not depend on the order the schedds were read in. Returns the
    demand no known site can run (no site listed, or jobs bigger than every
    listed site's shape): reported, not chased. Demand beyond every site's
    quota is neither: it waits for room."""
    unmatched: list[Demand] = []
    for d in sorted(demand, key=lambda d: d.key):
        if d.idle_jobs <= 0:
            continue
        left = d.idle_jobs
        servable = False
        for name in d.sites:
            packer = packers.get(name)
            if packer is None or packer.per_machine(d) == 0:
                continue
            servable = True
            if left:
                left -= packer.add(d, left)
        if not servable:
            unmatched.append(d)
    return unmatched


def _site_actions(
    site: Site, pool: _Pool, packer: _Packer, can_create: bool, now: float
) -> list[Action]:
    """Cover the machines demand needs with what the site has, cheapest
    first (idle running, draining, booting), create the rest, and scale
    down what is left over."""
    limits = site.limits
    need = packer.machines
    full = " (quota full)" if packer.full else ""
    demand = f"{packer.jobs} idle jobs need {_machines(need)}{full}"
    actions: list[Action] = [
        Destroy(
            r.id,
            f"boot failed at the site: {r.state} {now - r.state_since:.0f}s"
            if r.boot_failed
            else f"boot timeout: {r.state} {now - r.state_since:.0f}s, no slot advertised",
            boot_failed=True,
        )
        for r in sorted(pool.timed_out, key=lambda r: r.id)
    ]
    actions += [
        Destroy(r.id, "operator drain done: no job left")
        for r in sorted(pool.drained, key=lambda r: r.id)
    ]
    actions += [
        Destroy(r.id, f"ending in {(r.ends_at or now) - now:.0f}s: drained, no job left")
        for r in sorted(pool.ended, key=lambda r: r.id)
    ]
    actions += [
        Destroy(r.id, f"lost: no slot advertised for {now - (r.lost_since or now):.0f}s")
        for r in sorted(pool.lost, key=lambda r: r.id)
    ]

    # Idle running machines: keep the most recently idle, drain the oldest.
    idle = sorted(pool.idle, key=lambda r: (-(now if r.idle_since is None else r.idle_since), r.id))
    kept_idle, spare_idle = idle[:need], idle[need:]
    left = need - len(kept_idle)

    draining = sorted(pool.draining_idle, key=lambda r: r.id)
    undrain, spare_draining = draining[:left], draining[left:]
    left -= len(undrain)

    # Boots in flight: keep the oldest (nearest to running), destroy the newest.
    booting = sorted(pool.booting, key=lambda r: (r.created_at, r.id))
    kept_booting, spare_booting = booting[:left], booting[left:]
    left -= len(kept_booting)

    have = f"{len(kept_idle)} idle, {len(undrain)} undrained, {len(kept_booting)} booting"
    actions += [
        Destroy(r.id, f"surplus boot: {demand}, {len(idle)} idle") for r in reversed(spare_booting)
    ]
    actions += [
        Destroy(r.id, "drained: no job left, demand needs it no more")
        for r in spare_draining
        if r.drained
    ]
    if site.retiring:  # removed from the configuration: everything given back
        retire = "site removed from the configuration: given back"
        actions += [Drain(r.id, retire) for r in spare_idle]
        actions += [
            Drain(r.id, retire)
            for r in sorted(pool.busy, key=lambda r: r.id)
            if r.state is State.RUNNING and r.advertised
        ]
    else:
        actions += [
            Drain(r.id, f"idle {now - r.idle_since:.0f}s, unneeded: {demand}, {len(idle)} idle")
            for r in spare_idle
            if r.idle_since is not None and now - r.idle_since >= limits.idle_timeout_s
        ]
    actions += [Undrain(r.id, f"demand returned: {demand}") for r in undrain]
    if left > 0 and can_create:
        # The room already keeps the site within its quota; checked again for safety.
        quota = limits.max_resources - pool.occupied - pool.usable
        boots = limits.max_booting - len(pool.booting)
        count = min(left, quota, boots)
        if count > 0:
            caps = (
                ""
                if count == left
                else f", {len(pool.booting)} of {limits.max_booting} boots in flight"
            )
            actions.append(Create(site.name, count, f"demand: {demand}; {have}{caps}"))
    return actions


def _machines(n: int) -> str:
    return f"{n} machine" if n == 1 else f"{n} machines"
