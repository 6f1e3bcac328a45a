"""The tide/autoheal image on this machine's real Docker engine: it restarts an
unhealthy container, restarts a dependent after its dependency recovers, and
backs off a crash loop until it gives up. No lab needed.

Every container made here is named tide-ah-test-<run>-*, has no network and
is removed afterwards. The autoheal under test watches label keys of its own
run (the label keys are settings), so it can never restart another container
of the engine, whatever labels those carry."""

from __future__ import annotations

import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

TOP = Path(__file__).resolve().parents[2]
VERSION = yaml.safe_load((TOP / "galaxy.yml").read_text())["version"]
IMAGE = f"tide/autoheal:{VERSION}"
BASE = "tide/debian:trixie"
# Healthy while the file /healthy exists; checked every second, one failure is enough.
HEALTH = ["--health-cmd", "test -f /healthy", "--health-interval", "1s", "--health-retries", "1"]
WAIT = 120.0  # seconds any one expected log line may take before the test fails

Line = dict[str, str]


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=180, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def started_at(name: str) -> str:
    return docker("inspect", "-f", "{{.State.StartedAt}}", name).stdout.strip()


def wait_until_unhealthy(name: str) -> None:
    deadline = time.monotonic() + WAIT
    while docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip() != "unhealthy":
        assert time.monotonic() < deadline, f"{name} did not turn unhealthy in {WAIT:g}s"
        time.sleep(0.5)


class Run:
    """One test's containers: made with unique names, all removed at the end."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.label = f"tide-ah-test-{self.id}.autoheal"
        self.depends_label = f"tide-ah-test-{self.id}.depends-on"
        self.names: list[str] = []
        self.autoheal = ""

    def container(self, role: str, *args: str, cmd: str = "exec sleep infinity") -> str:
        name = f"tide-ah-test-{self.id}-{role}"
        self.names.append(name)
        docker("run", "-d", "--name", name, "--network", "none", *args, BASE, "sh", "-c", cmd)
        return name

    def start_autoheal(self, **settings: str) -> None:
        env = {"SWEEP_INTERVAL": "1", "STOP_TIMEOUT": "1", **settings}
        env.update(LABEL=self.label, DEPENDS_ON_LABEL=self.depends_label)
        self.autoheal = f"tide-ah-test-{self.id}-autoheal"
        self.names.append(self.autoheal)
        flags = [f"--env=TIDE_AUTOHEAL_{key}={value}" for key, value in env.items()]
        sock = "/var/run/docker.sock:/var/run/docker.sock"
        docker("run", "-d", "--name", self.autoheal, "--network", "none", "-v", sock, *flags, IMAGE)
        self.wait_for(lambda line: line["what"] == "watching")

    def logs(self) -> list[Line]:
        out = docker("logs", self.autoheal).stdout
        return [dict(pair.split("=", 1) for pair in shlex.split(row)) for row in out.splitlines()]

    def wait_for(self, match: Callable[[Line], bool]) -> Line:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = [line for line in self.logs() if match(line)]
            if found:
                return found[0]
            time.sleep(0.5)
        raw = docker("logs", self.autoheal, check=False)
        said = raw.stdout + raw.stderr
        raise AssertionError(f"no such log line in {WAIT:g}s; autoheal logged:\n{said}")

    def remove(self) -> None:
        if self.names:
            docker("rm", "-f", *self.names, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    """Build the image from this checkout (seconds when the build cache has it)."""
    subprocess.run(["bash", str(TOP / "images" / "build.sh"), "autoheal"], check=True, timeout=900)
    return IMAGE


@pytest.fixture
def run(image: str) -> Iterator[Run]:
    assert image == IMAGE
    this = Run()
    try:
        yield this
    finally:
        this.remove()


def restarts_of(run: Run, name: str) -> list[Line]:
    return [line for line in run.logs() if line["what"] == "restart" and line["container"] == name]


@pytest.mark.timeout(600)
def test_unhealthy_is_restarted_and_then_its_dependents(run: Run) -> None:
    ok_at_start = "touch /healthy; exec sleep infinity"
    dep = run.container("dep", f"--label={run.label}=true", *HEALTH, cmd=ok_at_start)
    worker = run.container("worker", f"--label={run.depends_label}=tide-ah-test-none, {dep}")
    bystander = run.container("bystander", *HEALTH)  # unhealthy, but without the label
    # No sweep during the test: events alone must drive all of it.
    run.start_autoheal(SWEEP_INTERVAL="600")
    before = {name: started_at(name) for name in (dep, worker, bystander)}

    docker("exec", dep, "rm", "/healthy")  # unhealthy; a restart makes /healthy again

    restart = run.wait_for(lambda line: line["what"] == "restart" and line["container"] == dep)
    assert (restart["why"], restart["result"]) == ("unhealthy", "ok")
    run.wait_for(lambda line: line["what"] == "recovered" and line["container"] == dep)
    again = run.wait_for(lambda line: line["what"] == "restart" and line["container"] == worker)
    assert (again["why"], again["result"]) == (f"dependency {dep} recovered", "ok")
    assert started_at(dep) != before[dep]
    assert started_at(worker) != before[worker]
    assert restarts_of(run, bystander) == []
    assert started_at(bystander) == before[bystander]


@pytest.mark.timeout(600)
def test_a_crash_loop_is_backed_off_then_given_up_until_healthy(run: Run) -> None:
    sick = run.container("sick", f"--label={run.label}=true", *HEALTH)  # never healthy
    # Unhealthy before autoheal starts: its event is missed, the first sweep finds it.
    wait_until_unhealthy(sick)
    # Waits of 4 s, then 8 s: longer than a restart and a failed check take, so
    # the backoff holds back at least one of the restarts.
    run.start_autoheal(BACKOFF_BASE="4", BACKOFF_FACTOR="2", BACKOFF_MAX="8", MAX_RESTARTS="3")

    first = run.wait_for(lambda line: line["what"] == "restart" and line["container"] == sick)
    assert (first["why"], first["attempt"]) == ("unhealthy", "1")
    gave_up = run.wait_for(lambda line: line["what"] == "gave-up" and line["container"] == sick)
    assert "3 restarts within" in gave_up["why"]
    assert [line["attempt"] for line in restarts_of(run, sick)] == ["1", "2", "3"]
    deferred = [line for line in run.logs() if line["what"] == "deferred"]
    assert deferred, "the restarts after the first should have waited for the backoff"
    assert all(line["container"] == sick for line in deferred)

    # Given up: later sweeps (every second) and health reports restart nothing.
    still = started_at(sick)
    time.sleep(8)
    assert started_at(sick) == still
    assert len(restarts_of(run, sick)) == 3

    docker("exec", sick, "touch", "/healthy")
    run.wait_for(lambda line: line["what"] == "resumed" and line["container"] == sick)
