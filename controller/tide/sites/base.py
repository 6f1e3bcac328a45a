"""The interface between the controller and a site, and what every site shares.

A site adapter does three things, each one call to the site's API and none
of them waiting for the resource to change state: the controller's loop
observes progress (list_owned, and the pool's collector) on its next pass.
A kind may do more, declared on the same interface as its `capabilities`:
DRAIN (it tells its workers' startds to drain, through its own channel to
them) and OWNERS (it is lent by owners who take it back: the controller
reads their queue, and a destroy is an evacuation that ends when the site no
longer lists the resource). Each kind is one package (tide.sites.kinds).

Ownership: every resource an adapter makes carries the tags (server metadata,
container labels) `tide-owner=<owner>`, `tide-site=<site>` and
`tide-resource-id=<id>`. `owner` is the controller instance's name, so two
controllers sharing one cloud project never list, count or destroy each
other's resources, and `tide-site` keeps two Tide sites of one controller in
the same project apart. What carries no such tag is never touched.

Deadlines and bad answers: every call an adapter makes to its site has a
deadline (an API timeout, a command timeout), and one that runs out raises
DeadlineExceeded, a retryable SiteError: a hung cloud API, Docker engine or
Slurm command makes the site unreachable for that cycle, never the daemon
stuck. An answer an adapter cannot parse (a garbled squeue line, a server
listing without ids, a label of the wrong type) is a retryable SiteError
naming the site, the call and what was wrong - never a KeyError or a
ValueError escaping into the loop.
"""

from __future__ import annotations

import abc
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from tide.model import Shape

OWNER_TAG = "tide-owner"
SITE_TAG = "tide-site"
RESOURCE_ID_TAG = "tide-resource-id"

