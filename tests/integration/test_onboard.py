"""`tide onboard` on a fresh lab host (systemd, no Docker yet) against the
lab's central manager, through the bootstrap script as an admin runs it:

- a wrong token, an unreachable pool, a failed prerequisite: a clear
  message, and the host as clean as before;
- onboard: the slot registers and a job runs on it (--smoke-test, with a
  token of the lab's submitter); a second run changes nothing; a run with
  CVMFS and a squid added applies them (jobs read the repository);
- --export writes the recipe as a compose bundle, which runs by hand;
- uninstall: a clean host, and the slot gone from the pool.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests import lab, onboard_lab
from tests.pool import client
from tests.sampler import SecretSampler

HOST = onboard_lab.HOST


@pytest.fixture(scope="module")
def wheel() -> Iterator[str]:
    onboard_lab.fresh_host()
    token = (lab.STATE / "secrets" / "worker.token").read_text().strip()
    path = onboard_lab.stage_kit(token)
    head, payload, signature = token.split(".")
    onboard_lab.set_token(
        ".".join([head, payload, ("A" if signature[0] != "A" else "B") + signature[1:]]),
        "forged.token",
    )
    # For --smoke-test: a token of the lab's submitter, who may submit.
    submitter = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_token_create",
        "-identity", f"physicist@{lab.POOL_DOMAIN}", "-authz", "READ", "-authz", "WRITE",
        "-lifetime", "3600",
    ).stdout.strip()  # fmt: skip
    onboard_lab.set_token(submitter, "submit.token")
    # The host's own token, as the central_manager role issues one to each
    # of central_manager_worker_hosts (condor_token_create with the workers' key).
    onboard_lab.set_token(_host_token(), "host.token")
    yield path
    onboard_lab.onboard(path, "--uninstall")
    onboard_lab.remove_host()


def _host_token() -> str:
    return lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_token_create",
        "-key", "tide-workers", "-identity", f"tide-worker-{HOST}@{lab.POOL_DOMAIN}",
        "-authz", "ADVERTISE_STARTD", "-authz", "ADVERTISE_MASTER", "-lifetime", "3600",
    ).stdout.strip()  # fmt: skip


def _slots(name: str = HOST) -> list[str]:
    htcondor2 = client()
    ads = htcondor2.Collector(lab.COLLECTOR).query(
        htcondor2.AdTypes.Startd, constraint=f'TideResourceId == "{name}"', projection=["Name"]
    )
    return [str(ad["Name"]) for ad in ads]


def test_a_wrong_token_stops_before_anything_changes(wheel: str) -> None:
    done = onboard_lab.onboard(wheel, kit_file="forged.token")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused the token" in done.stdout, done.stdout + done.stderr
    assert "nothing was changed" in done.stdout
    assert onboard_lab.host_is_clean() == []


def test_an_unreachable_pool_and_failed_checks_stop_before_anything_changes(wheel: str) -> None:
    done = onboard_lab.onboard(wheel, "--collector", "127.0.0.1:1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot be reached" in done.stdout, done.stdout
    done = onboard_lab.onboard(wheel, "--disk-per-core-gb", "100000")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "disk:" in done.stdout, done.stdout
    assert "Fix:" in done.stdout, done.stdout
    assert onboard_lab.host_is_clean() == []
    # A recipe onboarding did not make (provider.yml's, or by hand) is not taken over.
    lab.on_host(HOST, "mkdir", "-p", "/opt/tide/condor_worker")
    try:
        done = onboard_lab.onboard(wheel)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "tide onboard did not make them" in done.stdout, done.stdout
    finally:
        lab.on_host(HOST, "rmdir", "/opt/tide/condor_worker")
    assert onboard_lab.host_is_clean() == []


def test_onboard_joins_the_pool_runs_a_job_and_a_second_run_changes_nothing(wheel: str) -> None:
    smoke = ("--smoke-test", "--submit-token-file", f"{onboard_lab.KIT}/submit.token")
    # The host joins with a token of its own (the shared one: the tests below).
    kit = onboard_lab.KIT
    token = lab.on_host(HOST, "cat", f"{kit}/host.token").stdout.strip()
    # No process shows the token (or any IDTOKEN) in its argv or environment
    # while onboarding runs: ps is read every 0.2 s, all over this machine.
    with SecretSampler([token, token.rsplit(".", 1)[1]]) as seen:
        done = onboard_lab.onboard(wheel, *smoke, kit_file="host.token")
    assert seen.samples > 0
    assert seen.found == [], seen.found
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"TideResourceId {HOST}" in done.stdout
    assert _slots(), "the slot is not in the pool"
    # The smoke test's job, as the schedd remembers it: it ran on this slot.
    (job,) = re.findall(r"smoke test: job (\d+\.\d+) ran on \S+ and exited 0", done.stdout)
    history = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_history", job, "-af", "ExitCode", "LastRemoteHost"
    ).stdout.split()
    assert history[0] == "0", history
    assert history[1].endswith(f"@{HOST}"), history
    htcondor2 = client()
    ads = htcondor2.Collector(lab.COLLECTOR).query(
        htcondor2.AdTypes.Startd,
        constraint=f'TideResourceId == "{HOST}"',
        projection=["AuthenticatedIdentity"],
    )
    assert {ad.get("AuthenticatedIdentity") for ad in ads} == {
        f"tide-worker-{HOST}@{lab.POOL_DOMAIN}"
    }
    again = onboard_lab.onboard(wheel, kit_file="host.token")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 change(s) - nothing to do" in again.stdout, again.stdout + again.stderr
    # The token never reaches the output.
    assert token not in done.stdout + done.stderr + again.stdout + again.stderr


def test_cvmfs_and_a_squid_join_a_changed_onboarding(wheel: str) -> None:
    # The same host, onboarded again with CVMFS (the lab's double of the
    # CVMFS image) through a squid of its own: the settings are applied.
    repo = lab.CVMFS_REPOSITORIES[0]
    done = onboard_lab.onboard(
        wheel, "--cvmfs-repository", repo, "--cvmfs-image", onboard_lab.CVMFS_IMAGE,
        "--squid", "--squid-port", str(onboard_lab.SQUID_PORT),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "/opt/tide/squid, /opt/tide/cvmfs, /opt/tide/condor_worker" in done.stdout
    job = lab.run_job(f"cat /cvmfs/{repo}/.tide-cvmfs-double", on=HOST)
    assert job.exit_code == "0", job
    assert f"proxy: http://127.0.0.1:{onboard_lab.SQUID_PORT}" in job.output, job


def test_an_exported_bundle_runs_by_hand(wheel: str) -> None:
    # --export on the onboarded host (its engine is there), under another
    # name and port, started by hand as its README says: its slot joins.
    name, port = f"{HOST}-export", str(onboard_lab.EXPORT_PORT)
    done = onboard_lab.onboard(wheel, "--name", name, "--port", port, "--export", "/root/bundle")
    assert done.returncode == 0, done.stdout + done.stderr
    readme = lab.on_host(HOST, "cat", "/root/bundle/README.md").stdout
    assert "docker compose --project-directory /opt/tide/condor_worker up -d --wait" in readme
    compose = ["docker", "compose", "-p", "tide-export-test", "--project-directory",
               "/root/bundle/condor_worker"]  # fmt: skip
    try:
        lab.on_host(HOST, *compose, "up", "-d", "--wait")
        lab.wait_for("the exported worker's slot", lambda: bool(_slots(name)), timeout=120)
    finally:
        lab.on_host(HOST, *compose, "down", "--volumes", check=False)
    lab.wait_for("the exported worker's slot gone", lambda: not _slots(name), timeout=120)


def test_uninstall_leaves_a_clean_host_and_the_slot_leaves(wheel: str) -> None:
    done = onboard_lab.onboard(wheel, "--uninstall")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert onboard_lab.host_is_clean() == []
    assert _slots() == []
    # The bootstrap's venv and the python3-venv it installed are gone too.
    probe = "ls /opt/tide; dpkg -l python3-venv | grep ^ii"
    left = lab.on_host(HOST, "sh", "-c", probe, check=False)
    assert left.stdout.strip() == "", left.stdout
    containers = lab.on_host(HOST, "sh", "-c", "ls /var/lib/docker/containers 2>/dev/null || true")
    assert containers.stdout.strip() == ""
