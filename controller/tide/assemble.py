"""Build a running controller from a Config: the pool client's configuration,
the sites' adapters, the demand source and the slot observer.

htcondor2 reads CONDOR_CONFIG when first imported, so
tide.htcondor.client.configure must run before anything imports it
(tide.htcondor.demand, tide.htcondor.slots.CollectorSlots); those modules are
imported here lazily for that reason, as are the site kinds' client
libraries (a site kind not configured is never loaded).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import replace

from tide.config import Config, SiteConfig, site_model
from tide.htcondor.slots import CollectorSlots
from tide.htcondor.startds import SiteStartds
from tide.loop import Controller, DemandSource
from tide.metrics import Metrics
from tide.model import Demand, Site
from tide.runner import Runner
from tide.sites.base import (
    Capability,
    Owned,
    OwnerQueue,
    PoolEndpoint,
    SiteAdapter,
    SiteError,
)
from tide.store import Store, new_resource_id, random_suffix


def build_adapter(name: str, site: SiteConfig, *, owner: str, pool: PoolEndpoint) -> SiteAdapter:
    """The adapter of one configured site (its kind's `build`). Raises
    SiteError for a bad site. Contacts no site: an engine or cloud that is
    down at the daemon's start makes its site's calls fail (retryably), not
    the daemon. Every call an adapter makes has a deadline: the kind's
    API_TIMEOUT_S, a Slurm site's command_timeout_s."""
    return site.build(name, owner=owner, pool=pool)


class ReadOnlySite(SiteAdapter):
    """A configured site's adapter for `tide plan`: it asks what the daemon
    asks (the listing, the owners' queue) and refuses to act."""

    def __init__(self, inner: SiteAdapter) -> None:
        self.name = inner.name
        self.capabilities = inner.capabilities - {Capability.DRAIN}
        self._inner = inner

    def create(self, resource_id: str) -> Mapping[str, str]:
        raise RuntimeError(f"site {self.name}: read-only, create refused")

    def list_owned(self) -> list[Owned]:
        return self._inner.list_owned()

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        raise RuntimeError(f"site {self.name}: read-only, destroy refused")

    def owner_queue(self) -> OwnerQueue:
        return self._inner.owner_queue()


def read_only(adapters: Mapping[str, SiteAdapter]) -> dict[str, SiteAdapter]:
    """The adapters for `tide plan`: they list and read, and act on nothing."""
    return {name: ReadOnlySite(a) for name, a in adapters.items()}


def demand_source(
    config: Config, store: Store | None = None, *, remember: bool = True
) -> DemandSource:
    """Demand from the pool's schedds, matched against every site's prototype;
    complete only if no schedd failed and none that answered recently is
    missing from the collector (with `store`: remembered across restarts,
    see tide.htcondor.demand.missing_schedds). A collector failure raises."""
    from tide.htcondor.demand import (  # noqa: PLC0415
        SCHEDD_MEMORY_S,
        PoolDemandReader,
        demand_from,
        missing_schedds,
        prototype,
    )

    prototypes = {}
    for name, site in config.sites.items():
        shape = site_model(name, site).shape
        prototypes[name] = (
            shape,
            prototype(name, shape, site.attributes, max_job_duration_s=site.max_job_duration()),
        )
    reader = PoolDemandReader(config.pool.collector, config.pool.schedds)

    def read() -> tuple[tuple[Demand, ...], bool]:
        demand = demand_from(reader.autoclusters(), prototypes)
        complete = not reader.failed_schedds
        if store is not None:
            now = time.time()
            listed = (*reader.answered_schedds, *reader.failed_schedds)
            missing = missing_schedds(listed, store.schedds_seen(), now)
            if remember:  # `tide plan` reads the memory, never writes it
                store.saw_schedds(reader.answered_schedds, now, now - 2 * SCHEDD_MEMORY_S)
            complete = complete and not missing
        return demand, complete

    return read


def remember_site_configs(config: Config, store: Store, retiring: Collection[str]) -> None:
    """Keep each configured site's configuration in the state file (paths,
    never a secret), so a site later removed from the file can be retired."""
    for name, site in config.sites.items():
        if name not in retiring:
            store.set_site_config(name, site.model_dump_json())


def with_retiring_sites(
    config: Config, store: Store, *, write: bool = True
) -> tuple[Config, frozenset[str]]:
    """`config` plus every site the state file still has live resources at
    that the file no longer names, rebuilt from the configuration it last ran
    with and marked retiring: it boots nothing and gives everything back
    (drained, then destroyed). A site with nothing left is forgotten. Raises
    SiteError for such a site whose last configuration is unknown."""
    from pydantic import TypeAdapter  # noqa: PLC0415

    alive: dict[str, int] = {}
    for r in store.alive():
        alive[r.site] = alive.get(r.site, 0) + 1
    sites = dict(config.sites)
    retiring: set[str] = set()
    for record in store.sites():
        if record.name in sites:
            continue
        if record.name not in alive:
            if write:
                store.forget_site(record.name)
            continue
        saved = store.site_config(record.name)
        if saved is None:
            continue
        sites[record.name] = TypeAdapter(SiteConfig).validate_json(saved)
        retiring.add(record.name)
    for name in sorted(set(alive) - set(sites)):
        raise SiteError(
            f"site {name}: {alive[name]} resources in the state file, but the site is neither"
            " configured nor known from an earlier run: add it back (with limits.max_resources: 0"
            " to give them back)",
            retryable=False,
        )
    return config.model_copy(update={"sites": sites}), frozenset(retiring)


def build_controller(
    config: Config,
    store: Store,
    *,
    adapters: Mapping[str, SiteAdapter],
    metrics: Metrics | None,
    runner: Runner | None = None,
    retiring: Collection[str] = (),
    plan_only: bool = False,
) -> Controller:
    """The controller of `config`; `plan_only` (`tide plan`): its sites list
    and read but act on nothing, and it writes nothing."""
    acting = read_only(adapters) if plan_only else dict(adapters)
    sites: dict[str, tuple[Site, SiteAdapter]] = {
        name: (replace(site_model(name, cfg), retiring=name in retiring), acting[name])
        for name, cfg in config.sites.items()
    }
    return Controller(
        sites=sites,
        store=store,
        demand=demand_source(config, store, remember=not plan_only),
        slots=CollectorSlots(config.pool.collector),
        startds=None if plan_only else SiteStartds(adapters),
        metrics=metrics,
        clock=time.time,
        new_id=lambda site: new_resource_id(site, random_suffix()),
        runner=runner,
        act_budget_s=config.loop.interval_s,
        collector_warmup_s=config.pool.collector_warmup_s,
    )
