"""The simulated HTCondor pool: collector, schedds, negotiator, startds, jobs.

- The collector holds one ad per startd (advertised or not) and one per
  schedd (listed or not). A collector restart empties it: each startd
  reappears at its next update (every 30 s, jittered), each schedd only
  after a random 10-300 s.
- Schedds hold idle jobs in autoclusters; a job that ends goes to the
  schedd's history, which must hold each job exactly once.
- A negotiator, every 10-20 s, matches idle jobs of the listed, running
  schedds to advertised startds that take jobs (not draining, enough free
  cpus, memory and disk in the site's shape).
- A startd told to drain takes no new job; when its last job ends (at once
  if none) every slot reports Drained. A startd that restarts (autoheal)
  vacates its jobs back to idle and forgets its drain.
- A destroyed resource's startd vanishes; its running jobs return to idle,
  and unless that was an evacuation (a backfill pilot vacating for its
  owners or an operator), that is a killed job (invariant 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tide.loop import SlotState
from tide.model import Demand, Shape

if TYPE_CHECKING:
    from tests.simulation.world import World

UPDATE_S = 30.0  # a startd's update interval
SCHEDD_RELEARN_S = (10.0, 300.0)  # a schedd's ad returns this long after a collector restart


@dataclass(frozen=True)
class Autocluster:
    """Identical jobs, and the sites whose machines match them, in order."""

    key: str
    cpus: int
    memory_mb: int
    disk_mb: int
    sites: tuple[str, ...]


@dataclass
class Job:
    id: int
    schedd: str
    ac: Autocluster
    duration: float
    state: str = "idle"  # idle, running, done
    resource: str | None = None
    idle_since: float = 0.0
    runs: int = 0


@dataclass
class Schedd:
    name: str
    up: bool = True
    listed: bool = True  # its ad is in the collector
    blind_since: float | None = None  # down or unknown to the collector since then


@dataclass
class Startd:
    rid: str
    site: str
    shape: Shape
    advertised: bool = True
    draining: bool = False
    jobs: list[int] = field(default_factory=list)
    generation: int = 0  # bumped at a restart: stale update events are ignored
    ends_at: float | None = None  # when its site ends it (TideEndTime)
    ending: bool = False  # within its site's end margin: takes no job, drains (kept at a restart)


class Pool:
    def __init__(self, world: World, schedds: tuple[str, ...]) -> None:
        self.world = world
        self.schedds = {name: Schedd(name) for name in schedds}
        self.startds: dict[str, Startd] = {}
        self.jobs: dict[int, Job] = {}
        self.history: set[int] = set()
        self.relearn_s = SCHEDD_RELEARN_S
        self.collector_started_at = -1e9  # long before the schedule: a warm collector
        self._next_job = 0

    # --- collector ----------------------------------------------------

    def slot_states(self) -> dict[str, SlotState]:
        """What the collector says, by TideResourceId (as tide.loop.slots_from_ads)."""
        return {
            rid: SlotState(
                True,
                len(s.jobs),
                (s.draining or s.ending) and not s.jobs,
                draining=s.draining or s.ending,
                ends_at=s.ends_at,
            )
            for rid, s in sorted(self.startds.items())
            if s.advertised
        }

    def withdraw(self, rid: str) -> None:
        s = self.startds.get(rid)
        if s is not None:
            s.advertised = False

    def restart_collector(self) -> None:
        w = self.world
        w.log("FAULT collector restart: every ad lost")
        self.collector_started_at = w.clock.now
        for s in self.startds.values():
            s.advertised = False
        for sd in self.schedds.values():
            if sd.listed:
                sd.listed = False
                if sd.blind_since is None:
                    sd.blind_since = w.clock.now
                w.after(w.rng.uniform(*self.relearn_s), self._relist(sd.name), "schedd ad back")

    def _relist(self, name: str) -> Callable[[], None]:
        def relist() -> None:
            sd = self.schedds[name]
            sd.listed = True
            if sd.up:
                sd.blind_since = None

        return relist

    def restart_schedd(self, name: str) -> None:
        w = self.world
        sd = self.schedds[name]
        if not sd.up:
            return
        w.log(f"FAULT schedd {name} restart")
        sd.up = False
        if sd.blind_since is None:
            sd.blind_since = w.clock.now

        def back() -> None:
            sd.up = True
            if sd.listed:
                sd.blind_since = None

        w.after(w.rng.uniform(5.0, 60.0), back, f"schedd {name} up")

    # --- startds --------------------------------------------------------

    def boot(self, rid: str, site: str, shape: Shape, *, ends_at: float | None = None) -> None:
        """A resource's startd starts and advertises (with the end its site
        gives it, if any: it drains itself its site's end margin before)."""
        w = self.world
        self.startds[rid] = s = Startd(rid, site, shape, ends_at=ends_at)
        w.on_boot(site)
        w.after(UPDATE_S * w.rng.uniform(0.8, 1.1), self._update(rid, s.generation), None)
        if ends_at is not None:
            margin = w.specs[site].limits.end_margin_s
            w.after(max(0.0, ends_at - margin - w.clock.now), self._ending(s), None)

    def _ending(self, s: Startd) -> Callable[[], None]:
        def ending() -> None:
            if self.startds.get(s.rid) is s:
                s.ending = True
                self.world.log(f"startd {s.rid} near its end: takes no job, drains")

        return ending

    def _update(self, rid: str, generation: int) -> Callable[[], None]:
        def update() -> None:
            s = self.startds.get(rid)
            if s is None or s.generation != generation:
                return
            s.advertised = True
            w = self.world
            w.after(UPDATE_S * w.rng.uniform(0.9, 1.1), self._update(rid, generation), None)

        return update

    def restart_startd(self, rid: str) -> None:
        """Autoheal: running jobs go back to idle, the drain is forgotten."""
        w = self.world
        s = self.startds[rid]
        w.log(f"FAULT startd {rid} restart (vacates {len(s.jobs)} jobs, forgets its drain)")
        self._vacate(s, allowed=True, why="")
        s.draining = False
        s.advertised = False
        s.generation += 1
        w.after(w.rng.uniform(3.0, 10.0), self._update(rid, s.generation), None)

    def remove(self, rid: str, *, allowed: bool, why: str) -> None:
        """The resource is gone: its startd with it."""
        s = self.startds.pop(rid, None)
        if s is not None:
            self._vacate(s, allowed=allowed, why=why)

    def _vacate(self, s: Startd, *, allowed: bool, why: str) -> None:
        w = self.world
        for jid in s.jobs:
            job = self.jobs[jid]
            job.state, job.resource, job.idle_since = "idle", None, w.clock()
            if not allowed:
                w.violate("1 no job killed", f"job {jid} killed: {s.rid} at {s.site} {why}")
        s.jobs = []

    def free(self, s: Startd) -> tuple[int, int, int]:
        used = [0, 0, 0]
        for jid in s.jobs:
            ac = self.jobs[jid].ac
            used[0] += ac.cpus
            used[1] += ac.memory_mb
            used[2] += ac.disk_mb
        return (s.shape.cpus - used[0], s.shape.memory_mb - used[1], s.shape.disk_mb - used[2])

    # --- schedds and jobs -----------------------------------------------

    def submit(
        self, schedd: str, ac: Autocluster, count: int, duration_s: float | None = None
    ) -> None:
        w = self.world
        for _ in range(count):
            self._next_job += 1
            duration = (
                duration_s
                if duration_s is not None
                else w.rng.uniform(10.0, 120.0)
                if w.rng.random() < 0.85
                else w.rng.uniform(120.0, 600.0)
            )
            self.jobs[self._next_job] = Job(
                self._next_job, schedd, ac, duration, idle_since=w.clock()
            )
        w.log(f"submit {count} jobs of {ac.key} to {schedd}")

    def autoclusters(self, schedd: str) -> dict[Autocluster, int]:
        out: dict[Autocluster, int] = {}
        for job in self.jobs.values():
            if job.schedd == schedd and job.state == "idle":
                out[job.ac] = out.get(job.ac, 0) + 1
        return out

    def negotiate(self) -> None:
        w = self.world
        takers = [
            s
            for _, s in sorted(self.startds.items())
            if s.advertised and not s.draining and not s.ending
        ]
        if not takers:
            return
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.state != "idle":
                continue
            sd = self.schedds[job.schedd]
            if not (sd.up and sd.listed):
                continue
            for s in takers:
                if s.site not in job.ac.sites:
                    continue
                free = self.free(s)
                if (
                    free[0] >= job.ac.cpus
                    and free[1] >= job.ac.memory_mb
                    and free[2] >= job.ac.disk_mb
                ):
                    job.state, job.resource = "running", s.rid
                    job.runs += 1
                    s.jobs.append(job.id)
                    w.after(job.duration, self._finish(job.id, job.runs), None)
                    break

    def _finish(self, jid: int, run: int) -> Callable[[], None]:
        def finish() -> None:
            job = self.jobs[jid]
            if job.state != "running" or job.runs != run:
                return  # vacated meanwhile: this run never ends
            if jid in self.history:
                self.world.violate("1 no job killed", f"job {jid} completed twice")
            self.history.add(jid)
            job.state = "done"
            s = self.startds.get(job.resource or "")
            if s is not None and jid in s.jobs:
                s.jobs.remove(jid)
            job.resource = None

        return finish


