"""A worker the Docker site starts on this machine's Docker engine joins the
lab pool with the lab's worker token, advertises its site, and leaves the
collector when the site destroys it."""

from __future__ import annotations

import contextlib
from uuid import uuid4

import docker
import docker.errors

from tests import lab
from tests.pool import client, slot_advertised
from tide.config import DockerSiteConfig
from tide.sites.base import OWNER_TAG, PoolEndpoint
from tide.sites.docker.adapter import DockerSite

SITE = "itest"
# Clear of the lab's 29618-29680 and of the unit tests' 29900-29902.
FIRST_PORT, LAST_PORT = 29700, 29709


def test_a_docker_site_worker_joins_the_lab_pool_and_leaves_it() -> None:
    engine = docker.from_env()
    owner = f"test-{uuid4().hex[:8]}"
    rid = f"tide-{SITE}-{uuid4().hex[:8]}"
    token_file = lab.STATE / "secrets" / "worker.token"
    config = DockerSiteConfig.model_validate(
        {
            "kind": "docker",
            "shape": {"cpus": 1, "memory_mb": 512, "disk_mb": 1024},
            "worker_token_file": str(token_file),
            "attributes": {"TideSiteKind": "docker"},
            "port_range_start": FIRST_PORT,
            "port_range_end": LAST_PORT,
            "bind_address": "127.0.0.1",
        }
    )
    site = DockerSite(
        SITE,
        config,
        client=engine,
        owner=owner,
        pool=PoolEndpoint(collector=lab.COLLECTOR, pool_domain=lab.POOL_DOMAIN),
        worker_token_file=token_file,
    )
    try:
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

        site.destroy(rid, details)
        assert site.list_owned() == []
        lab.wait_for(f"the slot of {rid} to leave", lambda: not slot_advertised(rid), timeout=120)
    finally:
        for container in engine.containers.list(
            all=True, filters={"label": f"{OWNER_TAG}={owner}"}
        ):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(v=True, force=True)
        engine.close()
