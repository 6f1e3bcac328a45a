"""The controller daemon, for real: `tide run` with a Docker site on this
machine's engine, against the lab pool, authenticated with the controller
token the central manager issued. Idle jobs that only a site worker can
run make it create workers at once; their slots register, the jobs
complete on them; once idle for the configured time the workers are
drained (their startds told, as HTCondor sees it) and removed; an
operator's `tide drain` lets a running job finish, starts no new one there
and is not undone by demand; a daemon killed (SIGKILL) twice, mid-create
and mid-job, and started again leaks nothing, forgets nothing and kills no
job; a collector that goes away and comes back knowing no slot never costs
a busy worker; SIGTERM stops the daemon cleanly."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker

from tests import lab

IDLE_TIMEOUT_S = 15


def _config(tmp: Path, token: Path, worker_token: Path, owner: str, site: str) -> Path:
    return lab.controller_config(
        tmp,
        token=token,
        owner=owner,
        sites=f"""\
            {site}:
              kind: docker
              shape: {{cpus: 1, memory_mb: 512, disk_mb: 1024}}
              attributes: {{SiteName: LAB, TideSiteKind: docker}}
              worker_token_file: {worker_token}
              port_range_start: 29710
              port_range_end: 29719
              bind_address: 127.0.0.1
              limits: {{max_resources: 3, max_booting: 3, idle_timeout_s: {IDLE_TIMEOUT_S}}}
            """,
    )


def _owned(owner: str) -> list[str]:
    client = docker.from_env()
    containers = client.containers.list(all=True, filters={"label": f"tide-owner={owner}"})
    return [c.name or "" for c in containers]


def _secret(tmp: Path, name: str) -> Path:
    copy = tmp / name
    copy.write_text((lab.STATE / "secrets" / name).read_text())
    copy.chmod(0o600)
    return copy


@dataclass
class Daemon:
    config: Path
    owner: str
    site: str  # unique per test: no ad a killed worker left behind can match its jobs
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    code: int | None = None
    env: Mapping[str, str] | None = None  # the daemon's environment; None: this process's

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [str(lab.VENV_BIN / "tide"), "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if self.env is None else dict(self.env),
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as a crash or an OOM kill."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.code = self.proc.wait(timeout=60)

    def tide(self, *argv: str) -> str:
        return lab.tide(self.config, *argv)


@contextmanager
def _daemon(tmp: Path) -> Iterator[Daemon]:
    """`tide run` with a site of its own; stopped by SIGTERM at the end, and
    every container it may have left removed."""
    token = _secret(tmp, "controller.token")
    tag = uuid.uuid4().hex[:6]
    owner, site = f"test-{tag}", f"ctl{tag}"
    config = _config(tmp, token, _secret(tmp, "worker.token"), owner, site)
    d = Daemon(config, owner, site, tmp / "tide.log")
    d.start()
    try:
        yield d
    finally:
        d.stop()
        for name in _owned(owner):  # stopped first: its startd withdraws its ads
            container = docker.from_env().containers.get(name)
            container.stop(timeout=30)
            container.remove(v=True)
    text = d.log.read_text()
    assert d.code == 0, text[-3000:]
    assert token.read_text().strip() not in text  # the token never reaches the log


def _submit(site: str, seconds: int, count: int, *extra: str) -> str:
    """`count` sleep jobs only `site` can run; `extra`: more submit lines
    (without single quotes)."""
    lines = "".join(f" '{line}'" for line in extra)
    submit = (
        f"cd $(mktemp -d) && printf '%s\\n' 'executable = /bin/sleep' 'arguments = {seconds}' "
        f"'request_cpus = 1' 'request_memory = 100MB'{lines} "
        f"'requirements = (TARGET.TideSite == \"{site}\")' 'queue {count}' > j.sub "
        "&& condor_submit -terse j.sub | cut -d. -f1"
    )
    return lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "bash", "-c", submit, user="physicist"
    ).stdout.strip()


def _job(cluster: str, *attrs: str) -> list[str]:
    """Attributes of a cluster's first job, from the queue or else the history."""
    for tool in ("condor_q", "condor_history"):
        out = lab.in_container(
            lab.CM_HOST, lab.CM_CONTAINER, tool, f"{cluster}.0", "-af", *attrs, check=False
        ).stdout.split()
        if out:
            return out
    return []


def _completed(cluster: str) -> list[str]:
    """LastRemoteHost of every completed job of a cluster."""
    return lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_history", cluster, "-af", "LastRemoteHost"
    ).stdout.split()


def _gone(d: Daemon) -> None:
    status = d.tide("status")
    # Every resource it made is gone: none left in any live state.
    assert status.splitlines()[1].split() == [d.site, "0", "0", "0", "0", "0", "0"], status


