"""Build a running controller from a Config: the pool client's configuration,
the sites' adapters, the demand source and the slot observer.

htcondor2 reads CONDOR_CONFIG when first imported, so `configure_htcondor`
must run before anything imports it (tide.demand, tide.slots.CollectorSlots);
those modules are imported here lazily for that reason, as are the Docker
and OpenStack client libraries (a site kind not configured is never loaded).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path

from tide.config import (
    Config,
    DockerSiteConfig,
    OpenStackSiteConfig,
    SiteConfig,
    SlurmBackfillSiteConfig,
    site_model,
)
from tide.loop import Controller, DemandSource
from tide.metrics import Metrics
from tide.model import Demand, Site
from tide.runner import Runner
from tide.sites.base import BackfillSite, Owned, OwnerQueue, PoolEndpoint, SiteAdapter, SiteError
from tide.slots import CollectorSlots
from tide.startds import SiteStartds
from tide.store import Store, new_resource_id, random_suffix


def configure_htcondor(collector: str, token_file: Path) -> Path:
    """Point htcondor2 at a private configuration (a 0700 temporary folder)
    that authenticates with exactly the pool token (copied 0600) by IDTOKENS.
    Returns the folder; the caller removes it when done."""
    return configure_htcondor_token(collector, token_file.read_text(encoding="utf-8"))


def configure_htcondor_token(collector: str, token: str) -> Path:
    """configure_htcondor with the token's text."""
    folder = Path(tempfile.mkdtemp(prefix="tide-condor-"))  # mkdtemp makes it 0700
    tokens = folder / "tokens.d"
    tokens.mkdir(mode=0o700)
    copy = tokens / "pool.token"
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token)
    config = folder / "condor_config"
    config.write_text(
        f"COLLECTOR_HOST = {collector}\n"
        f"SEC_TOKEN_DIRECTORY = {tokens}\n"
        "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS\n"
        "SEC_DEFAULT_ENCRYPTION = REQUIRED\n"
        "SEC_DEFAULT_INTEGRITY = REQUIRED\n",
        encoding="utf-8",
    )
    config.chmod(0o600)
    os.environ["CONDOR_CONFIG"] = str(config)
    if "htcondor2" in sys.modules:  # imported before: make it read the new file
        sys.modules["htcondor2"].reload_config()
    return folder


def remove_htcondor_config(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def build_adapter(name: str, site: SiteConfig, *, owner: str, pool: PoolEndpoint) -> SiteAdapter:
    """The adapter of one configured site. Raises SiteError for a bad site.
    Contacts no site: an engine or cloud that is down at the daemon's start
    makes its site's calls fail (retryably), not the daemon. Every call an
    adapter makes has a deadline: the modules' API_TIMEOUT_S, a Slurm site's
    command_timeout_s."""
    if isinstance(site, DockerSiteConfig):
        from tide.sites import docker as docker_site  # noqa: PLC0415

        return docker_site.DockerSite(
            name,
            site,
            client=docker_site.engine_client(
                name, site.engine_url, timeout_s=docker_site.API_TIMEOUT_S
            ),
            owner=owner,
            pool=pool,
            worker_token_file=site.worker_token_file,
        )
    if isinstance(site, SlurmBackfillSiteConfig):
        return _slurm_adapter(name, site, owner=owner, pool=pool)
    assert isinstance(site, OpenStackSiteConfig)
    import openstack  # noqa: PLC0415
    import openstack.exceptions  # noqa: PLC0415

    from tide.sites import openstack as openstack_site  # noqa: PLC0415
    from tide.sites.base import SiteError  # noqa: PLC0415

    try:
        # No call yet: openstacksdk authenticates at the first one.
        conn = openstack.connect(cloud=site.cloud, api_timeout=openstack_site.API_TIMEOUT_S)
    except openstack.exceptions.SDKException as exc:  # e.g. no such entry in clouds.yaml
        raise SiteError(f"site {name}: sites.{name}.cloud: {exc}", retryable=False) from None
    try:
        token = site.worker_token_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteError(
            f"site {name}: the worker token file {site.worker_token_file}: {exc}",
            retryable=False,
        ) from None
    return openstack_site.OpenStackSite(
        name, site, conn=conn, owner=owner, pool=pool, worker_token=token
    )


def _slurm_adapter(
    name: str, site: SlurmBackfillSiteConfig, *, owner: str, pool: PoolEndpoint
) -> SiteAdapter:
    from tide.executors import Executor, LocalExecutor, SshExecutor, SshTarget  # noqa: PLC0415
    from tide.sites.slurm import SlurmBackfillSite  # noqa: PLC0415

    executor: Executor
    if site.login is None:
        executor = LocalExecutor()
    else:
        login = site.login
        executor = SshExecutor(
            SshTarget(
                host=login.host,
                port=login.port,
                user=login.user,
                key_file=login.key_file,
                known_hosts_file=login.known_hosts_file,
                max_sessions=login.max_sessions,
            )
        )
    return SlurmBackfillSite(
        name,
        site,
        executor=executor,
        owner=owner,
        pool=pool,
        worker_token_file=site.worker_token_file,
        shape=site_model(name, site).shape,
    )


class ReadOnlySite:
    """A configured site's adapter for `tide plan`: it asks what the daemon
    asks (the listing) and refuses to act."""

    def __init__(self, inner: SiteAdapter) -> None:
        self.name = inner.name
        self._inner = inner

    def create(self, resource_id: str) -> Mapping[str, str]:
        raise RuntimeError(f"site {self.name}: read-only, create refused")

    def list_owned(self) -> list[Owned]:
        return self._inner.list_owned()

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        raise RuntimeError(f"site {self.name}: read-only, destroy refused")


class ReadOnlyBackfillSite(ReadOnlySite):
    """ReadOnlySite of a backfill site: its owners' queue is read too."""

    def __init__(self, inner: SiteAdapter) -> None:
        super().__init__(inner)
        assert isinstance(inner, BackfillSite)
        self._queue = inner

    def owner_queue(self) -> OwnerQueue:
        return self._queue.owner_queue()


def read_only(adapters: Mapping[str, SiteAdapter]) -> dict[str, SiteAdapter]:
    """The adapters for `tide plan`: they list and read, and act on nothing."""
    return {
        name: ReadOnlyBackfillSite(a) if isinstance(a, BackfillSite) else ReadOnlySite(a)
        for name, a in adapters.items()
    }


def demand_source(
    config: Config, store: Store | None = None, *, remember: bool = True
) -> DemandSource:
    """Demand from the pool's schedds, matched against every site's prototype;
    complete only if no schedd failed and none that answered recently is
    missing from the collector (with `store`: remembered across restarts,
    see tide.demand.missing_schedds). A collector failure raises."""
    from tide.demand import (  # noqa: PLC0415
        SCHEDD_MEMORY_S,
        PoolDemandReader,
        demand_from,
        missing_schedds,
        prototype,
    )

    prototypes = {}
    for name, site in config.sites.items():
        shape = site_model(name, site).shape
        prototypes[name] = (shape, prototype(name, shape, site.attributes))
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
