"""Autoheal on a provider host restarts the worker when it turns unhealthy:
here its startd is turned off, so its slot leaves the pool and its health
check fails, as when a daemon dies for good."""

from __future__ import annotations

from tests import lab
from tests.pool import slot_advertised


def test_autoheal_runs_on_provider_hosts() -> None:
    for host in (lab.WORKER_HOST, lab.SQUID_HOST):
        state = lab.on_host(
            host, "docker", "inspect", "-f", "{{.State.Status}}", lab.AUTOHEAL_CONTAINER
        )
        assert state.stdout.strip() == "running"


def test_unhealthy_worker_is_restarted_and_rejoins() -> None:
    before = lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)
    assert before["health"] == "healthy"
    lab.in_container(lab.WORKER_HOST, lab.WORKER_CONTAINER, "condor_off", "-daemon", "startd")
    lab.wait_for("the slot to leave the pool", lambda: not slot_advertised(), timeout=60)

    def restarted() -> bool:
        return (
            lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)["started"]
            != before["started"]
        )

    lab.wait_for("autoheal to restart the worker", restarted, timeout=180)
    lab.wait_for("the restarted worker's slot to rejoin the pool", slot_advertised, timeout=180)
    lab.wait_for(
        "the restarted worker to be healthy",
        lambda: lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)["health"] == "healthy",
        timeout=180,
    )
    logs = lab.on_host(lab.WORKER_HOST, "docker", "logs", lab.AUTOHEAL_CONTAINER)
    restarts = [
        line
        for line in (logs.stdout + logs.stderr).splitlines()
        if "what=restart" in line and lab.WORKER_CONTAINER in line
    ]
    assert restarts, logs.stdout[-3000:] + logs.stderr[-3000:]