def test_daemon_scales_a_docker_site_up_for_jobs_and_back_down(tmp_path: Path) -> None:
    with _daemon(tmp_path) as d:
        cluster = _submit(d.site, 3, 2)
        lab.wait_for(
            "the jobs to complete on new site workers", lambda: len(_completed(cluster)) == 2, 240
        )
        hosts = _completed(cluster)
        assert all(h.split("@")[1].startswith(f"tide-{d.site}-") for h in hosts), hosts
        lab.wait_for(
            "the idle workers to be drained and removed",
            lambda: not _owned(d.owner),
            timeout=IDLE_TIMEOUT_S + 120,
        )
    text = d.log.read_text()
    # Each worker's startd was told to drain (a request id came back) before removal.
    drains = [line for line in text.splitlines() if "startd draining" in line]
    assert len(drains) >= 1, text[-3000:]
    assert all("request=-" not in line for line in drains), drains
    _gone(d)


def test_an_operator_drain_lets_the_running_job_finish(tmp_path: Path) -> None:
    with _daemon(tmp_path) as d:
        first = _submit(d.site, 25, 1)
        lab.wait_for("the job to run", lambda: _job(first, "JobStatus") == ["2"], 240)
        (worker,) = _owned(d.owner)
        rid = worker  # the container is named after its resource id
        d.tide("drain", rid)
        drained_at = time.time()
        # A job that arrives now must not start on the draining worker:
        # demand gets it a new one, and does not undo the operator's drain.
        second = _submit(d.site, 1, 1)
        lab.wait_for(
            "both jobs to complete", lambda: bool(_completed(first) and _completed(second)), 240
        )
        assert _job(first, "ExitCode", "NumJobStarts") == ["0", "1"]  # never killed or restarted
        assert rid not in _completed(second)[0], _completed(second)
        assert int(_job(first, "CompletionDate")[0]) > drained_at  # it ran on after the drain
        lab.wait_for("the workers to be removed", lambda: not _owned(d.owner), IDLE_TIMEOUT_S + 120)
    history = [line for line in d.log.read_text().splitlines() if rid in line]
    assert any("startd draining" in line for line in history), history
    assert not any("undrain" in line or "demand returned" in line for line in history), history
    _gone(d)


def test_a_daemon_killed_at_any_moment_leaks_and_forgets_nothing(tmp_path: Path) -> None:
    with _daemon(tmp_path) as d:
        cluster = _submit(d.site, 20, 2)
        # Killed as soon as it has asked the engine for workers: whatever the
        # store and the engine hold then, the next daemon must sort it out.
        lab.wait_for("workers to be created", lambda: bool(_owned(d.owner)), 120, 0.2)
        d.kill()
        d.start()
        lab.wait_for("the jobs to run", lambda: _job(cluster, "JobStatus") == ["2"], 240)
        # Killed again while the jobs run: the running workers are adopted,
        # not destroyed; the jobs finish where they started.
        d.kill()
        d.start()
        lab.wait_for("the jobs to complete", lambda: len(_completed(cluster)) == 2, 240)
        assert _job(cluster, "NumJobStarts") == ["1"]
        lab.wait_for("the workers to be removed", lambda: not _owned(d.owner), 180)
    _gone(d)  # nothing alive in the store either: no resource forgotten or leaked


def test_a_collector_restart_never_kills_a_busy_worker(tmp_path: Path) -> None:
    with _daemon(tmp_path) as d:
        cluster = _submit(d.site, 40, 1)
        lab.wait_for("the job to run", lambda: _job(cluster, "JobStatus") == ["2"], 240)
        (worker,) = _owned(d.owner)
        # The collector goes away, then comes back knowing no slot until the
        # startds' next update (UPDATE_INTERVAL, 30 s): for a while the
        # daemon cannot ask, then it is told the busy worker is not there.
        lab.in_container(lab.CM_HOST, lab.CM_CONTAINER, "condor_off", "-daemon", "collector")
        time.sleep(5)
        lab.in_container(lab.CM_HOST, lab.CM_CONTAINER, "condor_on", "-daemon", "collector")
        lab.wait_for("the job to complete", lambda: bool(_completed(cluster)), 300)
        assert _job(cluster, "ExitCode", "NumJobStarts") == ["0", "1"]  # never killed
        # The schedd's RELEASE_CLAIM found no way to the startd (CCB knew it
        # no more): the startd learns at its next keepalive that the claim is
        # gone (SCHEDD.ALLOW_READ has execute-side@matchsession). Denied, it
        # held the slot Claimed for over two minutes after the job.
        lab.wait_for("the worker to be removed", lambda: not _owned(d.owner), 120)
    lines = d.log.read_text().splitlines()
    stopping = [line for line in lines if "msg=stopping" in line and worker in line]
    # Given back only after its job, as a drained worker, never while blind.
    assert all("drained: no job left" in line for line in stopping), stopping
