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
    State.REQUESTED: frozenset({State.BOOTING, State.FAILED, State.STOPPING, State.GONE}),
    State.BOOTING: frozenset({State.RUNNING, State.FAILED, State.STOPPING, State.GONE}),
    State.RUNNING: frozenset({State.DRAINING, State.STOPPING, State.GONE}),
    State.DRAINING: frozenset({State.STOPPING, State.GONE, State.RUNNING}),
    State.STOPPING: frozenset({State.GONE}),
    State.FAILED: frozenset({State.STOPPING, State.GONE}),
    State.GONE: frozenset(),
}
"""Allowed moves. DRAINING -> RUNNING undoes a drain that demand overtook."""


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


@dataclass(frozen=True)
class Site:
    """A site as the policy sees it: its machine shape and its limits."""

    name: str
    shape: Shape
    limits: SiteLimits


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
    """One resource the controller owns, as recorded and observed."""

    id: str  # also its TideResourceId and the site's ownership tag
    site: str
    state: State
    state_since: float  # when it entered this state
    created_at: float
    advertised: bool = False  # its startd is in the collector
    claimed_slots: int = 0  # dynamic slots running jobs now
    idle_since: float | None = None  # when it last had no claimed slot; None: busy
    lost_since: float | None = None  # live, but its slot missing from the collector since then
    drained: bool = False  # its startd reports the drain done: no job left, none can start
    boot_failed: bool = False  # its site reports the boot failed (it will never register)
    held: bool = False  # drained by an operator (`tide drain`): demand never undoes it
    placed: bool = True  # the site gave it its machine; False: a boot still queued there
    # (a Slurm pilot pending), which holds no node an owner could have


@dataclass(frozen=True)
class Owners:
    """The owners of a backfill site (an HPC cluster whose nodes Tide borrows),
    as observed: their jobs that wait for nodes, and the nodes free for them."""

    known: bool = True  # False: the owners' queue could not be read
    pending_nodes: int = 0  # nodes the owners' waiting jobs want
    new_nodes: int = 0  # ... of jobs their scheduler has not looked at yet: these block
    # boots, but nothing is evacuated for them yet (the scheduler may make room itself)
    free_nodes: int = 0  # nodes idle, or being given back, that those jobs can have
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
    """Everything a decision needs, observed at `now`."""

    now: float
    sites: Mapping[str, Site]
    demand: tuple[Demand, ...]
    resources: tuple[Resource, ...]
    health: Mapping[str, SiteHealth] = field(default_factory=dict)
    owners: Mapping[str, Owners] = field(default_factory=dict)  # backfill sites only


@dataclass(frozen=True)
class Create:
    site: str
    count: int
    reason: str


@dataclass(frozen=True)
class Drain:
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


Action = Create | Drain | Undrain | Destroy | Evacuate


@dataclass(frozen=True)
class Plan:
    """What to do now, and the demand no site can serve (reported, not chased)."""

    actions: tuple[Action, ...]
    unmatched: tuple[Demand, ...] = ()
