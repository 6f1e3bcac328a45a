"""Drive the lab: its hosts (containers with their own Docker engine), the
playbooks that converge them, and commands inside their containers.

Everything here talks to the real Docker engine and the real HTCondor pool
on this machine; nothing is simulated.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

TOP = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("TIDE_STATE_DIR", TOP / ".lab"))
VENV_BIN = TOP / ".venv" / "bin"
LAB_HOSTS = TOP / "tests" / "bin" / "lab-hosts"
# The lab's one port map and pool domain live in its inventory.
_LAB_VARS = yaml.safe_load((TOP / "inventories" / "lab" / "group_vars" / "all.yml").read_text())
TEST_PORTS: dict[str, int] = _LAB_VARS["tide_lab_ports"]["tests"]

CM_HOST = "tide-lab-cm"
CM_CONTAINER = "tide-central-manager-condor-1"
WORKER_HOST = "tide-lab-worker-1"
# The lab's cvmfsexec worker: CVMFS by the cvmfsexec double (tests/doubles).
CVMFSEXEC_WORKER_HOST = "tide-lab-worker-2"
CVMFS_CONTAINER = "tide-cvmfs"
CVMFS_REPOSITORIES: list[str] = _LAB_VARS["cvmfs_repositories"]
WORKER_CONTAINER = "tide-condor-worker-condor-1"
AUTOHEAL_CONTAINER = "tide-autoheal-autoheal-1"
SQUID_HOST = "tide-lab-squid"
SQUID_CONTAINER = "tide-squid-squid-1"
SQUID_PORT = int(_LAB_VARS["tide_lab_ports"]["squid"])
HTTP_ORIGIN_PORT = TEST_PORTS["http_origin"]  # the tests' origin behind squid
POOL_DOMAIN: str = _LAB_VARS["tide_lab_pool_domain"]
COLLECTOR_PORT = int(_LAB_VARS["tide_lab_ports"]["collector"])
COLLECTOR = f"127.0.0.1:{COLLECTOR_PORT}"

_RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)", re.M)
# An exec into a nested container now and then fails before it starts; the
# command never ran, so running it again is safe.
_EXEC_RACE = "OCI runtime exec failed"


def idempotence_checked() -> bool:
    """Whether Molecule's idempotence step converged site.yml a second time
    with no change just before these tests (molecule/default/verify.yml)."""
    return os.environ.get("TIDE_TEST_IDEMPOTENCE_CHECKED") == "molecule"


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 600, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    # The lab's own Ansible settings, whoever called the tests: Molecule's
    # verify runs them with its ANSIBLE_* environment, made for its
    # scenario, not for these playbook runs.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(TOP / "ansible.cfg")
    env["TIDE_STATE_DIR"] = str(STATE)
    env["TIDE_TOP"] = str(TOP)
    for attempt in range(5):
        proc = subprocess.run(
            list(argv),
            cwd=TOP,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            check=False,
        )
        if proc.returncode == 0 or _EXEC_RACE not in proc.stdout + proc.stderr:
            break
        time.sleep(1 + attempt)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def on_host(host: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command on a lab host (inside its container)."""
    return run(["docker", "exec", host, *argv], check=check)


