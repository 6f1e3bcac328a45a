"""Where demand comes from: the pool's idle jobs, grouped into autoclusters,
and the sites whose machine could run them.

Two parts:

* Pure matching (`prototype`, `matches`, `demand_from`): no pool needed. Each
  site gets a machine prototype, the ClassAd one of its workers' partitionable
  slots advertises when empty, and every autocluster's Requirements is
  evaluated against it with the real ClassAd library, the way the negotiator
  evaluates a job against a slot: `MY` is the job, `TARGET` the machine, and
  an unscoped name the job does not define is looked up in the machine (the
  negotiator's old-ClassAd rule, so `SiteName == "DESY"` works as users
  write it). Undefined or error is no match. The request must also fit the
  site's shape. Only the job's side is evaluated: a worker's own START
  expression is not modelled (Tide's workers start any job), but for the
  limit of workers that end (a Slurm pilot's walltime): a job whose
  declared runtime (AllowedJobDuration) is longer than the site's
  `TideMaxJobDuration` matches no worker of it.

* The I/O edge (`PoolDemandReader`): asks every schedd for its idle jobs,
  grouped by what matching needs, and turns the answers into `AutoCluster`s.
  A schedd that does not answer is logged and skipped.

Units follow HTCondor: RequestMemory and Memory are MiB, RequestDisk and
Disk are KiB.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import classad2
import htcondor2

from tide.model import Demand, Shape

log = logging.getLogger("tide.htcondor.demand")

AttributeValue = str | int | float | bool
MAX_JOB_DURATION_ATTR = "TideMaxJobDuration"


@dataclass(frozen=True)
class AutoCluster:
    """Idle jobs of one schedd with identical requests and Requirements."""

    schedd: str
    id: int
    idle_jobs: int
    request_cpus: int
    request_memory_mb: int
    request_disk_kb: int
    requirements: str  # the job's Requirements expression, as the schedd reports it
    allowed_job_duration_s: int | None = None  # its declared runtime (AllowedJobDuration)


# --- pure matching ----------------------------------------------------------


def prototype(
    site_name: str,
    shape: Shape,
    attributes: Mapping[str, AttributeValue],
    *,
    max_job_duration_s: int | None = None,
) -> classad2.ClassAd:
    """The machine ClassAd an empty worker of this site advertises: its one
    partitionable slot, with the site's shape and attributes.

    `SiteName` is what the site's workers advertise (the worker's configured
    site name, which need not be Tide's name for the site): it is taken from
    `attributes` when given there, else it is `site_name`. The attributes
    also override the defaults OpSys "LINUX", Arch "X86_64" and
    HasFileTransfer true (an ARM site sets Arch). The slot's resources come
    from the shape and `TideSite` is always `site_name`: an attribute of one
    of those names is overridden. Disk is in KiB, as HTCondor's Disk is.
    `max_job_duration_s`: the longest runtime a job may declare and still
    start on a worker of the site (TideMaxJobDuration; None: no limit)."""
    ad = classad2.ClassAd()
    ad["MyType"] = "Machine"
    ad["OpSys"] = "LINUX"
    ad["Arch"] = "X86_64"
    ad["HasFileTransfer"] = True
    ad["SiteName"] = site_name
    for name, value in attributes.items():
        ad[name] = value  # strings stay strings; numbers and booleans stay typed
    disk_kb = shape.disk_mb * 1024
    ad["PartitionableSlot"] = True
    ad["Cpus"] = shape.cpus
    ad["Memory"] = shape.memory_mb
    ad["Disk"] = disk_kb
    ad["TotalCpus"] = shape.cpus
    ad["TotalMemory"] = shape.memory_mb
    ad["TotalDisk"] = disk_kb
    ad["TideSite"] = site_name
    if max_job_duration_s is not None:
        ad[MAX_JOB_DURATION_ATTR] = max_job_duration_s
    return ad


@dataclass(frozen=True)
class _Requirements:
    """A parsed Requirements expression, and the unscoped names it uses that
    a job ad of ours does not define: those fall back to the machine."""

    expr: classad2.ExprTree
    machine_names: tuple[str, ...]


_JOB_ATTRS = ("RequestCpus", "RequestMemory", "RequestDisk", "Requirements")


def _parse(text: str) -> _Requirements | None:
    """Parse a Requirements expression; None if it does not parse."""
    try:
        expr = classad2.ExprTree(text)
    except classad2.ClassAdException:
        return None
    template = classad2.ClassAd({name: 0 for name in _JOB_ATTRS})
    refs = template.externalRefs(expr)
    unscoped = sorted({ref for ref in refs if ref and "." not in ref})
    return _Requirements(expr, tuple(unscoped))


def _in_time(cluster: AutoCluster, machine: classad2.ClassAd) -> bool:
    """Whether the jobs' declared runtime is within the machine's limit (if any)."""
    limit = machine.get(MAX_JOB_DURATION_ATTR)
    if cluster.allowed_job_duration_s is None or not isinstance(limit, int):
        return True
    return cluster.allowed_job_duration_s <= limit


def _fits(cluster: AutoCluster, capacity: tuple[int, int, int]) -> bool:
    cpus, memory_mb, disk_kb = capacity
    return (
        cluster.request_cpus <= cpus
        and cluster.request_memory_mb <= memory_mb
        and cluster.request_disk_kb <= disk_kb
    )


def _job_ad(cluster: AutoCluster, req: _Requirements) -> classad2.ClassAd:
    job = classad2.ClassAd()
    job["RequestCpus"] = cluster.request_cpus
    job["RequestMemory"] = cluster.request_memory_mb
    job["RequestDisk"] = cluster.request_disk_kb
    job["Requirements"] = req.expr
    return job


def _satisfies(
    cluster: AutoCluster, job: classad2.ClassAd, req: _Requirements, machine: classad2.ClassAd
) -> bool:
    """Whether the job's Requirements is true against the machine."""
    if req.machine_names:
        # Unscoped names the job lacks resolve in the machine, as in the
        # negotiator; a fresh job ad keeps the shared one clean.
        job = _job_ad(cluster, req)
        for name in req.machine_names:
            if name in machine:
                job[name] = machine.lookup(name)
    # ClassAd.matches evaluates the job's Requirements with MY = job and
    # TARGET = machine; undefined and error count as false.
    return bool(machine.matches(job))


