"""The controller's vocabulary: what it observes, what it decides, and the
lifecycle of a resource. Plain frozen dataclasses, no I/O: the policy reads
a Snapshot and returns a Plan; the site adapters and the store speak the
same types.

Times are seconds on one clock chosen by the caller (the daemon passes
time.time()); nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from tide.budget import BudgetRule, BudgetState


class State(StrEnum):
    """A resource's lifecycle. It moves forward only:
    requested -> booting -> running -> draining -> stopping -> gone,
    and to failed from requested or booting (a boot that never came up)."""

    REQUESTED = "requested"  # written before the site's create call
    BOOTING = "booting"  # the site accepted it; no slot advertised yet
    RUNNING = "running"  # its startd is advertised (TideResourceId matches)
    DRAINING = "draining"  # told to take no new job; running jobs finish
    STOPPING = "stopping"  # written before the site's destroy call
    GONE = "gone"  # the site no longer lists it
    FAILED = "failed"  # the create call failed, or the boot timed out


ALIVE = frozenset({State.REQUESTED, State.BOOTING, State.RUNNING, State.DRAINING})
"""States that hold (or will hold) capacity at a site."""

TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.REQUESTED: frozenset(
        {State.BOOTING, State.RUNNING, State.FAILED, State.STOPPING, State.GONE}
    ),
    State.BOOTING: frozenset({State.RUNNING, State.FAILED, State.STOPPING, State.GONE}),
    State.RUNNING: frozenset({State.DRAINING, State.STOPPING, State.GONE}),
    State.DRAINING: frozenset({State.STOPPING, State.GONE, State.RUNNING}),
    State.STOPPING: frozenset({State.GONE, State.DRAINING}),
    State.FAILED: frozenset({State.STOPPING, State.GONE, State.RUNNING}),
    State.GONE: frozenset(),
}
"""Allowed moves. DRAINING -> RUNNING undoes a drain that demand overtook;
REQUESTED or FAILED -> RUNNING records a slot advertised by a resource
whose create call never returned or missed its deadline (evidence wins);
STOPPING -> DRAINING one whose destroy failed and that runs jobs now."""


@dataclass(frozen=True)
class Shape:
    """The machine one resource of a site gives the pool: one partitionable slot."""

    cpus: int
    memory_mb: int
    disk_mb: int


@dataclass(frozen=True)
class SiteLimits:
    """How far and how fast the policy may scale a site."""

    max_resources: int  # quota: resources alive at once
    max_booting: int  # boots in flight (requested + booting) at once
    boot_timeout_s: float  # a boot that registers no slot by then is destroyed
    idle_timeout_s: float  # a running resource idle this long is drained
    backoff_base_s: float  # after a failed boot, wait this long, doubling per failure
    backoff_max_s: float  # ... up to this
    lost_timeout_s: float = (
        900.0  # a running resource with no slot advertised this long is destroyed
    )
    owner_quiet_s: float = 60.0  # a backfill site boots again only after its owners waited
    # for nothing this long (hysteresis: owners' jobs come in bursts)
    owner_grace_s: float = 0.0  # an owner job waits this long before it is evacuated for
    # (it blocks boots at once): the cluster's own preemption gets the first chance
    end_margin_s: float = 0.0  # a resource this close to its advertised end (TideEndTime)
    # is ending: it takes no job, counts as no capacity, and goes once drained
    redrain_after_s: float = 60.0  # a draining startd seen not draining this long after it
    # was told is told again (it restarted and forgot)
    destroy_retry_max_s: float = (
        300.0  # failed destroys are retried 2, 4, 8 ... s apart, at most this
    )


@dataclass(frozen=True)
class Site:
    """A site as the policy sees it: its machine shape and its limits."""

    name: str
    shape: Shape
    limits: SiteLimits
    retiring: bool = False  # removed from the configuration: no boot, everything given back
    budget: BudgetRule | None = None  # an allocation of core hours (tide.budget); None: none


@dataclass(frozen=True)
class Demand:
    """One autocluster of idle jobs: identical requests, and the sites whose
    machine prototype matched it (empty: no site can run these jobs)."""

    key: str  # schedd name and autocluster id
    idle_jobs: int
    cpus: int
    memory_mb: int
    disk_mb: int
    sites: tuple[str, ...]


@dataclass(frozen=True)
class Resource:
    """One resource the controller owns: its persisted record (state and the
    loop's own timers, tide.store) with what this cycle observed about it."""

    id: str  # also its TideResourceId and the site's ownership tag
    site: str
    state: State
    state_since: float  # when it entered this state
    created_at: float
    # --- persisted: the loop's own record (survives a restart) ---
    idle_since: float | None = None  # when it last had no claimed slot; None: busy
    lost_since: float | None = None  # live, but its slot missing from the collector since then
    held: bool = False  # drained by an operator (`tide drain`): demand never undoes it
    drain_request: str | None = None  # the drain its startd accepted (request id); None: not told
    drain_told_at: float | None = None  # when its startd was last told to drain
    destroy_failures: int = 0  # failed destroy calls in a row
    destroy_due: float | None = None  # a failed destroy is not retried before this
    # --- observed this cycle ---
    advertised: bool = False  # its startd is in the collector
    claimed_slots: int = 0  # dynamic slots running jobs now
    drained: bool = False  # its startd reports the drain done: no job left, none can start
    draining: bool = False  # its startd reports a drain (in progress or done)
    boot_failed: bool = False  # its site reports the boot failed (it will never register)
    placed: bool = True  # the site gave it its machine; False: a boot still queued there
    # (a Slurm pilot pending), which holds no node an owner could have
    listed: bool | None = None  # its site lists it this cycle (None: not asked, or no answer)
    ends_at: float | None = None  # when its site will end it, as its startd advertises
    # (TideEndTime: a Slurm pilot's walltime); None: no end known
    started_at: float | None = None  # when it got its machine, as its site says (None: unknown)


@dataclass(frozen=True)
class Orphan:
    """A resource a site lists as this controller's that the store does not
    know (a lost state file, or an older Tide): adopted with what the site
    and the pool say about it, then handled as any other."""

    resource_id: str
    site: str
    handle: tuple[tuple[str, str], ...]  # what the site needs to find it again
    advertised: bool = False
    failed: bool = False


@dataclass(frozen=True)
class Owners:
    """The owners of a backfill site (an HPC cluster whose nodes Tide borrows),
    as observed: their jobs that wait for nodes, and the nodes free for them."""

    known: bool = True  # False: the owners' queue could not be read
    pending_nodes: int = 0  # nodes the owners' waiting jobs want
    new_nodes: int = 0  # ... of jobs their scheduler has not looked at yet: these block
    # boots, but nothing is evacuated for them yet (the scheduler may make room itself)
    free_nodes: int = 0  # nodes idle, or being given back, that those jobs can have
    waiting: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # the jobs behind
    # pending_nodes that their site named: job id -> (nodes, first seen waiting, persisted)
    last_waiting_at: float | None = None  # when owner jobs were last seen waiting
    paused: bool = False  # an operator evacuated the site (`tide evacuate`): no new boots
    evacuate_nodes: int = 0  # nodes an operator asked to give back now (`tide evacuate`)


@dataclass(frozen=True)
class SiteHealth:
    """Failed boots in a row, and when the last one failed."""

    consecutive_failures: int = 0
    last_failure_at: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything a decision needs, observed at `now`: the persisted records
    with their timers, what the pool and the sites said, and how far each
    can be trusted."""

    now: float
    sites: Mapping[str, Site]
    demand: tuple[Demand, ...]
    resources: tuple[Resource, ...]
    health: Mapping[str, SiteHealth] = field(default_factory=dict)
    owners: Mapping[str, Owners] = field(default_factory=dict)  # backfill sites only
    demand_known: bool = True  # every schedd the pool had recently answered
    slots_known: bool = True  # the collector answered the slot query, and is not young
    collector_young: bool = False  # it (re)started within its warm-up: ads may be missing
    busy: frozenset[str] = frozenset()  # sites left alone: still busy with an earlier call,
    # not listed once since the start, or their evidence not recorded
    budgets: Mapping[str, BudgetState] = field(default_factory=dict)  # sites with a budget
    # (tide.budget): what it can still pay for; a site with a rule but none here boots nothing

    @property
    def safe_to_scale_down(self) -> bool:
        """Whether what looks idle can be trusted to be idle (see tide.policy)."""
        return self.demand_known and self.slots_known


@dataclass(frozen=True)
class Create:
    site: str
    count: int
    reason: str


@dataclass(frozen=True)
class Drain:
    """Record DRAINING, then tell its startd to drain. `held`: an operator's
    drain, which demand never undoes."""

    resource: str
    reason: str
    held: bool = False


@dataclass(frozen=True)
class TellDrain:
    """Tell a DRAINING resource's startd to drain (again): it never accepted
    the drain, or it forgot it (restarted)."""

    resource: str
    reason: str


@dataclass(frozen=True)
class Undrain:
    resource: str
    reason: str


@dataclass(frozen=True)
class Destroy:
    resource: str
    reason: str
    boot_failed: bool = False  # a boot that never registered: counts as a failed boot


@dataclass(frozen=True)
class Evacuate:
    """Give a backfill resource back to the site's owners now: no new match,
    running jobs vacated (they return to idle in their schedds), the
    resource destroyed."""

    resource: str
    reason: str


Action = Create | Drain | TellDrain | Undrain | Destroy | Evacuate


@dataclass(frozen=True)
class HeldBack:
    """An action the policy would take but withholds, and why (the pool
    cannot be seen, or the site is busy with an earlier call)."""

    action: Action
    why: str


@dataclass(frozen=True)
class Plan:
    """What to do now, what is held back, and the demand no site can serve
    (reported, not chased)."""

    actions: tuple[Action, ...]
    unmatched: tuple[Demand, ...] = ()
    held_back: tuple[HeldBack, ...] = ()
