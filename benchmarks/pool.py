"""Baseline figures of the lab pool, written to benchmarks/results/pool.json.

worker_register_s  `docker compose up` of the worker -> its slot in the collector
job_turnaround_s   job submit -> job complete, on an idle slot

Each metric holds its raw `runs` and their `median`. Run with `make bench`
(which starts the lab); the pool is converged first. Timing is measured
here, never asserted in tests.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests import lab
from tests.pool import client, slot_advertised

from benchmarks import report

RESULTS = Path(__file__).resolve().parent / "results" / "pool.json"
WORKER_DIR = "/opt/tide/condor_worker"
POLL_S = 0.1


def measure_worker_register() -> float:
    compose = ["docker", "compose", "--project-directory", WORKER_DIR]
    lab.on_host(lab.WORKER_HOST, *compose, "down")
    lab.wait_for("the slot to leave the collector", lambda: not slot_advertised(), 120, POLL_S)
    start = time.monotonic()
    lab.on_host(lab.WORKER_HOST, *compose, "up", "-d")
    end = lab.wait_for("the slot to register", slot_advertised, 300, POLL_S)
    return end - start


def measure_job_turnaround(schedd: Any) -> float:
    lab.wait_for("an idle slot", slot_advertised, 300, POLL_S)
    submit = (
        "mkdir -p bench && cd bench && "
        "printf 'executable = /bin/true\\nrequest_cpus = 1\\nrequest_memory = 32MB\\n"
        # The provider hosts' workers, not the lab controller's (they advertise TideSite).
        "requirements = (TARGET.TideSite =?= undefined)\\n"
        "log = bench.log\\nqueue\\n' > b.sub && condor_submit -terse b.sub | cut -d. -f1"
    )
    start = time.monotonic()
    cluster = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "bash", "-c", submit, user="physicist"
    ).stdout.strip()

    def gone() -> bool:
        return len(schedd.query(constraint=f"ClusterId == {cluster}", projection=["ProcId"])) == 0

    end = lab.wait_for(f"job {cluster} to complete", gone, 300, POLL_S)
    exit_code = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_history", cluster, "-af", "ExitCode"
    ).stdout.strip()
    if exit_code != "0":
        raise RuntimeError(f"benchmark job {cluster} exited {exit_code!r}")
    return end - start


def main() -> None:
    args = report.arguments(__doc__.splitlines()[0], RESULTS)

    print("[bench] converging the lab pool", flush=True)
    lab.converge()
    htcondor2 = client()
    schedd = htcondor2.Schedd(
        htcondor2.Collector().locate(htcondor2.DaemonTypes.Schedd, lab.CM_HOST)
    )

    register = report.repeat("worker_register_s", args.runs, measure_worker_register)
    turnaround = report.repeat(
        "job_turnaround_s", args.runs, lambda: measure_job_turnaround(schedd)
    )

    report.write(args.output, {"worker_register_s": register, "job_turnaround_s": turnaround})


if __name__ == "__main__":
    main()
