"""Figures of the provider recipe, written to benchmarks/results/recipe.json.

provider_converge_s    provider.yml on fresh lab hosts (both workers and the squid
                       hosts made anew: no engine, no project); the images
                       are already built and saved as archives, so the run
                       installs the engine from the host's package cache,
                       loads the images and starts every service healthy
provider_reconverge_s  the second run of provider.yml right after, which
                       changes nothing
autoheal_restart_s     from the worker's health turning unhealthy (its startd
                       turned off) to autoheal's restart of it, from the
                       engine's own event times; autoheal is restarted
                       before each run, so every run measures a first
                       restart and not the crash-loop backoff

Each metric holds its raw `runs` and their `median`. Run with
`python -m benchmarks.recipe` after `make lab` (the central manager is
converged first).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests import lab

from benchmarks import report

RESULTS = Path(__file__).resolve().parent / "results" / "recipe.json"
PROVIDER_HOSTS = (lab.WORKER_HOST, lab.CVMFSEXEC_WORKER_HOST, lab.SQUID_HOST)


def _timed_playbook(name: str) -> float:
    start = time.monotonic()
    result = lab.playbook(name)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise RuntimeError(f"{name}.yml failed:\n{result.output[-4000:]}")
    return elapsed


def fresh_provider_hosts() -> None:
    for host in PROVIDER_HOSTS:
        lab.run(["docker", "rm", "-f", "-v", host])
        lab.run(["docker", "volume", "rm", f"{host}-docker"], check=False)
    lab.lab_up()


def _events(since: str) -> list[dict[str, Any]]:
    out = lab.on_host(
        lab.WORKER_HOST,
        "docker",
        "events",
        "--since",
        since,
        "--until",
        str(int(time.time()) + 1),
        "--filter",
        f"container={lab.WORKER_CONTAINER}",
        "--format",
        "{{json .}}",
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def measure_autoheal_restart() -> float:
    lab.on_host(lab.WORKER_HOST, "docker", "restart", lab.AUTOHEAL_CONTAINER)
    lab.wait_for(
        "a healthy worker",
        lambda: lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)["health"] == "healthy",
        timeout=180,
        interval=0.5,
    )
    since = str(int(time.time()))
    before = lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)["started"]
    lab.in_container(lab.WORKER_HOST, lab.WORKER_CONTAINER, "condor_off", "-daemon", "startd")
    lab.wait_for(
        "autoheal to restart the worker",
        lambda: lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)["started"] != before,
        timeout=180,
        interval=0.5,
    )
    events = _events(since)
    unhealthy = [int(e["timeNano"]) for e in events if e["status"] == "health_status: unhealthy"]
    restarted = [int(e["timeNano"]) for e in events if e["status"] == "start"]
    if not unhealthy or not restarted:
        raise RuntimeError(f"missing events: {[e['status'] for e in events]}")
    return (min(t for t in restarted if t > unhealthy[0]) - unhealthy[0]) / 1e9


def main() -> None:
    args = report.arguments(__doc__.splitlines()[0], RESULTS)

    print("[bench] converging the central manager", flush=True)
    result = lab.playbook("central_manager")
    if result.returncode != 0:
        raise RuntimeError(result.output[-4000:])

    converge: list[float] = []
    reconverge: list[float] = []
    for i in range(args.runs):
        fresh_provider_hosts()
        converge.append(_timed_playbook("provider"))
        reconverge.append(_timed_playbook("provider"))
        print(
            f"[bench] run {i + 1}: provider_converge_s {converge[-1]:.1f}, "
            f"provider_reconverge_s {reconverge[-1]:.1f}",
            flush=True,
        )
    restart = report.repeat("autoheal_restart_s", args.runs, measure_autoheal_restart)

    report.write(
        args.output,
        {
            "provider_converge_s": converge,
            "provider_reconverge_s": reconverge,
            "autoheal_restart_s": restart,
        },
    )


if __name__ == "__main__":
    main()