def _capacity(machine: classad2.ClassAd) -> tuple[int, int, int] | None:
    values: list[int] = []
    for name in ("Cpus", "Memory", "Disk"):
        try:
            value = machine.eval(name)
        except KeyError:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        values.append(math.floor(value))
    return values[0], values[1], values[2]


def matches(cluster: AutoCluster, machine: classad2.ClassAd) -> bool:
    """Whether the negotiator would match the autocluster's jobs to this
    machine: the request fits its Cpus, Memory and Disk (KiB), and the
    Requirements evaluates to true against it. An expression that does not
    parse, or evaluates to undefined or error, matches nothing."""
    capacity = _capacity(machine)
    req = _parse(cluster.requirements)
    if capacity is None or req is None or not _fits(cluster, capacity):
        return False
    if not _in_time(cluster, machine):
        return False
    return _satisfies(cluster, _job_ad(cluster, req), req, machine)


def demand_from(
    clusters: Iterable[AutoCluster],
    prototypes: Mapping[str, tuple[Shape, classad2.ClassAd]],
) -> tuple[Demand, ...]:
    """One Demand per autocluster, listing the sites (sorted by name) whose
    prototype it matches. Each distinct Requirements is parsed once, and
    autoclusters alike in requests and Requirements (the same jobs at several
    schedds) are matched once."""
    sites = [
        (name, (shape.cpus, shape.memory_mb, shape.disk_mb * 1024), machine)
        for name, (shape, machine) in sorted(prototypes.items())
    ]
    parsed: dict[str, _Requirements | None] = {}
    matched: dict[tuple[str, int, int, int, int | None], tuple[str, ...]] = {}
    demand: list[Demand] = []
    for c in clusters:
        signature = (
            c.requirements,
            c.request_cpus,
            c.request_memory_mb,
            c.request_disk_kb,
            c.allowed_job_duration_s,
        )
        names = matched.get(signature)
        if names is None:
            if c.requirements not in parsed:
                parsed[c.requirements] = _parse(c.requirements)
            req = parsed[c.requirements]
            names = ()
            if req is not None:
                job = _job_ad(c, req)
                names = tuple(
                    name
                    for name, capacity, machine in sites
                    if _fits(c, capacity)
                    and _in_time(c, machine)
                    and _satisfies(c, job, req, machine)
                )
            matched[signature] = names
        demand.append(
            Demand(
                key=f"{c.schedd}#{c.id}",
                idle_jobs=c.idle_jobs,
                cpus=c.request_cpus,
                memory_mb=c.request_memory_mb,
                disk_mb=-(-c.request_disk_kb // 1024),
                sites=names,
            )
        )
    return tuple(demand)


# --- completeness -----------------------------------------------------------

SCHEDD_MEMORY_S = 1200.0
"""A schedd that answered within this long and is missing now makes demand
unknown. A restarted collector relearns a schedd only at its next ad
(SCHEDD_INTERVAL, 300 s by default), so until then its jobs would read as
no demand; one silent for longer than this has left the pool."""


def missing_schedds(
    listed: Iterable[str], seen: Mapping[str, float], now: float, memory_s: float = SCHEDD_MEMORY_S
) -> tuple[str, ...]:
    """Schedds that answered recently (`seen`: name -> when) that the
    collector does not list now: their demand is unknown, not zero."""
    present = set(listed)
    return tuple(
        sorted(name for name, at in seen.items() if name not in present and now - at < memory_s)
    )


# --- the I/O edge -----------------------------------------------------------

# Idle jobs that need a startd: not scheduler (7), grid (9) or local (12) universe.
IDLE_JOBS = "JobStatus == 1 && JobUniverse != 7 && JobUniverse != 9 && JobUniverse != 12"
# The group-by keys. The schedd re-applies the constraint to each group's ad,
# so the attributes the constraint names must be keys too; it also returns
# the job attributes these refer to (e.g. DiskUsage behind RequestDisk).
GROUP_BY = (
    "JobStatus",
    "JobUniverse",
    "RequestCpus",
    "RequestMemory",
    "RequestDisk",
    "Requirements",
    "AllowedJobDuration",
)


def _number(ad: classad2.ClassAd, name: str) -> int | None:
    """The attribute evaluated in the ad, rounded up; None if not a number."""
    try:
        value = ad.eval(name)
    except KeyError:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return math.ceil(value)


def _requirements(ad: classad2.ClassAd) -> str | None:
    """The group's Requirements, with the job attributes it names filled in
    where the group's ad has them (flattened), so matching without the job
    loses as little as possible."""
    try:
        expr = ad.lookup("Requirements")
    except KeyError:
        return None
    try:
        flat = ad.flatten(expr)
    except classad2.ClassAdException:
        return str(expr)
    if isinstance(flat, classad2.ExprTree):
        return str(flat)
    if isinstance(flat, bool):
        return "true" if flat else "false"
    return str(expr)


def autocluster_from_ad(schedd: str, ad: classad2.ClassAd) -> AutoCluster | None:
    """An AutoCluster from one ad of a group-by (or autocluster) query; None,
    logged, if the ad lacks what matching needs."""
    ident = _number(ad, "Id") if "Id" in ad else _number(ad, "AutoClusterId")
    count = _number(ad, "JobCount")
    cpus = _number(ad, "RequestCpus")
    memory = _number(ad, "RequestMemory")
    disk = _number(ad, "RequestDisk")
    requirements = _requirements(ad)
    duration = _number(ad, "AllowedJobDuration") if "AllowedJobDuration" in ad else None
    if (
        ident is None
        or count is None
        or cpus is None
        or memory is None
        or disk is None
        or requirements is None
    ):
        log.warning("schedd %s: skipping a job group without usable requests: %r", schedd, ad)
        return None
    return AutoCluster(
        schedd=schedd,
        id=ident,
        idle_jobs=count,
        request_cpus=cpus,
        request_memory_mb=memory,
        request_disk_kb=disk,
        requirements=requirements,
        allowed_job_duration_s=duration,
    )


class PoolDemandReader:
    """Reads the idle jobs of a pool's schedds, grouped for matching.

    Each schedd is asked for its idle jobs grouped by requests and
    Requirements (`Schedd.query` with `QueryOpt.GroupBy`): counts are exact
    and current. The schedd's own autoclusters (`QueryOpt.AutoCluster`) are
    not used: their JobCount includes running jobs, new jobs join them only
    when the schedd next computes them, and the query's constraint applies
    to the autocluster ad, which has no JobStatus. A group's id is the
    schedd's for this answer only; keys are stable within one reading.

    A collector that does not answer raises (htcondor2.HTCondorException): no
    demand is known. A schedd that does not answer is logged and skipped;
    `failed_schedds` names those of the last reading."""

    def __init__(self, collector: str, schedds: Sequence[str] = ()) -> None:
        self.collector = collector
        self.schedds = tuple(schedds)
        self.failed_schedds: tuple[str, ...] = ()
        self.answered_schedds: tuple[str, ...] = ()
        self._collector = htcondor2.Collector(collector)

    def _locations(self, failed: list[str]) -> list[tuple[str, classad2.ClassAd]]:
        located = [
            (str(ad.get("Name", ad.get("MyAddress", "?"))), ad)
            for ad in self._collector.locateAll(htcondor2.DaemonType.Schedd)
        ]
        if not self.schedds:
            return sorted(located, key=lambda pair: pair[0])
        wanted = set(self.schedds)
        found = [(name, ad) for name, ad in located if name in wanted]
        for name in sorted(wanted - {name for name, _ in found}):
            log.warning("schedd %s: not in the collector %s", name, self.collector)
            failed.append(name)
        return sorted(found, key=lambda pair: pair[0])

    def autoclusters(self) -> list[AutoCluster]:
        """Every located schedd's idle job groups; schedds that fail are skipped."""
        failed: list[str] = []
        answered: list[str] = []
        clusters: list[AutoCluster] = []
        for name, location in self._locations(failed):
            try:
                ads = htcondor2.Schedd(location).query(
                    constraint=IDLE_JOBS,
                    projection=list(GROUP_BY),  # the bindings take a list only
                    opts=htcondor2.QueryOpt.GroupBy,
                )
            except Exception as exc:  # one schedd's failure must not hide the others
                log.warning("schedd %s: no answer, its demand is skipped: %s", name, exc)
                failed.append(name)
                continue
            answered.append(name)
            for ad in ads:
                cluster = autocluster_from_ad(name, ad)
                if cluster is not None:
                    clusters.append(cluster)
        self.failed_schedds = tuple(failed)
        self.answered_schedds = tuple(answered)
        return clusters


__all__ = [
    "GROUP_BY",
    "IDLE_JOBS",
    "AutoCluster",
    "PoolDemandReader",
    "autocluster_from_ad",
    "demand_from",
    "matches",
    "missing_schedds",
    "prototype",
]
