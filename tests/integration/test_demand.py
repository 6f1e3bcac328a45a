"""The controller's demand reader against the lab pool's real schedd: idle
jobs are grouped into autoclusters with exact counts, and each is matched
against site prototypes as the negotiator would (the jobs here can run on
no lab worker, so they stay idle while the test reads them)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import lab
from tests.pool import client
from tide.htcondor.demand import PoolDemandReader, demand_from, prototype
from tide.model import Shape

SUBMIT = """executable = /bin/true
request_cpus = 3
request_memory = 900GB
+TideTest = "{tag}"
queue 5
"""
PINNED = """executable = /bin/true
request_cpus = 1
request_memory = 100MB
requirements = (TARGET.SiteName == "NOWHERE-{tag}")
+TideTest = "{tag}"
queue 2
"""


def _submit(text: str) -> str:
    script = f"cd $(mktemp -d) && printf '%s' '{text}' > j.sub && condor_submit -terse j.sub"
    out = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "bash", "-c", script, user="physicist"
    ).stdout
    return out.split(".")[0].strip()


@pytest.fixture
def idle_jobs() -> Iterator[str]:
    tag = uuid.uuid4().hex[:8]
    clusters = [_submit(SUBMIT.format(tag=tag)), _submit(PINNED.format(tag=tag))]
    yield tag
    for cluster in clusters:
        lab.in_container(lab.CM_HOST, lab.CM_CONTAINER, "condor_rm", cluster, user="physicist")


def test_idle_jobs_become_matched_demand(idle_jobs: str) -> None:
    client()  # the lab's worker token: READ on the pool
    reader = PoolDemandReader(lab.COLLECTOR)
    clusters = reader.autoclusters()
    assert reader.failed_schedds == ()
    big = [c for c in clusters if c.request_memory_mb == 900 * 1024 and c.request_cpus == 3]
    pinned = [c for c in clusters if f"NOWHERE-{idle_jobs}" in c.requirements]
    assert [c.idle_jobs for c in big] == [5]
    assert [c.idle_jobs for c in pinned] == [2]

    fat = Shape(cpus=64, memory_mb=1024 * 1024, disk_mb=100_000)
    small = Shape(cpus=4, memory_mb=8192, disk_mb=20_000)
    prototypes = {
        "fat": (fat, prototype("fat", fat, {"SiteName": "FAT"})),
        "nowhere": (small, prototype("nowhere", small, {"SiteName": f"NOWHERE-{idle_jobs}"})),
        "small": (small, prototype("small", small, {"SiteName": "SMALL"})),
    }
    demand = {d.key: d for d in demand_from(big + pinned, prototypes)}
    assert demand[f"{big[0].schedd}#{big[0].id}"].sites == ("fat",)
    # The pinned jobs fit every site's shape, but only one site is NOWHERE.
    assert demand[f"{pinned[0].schedd}#{pinned[0].id}"].sites == ("nowhere",)


def test_tide_status_shows_matched_and_unmatched_demand(idle_jobs: str, tmp_path: Path) -> None:
    token = tmp_path / "controller.token"
    token.write_text((lab.STATE / "secrets" / "controller.token").read_text())
    token.chmod(0o600)
    config = lab.controller_config(
        tmp_path,
        token=token,
        owner="status-test",
        sites=f"""\
            fat:
              kind: docker
              shape: {{cpus: 64, memory_mb: 1048576, disk_mb: 100000}}
              worker_token_file: {token}
            """,
    )
    out = lab.tide(config, "status")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] != []]
    demand = [r for r in rows if r and "#" in r[0]]
    # The 900 GB jobs fit only the fat site; the pinned ones want a SiteName
    # no site has, so they are reported unmatched, not chased.
    assert ["5", "3", str(900 * 1024)] in [r[1:4] for r in demand if r[-1] == "fat"], out
    assert ["2", "1", "100"] in [r[1:4] for r in demand if r[-1] == "(unmatched)"], out
