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
from importlib import resources
from importlib.resources.abc import Traversable

import yaml

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
    ended: bool = False  # only a record of it is left: it holds nothing (a Slurm pilot whose
    # boot failed, `failed` too): a boot ended so has failed, anything else is gone
    started_at: float | None = None  # when it got its machine, as its site counts (a Slurm
    # pilot's time used); None: unknown (the controller counts from when it first sees it)


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


class TokenAges:
    """When each resource's own token was minted, for renewing it once half
    its lifetime has passed. Held in memory only: after a restart every
    resource is due at once, its token's age unknown."""

    def __init__(self, lifetime_s: int) -> None:
        self.lifetime_s = lifetime_s
        self._minted: dict[str, float] = {}

    def due(self, resource_ids: Sequence[str], now: float) -> list[str]:
        half = self.lifetime_s / 2
        return [r for r in resource_ids if now - self._minted.get(r, float("-inf")) >= half]

    def minted(self, resource_id: str, now: float) -> None:
        self._minted[resource_id] = now

    def forget(self, resource_id: str) -> None:
        """A resource destroyed or gone: never renewed again, not remembered."""
        self._minted.pop(resource_id, None)


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

    # --- workers' own tokens (sites with a signing key) ----------------------

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


AttributeValue = str | bool | int | float
"""A configured site attribute's value."""


def worker_attribute_values(
    site: str, attributes: Mapping[str, AttributeValue]
) -> dict[str, AttributeValue]:
    """The attributes a site's workers advertise, by name, as configured
    values: the configured attributes, except those the worker advertises
    from its own settings, plus TideSite (Tide's name for the site), so a
    worker advertises what the site's machine prototype promised the jobs.

    Raises ValueError naming a bad attribute name or value."""
    out: dict[str, AttributeValue] = {}
    for name, value in sorted(attributes.items()):
        if not _CLASSAD_NAME.match(name):
            raise ValueError(f"attribute {name!r} is not a ClassAd attribute name")
        if name.lower() in _OWN_ATTRIBUTES:
            continue
        try:
            classad_literal(value)
        except ValueError as exc:
            raise ValueError(f"attribute {name}: {exc}") from None
        out[name] = value
    out["TideSite"] = site
    return out


def worker_attributes(site: str, attributes: Mapping[str, AttributeValue]) -> dict[str, str]:
    """worker_attribute_values() as ClassAd expressions (TIDE_ATTR_<Name>
    takes these; a native pilot's configuration too). Raises ValueError."""
    values = worker_attribute_values(site, attributes)
    return {name: classad_literal(value) for name, value in values.items()}


ATTR_PREFIX = "TIDE_ATTR_"
"""A worker's environment variables naming its ClassAd attributes."""


def worker_image_root() -> Traversable:
    """The tide/condor image's build context as packaged with tide
    (controller/tide/worker_image links to images/condor)."""
    return resources.files("tide").joinpath("worker_image")


def _environment_config(env: Mapping[str, str]) -> str:
    """What tide-entrypoint writes into 50-tide-env.conf for an execute node
    from its environment (images/condor/README.md), bar what needs root or
    the shared port: the same settings from the same values (pinned to the
    real entrypoint by tests/integration/test_worker_recipe_image.py)."""
    domain, collector = env["TIDE_POOL_DOMAIN"], env["TIDE_COLLECTOR"]
    lines = [
        "# From the worker recipe's environment, as tide-entrypoint writes it.",
        f"UID_DOMAIN = {domain}",
        f"TRUST_DOMAIN = {domain}",
        "FILESYSTEM_DOMAIN = $(FULL_HOSTNAME)",
        f"COLLECTOR_HOST = {collector}",
        f"CONDOR_HOST = {collector.rsplit(':', 1)[0]}",
        f"NETWORK_HOSTNAME = {env['TIDE_NODE_NAME']}",
        f"SiteName = {classad_literal(env['TIDE_SITE_NAME'])}",
        f"TideResourceId = {classad_literal(env['TIDE_RESOURCE_ID'])}",
    ]
    for key, setting, factor in (
        ("TIDE_CPUS", "NUM_CPUS", 1),
        ("TIDE_MEMORY_MB", "MEMORY", 1),
        ("TIDE_DISK_MB", "DISK", 1024),
    ):
        if key in env:
            lines.append(f"{setting} = {int(env[key]) * factor}")
    names = ["SiteName", "TideResourceId"]
    for key in sorted(env):
        if key.startswith(ATTR_PREFIX):
            name = key.removeprefix(ATTR_PREFIX)
            lines.append(f"{name} = {env[key]}")
            names.append(name)
    lines.append(f"STARTD_ATTRS = $(STARTD_ATTRS) {' '.join(names)}")
    return "\n".join(lines) + "\n"