def read_demand(world: World) -> tuple[tuple[Demand, ...], set[str], list[str]]:
    """What the controller's demand source reads (tide.assemble.demand_source):
    the schedds the collector lists are asked. Returns the demand, the
    schedds that answered and the schedds listed; completeness (every listed
    one answered, and none that answered lately missing) is judged by the
    harness with the real tide.htcondor.demand.missing_schedds."""
    pool = world.pool
    listed = world.call(
        "collector.schedds", lambda: sorted(n for n, s in pool.schedds.items() if s.listed)
    )
    out: list[Demand] = []
    answered: set[str] = set()
    for name in listed:
        try:
            acs = world.call(f"schedd.{name}.query", _query(pool, name))
        except Exception:  # noqa: S112 - a schedd that did not answer: demand incomplete
            continue
        answered.add(name)
        for ac, idle in sorted(acs.items(), key=lambda kv: kv[0].key):
            sites = tuple(s for s in ac.sites if s in world.configured)
            out.append(Demand(f"{name}#{ac.key}", idle, ac.cpus, ac.memory_mb, ac.disk_mb, sites))
    return tuple(out), answered, listed


def _query(pool: Pool, name: str) -> Callable[[], dict[Autocluster, int]]:
    def query() -> dict[Autocluster, int]:
        if not pool.schedds[name].up:
            raise ConnectionError(f"schedd {name} is not running")
        return pool.autoclusters(name)

    return query
