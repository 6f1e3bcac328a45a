"""CVMFS on the lab's workers, through CONTRACT DOUBLES: no CVMFS client can
be reached from these machines, so tide-lab-worker-1 runs tide/cvmfs-double
(the CVMFS service container's contract: environment, /dev/fuse, SYS_ADMIN,
/cvmfs shared, a health check per repository; each repository an empty
tmpfs) and tide-lab-worker-2 the cvmfsexec double in tests/doubles. What is
real: the role, the host's shared /cvmfs, the rslave propagation into the
worker, the worker's job wrapper, autoheal. No real CVMFS mount is tested."""

from __future__ import annotations

import json

import pytest

from tests import lab

MARKER = ".tide-cvmfs-double"
PROXY = f"http://127.0.0.1:{lab.SQUID_PORT}"


def _worker_sees_repositories() -> bool:
    listing = lab.in_container(
        lab.WORKER_HOST,
        lab.WORKER_CONTAINER,
        "sh",
        "-c",
        " && ".join(f"cat /cvmfs/{repo}/{MARKER}" for repo in lab.CVMFS_REPOSITORIES),
        check=False,
    )
    return listing.returncode == 0


def test_cvmfs_container_follows_the_service_container_contract() -> None:
    info = json.loads(
        lab.on_host(lab.WORKER_HOST, "docker", "inspect", lab.CVMFS_CONTAINER).stdout
    )[0]
    env = dict(item.split("=", 1) for item in info["Config"]["Env"])
    assert env["CVMFS_REPOSITORIES"] == ",".join(lab.CVMFS_REPOSITORIES)
    assert env["CVMFS_HTTP_PROXY"] == PROXY  # the site squid
    assert env["CVMFS_QUOTA_LIMIT"] == "1000"
    assert "SYS_ADMIN" in info["HostConfig"]["CapAdd"]
    assert [d["PathOnHost"] for d in info["HostConfig"]["Devices"]] == ["/dev/fuse"]
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/cvmfs"]["Propagation"] == "shared"
    assert mounts["/var/lib/cvmfs"]["Source"] == "/var/lib/cvmfs"
    assert info["State"]["Health"]["Status"] == "healthy"


def test_host_cvmfs_is_a_shared_mount() -> None:
    propagation = lab.on_host(lab.WORKER_HOST, "findmnt", "-no", "PROPAGATION", "/cvmfs").stdout
    assert "shared" in propagation


def test_repositories_are_visible_in_the_worker_through_rslave() -> None:
    info = json.loads(
        lab.on_host(lab.WORKER_HOST, "docker", "inspect", lab.WORKER_CONTAINER).stdout
    )
    mounts = {m["Destination"]: m for m in info[0]["Mounts"]}
    assert mounts["/cvmfs"]["Propagation"] == "rslave"
    for repo in lab.CVMFS_REPOSITORIES:
        fstype = lab.in_container(
            lab.WORKER_HOST,
            lab.WORKER_CONTAINER,
            "findmnt",
            "-no",
            "FSTYPE,OPTIONS",
            f"/cvmfs/{repo}",
        ).stdout
        assert fstype.startswith("tmpfs ro"), fstype  # the double's read-only mount
    assert _worker_sees_repositories()


def test_a_job_reads_cvmfs_on_the_worker() -> None:
    repo = lab.CVMFS_REPOSITORIES[0]
    job = lab.run_job(f"cat /cvmfs/{repo}/{MARKER}", on=lab.WORKER_HOST)
    assert job.exit_code == "0"
    assert f"not repository {repo}" in job.output
    assert f"proxy: {PROXY}" in job.output


def test_slot_advertises_its_repositories() -> None:
    ads = lab.in_container(
        lab.CM_HOST,
        lab.CM_CONTAINER,
        "condor_status",
        "-af",
        "TideResourceId",
        "TideCvmfsRepositories",
    ).stdout.splitlines()
    expected = ",".join(lab.CVMFS_REPOSITORIES)
    for host in (lab.WORKER_HOST, lab.CVMFSEXEC_WORKER_HOST):
        assert f"{host} {expected}" in ads, ads


def test_cvmfsexec_worker_runs_each_job_inside_cvmfsexec() -> None:
    job = lab.run_job('echo "$TIDE_CVMFSEXEC_DOUBLE"', on=lab.CVMFSEXEC_WORKER_HOST)
    assert job.exit_code == "0"
    repos = " ".join(lab.CVMFS_REPOSITORIES)
    assert job.output.strip() == f"repositories={repos} proxy={PROXY}"


def test_cvmfsexec_default_local_is_configured() -> None:
    conf = lab.on_host(
        lab.CVMFSEXEC_WORKER_HOST, "cat", "/opt/tide/cvmfsexec/dist/etc/cvmfs/default.local"
    ).stdout
    assert f'CVMFS_HTTP_PROXY="{PROXY}"' in conf
    assert f'CVMFS_REPOSITORIES="{",".join(lab.CVMFS_REPOSITORIES)}"' in conf
    assert "CVMFS_QUOTA_LIMIT=1000" in conf
    assert 'CVMFS_CACHE_BASE="/var/lib/cvmfs"' in conf


def test_worker_is_restarted_after_cvmfs_recovers() -> None:
    """A repository vanishes (as when cvmfs2 dies): the CVMFS container turns
    unhealthy, autoheal restarts it, and once it is healthy again autoheal
    restarts the worker that depends on it; the worker sees CVMFS again."""
    cvmfs_before = lab.container_state(lab.WORKER_HOST, lab.CVMFS_CONTAINER)
    worker_before = lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)
    repo = lab.CVMFS_REPOSITORIES[0]
    lab.in_container(lab.WORKER_HOST, lab.CVMFS_CONTAINER, "umount", "-l", f"/cvmfs/{repo}")
    lab.wait_for(
        "autoheal to restart the CVMFS container",
        lambda: (
            lab.container_state(lab.WORKER_HOST, lab.CVMFS_CONTAINER)["started"]
            != cvmfs_before["started"]
        ),
        timeout=180,
    )
    lab.wait_for(
        "autoheal to restart the worker after CVMFS recovered",
        lambda: (
            lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)["started"]
            != worker_before["started"]
        ),
        timeout=180,
    )
    lab.wait_for("the worker to see CVMFS again", _worker_sees_repositories, timeout=60)
    lab.wait_for(
        "the restarted worker to be healthy",
        lambda: lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)["health"] == "healthy",
        timeout=180,
    )
    logs = lab.on_host(lab.WORKER_HOST, "docker", "logs", lab.AUTOHEAL_CONTAINER)
    text = logs.stdout + logs.stderr
    assert any(
        "what=restart" in line and lab.WORKER_CONTAINER in line and lab.CVMFS_CONTAINER in line
        for line in text.splitlines()
    ), text[-3000:]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "CVMFS_REPOSITORIES is empty"),
        ({"CVMFS_REPOSITORIES": "sft.cern.ch"}, "CVMFS_HTTP_PROXY is empty"),
        (
            {"CVMFS_REPOSITORIES": "sft.cern.ch", "CVMFS_HTTP_PROXY": "DIRECT"},
            "/dev/fuse is missing",
        ),
    ],
)
def test_cvmfs_double_refuses_what_the_real_container_would(
    env: dict[str, str], named: str
) -> None:
    args = [f"-e{key}={value}" for key, value in env.items()]
    proc = lab.run(
        ["docker", "run", "--rm", "--network", "none", *args, "tide/cvmfs-double:0.1.0"],
        check=False,
    )
    assert proc.returncode == 64, proc.stdout + proc.stderr
    assert named in proc.stderr