WORKER_ROLE = "condor_worker"
"""The role whose templates and defaults are the worker recipe."""

WORKER_RECIPE_HEADER = "Written by the Tide controller from the condor_worker role's recipe."
"""The `ansible_managed` header of the worker files the controller renders."""


@dataclass(frozen=True)
class WorkerRecipe:
    """One worker, as the condor_worker role makes it: rendered from the
    role's own template and defaults (tide.onboard.recipe: byte for byte
    what the role writes on a provider host, bar its header), so a Docker
    site's containers, an OpenStack server's compose project and a Docker
    pilot's container are all the role's worker, changed in one place.

    One partitionable slot of `shape`, joined to `pool` as `resource_id`,
    advertising SiteName `site_name` and the attributes configured for
    Tide's site `site` (worker_attribute_values picks them). Without
    `port`, the image's default (9618, the role's too)."""

    pool: PoolEndpoint
    resource_id: str
    site: str
    site_name: str
    shape: Shape
    attributes: Mapping[str, AttributeValue]
    port: int | None = None
    bind_address: str = ""
    drain_url: str = ""

    def compose(self, image: str = "") -> str:
        """The worker's compose project (compose.yaml) running `image`.
        Raises ValueError naming a bad attribute."""
        from tide.onboard import recipe  # noqa: PLC0415  (jinja2 and the role files, when used)

        variables: dict[str, object] = {
            "ansible_managed": WORKER_RECIPE_HEADER,
            "inventory_hostname": self.resource_id,
            "condor_worker_pool_domain": self.pool.pool_domain,
            "condor_worker_collector": self.pool.collector,
            "condor_worker_node_name": self.resource_id,
            "condor_worker_resource_id": self.resource_id,
            "condor_worker_site_name": self.site_name,
            "condor_worker_site_attributes": worker_attribute_values(self.site, self.attributes),
            "condor_worker_cpus": self.shape.cpus,
            "condor_worker_memory_mb": self.shape.memory_mb,
            "condor_worker_disk_mb": self.shape.disk_mb,
            "condor_worker_bind_address": self.bind_address,
            "condor_worker_drain_url": self.drain_url,
            "condor_worker_image": image,
            "condor_worker_port": self.port,  # None: the image's default
        }
        return recipe.render(WORKER_ROLE, "compose.yaml.j2", variables)

    def site_conf(self, condor_config: Mapping[str, str] | None = None) -> str:
        """The worker's condor.d/site.conf: `condor_config` (HTCondor
        settings), read after the image's own files."""
        from tide.onboard import recipe  # noqa: PLC0415

        variables = {
            "ansible_managed": WORKER_RECIPE_HEADER,
            "inventory_hostname": self.resource_id,
            "condor_worker_condor_config": dict(condor_config or {}),
        }
        return recipe.render(WORKER_ROLE, "site.conf.j2", variables)

    def condor_config(self) -> str:
        """The worker's HTCondor configuration where the tide/condor image
        does not run (a native Slurm pilot): the image's own files in the
        order its entrypoint reads them (config.d/, then roles.d/execute.conf)
        and what the entrypoint writes for an execute node from the worker's
        environment() (domains, collector, node name, shape, SiteName,
        TideResourceId, the site's attributes). The caller adds what differs
        where HTCondor runs as a user, then site_conf(). Raises ValueError
        naming a bad attribute."""
        root = worker_image_root()
        files = sorted(
            (f for f in root.joinpath("config.d").iterdir() if f.name.endswith(".conf")),
            key=lambda f: f.name,
        )
        parts = [f.read_text(encoding="utf-8") for f in files]
        parts.append(root.joinpath("roles.d").joinpath("execute.conf").read_text(encoding="utf-8"))
        parts.append(_environment_config(self.environment()))
        return "\n".join(part.rstrip("\n") + "\n" for part in parts)

    def environment(self) -> dict[str, str]:
        """The worker container's environment (the tide/condor image's
        contract, images/condor/README.md): the worker service's in
        compose(). The token is not in here: the image reads it from a
        file. Raises ValueError naming a bad attribute."""
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where built
        document = yaml.load(self.compose(), Loader=loader)  # noqa: S506  (a safe loader)
        environment = document["services"]["condor"]["environment"]
        return {str(name): str(value) for name, value in environment.items()}


__all__ = [
    "OWNER_TAG",
    "RESOURCE_ID_TAG",
    "SITE_TAG",
    "AttributeValue",
    "Capability",
    "DeadlineExceeded",
    "Owned",
    "OwnerQueue",
    "PoolEndpoint",
    "QuotaExceeded",
    "SiteAdapter",
    "SiteError",
    "TokenAges",
    "Unsupported",
    "WorkerRecipe",
    "classad_literal",
    "worker_attribute_values",
    "worker_attributes",
    "worker_site_name",
]
