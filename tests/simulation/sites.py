"""Simulated sites: tide.sites.base.SiteAdapter implementations over the
simulated world. Every call goes through World.call, which advances the
virtual clock by the call's duration and injects the schedule's faults
(crash before/after, failure, hang past the deadline, late effect).

- DockerSim: boots in seconds; drains its startds (Capability.DRAIN);
  destroy stops the container at once (running jobs killed).
- OpenStackSim: drains through its servers' metadata: the call only sets
  it, and the server's startd acts on it 0.5-6 s later (tide-drain-watch's
  period), refusing an idle drain while it holds a claim; boots take
  20-120 s; a boot may fail (Owned.failed, status ERROR); a young server
  may be missing from the listing for a few seconds (listing lag).
- SlurmSim: a backfill site (Capability.OWNERS and DRAIN) with N
  nodes. A pilot without a free node is queued (Owned.placed=False).
  Destroy is SIGTERM: running jobs are vacated back to idle, the pilot stays
  listed holding its node for 1-20 s, then it is gone. Owners submit jobs
  in bursts wanting nodes; the head owner job starts as soon as enough nodes
  are free (owners before pilots). A placed pilot's daemons may fail (5 %):
  it ends at once, its node free, and the site lists only a record of it
  (Owned.ended and failed) for FAILED_RECORD_S, as the Slurm adapter
  reports the reason a failed pilot left. With a walltime, a pilot's startd
  advertises its end, drains itself end_margin_s before it, and Slurm ends
  the pilot then (its running jobs vacated, back to idle).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tide.model import Shape, SiteLimits
from tide.sites.base import Capability, Owned, OwnerQueue, SiteAdapter, SiteError

if TYPE_CHECKING:
    from tests.simulation.world import World


FAILED_RECORD_S = 600.0
"""How long a simulated Slurm site lists a pilot whose boot failed."""


@dataclass(frozen=True)
class SiteSpec:
    """One simulated site of a scenario."""

    name: str
    kind: str  # docker, openstack, slurm
    shape: Shape
    limits: SiteLimits
    nodes: int = 0  # slurm: nodes of the cluster
    call_s: tuple[float, float] = (0.05, 1.0)  # a normal call's duration
    walltime_s: float = 0.0  # slurm: a pilot ends this long after it is placed (0: never)
    budget_core_h: float = 0.0  # slurm with a walltime: an allocation of core hours (0: none)

    @property
    def max_call_s(self) -> float:
        return self.call_s[1]


@dataclass
class SimResource:
    rid: str
    created_at: float
    details: dict[str, str]
    listed_from: float
    status: str = "BUILD"
    failed: bool = False
    placed: bool = True
    placed_at: float = 0.0
    vacating: bool = False
    late: bool = False  # created by a call that had already timed out


@dataclass
class OwnerJob:
    id: int
    nodes: int
    duration: float
    submitted_at: float
    started: bool = False


class SimSite(SiteAdapter):
    """What every simulated site shares."""

    def __init__(self, world: World, spec: SiteSpec) -> None:
        self.world = world
        self.spec = spec
        self.name = spec.name
        self.resources: dict[str, SimResource] = {}
        self._requests = 0

    # --- the SiteAdapter interface ------------------------------------

    def create(self, resource_id: str) -> Mapping[str, str]:
        self.world.on_create_call(self.name, resource_id)
        return self.world.call(
            f"{self.name}.create", lambda: self._create(resource_id), site=self.name
        )

    def list_owned(self) -> list[Owned]:
        return self.world.call(f"{self.name}.list", self._list, site=self.name)

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        self.world.on_destroy_call(self.name, resource_id)
        self.world.call(f"{self.name}.destroy", lambda: self._destroy(resource_id), site=self.name)

    # --- effects --------------------------------------------------------

    def _create(self, rid: str) -> dict[str, str]:
        w = self.world
        now = w.clock()
        late = w.in_late_effect
        r = SimResource(rid, now, {"server_id": f"srv-{rid}"}, listed_from=now, late=late)
        self.resources[rid] = r
        w.log(f"{self.name}: {rid} created" + (" (late)" if late else ""))
        w.on_created(self.name, rid, late=late)
        self._boot(r)
        return dict(r.details)

    def _boot(self, r: SimResource) -> None:
        raise NotImplementedError

    def _startd(self, rid: str) -> None:
        """The resource's startd starts (if the resource still exists)."""
        r = self.resources.get(rid)
        if r is None or r.vacating or r.failed:
            return
        r.status = "RUNNING"
        self.world.pool.boot(rid, self.name, self.spec.shape)

    def _list(self) -> list[Owned]:
        now = self.world.clock()
        return [
            Owned(r.rid, r.status, dict(r.details), failed=r.failed, placed=r.placed)
            for _, r in sorted(self.resources.items())
            if now >= r.listed_from
        ]

    def _destroy(self, rid: str) -> None:
        r = self.resources.pop(rid, None)
        if r is not None:
            w = self.world
            w.log(f"{self.name}: {rid} destroyed")
            w.pool.remove(rid, allowed=False, why="destroyed with its jobs running")

    # --- startd drains (Capability.DRAIN), for the sites that can -------

    def _drain(self, rid: str, on: bool) -> str:
        s = self.world.pool.startds.get(rid)
        if s is None:
            raise SiteError(f"{self.name}: {rid}: no startd to signal", retryable=True)
        s.draining = on
        self._requests += 1
        return f"drain-{self._requests}"


