"""The controller daemon, for real: `tide run` with a Docker site on this
machine's engine, against the lab pool. Idle jobs that only a site worker
can run make it create workers at once; their slots register, the jobs
complete on them; once idle for the configured time the workers are
drained and removed; SIGTERM stops the daemon cleanly."""

from __future__ import annotations

import signal
import subprocess
import textwrap
import uuid
from pathlib import Path

import docker

from tests import lab

IDLE_TIMEOUT_S = 15


def _config(tmp: Path, token: Path, owner: str) -> Path:
    config = tmp / "tide.yml"
    config.write_text(
        textwrap.dedent(
            f"""\
            pool:
              collector: {lab.COLLECTOR}
              domain: {lab.POOL_DOMAIN}
              token_file: {token}
            loop:
              owner: {owner}
              interval_s: 1
              state_file: {tmp}/state/state.sqlite3
            metrics:
              port: 0
            sites:
              ctl:
                kind: docker
                shape: {{cpus: 1, memory_mb: 512, disk_mb: 1024}}
                attributes: {{SiteName: LAB, TideSiteKind: docker}}
                worker_token_file: {token}
                port_range_start: 29710
                port_range_end: 29719
                bind_address: 127.0.0.1
                limits: {{max_resources: 3, max_booting: 3, idle_timeout_s: {IDLE_TIMEOUT_S}}}
            """
        )
    )
    return config


def _owned(owner: str) -> list[str]:
    client = docker.from_env()
    containers = client.containers.list(all=True, filters={"label": f"tide-owner={owner}"})
    return [c.name or "" for c in containers]


def test_daemon_scales_a_docker_site_up_for_jobs_and_back_down(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text((lab.STATE / "secrets" / "worker.token").read_text())
    token.chmod(0o600)
    owner = f"test-{uuid.uuid4().hex[:8]}"
    log = (tmp_path / "tide.log").open("w")
    daemon = subprocess.Popen(
        [str(lab.VENV_BIN / "tide"), "run", "--config", str(_config(tmp_path, token, owner))],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        submit = (
            "cd $(mktemp -d) && printf '%s\\n' 'executable = /bin/sleep' 'arguments = 3' "
            "'request_cpus = 1' 'request_memory = 100MB' "
            "'requirements = (TARGET.TideSite == \"ctl\")' 'queue 2' > j.sub "
            "&& condor_submit -terse j.sub | cut -d. -f1"
        )
        cluster = lab.in_container(
            lab.CM_HOST, lab.CM_CONTAINER, "bash", "-c", submit, user="physicist"
        ).stdout.strip()

        def hosts() -> list[str]:
            return lab.in_container(
                lab.CM_HOST, lab.CM_CONTAINER, "condor_history", cluster, "-af", "LastRemoteHost"
            ).stdout.split()

        lab.wait_for("the jobs to complete on new site workers", lambda: len(hosts()) == 2, 240)
        assert all(h.split("@")[1].startswith("tide-ctl-") for h in hosts()), hosts()
        lab.wait_for(
            "the idle workers to be drained and removed",
            lambda: not _owned(owner),
            timeout=IDLE_TIMEOUT_S + 120,
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        log.close()
        for name in _owned(owner):
            docker.from_env().containers.get(name).remove(force=True, v=True)
    text = (tmp_path / "tide.log").read_text()
    assert code == 0, text[-3000:]
    assert token.read_text().strip() not in text  # the token never reaches the log
    status = subprocess.run(
        [str(lab.VENV_BIN / "tide"), "status", "--config", str(tmp_path / "tide.yml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Every resource it made is gone: none left in any live state.
    assert status.splitlines()[1].split() == ["ctl", "0", "0", "0", "0", "0", "0"], status
