"""A hung cloud does not delay an evacuation: one `tide run` with two sites,
the lab's Slurm cluster as a backfill site (over SSH, as
test_site_slurm.py configures it) and an OpenStack site against the FAKE
cloud of tests/doubles whose create call hangs (`hang_create_s`, 60 s: the
SDK's own timeout, tide.sites.openstack.adapter.API_TIMEOUT_S, runs out first).

Grid jobs keep a pilot on every Slurm node, another grid job makes the
daemon create a server at the cloud, and while that call hangs owners
submit jobs to a partition that does not preempt (only Tide gives nodes
back). The owners' jobs must start within the bound of the other
evacuation tests (60 s), and before the hung call has even returned: each
site runs on its own lane (tide.runner), so the cloud's call is nothing to
the Slurm site. The cloud's servers run nothing (InertHypervisor): only its
API matters here.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import lab, slurm_lab
from tests.doubles.fake_openstack import FakeOpenStack, InertHypervisor
from tests.integration.test_controller import Daemon, _secret, _submit
from tests.integration.test_site_slurm import (
    NODES,
    OWNER_GRACE_S,
    _all_running,
    _cancel_all,
    _grid_jobs,
    _jobs,
    _owner_job,
)

HANG_S = 60.0
API_TIMEOUT_S = 30.0  # tide.sites.openstack.adapter.API_TIMEOUT_S: the call returns by then
OWNER_START_BOUND_S = 60  # the other evacuation tests' bound (test_site_slurm.py)
OWNERS = 2
CLOUD = "fake"


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    slurm_lab.slurm_up()
    _cancel_all()
    yield
    _cancel_all()


def cloud_site(tmp: Path, cloud: FakeOpenStack, name: str, boots: int = 1) -> str:
    """The YAML `sites` mapping of one OpenStack site on the fake cloud, with
    at most `boots` servers: a create past its deadline is a boot in flight
    (until its listing grace runs out), so with demand for `boots` servers
    the daemon calls create again and again, and its lane is nearly always
    waiting on the hung cloud."""
    p = cloud.project
    config = {
        "kind": "openstack",
        "cloud": CLOUD,
        "image": p.images[0].name,
        "flavor": p.flavors[0].name,
        "network": p.networks[0].name,
        "key_name": p.keypairs[0].name,
        "security_groups": [p.security_groups[1].name],
        "worker_token_file": str(_secret(tmp, "worker.token")),
        "shape": {"cpus": 2, "memory_mb": 1024, "disk_mb": 2048},
        "limits": {
            "max_resources": boots,
            "max_booting": boots,
            "backoff_base_s": 1,
            "backoff_max_s": 2,
        },
    }
    text: str = yaml.safe_dump({name: config}, sort_keys=False)
    return text


def two_site_daemon(tmp: Path, cloud: FakeOpenStack, hpc: str, cloud_name: str) -> Daemon:
    """`tide run` (not started) with the Slurm backfill site `hpc`, as
    test_site_slurm.py sets it up, and the cloud site `cloud_name`."""
    owner = f"test-{uuid.uuid4().hex[:6]}"
    backfill = slurm_lab.backfill_site(
        tmp,
        hpc,
        {"worker_token_file": str(_secret(tmp, "worker.token"))},
        settings={
            "attributes": {"TideSiteKind": "slurm"},
            "owner_partitions": [slurm_lab.OWNER_PARTITION, slurm_lab.NOPREEMPT_PARTITION],
            "owner_grace_s": OWNER_GRACE_S,
            "walltime": "01:00:00",
            "idle_exit_s": 300,
        },
        limits={"idle_timeout_s": 30, "owner_quiet_s": 5},
    )
    config = lab.controller_config(
        tmp,
        token=_secret(tmp, "controller.token"),
        owner=owner,
        sites=backfill + cloud_site(tmp, cloud, cloud_name),
    )
    return Daemon(config, owner, hpc, tmp / "tide.log", env=cloud_env(tmp, cloud))


def cloud_env(tmp: Path, cloud: FakeOpenStack) -> dict[str, str]:
    """This environment, naming a clouds.yaml (0600, in `tmp`) whose cloud
    CLOUD is the fake, and no other OS_* setting."""
    clouds = tmp / "clouds.yaml"
    clouds.write_text(yaml.safe_dump(cloud.clouds_yaml(CLOUD)))
    clouds.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["OS_CLIENT_CONFIG_FILE"] = str(clouds)
    return env


def test_a_hung_cloud_does_not_delay_an_evacuation(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    hpc, cloud_name = f"hpc{tag}", f"os{tag}"
    with FakeOpenStack(InertHypervisor()) as cloud:
        cloud.nova.hang_create_s = HANG_S
        d = two_site_daemon(tmp_path, cloud, hpc, cloud_name)
        d.start()
        stop_s = 0.0
        try:
            grid = _grid_jobs(hpc, NODES, seconds=600)
            _all_running(grid)  # a pilot on every node, each running a grid job
            _submit(cloud_name, 600, 1, "request_disk = 10MB", "+TideSlurmTest = true")
            lab.wait_for("a create hung at the cloud", lambda: cloud.nova.creates_held > 0, 60, 0.2)
            hung_at = cloud.nova.hung_creates[-1]
            asked = time.monotonic()
            owners = [_owner_job(60, slurm_lab.NOPREEMPT_PARTITION) for _ in range(OWNERS)]
            for job in owners:
                slurm_lab.wait_for_state(job, {"RUNNING"}, timeout=OWNER_START_BOUND_S)
            running = time.monotonic()
            print(
                f"\n[hung site] owners running {running - asked:.1f} s after sbatch, "
                f"{running - hung_at:.1f} s into the hung create",
                flush=True,
            )
            # Given back while the daemon's call to the cloud was still waiting.
            assert running - hung_at < API_TIMEOUT_S, d.log.read_text()[-4000:]
            assert cloud.nova.creates_held > 0
            # Every evacuated grid job is back in its schedd (idle, or running
            # again): vacated, none lost. How many nodes are given back is
            # test_site_slurm's test_tide_evacuates_exactly_what_owners_lack_*;
            # here a third pilot was once given back in a burst where a vacated
            # node went straight to an owner (see the note), so this
            # test pins only what it is about: the owners' start time.
            lab.wait_for(
                "the evacuated grid jobs back in their schedd",
                lambda: (
                    len(_jobs(grid)) == NODES
                    and sum(1 for _s, starts in _jobs(grid) if starts >= 1) >= OWNERS
                ),
                60,
            )
        finally:
            if d.proc is not None and d.proc.poll() is None:
                began = time.monotonic()
                d.stop()
                stop_s = time.monotonic() - began
                print(f"[hung site] the daemon took {stop_s:.1f} s to stop on SIGTERM", flush=True)
            _cancel_all()
    text = d.log.read_text()
    assert d.code == 0, text[-3000:]
    assert (tmp_path / "worker.token").read_text().strip() not in text