class DockerSim(SimSite):
    capabilities = frozenset({Capability.DRAIN})

    def _boot(self, r: SimResource) -> None:
        self.world.after(self.world.rng.uniform(1.0, 5.0), lambda: self._startd(r.rid), None)

    def drain_startd(self, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        self.world.on_drain_call(self.name, resource_id)
        return self.world.call(
            f"{self.name}.drain", lambda: self._drain(resource_id, True), site=self.name
        )

    def cancel_startd_drain(self, resource_id: str, request_id: str) -> None:
        self.world.on_cancel_drain_call(self.name, resource_id)
        self.world.call(
            f"{self.name}.undrain", lambda: self._drain(resource_id, False), site=self.name
        )


class OpenStackSim(SimSite):
    capabilities = frozenset({Capability.DRAIN})

    def __init__(self, world: World, spec: SiteSpec) -> None:
        super().__init__(world, spec)
        self.metadata: dict[str, tuple[str, str] | None] = {}  # tide-drain: request, mode
        self.acted: dict[str, tuple[str, str]] = {}  # the watcher's state file

    def drain_startd(self, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        self.world.on_drain_call(self.name, resource_id)
        mode = "idle" if only_idle else "graceful"
        return self.world.call(
            f"{self.name}.drain", lambda: self._ask(resource_id, mode), site=self.name
        )

    def cancel_startd_drain(self, resource_id: str, request_id: str) -> None:
        self.world.on_cancel_drain_call(self.name, resource_id)
        self.world.call(
            f"{self.name}.undrain", lambda: self._ask(resource_id, None), site=self.name
        )

    def _ask(self, rid: str, mode: str | None) -> str:
        """Set the server's tide-drain metadata (None: cancel)."""
        if rid not in self.resources:
            raise SiteError(f"{self.name}: {rid}: server not listed", retryable=True)
        self._requests += 1
        request = f"drain-{self._requests}"
        self.metadata[rid] = None if mode is None else (request, mode)
        w = self.world
        w.after(w.rng.uniform(0.5, 6.0), functools.partial(self._watch, rid), None)
        return request

    def _startd(self, rid: str) -> None:
        """The startd starts, and its drain watch runs before its first match
        (the image's START waits for the watch's first run: TideDrainChecked)."""
        super()._startd(rid)
        self._watch(rid)

    def _watch(self, rid: str) -> None:
        """The server's tide-drain-watch acting on its metadata, as the image's does."""
        s = self.world.pool.startds.get(rid)
        if s is None or rid not in self.resources:
            return
        want, acted = self.metadata.get(rid), self.acted.get(rid)
        if want is None:
            if acted is not None and acted[1] == "draining":
                s.draining = False
            self.acted.pop(rid, None)
            return
        request, mode = want
        if acted is not None and acted[0] == request:
            return
        if mode == "idle" and s.jobs:  # the startd refuses: a slot holds a claim
            self.acted[rid] = (request, "refused")
            self.world.log(f"{self.name}: {rid}: idle drain {request} refused (busy)")
            return
        s.draining = True
        self.acted[rid] = (request, "draining")

    def _create(self, rid: str) -> dict[str, str]:
        details = super()._create(rid)
        w = self.world
        if w.rng.random() < 0.3:  # Nova's listing lags behind its create call
            self.resources[rid].listed_from = w.clock() + w.rng.uniform(0.0, 10.0)
        return details

    def _boot(self, r: SimResource) -> None:
        w = self.world
        if w.rng.random() < 0.1:

            def error() -> None:
                if r.rid in self.resources:
                    r.status, r.failed = "ERROR", True

            w.after(w.rng.uniform(5.0, 60.0), error, None)
            return
        w.after(w.rng.uniform(20.0, 120.0), lambda: self._startd(r.rid), None)


class SlurmSim(SimSite):
    capabilities = frozenset({Capability.DRAIN, Capability.OWNERS})

    def __init__(self, world: World, spec: SiteSpec) -> None:
        super().__init__(world, spec)
        self.owner_jobs: list[OwnerJob] = []  # pending and running, in submit order
        self._next_owner_job = 0
        self.pending_pilots: list[str] = []
        # Invariant 4: since when the head owner job waits only because pilots hold nodes.
        self.blocked_since: float | None = None
        self._blocked_head: int | None = None
        self.last_answer: OwnerQueue | None = None
        self.vacate_s = (1.0, 20.0)  # a SIGTERMed pilot holds its node this long
        self.failed_records: dict[str, float] = {}  # pilots whose boot failed: listed until
        self.used_core_s = 0.0  # what pilots that have left used of their nodes (the truth
        # a budget's invariant is checked against)

    # nodes

    def _release(self, rid: str) -> None:
        """The pilot leaves its node (or the queue): what it used is charged."""
        r = self.resources.pop(rid, None)
        if r is not None and r.placed:
            held = self.world.clock() - r.placed_at
            if self.spec.walltime_s > 0:
                held = min(held, self.spec.walltime_s)
            self.used_core_s += self.spec.shape.cpus * held

    def committed_core_s(self) -> float:
        """What the pilots could use at most: those that left, what they used;
        those on a node, their whole walltime."""
        placed = sum(1 for r in self.resources.values() if r.placed)
        return self.used_core_s + placed * self.spec.shape.cpus * self.spec.walltime_s

    def owner_nodes(self) -> int:
        return sum(j.nodes for j in self.owner_jobs if j.started)

    def pilot_nodes(self) -> int:
        return sum(1 for r in self.resources.values() if r.placed)

    def free_nodes(self) -> int:
        return self.spec.nodes - self.owner_nodes() - self.pilot_nodes()

    def waiting(self) -> list[OwnerJob]:
        return [j for j in self.owner_jobs if not j.started]

    def vacating(self) -> int:
        return sum(1 for r in self.resources.values() if r.vacating)

    def schedule(self) -> None:
        """Owners first (FIFO, the head blocks the rest), then queued pilots."""
        w = self.world
        for job in self.owner_jobs:
            if job.started:
                continue
            if job.nodes > self.free_nodes():
                break
            job.started = True
            w.log(f"{self.name}: owner job {job.id} starts on {job.nodes} nodes")
            w.after(job.duration, self._owner_done(job), None)
        if not self.waiting():
            while self.pending_pilots and self.free_nodes() > 0:
                rid = self.pending_pilots.pop(0)
                r = self.resources[rid]
                r.placed, r.status, r.placed_at = True, "RUNNING", w.clock()
                if self.spec.walltime_s > 0:
                    w.after(self.spec.walltime_s, functools.partial(self._walltime, rid), None)
                if w.rng.random() < 0.05:  # its daemons fail: it ends at once
                    w.after(w.rng.uniform(1.0, 5.0), functools.partial(self._boot_fails, rid), None)
                else:
                    w.after(w.rng.uniform(2.0, 8.0), functools.partial(self._startd, rid), None)
        self._blocked()

    def _startd(self, rid: str) -> None:
        r = self.resources.get(rid)
        if r is None or r.vacating or r.failed:
            return
        r.status = "RUNNING"
        walltime = self.spec.walltime_s
        ends_at = r.placed_at + walltime if walltime > 0 else None
        self.world.pool.boot(rid, self.name, self.spec.shape, ends_at=ends_at)

    def _walltime(self, rid: str) -> None:
        """Slurm ends the pilot: its running jobs are vacated (SIGTERM first)."""
        r = self.resources.get(rid)
        if r is None or r.vacating or not r.placed:
            return
        w = self.world
        self._release(rid)
        w.log(f"{self.name}: pilot {rid} reached its walltime, its node free")
        w.pool.remove(rid, allowed=True, why="")
        self.schedule()

    def _boot_fails(self, rid: str) -> None:
        r = self.resources.get(rid)
        if r is None or r.vacating:
            return
        w = self.world
        self._release(rid)
        self.failed_records[rid] = w.clock() + FAILED_RECORD_S
        w.log(f"{self.name}: pilot {rid} failed to boot, its node free")
        self.schedule()

    def _list(self) -> list[Owned]:
        now = self.world.clock()
        self.failed_records = {rid: t for rid, t in self.failed_records.items() if now < t}
        ended = [
            Owned(rid, "FAILED", {}, failed=True, placed=False, ended=True)
            for rid in sorted(self.failed_records)
        ]
        # Slurm says how long each pilot has been on its node (squeue %M).
        listed = [
            replace(o, started_at=self.resources[o.resource_id].placed_at if o.placed else None)
            for o in super()._list()
        ]
        return [*listed, *ended]

    def _blocked(self) -> None:
        """Since when the head owner job waits only because pilots hold nodes:
        each head job's own wait (its site's owner_grace_s is timed per job)."""
        waiting = self.waiting()
        head = waiting[0] if waiting else None
        blocked = head is not None and head.nodes <= self.spec.nodes - self.owner_nodes()
        if not blocked or head is None:
            self.blocked_since, self._blocked_head = None, None
        elif self.blocked_since is None or self._blocked_head != head.id:
            self.blocked_since, self._blocked_head = self.world.clock(), head.id

    def _owner_done(self, job: OwnerJob) -> Callable[[], None]:
        def done() -> None:
            self.owner_jobs.remove(job)
            self.schedule()

        return done

    def owners_submit(
        self, count: int, nodes: int | None = None, duration_s: float | None = None
    ) -> None:
        w = self.world
        for _ in range(count):
            self._next_owner_job += 1
            wanted = min(self.spec.nodes, 1 + int(w.rng.random() * 2.2)) if nodes is None else nodes
            self.owner_jobs.append(
                OwnerJob(
                    self._next_owner_job,
                    wanted,
                    w.rng.uniform(30.0, 200.0) if duration_s is None else duration_s,
                    w.clock(),
                )
            )
        w.log(
            f"{self.name}: owners submit {count} jobs"
            f" ({[j.nodes for j in self.waiting()]} nodes wait)"
        )
        self.schedule()

    # effects

    def _boot(self, r: SimResource) -> None:
        r.placed, r.status = False, "PENDING"
        self.pending_pilots.append(r.rid)
        self.schedule()

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        # Whether this is an evacuation is judged when the controller asks: a
        # call that returns late still vacates for the owners who waited then.
        asked = self.world.evacuation_context(self.name)
        self.world.on_destroy_call(self.name, resource_id)
        self.world.call(
            f"{self.name}.destroy", lambda: self._vacate(resource_id, asked), site=self.name
        )

    def _vacate(self, rid: str, asked: bool) -> None:
        w = self.world
        r = self.resources.get(rid)
        if r is None or r.vacating:
            return  # gone, or already told: a second SIGTERM changes nothing
        if not r.placed:
            self._release(rid)
            self.pending_pilots.remove(rid)
            w.log(f"{self.name}: queued pilot {rid} cancelled")
            return
        evacuation = asked or w.evacuation_context(self.name)
        w.on_evacuate(self, rid)
        r.vacating, r.status = True, "RUNNING"
        w.log(f"{self.name}: pilot {rid} SIGTERM: vacating")
        w.pool.remove(
            rid, allowed=evacuation, why="vacated, but no owner waits and no operator evacuates"
        )

        def gone() -> None:
            self._release(rid)
            w.log(f"{self.name}: pilot {rid} gone, its node free")
            self.schedule()

        w.after(w.rng.uniform(*self.vacate_s), gone, None)

    def _owner_queue(self) -> OwnerQueue:
        waiting = self.waiting()
        answer = OwnerQueue(
            pending_nodes=sum(j.nodes for j in waiting),
            free_nodes=max(0, self.free_nodes()),
            waiting={str(j.id): j.nodes for j in waiting},
        )
        self.last_answer = answer
        self.world.on_owner_answer(self.name, answer)
        return answer

    # Capability.OWNERS and Capability.DRAIN

    def owner_queue(self) -> OwnerQueue:
        return self.world.call(f"{self.name}.owners", self._owner_queue, site=self.name)

    def drain_startd(self, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        self.world.on_drain_call(self.name, resource_id)
        self.world.call(
            f"{self.name}.drain", lambda: self._drain(resource_id, True), site=self.name
        )
        return "SIGUSR1"

    def cancel_startd_drain(self, resource_id: str, request_id: str) -> None:
        self.world.on_cancel_drain_call(self.name, resource_id)
        self.world.call(
            f"{self.name}.undrain", lambda: self._drain(resource_id, False), site=self.name
        )


KINDS: dict[str, type[SimSite]] = {
    "docker": DockerSim,
    "openstack": OpenStackSim,
    "slurm": SlurmSim,
}
