"""The controller role on the lab: `tide-controller` runs on tide-lab-cm as a
hardened systemd service from the venv the role installed. Its tokens are
0600 files in a 0700 directory and appear in no config, unit, environment
or journal; systemd restarts it when it is killed; a bad site setting fails
the play, naming the key, and changes nothing; and, for real, idle jobs for
its docker site make it start workers on the host's own engine, the jobs
complete there, and the idle workers are removed again."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import lab

HOST = lab.CM_HOST  # the lab's one host in the controllers group
UNIT = "tide-controller"
_DEFAULTS = yaml.safe_load((lab.TOP / "roles" / "controller" / "defaults" / "main.yml").read_text())
_LAB = yaml.safe_load((lab.TOP / "inventories" / "lab" / "group_vars" / "all.yml").read_text())
DIR: str = _DEFAULTS["controller_dir"]
CONFIG = f"{DIR}/tide.yml"
TIDE = f"{DIR}/venv/bin/tide"
SECRETS = f"{DIR}/secrets"
TOKENS = [f"{SECRETS}/pool.token", f"{SECRETS}/worker.token"]
WORKERS_KEY = f"{SECRETS}/workers_signing_key"
OWNER: str = _LAB["controller_owner"]
SITE = "lab-docker"
IDLE_TIMEOUT_S = float(_LAB["controller_sites"][SITE]["limits"]["idle_timeout_s"])
METRICS_PORT = int(_LAB["tide_lab_ports"]["controller"]["metrics"])


@pytest.fixture(scope="module", autouse=True)
def converged() -> None:
    result = lab.playbook("controller")
    assert result.returncode == 0, result.output[-6000:]


def _show(prop: str) -> str:
    return lab.on_host(HOST, "systemctl", "show", "-p", prop, "--value", UNIT).stdout.strip()


def _running_pid() -> str | None:
    """The main PID while the service is active and running, else None."""
    state = lab.on_host(
        HOST, "systemctl", "show", "-p", "ActiveState,SubState,MainPID", UNIT
    ).stdout.split()
    props = dict(line.split("=", 1) for line in state)
    if props["ActiveState"] == "active" and props["SubState"] == "running":
        return props["MainPID"] if props["MainPID"] != "0" else None
    return None


def _config_digest() -> str:
    return hashlib.sha256(lab.on_host(HOST, "cat", CONFIG).stdout.encode()).hexdigest()


def _owned_workers() -> list[str]:
    out = lab.on_host(
        HOST,
        "docker",
        "ps",
        "-a",
        "--filter",
        f"label=tide-owner={OWNER}",
        "--format",
        "{{.Names}}",
    ).stdout
    return out.split()


def test_the_service_runs_from_the_venv() -> None:
    assert lab.on_host(HOST, "systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    lab.wait_for("the controller to run", lambda: _running_pid() is not None, timeout=60)
    pid = _running_pid()
    cmdline = lab.on_host(HOST, "cat", f"/proc/{pid}/cmdline").stdout.replace("\0", " ")
    assert f"{TIDE} run --config {CONFIG} " in cmdline, cmdline


def test_a_second_converge_changes_nothing() -> None:
    if lab.idempotence_checked():
        pytest.skip("Molecule's idempotence step ran site.yml (controller.yml too) again unchanged")
    result = lab.playbook("controller")
    assert result.returncode == 0, result.output[-6000:]
    assert result.changed == {HOST: 0}, result.output[-6000:]


def test_tokens_are_private_files_and_nowhere_else() -> None:
    assert lab.on_host(HOST, "stat", "-c", "%a %U %G", SECRETS).stdout.split() == [
        "700",
        "root",
        "root",
    ]
    secrets: list[str] = []
    for path in TOKENS:
        assert lab.on_host(HOST, "stat", "-c", "%a %U %G", path).stdout.split() == [
            "600",
            "root",
            "root",
        ]
        token = lab.on_host(HOST, "cat", path).stdout.strip()
        assert token.count(".") == 2, f"{path} is not an IDTOKEN"
        # The whole token, and its signature: the part that makes it a secret.
        secrets += [token, token.rsplit(".", 1)[1]]
    # The workers' signing key, with which the docker site mints each worker's own token.
    assert lab.on_host(HOST, "stat", "-c", "%a %U %G", WORKERS_KEY).stdout.split() == [
        "600",
        "root",
        "root",
    ]
    secrets.append(lab.on_host(HOST, "cat", WORKERS_KEY).stdout.strip())
    pid = _running_pid()
    assert pid is not None
    places = {
        "the config file": lab.on_host(HOST, "cat", CONFIG).stdout,
        "the unit": lab.on_host(HOST, "systemctl", "cat", UNIT).stdout,
        "the unit's Environment": _show("Environment"),
        "the process's environment": lab.on_host(HOST, "cat", f"/proc/{pid}/environ").stdout,
        "the process's command line": lab.on_host(HOST, "cat", f"/proc/{pid}/cmdline").stdout,
        "the journal": lab.on_host(
            HOST, "journalctl", "-u", UNIT, "--no-pager", "-o", "cat"
        ).stdout,
    }
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a token or key appears in {where}"
    # The config names the installed files instead.
    config = yaml.safe_load(places["the config file"])
    assert config["pool"]["token_file"] == TOKENS[0]
    assert config["sites"][SITE]["worker_signing_key_file"] == WORKERS_KEY
    assert "worker_token_file" not in config["sites"][SITE]


def test_status_and_metrics_answer() -> None:
    status = lab.on_host(HOST, TIDE, "status", "--config", CONFIG).stdout.splitlines()
    assert status[0].split()[0] == "SITE"
    assert any(line.split()[0] == SITE for line in status[1:] if line.strip())
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert f'tide_resources{{site="{SITE}",state="running"}}' in metrics


def test_systemd_restarts_a_killed_controller() -> None:
    lab.wait_for("the controller to run", lambda: _running_pid() is not None, timeout=60)
    pid = _running_pid()
    restarts = int(_show("NRestarts"))
    lab.on_host(HOST, "kill", "-KILL", str(pid))
    lab.wait_for(
        "systemd to restart the killed controller",
        lambda: _running_pid() not in (None, pid),
        timeout=120,
        interval=1,
    )
    assert int(_show("NRestarts")) > restarts


def test_a_bad_site_setting_fails_naming_the_key_and_changes_nothing() -> None:
    lab.wait_for("the controller to run", lambda: _running_pid() is not None, timeout=60)
    before = (_config_digest(), _running_pid(), _show("ActiveEnterTimestampMonotonic"))
    bad = {
        "controller_sites": {
            SITE: {
                "kind": "docker",
                "shape": {"cpus": 1, "memory_mb": 512, "disk_mb": 1024},
                "bogus_key": 1,
            }
        }
    }
    result = lab.playbook("controller", "-e", json.dumps(bad))
    assert result.returncode != 0, result.output[-6000:]
    assert f"sites.{SITE}.bogus_key: unknown key" in result.output, result.output[-6000:]
    after = (_config_digest(), _running_pid(), _show("ActiveEnterTimestampMonotonic"))
    assert after == before


def test_a_sites_other_private_files_are_installed_0600(tmp_path: Path) -> None:
    key = tmp_path / "hpc.key"
    key.write_text("not a real key\n")
    key.chmod(0o600)
    extra = {"controller_secret_files": {"hpc.key": str(key)}}
    try:
        result = lab.playbook("controller", "-e", json.dumps(extra))
        assert result.returncode == 0, result.output[-6000:]
        installed = f"{SECRETS}/hpc.key"
        assert lab.on_host(HOST, "stat", "-c", "%a %U", installed).stdout.split() == ["600", "root"]
        assert lab.on_host(HOST, "cat", installed).stdout == "not a real key\n"
        assert "not a real key" not in result.output  # no_log
    finally:
        lab.on_host(HOST, "rm", "-f", f"{SECRETS}/hpc.key")
    clash = {"controller_secret_files": {"pool.token": str(key)}}
    result = lab.playbook("controller", "-e", json.dumps(clash))
    assert result.returncode != 0
    assert "controller_secret_files: 'pool.token' must be a file name" in result.output


def test_a_bad_variable_fails_before_anything_changes() -> None:
    before = (_config_digest(), _running_pid())
    result = lab.playbook("controller", "-e", "controller_owner=Not_A_Name")
    assert result.returncode != 0
    assert "controller_owner must be a name" in result.output, result.output[-6000:]
    assert "changed=0" in result.output
    assert (_config_digest(), _running_pid()) == before


@pytest.fixture
def cluster() -> Iterator[list[str]]:
    """Submits jobs for the site; removes any left when the test ends."""
    clusters: list[str] = []
    yield clusters
    for c in clusters:
        lab.in_container(HOST, lab.CM_CONTAINER, "condor_rm", c, check=False)


def test_jobs_for_the_site_get_workers_which_go_when_idle(cluster: list[str]) -> None:
    submit = (
        "cd $(mktemp -d) && printf '%s\\n' 'executable = /bin/sleep' 'arguments = 5' "
        "'request_cpus = 1' 'request_memory = 100MB' "
        f"'requirements = (TARGET.TideSite == \"{SITE}\")' 'queue 2' > j.sub "
        "&& condor_submit -terse j.sub | cut -d. -f1"
    )
    cluster.append(
        lab.in_container(
            HOST, lab.CM_CONTAINER, "bash", "-c", submit, user="physicist"
        ).stdout.strip()
    )
    assert cluster[0].isdigit(), cluster

    lab.wait_for(
        "the service to start workers on the host's engine", lambda: bool(_owned_workers()), 180
    )

    def hosts() -> list[str]:
        return lab.in_container(
            HOST, lab.CM_CONTAINER, "condor_history", cluster[0], "-af", "LastRemoteHost"
        ).stdout.split()

    lab.wait_for("the jobs to complete on the site's workers", lambda: len(hosts()) == 2, 300)
    assert all(h.split("@")[1].startswith(f"tide-{SITE}-") for h in hosts()), hosts()
    codes = lab.in_container(
        HOST, lab.CM_CONTAINER, "condor_history", cluster[0], "-af", "ExitCode"
    ).stdout.split()
    assert codes == ["0", "0"]
    lab.wait_for(
        "the idle workers to be removed",
        lambda: not _owned_workers(),
        timeout=IDLE_TIMEOUT_S + 240,
    )
    status = lab.on_host(HOST, TIDE, "status", "--config", CONFIG).stdout.splitlines()
    row = next(line.split() for line in status[1:] if line.split()[:1] == [SITE])
    assert row[1:] == ["0"] * (len(row) - 1), status
