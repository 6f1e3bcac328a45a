"""Drive the lab's Slurm cluster (tests/bin/lab-slurm): one container of
tide/slurm-lab on this machine's network, an HPC cluster of NODES with an
`owner` partition that preempts the `backfill` one, and a login node that
the controller reaches over SSH as `tide`.

Nothing here is simulated: commands run inside the real cluster's container.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import yaml

from tests.lab import STATE, TOP, run

LAB_SLURM = TOP / "tests" / "bin" / "lab-slurm"
CONTAINER = "tide-lab-slurm"
NODES: tuple[str, ...] = tuple(f"max-{i:03d}" for i in range(1, 5))
OWNER_PARTITION = "owner"
BACKFILL_PARTITION = "backfill"
# Owners whose jobs do not preempt backfill: only Tide evacuates for them.
NOPREEMPT_PARTITION = "owner-nopreempt"
OWNER_USER = "hpcowner"
PILOT_USER = "tide"

# The lab's one port map lives in its inventory.
_PORTS = yaml.safe_load((TOP / "inventories" / "lab" / "group_vars" / "all.yml").read_text())[
    "tide_lab_ports"
]["slurm"]
SLURMCTLD_PORT = int(_PORTS["slurmctld"])
SLURMD_PORTS: dict[str, int] = {
    node: int(_PORTS["slurmd_start"]) + i for i, node in enumerate(NODES)
}
LOGIN_HOST = "127.0.0.1"
LOGIN_SSH_PORT = int(_PORTS["login_ssh"])

# What `lab-slurm up` keeps in the lab's state: the controller's key
# (authorized for tide) and the login node's host key.
SSH_DIR = STATE / "slurm"
SSH_KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
# Where a pilot finds the pool's worker token (inside the cluster).
WORKER_TOKEN = f"/home/{PILOT_USER}/.tide/worker.token"

# One pilot holds exactly one whole node (all its CPUs and memory), is not
# requeued when the owners take the node back, and its batch shell gets
# SIGTERM as soon as it is preempted (PreemptParameters=send_user_signal),
# not only when the partition's GraceTime has run out.
PILOT_SBATCH_OPTIONS: tuple[str, ...] = (
    "--nodes=1",
    "--exclusive",
    "--mem=0",
    "--no-requeue",
    "--signal=B:TERM@30",
)

# squeue's states of a job that has ended (while slurmctld still remembers it).
ENDED = frozenset(
    {"PREEMPTED", "CANCELLED", "COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
)


def backfill_site(
    tmp: Path,
    site: str,
    credential: Mapping[str, str],
    *,
    settings: Mapping[str, object],
    limits: Mapping[str, object],
) -> str:
    """The YAML `sites` mapping of one slurm_backfill site on this cluster:
    pilots of one CPU in the backfill partition, reached over SSH as the
    pilot account with a 0600 copy of the lab's key in `tmp`, at most one
    pilot per node; `credential` is the site's worker_token_file or its
    worker_signing_key_file; `settings` and `limits` add to (or override)
    these."""
    key = tmp / "slurm.key"
    key.write_bytes(SSH_KEY.read_bytes())
    key.chmod(0o600)
    config = {
        "kind": "slurm_backfill",
        "shape": {"cpus": 1, "memory_mb": 500, "disk_mb": 1024},
        **credential,
        "partition": BACKFILL_PARTITION,
        "condor_config": {"NETWORK_INTERFACE": "127.0.0.1"},
        "login": {
            "host": LOGIN_HOST,
            "port": LOGIN_SSH_PORT,
            "user": PILOT_USER,
            "key_file": str(key),
            "known_hosts_file": str(KNOWN_HOSTS),
        },
        **settings,
        "limits": {"max_resources": len(NODES), "max_booting": len(NODES), **limits},
    }
    text: str = yaml.safe_dump({site: config}, sort_keys=False)
    return text


def slurm_up() -> None:
    """Start the cluster, or leave a running healthy one alone."""
    run([str(LAB_SLURM), "up"])


def slurm_down() -> None:
    run([str(LAB_SLURM), "down"])


def slurm(*argv: str, user: str = PILOT_USER, input_text: str | None = None) -> str:
    """Run a command (a Slurm one, usually) inside the cluster as `user`, in
    that user's home; its standard output. Fails on a non-zero exit."""
    home = "/root" if user == "root" else f"/home/{user}"
    stdin = ["-i"] if input_text is not None else []
    argv_ = ["docker", "exec", *stdin, "-u", user, "-w", home, CONTAINER, *argv]
    return run(argv_, input_text=input_text, timeout=120).stdout


def sbatch(
    script: str,
    *,
    user: str = PILOT_USER,
    partition: str = BACKFILL_PARTITION,
    extra: Sequence[str] = (),
) -> str:
    """Submit a batch script (through stdin) as `user`; the job's id."""
    out = slurm(
        "sbatch", "--parsable", f"--partition={partition}", *extra, user=user, input_text=script
    )
    job_id = out.strip().split(";")[0]
    assert job_id.isdigit(), f"sbatch printed {out!r}"
    return job_id


def scancel(*job_ids: str) -> None:
    """Cancel jobs, whoever owns them (as root, Slurm's administrator)."""
    if job_ids:
        slurm("scancel", *job_ids, user="root")


def job_state(job_id: str) -> str:
    """squeue's state of a job (PENDING, RUNNING, PREEMPTED, ...); "GONE"
    once slurmctld has forgotten it (MinJobAge after it ended)."""
    proc = run(
        ["docker", "exec", CONTAINER, "squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
        check=False,
        timeout=60,
    )
    state = proc.stdout.strip()
    if proc.returncode != 0:
        assert "Invalid job id" in proc.stderr, f"squeue -j {job_id}: {proc.stderr.strip()}"
        return "GONE"
    return state or "GONE"


def job_node(job_id: str) -> str:
    """The node(s) a job runs on, as squeue names them ("" while pending)."""
    return run(
        ["docker", "exec", CONTAINER, "squeue", "-h", "-j", job_id, "-o", "%N"]
    ).stdout.strip()


def node_states(partition: str) -> dict[str, str]:
    """Every node of a partition and its sinfo state (idle, alloc, ...)."""
    out = run(["docker", "exec", CONTAINER, "sinfo", "-h", "-N", "-p", partition, "-o", "%N %t"])
    pairs = (line.split() for line in out.stdout.splitlines() if line.strip())
    return {node: state for node, state in pairs}


def wait_for_state(
    job_id: str, states: Collection[str], timeout: float = 60, interval: float = 0.2
) -> str:
    """Poll until the job is in one of `states`; the state seen."""
    deadline = time.monotonic() + timeout
    state = job_state(job_id)
    while state not in states:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id}: still {state} after {timeout:.0f}s, waiting for {sorted(states)}"
            )
        time.sleep(interval)
        state = job_state(job_id)
    return state