_CLASSAD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Attributes a worker advertises by itself, from its settings (TIDE_SITE_NAME,
# TIDE_RESOURCE_ID, the shape) or as Tide's site name; the machine prototype
# (tide.htcondor.demand.prototype) overrides site attributes of these names the same way.
_OWN_ATTRIBUTES = frozenset(
    name.lower()
    for name in (
        "SiteName",
        "TideResourceId",
        "TideSite",
        "PartitionableSlot",
        "Cpus",
        "Memory",
        "Disk",
        "TotalCpus",
        "TotalMemory",
        "TotalDisk",
    )
)


class SiteError(Exception):
    """A site call failed. `retryable`: the same call may succeed later as it is
    (an outage, a full quota); False: it will not until the configuration
    changes (an unknown flavor, a refused request). The message never holds
    a secret."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class QuotaExceeded(SiteError):
    """The site refused for lack of quota: retryable once resources are freed."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message, retryable=retryable)


class DeadlineExceeded(SiteError):
    """A site call did not finish within its deadline (a hung API, engine or
    command): retryable, since the site may answer next time. It may
    nonetheless have taken effect; the controller reconciles by listing."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message, retryable=retryable)


class DrainRefused(SiteError):
    """A drain meant only for an idle startd was refused by the startd itself:
    it holds a claim (a job matched the moment before, which the collector
    did not show yet). Not retryable as it is: the resource is busy."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class Owned:
    """One resource at a site carrying this controller's ownership tags."""

    resource_id: str
    status: str  # the site's own status word, raw (e.g. OpenStack's BUILD, ACTIVE, ERROR)
    details: Mapping[str, str] = field(default_factory=dict)  # as create returned them
    failed: bool = False  # the site says it will never come up (e.g. OpenStack's ERROR)
    placed: bool = True  # it has its machine; False: still queued (a Slurm pilot pending)


@dataclass(frozen=True)
class OwnerQueue:
    """What a backfill site's owners wait for, as its scheduler reports it."""

    pending_nodes: int  # nodes their waiting jobs want
    free_nodes: int  # nodes idle or being given back that those jobs may use
    new_nodes: int = 0  # nodes wanted by jobs the scheduler has not looked at yet
    waiting: Mapping[str, int] = field(default_factory=dict)  # the jobs behind pending_nodes,
    # by the scheduler's job id: nodes each wants (for the owners' grace time, tide.policy)


@dataclass(frozen=True)
class PoolEndpoint:
    """The pool a site's workers join."""

    collector: str  # host:port of the collector
    pool_domain: str  # the pool's domain (TIDE_POOL_DOMAIN)


class Capability(StrEnum):
    """What a site kind can do beyond create, list and destroy."""

    DRAIN = "drain"
    """drain_startd / cancel_startd_drain: it tells its workers' startds to drain."""
    OWNERS = "owners"
    """owner_queue: owners lend it and take it back; destroying is evacuating."""


class Unsupported(SiteError):
    """A call for a capability the site's kind does not have."""

    def __init__(self, site: str, capability: Capability) -> None:
        super().__init__(f"site {site}: its kind cannot {capability.value}", retryable=False)


class SiteAdapter(abc.ABC):
    """A site the controller scales; one per configured site. An adapter is
    called from its site's lane only (one call at a time)."""

    name: str  # the site's name in the configuration
    capabilities: frozenset[Capability] = frozenset()  # the kind's (its config model's)

    @abc.abstractmethod
    def create(self, resource_id: str) -> Mapping[str, str]:
        """Start one resource whose worker advertises TideResourceId=resource_id,
        tagged as owned. Returns what to record to find it again (for example
        {"server_id": ...}). Does not wait for it to boot. Raises SiteError."""

    @abc.abstractmethod
    def list_owned(self) -> list[Owned]:
        """Every resource at this site tagged as this controller's, whatever its
        state, including ones the controller's records do not know. Raises SiteError."""

    @abc.abstractmethod
    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        """Destroy the resource (details as create returned them, possibly empty).
        Idempotent: a resource already gone is not an error. Raises SiteError."""

    # --- Capability.DRAIN ---------------------------------------------------

    def drain_startd(self, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        """Start a graceful drain of the resource's startd; returns a request id.
        `only_idle`: the startd itself refuses if it holds a claim (DrainRefused,
        or later in its ads for a site that tells it asynchronously). Raises
        SiteError."""
        raise Unsupported(self.name, Capability.DRAIN)

    def cancel_startd_drain(self, resource_id: str, request_id: str) -> None:
        """Cancel a drain started by drain_startd. Raises SiteError."""
        raise Unsupported(self.name, Capability.DRAIN)

    # --- workers' own tokens (kinds with per_resource_tokens) ----------------

    def tokens_due(self, resource_ids: Sequence[str], now: float) -> list[str]:
        """Of these live resources, those whose own token should be renewed
        now (half its lifetime passed, or unknown since the controller
        started). No I/O: the loop asks every cycle. None at a site whose
        workers share one token."""
        return []

    def renew_tokens(self, resource_ids: Sequence[str]) -> None:
        """Hand each of these resources a new token of its own. Raises SiteError."""
        raise SiteError(
            f"site {self.name}: its workers have no tokens of their own", retryable=False
        )

    # --- Capability.OWNERS --------------------------------------------------

    def owner_queue(self) -> OwnerQueue:
        """The owners' waiting jobs and the nodes free for them. Raises SiteError."""
        raise Unsupported(self.name, Capability.OWNERS)


def worker_site_name(site: str, attributes: Mapping[str, object]) -> str:
    """What the site's workers advertise as SiteName: the `SiteName` attribute
    (ClassAd names are case-insensitive) when configured, else the site's name;
    the same rule as the machine prototype's."""
    for name, value in attributes.items():
        if name.lower() == "sitename":
            return str(value)
    return site


def classad_literal(value: str | bool | int | float) -> str:
    """A configured attribute value as the ClassAd expression a worker's
    TIDE_ATTR_<Name> takes: strings quoted, booleans true/false, numbers as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no ClassAd literal")
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def worker_attributes(
    site: str, attributes: Mapping[str, str | bool | int | float]
) -> dict[str, str]:
    """The TIDE_ATTR_<Name> expressions of a site's workers, by name: the
    configured attributes, except those the worker advertises from its own
    settings, plus TideSite (Tide's name for the site), so a worker advertises
    what the site's machine prototype promised the jobs.

    Raises ValueError naming a bad attribute name or value."""
    out: dict[str, str] = {}
    for name, value in sorted(attributes.items()):
        if not _CLASSAD_NAME.match(name):
            raise ValueError(f"attribute {name!r} is not a ClassAd attribute name")
        if name.lower() in _OWN_ATTRIBUTES:
            continue
        try:
            out[name] = classad_literal(value)
        except ValueError as exc:
            raise ValueError(f"attribute {name}: {exc}") from None
    out["TideSite"] = classad_literal(site)
    return out


def worker_environment(
    *,
    pool: PoolEndpoint,
    resource_id: str,
    site_name: str,
    shape: Shape,
    attributes: Mapping[str, str],
    port: int | None = None,
    bind_address: str = "",
) -> dict[str, str]:
    """The environment of a tide/condor worker a site starts (the image's
    contract, images/condor/README.md; the condor_worker role sets the same):
    one partitionable slot of `shape`, joined to `pool` as `resource_id`.
    `attributes` are worker_attributes() expressions. Without `port` the
    image's default shared port (9618) is used. The token is not in here:
    the image reads it from a file."""
    env = {
        "TIDE_CONDOR_ROLES": "execute",
        "TIDE_POOL_DOMAIN": pool.pool_domain,
        "TIDE_COLLECTOR": pool.collector,
        "TIDE_NODE_NAME": resource_id,
        "TIDE_RESOURCE_ID": resource_id,
        "TIDE_SITE_NAME": site_name,
        "TIDE_CPUS": str(shape.cpus),
        "TIDE_MEMORY_MB": str(shape.memory_mb),
        "TIDE_DISK_MB": str(shape.disk_mb),
    }
    if port is not None:
        env["TIDE_PORT"] = str(port)
    if bind_address:
        env["TIDE_BIND_ADDRESS"] = bind_address
    for name, expression in attributes.items():
        env[f"TIDE_ATTR_{name}"] = expression
    return env


__all__ = [
    "OWNER_TAG",
    "RESOURCE_ID_TAG",
    "SITE_TAG",
    "Capability",
    "DeadlineExceeded",
    "Owned",
    "OwnerQueue",
    "PoolEndpoint",
    "QuotaExceeded",
    "SiteAdapter",
    "SiteError",
    "Unsupported",
    "classad_literal",
    "worker_attributes",
    "worker_environment",
    "worker_site_name",
]
