"""The lab pool does what a pool must: the worker's slot registers with what
it was configured with, jobs from an unprivileged user run to completion,
and the daemons are healthy."""

from __future__ import annotations

import json
import re
import uuid

from tests import lab
from tests.pool import client


def test_worker_slot_registers_with_configured_resources() -> None:
    htcondor2 = client()
    ads = htcondor2.Collector().query(
        htcondor2.AdTypes.Startd,
        constraint=f'TideResourceId == "{lab.WORKER_HOST}"',
        projection=[
            "Name",
            "Cpus",
            "Memory",
            "Disk",
            "SiteName",
            "TideSiteKind",
            "SlotType",
            "AuthenticatedIdentity",
        ],
    )
    assert len(ads) == 1, [dict(ad) for ad in ads]
    slot = ads[0]
    # inventories/lab/host_vars/tide-lab-worker-1.yml: 2 cpus, 2048 MiB, 4096 MiB disk
    assert slot["Name"] == f"slot1@{lab.WORKER_HOST}"
    assert slot["SlotType"] == "Partitionable"
    assert slot["Cpus"] == 2
    assert slot["Memory"] == 2048
    assert slot["Disk"] == 4096 * 1024
    assert slot["SiteName"] == "LAB"
    assert slot["TideSiteKind"] == "docker"
    # It joined with a token of this host's own, which advertises no other machine.
    assert slot["AuthenticatedIdentity"] == f"tide-worker-{lab.WORKER_HOST}@{lab.POOL_DOMAIN}"


def test_containers_are_healthy() -> None:
    assert lab.container_state(lab.CM_HOST, lab.CM_CONTAINER)["health"] == "healthy"
    assert lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)["health"] == "healthy"


def test_job_from_unprivileged_user_runs_to_completion() -> None:
    marker = uuid.uuid4().hex
    job = lab.run_job(f"echo {marker} on $(hostname) as $(id -un)", on=lab.WORKER_HOST)
    assert (job.exit_code, job.owner) == ("0", "physicist")
    # The job ran on the worker, not on the central manager, as the slot
    # user of its dynamic slot (never its submitter, never a shared nobody).
    assert re.fullmatch(rf"{marker} on {lab.WORKER_HOST} as slot1_\d+", job.output.strip())


def test_secrets_are_files_of_mode_0600_never_environment() -> None:
    for host, path in [
        (lab.CM_HOST, "/opt/tide/central_manager/secrets/pool_signing_key"),
        (lab.CM_HOST, "/opt/tide/central_manager/tokens/worker.token"),
        (lab.WORKER_HOST, "/opt/tide/condor_worker/secrets/token"),
    ]:
        assert lab.on_host(host, "stat", "-c", "%a %U", path).stdout.split() == ["600", "root"]
    for host, container, path in [
        (lab.CM_HOST, lab.CM_CONTAINER, "/etc/condor/passwords.d/POOL"),
        (lab.WORKER_HOST, lab.WORKER_CONTAINER, "/etc/condor/tokens.d/tide"),
    ]:
        mode = lab.in_container(host, container, "stat", "-c", "%a %U", path).stdout.split()
        assert mode == ["600", "root"]
    fetched = lab.STATE / "secrets" / "worker.token"
    assert fetched.stat().st_mode & 0o777 == 0o600
    token = fetched.read_text().strip()
    for host, container in [
        (lab.CM_HOST, lab.CM_CONTAINER),
        (lab.WORKER_HOST, lab.WORKER_CONTAINER),
    ]:
        env = json.loads(
            lab.on_host(host, "docker", "inspect", "-f", "{{json .Config.Env}}", container).stdout
        )
        assert not any(token in item or "eyJ" in item for item in env), env


def test_lab_leaves_the_machines_own_docker_bridge_alone() -> None:
    # An inner engine started with its bridge disabled deletes docker0 in the
    # network namespace it shares with this machine; the lab hosts must not.
    proc = lab.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "bridge",
            "--entrypoint",
            "true",
            "tide/condor:0.1.0",
        ],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
