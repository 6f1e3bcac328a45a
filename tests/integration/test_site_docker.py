"""A worker the Docker site starts on this machine's Docker engine joins the
lab pool with the lab's worker token, advertises its site, runs a job as a
slot user that cannot read that token, and leaves the collector when the
site destroys it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from uuid import uuid4

import docker
import docker.errors

from tests import lab
from tests.pool import client, slot_advertised
from tests.probes import CREDENTIAL_SEARCH, assert_no_token_found
from tests.sampler import SecretSampler
from tide.config import DockerSiteConfig
from tide.sites.base import OWNER_TAG, PoolEndpoint, SiteAdapter

SITE = "itest"
# Clear of the lab's 29618-29680 and of the unit tests' 29900-29902.
FIRST_PORT, LAST_PORT = 29700, 29709


@contextlib.contextmanager
def _lab_site(credential: dict[str, str]) -> Iterator[tuple[SiteAdapter, str]]:
    """A Docker site on this machine's engine whose workers join the lab
    pool with `credential` (a token file or the workers' signing key), and
    a resource id for it; every container it made is removed afterwards."""
    owner = f"test-{uuid4().hex[:8]}"
    config = DockerSiteConfig.model_validate(
        {
            "kind": "docker",
            "shape": {"cpus": 1, "memory_mb": 512, "disk_mb": 1024},
            "attributes": {"TideSiteKind": "docker"},
            "port_range_start": FIRST_PORT,
            "port_range_end": LAST_PORT,
            "bind_address": "127.0.0.1",
            **credential,
        }
    )
    site = config.build(
        SITE, owner=owner, pool=PoolEndpoint(collector=lab.COLLECTOR, pool_domain=lab.POOL_DOMAIN)
    )
    engine = docker.from_env()
    try:
        yield site, f"tide-{SITE}-{uuid4().hex[:8]}"
    finally:
        for container in engine.containers.list(
            all=True, filters={"label": f"{OWNER_TAG}={owner}"}
        ):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(v=True, force=True)
        engine.close()


def test_a_docker_site_worker_joins_the_lab_pool_and_leaves_it() -> None:
    token_file = lab.STATE / "secrets" / "worker.token"
    with _lab_site({"worker_token_file": str(token_file)}) as (site, rid):
        details = site.create(rid)
        assert FIRST_PORT <= int(details["port"]) <= LAST_PORT
        lab.wait_for(f"the slot of {rid}", lambda: slot_advertised(rid), timeout=120)

        htcondor2 = client()
        ads = htcondor2.Collector().query(
            htcondor2.AdTypes.Startd,
            constraint=f'TideResourceId == "{rid}"',
            projection=["Name", "SiteName", "TideSite", "TideSiteKind", "Cpus", "Memory"],
        )
        assert len(ads) == 1, [dict(ad) for ad in ads]
        slot = ads[0]
        assert slot["Name"] == f"slot1@{rid}"
        assert slot["SiteName"] == SITE  # no SiteName attribute: the site's name
        assert slot["TideSite"] == SITE
        assert slot["TideSiteKind"] == "docker"
        assert (slot["Cpus"], slot["Memory"]) == (1, 512)
        assert [owned.resource_id for owned in site.list_owned()] == [rid]
        # A job there runs as a slot user and cannot read the mounted token.
        assert_no_token_found(lab.run_job(CREDENTIAL_SEARCH, on=rid))

        site.destroy(rid, details)
        assert site.list_owned() == []
        lab.wait_for(f"the slot of {rid} to leave", lambda: not slot_advertised(rid), timeout=120)


def test_a_worker_with_a_token_of_its_own_joins_as_itself_alone() -> None:
    """With the workers' signing key, the worker joins the lab pool with a
    token naming it alone (the collector records that identity on its ads),
    and a job there cannot read that token."""
    key_file = lab.STATE / "secrets" / "workers_signing_key"
    with _lab_site({"worker_signing_key_file": str(key_file)}) as (site, rid):
        # The scale-up shows no token or key in any process's argv or
        # environment (ps read every 0.2 s, all over this machine).
        with SecretSampler([key_file.read_text().strip()]) as seen:
            details = site.create(rid)
            lab.wait_for(f"the slot of {rid}", lambda: slot_advertised(rid), timeout=120)
        assert seen.samples > 0
        assert seen.found == [], seen.found
        htcondor2 = client()
        ads = htcondor2.Collector().query(
            htcondor2.AdTypes.Startd,
            constraint=f'TideResourceId == "{rid}"',
            projection=["Name", "AuthenticatedIdentity", "AuthenticationMethod"],
        )
        assert [(ad["AuthenticatedIdentity"], ad["AuthenticationMethod"]) for ad in ads] == [
            (f"tide-worker-{rid}@{lab.POOL_DOMAIN}", "IDTOKENS")
        ], [dict(ad) for ad in ads]
        assert_no_token_found(lab.run_job(CREDENTIAL_SEARCH, on=rid))
        site.destroy(rid, details)
        lab.wait_for(f"the slot of {rid} to leave", lambda: not slot_advertised(rid), timeout=120)
