"""The lab's Slurm cluster itself, before any site uses it: its nodes and
partitions, its login node over real SSH, and preemption of backfill jobs by
the owners' jobs, SIGTERM first.

The cluster may be shared with other tests (pilots of a Slurm site): these
tests touch only the jobs they submit. Its life belongs to the lab
(`lab-hosts down` removes it): the module starts it, never stops it.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

import asyncssh
import pytest

from tests import lab
from tests import slurm_lab as sl

# A job that holds its node until cancelled.
HOLD = "#!/bin/sh\nexec sleep 600\n"
# A job that notes the SIGTERM it gets in a file, then ends.
TRAP = """#!/bin/bash
trap 'echo "SIGTERM $SLURM_JOB_ID" > "$HOME/tide-test-term-$SLURM_JOB_ID"; exit 0' TERM
sleep 600 &
wait
"""
QUIET = ("--output=/dev/null", "--job-name=tide-slurm-lab-test")


@pytest.fixture(scope="module")
def cluster() -> None:
    sl.slurm_up()


@pytest.fixture
def jobs() -> Iterator[list[str]]:
    """The ids of the jobs a test submits: cancelled when it ends."""
    submitted: list[str] = []
    yield submitted
    sl.scancel(*submitted)
    files = " ".join(f"~/tide-test-term-{job}" for job in submitted)
    sl.slurm("sh", "-c", f"rm -f {files}")


def _jobs_on_nodes() -> set[str]:
    """The nodes that some job (of these tests or not) runs on."""
    out = sl.slurm("squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%N")
    nodes: set[str] = set()
    for nodelist in {line.strip() for line in out.splitlines() if line.strip()}:
        nodes.update(sl.slurm("scontrol", "show", "hostnames", nodelist).split())
    return nodes


def _partition(name: str) -> dict[str, str]:
    out = sl.slurm("scontrol", "show", "partition", "-o", name).strip()
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def _hold_every_node(
    script: str, jobs: list[str], options: Sequence[str] = sl.PILOT_SBATCH_OPTIONS
) -> dict[str, str]:
    """One backfill job per node, each holding a whole node as a pilot
    does; {job: node} once every one runs."""
    backfill = [
        sl.sbatch(script, partition=sl.BACKFILL_PARTITION, extra=[*options, *QUIET])
        for _ in sl.NODES
    ]
    jobs.extend(backfill)
    for job in backfill:
        sl.wait_for_state(job, {"RUNNING"}, timeout=180)
    where = {job: sl.job_node(job) for job in backfill}
    assert sorted(where.values()) == list(sl.NODES), where
    return where


def _owner_takes_a_node(jobs: list[str]) -> str:
    owner = sl.sbatch(HOLD, user=sl.OWNER_USER, partition=sl.OWNER_PARTITION, extra=QUIET)
    jobs.append(owner)
    sl.wait_for_state(owner, {"RUNNING"}, timeout=60)
    return owner


def test_four_nodes_in_both_partitions(cluster: None) -> None:
    busy = _jobs_on_nodes()
    for partition in (sl.OWNER_PARTITION, sl.BACKFILL_PARTITION):
        states = sl.node_states(partition)
        assert sorted(states) == list(sl.NODES), states
        for node, state in states.items():
            # Idle, unless a job (maybe another test's pilot) runs there.
            expected = {"alloc", "mix", "comp", "idle"} if node in busy else {"idle"}
            assert state in expected, f"{partition}: {node} is {state}"

    owner, backfill = _partition(sl.OWNER_PARTITION), _partition(sl.BACKFILL_PARTITION)
    assert owner["Default"] == "YES"
    assert int(owner["PriorityTier"]) > int(backfill["PriorityTier"])
    assert owner["PreemptMode"] == "OFF"
    assert backfill["PreemptMode"] == "CANCEL"
    assert int(backfill["GraceTime"]) > 0
    assert owner["OverSubscribe"] == backfill["OverSubscribe"] == "EXCLUSIVE"


async def _ssh(command: str, *, username: str = sl.PILOT_USER, known_hosts: Path) -> str:
    async with asyncssh.connect(
        sl.LOGIN_HOST,
        port=sl.LOGIN_SSH_PORT,
        username=username,
        client_keys=[str(sl.SSH_KEY)],
        known_hosts=str(known_hosts),
        config=None,
        agent_path=None,
        connect_timeout=20,
    ) as conn:
        result = await conn.run(command, check=True, timeout=30)
    return str(result.stdout)


def test_login_node_over_ssh(cluster: None, tmp_path: Path) -> None:
    assert sl.SSH_DIR.stat().st_mode & 0o777 == 0o700
    assert sl.SSH_KEY.stat().st_mode & 0o777 == 0o600

    out = asyncio.run(_ssh("id -un; sinfo -h -o '%P %D'", known_hosts=sl.KNOWN_HOSTS))
    user, *partitions = out.splitlines()
    assert user == sl.PILOT_USER
    assert sorted(partitions) == sorted(
        [
            f"{sl.OWNER_PARTITION}* {len(sl.NODES)}",
            f"{sl.BACKFILL_PARTITION} {len(sl.NODES)}",
            f"{sl.NOPREEMPT_PARTITION} {len(sl.NODES)}",
        ]
    )

    # The key opens no other account, and a client that does not know the
    # login node's host key refuses it.
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(_ssh("true", username="root", known_hosts=sl.KNOWN_HOSTS))
    stranger = tmp_path / "known_hosts"
    stranger.write_text("")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(_ssh("true", known_hosts=stranger))


def test_worker_token_for_the_pilots(cluster: None) -> None:
    token = lab.STATE / "secrets" / "worker.token"
    if not token.is_file():
        pytest.skip(f"no {token}: the lab's central manager has not written it")
    sl.slurm_up()  # copies the token present now
    token_dir = str(Path(sl.WORKER_TOKEN).parent)
    mode = sl.slurm("stat", "-c", "%a %U", token_dir, sl.WORKER_TOKEN).split("\n")
    assert mode[:2] == [f"700 {sl.PILOT_USER}", f"600 {sl.PILOT_USER}"]
    # The same bytes, compared inside the cluster: the token never appears
    # on a command line or in a message.
    sl.slurm("cmp", "-s", "-", sl.WORKER_TOKEN, input_text=token.read_text())


def test_owner_job_preempts_a_backfill_job(cluster: None, jobs: list[str]) -> None:
    where = _hold_every_node(HOLD, jobs)
    owner = _owner_takes_a_node(jobs)

    states = {job: sl.job_state(job) for job in where}
    preempted = [job for job, state in states.items() if state != "RUNNING"]
    assert len(preempted) == 1, states
    assert states[preempted[0]] in {"PREEMPTED", "GONE"}, states
    assert sl.job_node(owner) == where[preempted[0]]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(sl.PILOT_SBATCH_OPTIONS, id="pilot-options"),
        # Without --signal, the batch shell gets SIGTERM only when the
        # partition's GraceTime has run out (then SIGKILL after KillWait).
        pytest.param(("--nodes=1", "--exclusive"), id="no-signal-option"),
    ],
)
def test_preempted_backfill_job_gets_sigterm(
    cluster: None, jobs: list[str], options: tuple[str, ...]
) -> None:
    backfill = list(_hold_every_node(TRAP, jobs, options))
    _owner_takes_a_node(jobs)

    preempted = [job for job in backfill if sl.job_state(job) != "RUNNING"]
    assert len(preempted) == 1, {job: sl.job_state(job) for job in backfill}
    job = preempted[0]
    note = sl.slurm("sh", "-c", f"cat ~/tide-test-term-{shlex.quote(job)} 2>/dev/null || true")
    assert note.strip() == f"SIGTERM {job}"
    # The jobs that kept their nodes got no signal.
    others = " ".join(f"~/tide-test-term-{j}" for j in backfill if j != job)
    assert sl.slurm("sh", "-c", f"ls {others} 2>/dev/null || true").strip() == ""