def in_container(
    host: str, container: str, *argv: str, user: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command in a container of a lab host's own Docker engine."""
    opts = ["-u", user, "-w", f"/home/{user}"] if user else []
    return on_host(host, "docker", "exec", *opts, container, *argv, check=check)


@dataclass(frozen=True)
class PlaybookRun:
    returncode: int
    output: str
    changed: dict[str, int]


def playbook(name: str, *extra: str) -> PlaybookRun:
    proc = run(["ansible-playbook", f"playbooks/{name}.yml", *extra], check=False, timeout=900)
    output = proc.stdout + proc.stderr
    changed = {m["host"]: int(m["changed"]) for m in _RECAP.finditer(proc.stdout)}
    return PlaybookRun(proc.returncode, output, changed)


def converge() -> None:
    for name in ("central_manager", "provider"):
        result = playbook(name)
        assert result.returncode == 0, result.output[-6000:]


def lab_up() -> None:
    run([str(LAB_HOSTS), "up"])


def lab_down() -> None:
    run([str(LAB_HOSTS), "down"])


def container_state(host: str, container: str) -> dict[str, str]:
    fmt = "{{.Id}} {{.State.StartedAt}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
    out = on_host(host, "docker", "inspect", "-f", fmt, container).stdout.split()
    return {"id": out[0], "started": out[1], "health": out[2] if len(out) > 2 else ""}


def wait_for(
    what: str, predicate: Callable[[], bool], timeout: float, interval: float = 2.0
) -> float:
    """Poll until predicate() holds; return the monotonic time it was seen to."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass(frozen=True)
class JobResult:
    cluster: str
    exit_code: str
    owner: str
    output: str


def submit_job(script: str, *, on: str, user: str = "physicist") -> tuple[str, str]:
    """Submit a shell script as a job from the central manager's schedd, to
    the worker whose TideResourceId is `on`; its cluster and submit folder."""
    body = script.replace("'", "'\\''")
    submit = (
        "set -e; d=$(mktemp -d ~/job.XXXXXX); cd $d; "
        f"printf '%s\\n' '#!/bin/sh' '{body}' > j.sh; chmod +x j.sh; "
        "printf 'executable = j.sh\\noutput = j.out\\nerror = j.err\\nlog = j.log\\n"
        "request_cpus = 1\\nrequest_memory = 64MB\\n"
        f'requirements = TideResourceId == \\"{on}\\"\\nqueue\\n\' > j.sub; '
        'echo "$(condor_submit -terse j.sub | cut -d. -f1) $d"'
    )
    cluster, workdir = in_container(
        CM_HOST, CM_CONTAINER, "bash", "-c", submit, user=user
    ).stdout.split()
    assert cluster.isdigit(), cluster
    return cluster, workdir


def job_status(cluster: str) -> int | None:
    """The job's JobStatus in the queue (2: running), None once it left it."""
    out = in_container(CM_HOST, CM_CONTAINER, "condor_q", cluster, "-af", "JobStatus").stdout
    return int(out.split()[0]) if out.split() else None


def wait_job(cluster: str, workdir: str, *, on: str, timeout: float = 240) -> JobResult:
    """Wait until a submitted job completes; what it printed."""

    def history() -> list[str]:
        return in_container(
            CM_HOST, CM_CONTAINER, "condor_history", cluster, "-af", "ExitCode", "Owner"
        ).stdout.split()

    wait_for(f"job {cluster} to complete on {on}", lambda: bool(history()), timeout=timeout)
    exit_code, owner = history()
    output = in_container(CM_HOST, CM_CONTAINER, "cat", f"{workdir}/j.out").stdout
    return JobResult(cluster, exit_code, owner, output)


def run_job(script: str, *, on: str, user: str = "physicist", timeout: float = 240) -> JobResult:
    """Submit a shell script as a job from the central manager's schedd, to
    the worker whose TideResourceId is `on`, and wait until it completes."""
    cluster, workdir = submit_job(script, on=on, user=user)
    return wait_job(cluster, workdir, on=on, timeout=timeout)


COLLECTOR_WARMUP_S = 40
"""The lab pool's SCHEDD_INTERVAL (10 s) and the workers' UPDATE_INTERVAL (30 s),
plus a margin: how long a restarted lab collector is not trusted."""


def controller_config(
    folder: Path, *, token: Path, owner: str, sites: str, interval_s: float = 1
) -> Path:
    """A `tide` configuration for the lab pool in folder/tide.yml, its state in
    folder/state, no metrics port: `sites` is the YAML of the sites mapping
    (site names at its left margin)."""
    config = folder / "tide.yml"
    head = textwrap.dedent(
        f"""\
        pool:
          collector: {COLLECTOR}
          collector_warmup_s: {COLLECTOR_WARMUP_S}
          domain: {POOL_DOMAIN}
          token_file: {token}
        loop:
          owner: {owner}
          interval_s: {interval_s}
          state_file: {folder}/state/state.sqlite3
        metrics:
          port: 0
        sites:
        """
    )
    config.write_text(head + textwrap.indent(textwrap.dedent(sites), "  "))
    return config


def tide(config: Path, *argv: str) -> str:
    """Run this checkout's `tide COMMAND... --config config`; its standard output."""
    return subprocess.run(
        [str(VENV_BIN / "tide"), *argv, "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
