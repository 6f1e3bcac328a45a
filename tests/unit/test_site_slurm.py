"""The Slurm backfill site's pure parts: its configuration, the owners'
queue parsed from squeue/sinfo output, and the pilot script it renders
(checked by bash itself). Its calls to Slurm are tested on the lab's real
cluster (tests/integration/test_site_slurm.py)."""

from __future__ import annotations

import shlex
import subprocess
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from tide.config import ConfigError, SlurmBackfillSiteConfig, load_config
from tide.executors import Completed
from tide.model import Shape
from tide.sites.base import OwnerQueue, PoolEndpoint
from tide.sites.slurm import SlurmBackfillSite, ending_nodes, owner_queue_from

CONFIG = """\
pool:
  collector: 127.0.0.1:29618
  domain: lab.tide
  token_file: /etc/tide/pool.token
sites:
  maxwell:
    kind: slurm_backfill
    shape: {cpus: 2, memory_mb: 1000, disk_mb: 5000}
    worker_token_file: /etc/tide/worker.token
    partition: backfill
    owner_partitions: [owner]
    login:
      host: 127.0.0.1
      port: 29808
      user: tide
      key_file: /etc/tide/slurm.key
      known_hosts_file: /etc/tide/slurm.known_hosts
    attributes: {HasCvmfs: true}
    condor_config: {NETWORK_INTERFACE: 127.0.0.1}
"""


def _config(tmp_path: Path, text: str = CONFIG) -> SlurmBackfillSiteConfig:
    path = tmp_path / "tide.yml"
    path.write_text(text)
    site = load_config(path).sites["maxwell"]
    assert isinstance(site, SlurmBackfillSiteConfig)
    return site


def test_a_slurm_site_config_loads_with_its_defaults(tmp_path: Path) -> None:
    site = _config(tmp_path)
    assert site.login is not None
    assert site.login.port == 29808
    assert (site.walltime, site.whole_node, site.idle_exit_s) == ("12:00:00", True, 600)


@pytest.mark.parametrize(
    ("line", "value", "message"),
    [
        ("    partition: backfill", "    partition: 'back fill'", "sites.maxwell.partition"),
        ("    owner_partitions: [owner]", "    walltime: 12h", "sites.maxwell.walltime"),
        ("      port: 29808", "      port: 0", "sites.maxwell.login.port"),
    ],
)
def test_bad_slurm_settings_are_named(tmp_path: Path, line: str, value: str, message: str) -> None:
    path = tmp_path / "tide.yml"
    path.write_text(CONFIG.replace(line, value))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(message in e for e in caught.value.errors), caught.value.errors


SQUEUE = """\
11|1|Resources|owner
12|2|Priority|owner
13|1|QOSMaxJobsPerUserLimit|owner
14|3|None|owner
15|1|Resources|backfill
"""
SINFO = """\
max-001|idle
max-001|idle
max-002|allocated
max-003|completing
max-004|mixed
"""


def test_the_owners_queue_counts_nodes_waited_for_and_free() -> None:
    # The limit-bound job waits for no node; the job with reason None is new
    # (not yet scheduled); the pilots' own partition is not the owners';
    # max-001 is listed once per partition.
    assert owner_queue_from(SQUEUE, SINFO, pilots_partition="backfill") == OwnerQueue(
        pending_nodes=3, free_nodes=2, new_nodes=3
    )


def test_owner_jobs_within_the_grace_time_are_new() -> None:
    queue = owner_queue_from(SQUEUE, SINFO, pilots_partition="backfill", young={"12"})
    assert queue == OwnerQueue(pending_nodes=1, free_nodes=2, new_nodes=5)


def test_the_grace_time_runs_on_the_controllers_clock(tmp_path: Path) -> None:
    now = [100.0]
    answers = iter([SQUEUE, SINFO, "", SQUEUE, SINFO, ""])

    class Queue(NoExecutor):
        def run(
            self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
        ) -> Completed:
            return Completed(tuple(argv), 0, next(answers), "")

    site = _site(tmp_path, Queue(), clock=lambda: now[0])
    site._config = _config(
        tmp_path,
        CONFIG.replace("partition: backfill\n", "partition: backfill\n    owner_grace_s: 5\n", 1),
    )
    assert site.owner_queue() == OwnerQueue(pending_nodes=0, free_nodes=2, new_nodes=6)
    now[0] += 5
    assert site.owner_queue() == OwnerQueue(pending_nodes=3, free_nodes=2, new_nodes=3)


def test_an_empty_queue_waits_for_nothing() -> None:
    assert owner_queue_from("", "max-001|idle*\n", pilots_partition="backfill") == OwnerQueue(0, 1)


def test_nodes_of_jobs_about_to_end_count_as_coming_back() -> None:
    # Being preempted (GraceTime 5 s), its walltime nearly up, and three that
    # keep their nodes; UNLIMITED and unparsable lines count for nothing.
    running = "1|0:05\n2|30\n1|1:00:00\n1|2-00:00:10\n1|UNLIMITED\n1|INVALID\n"
    assert ending_nodes(running) == 3


class NoExecutor:
    """An executor that must not be called (rendering is local)."""

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
    ) -> Completed:
        raise AssertionError(f"no command expected, got {argv}")

    def close(self) -> None:
        pass


def _site(
    tmp_path: Path,
    executor: NoExecutor | None = None,
    clock: Callable[[], float] = lambda: 0.0,
) -> SlurmBackfillSite:
    token = tmp_path / "worker.token"
    token.write_text("SECRET-TOKEN-TEXT")
    return SlurmBackfillSite(
        "maxwell",
        _config(tmp_path),
        executor=executor or NoExecutor(),
        clock=clock,
        owner="tide-lab",
        pool=PoolEndpoint("127.0.0.1:29618", "lab.tide"),
        worker_token_file=token,
        shape=Shape(2, 1000, 5000),
    )


def test_the_pilot_script_is_valid_bash_and_holds_no_secret(tmp_path: Path) -> None:
    script = _site(tmp_path).script("tide-maxwell-0000abcd")
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "SECRET-TOKEN-TEXT" not in script
    settings = _settings(script)
    assert settings["TideResourceId"] == '"tide-maxwell-0000abcd"'
    assert settings["COLLECTOR_HOST"] == "127.0.0.1:29618"
    assert settings["NUM_CPUS"] == "2"
    assert settings["MEMORY"] == "1000"
    assert settings["DISK"] == str(5000 * 1024)
    assert settings["HasCvmfs"] == "true"
    assert settings["TideSite"] == '"maxwell"'
    assert settings["NETWORK_INTERFACE"] == "127.0.0.1"
    assert settings["STARTD_NOCLAIM_SHUTDOWN"] == "600"
    assert "HasCvmfs" in settings["STARTD_ATTRS"].split()
    assert "TideSite" in settings["STARTD_ATTRS"].split()


def test_a_pilot_with_cvmfsexec_wraps_every_job(tmp_path: Path) -> None:
    text = CONFIG.replace(
        "    partition: backfill\n",
        "    partition: backfill\n    cvmfsexec_dir: /opt/tide/cvmfsexec\n"
        "    cvmfs_repositories: [sft.cern.ch, cms.cern.ch]\n",
    )
    site = _site(tmp_path)
    site._config = _config(tmp_path, text)
    script = site.script("tide-maxwell-0000abcd")
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    settings = _settings(script)
    assert settings["USER_JOB_WRAPPER"] == "$work/cvmfsexec-wrapper"
    assert settings["TideCvmfsRepositories"] == '"sft.cern.ch,cms.cern.ch"'
    assert "exec %q sft.cern.ch cms.cern.ch --" in script


def test_cvmfsexec_without_repositories_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tide.yml"
    path.write_text(
        CONFIG.replace(
            "    partition: backfill\n", "    partition: backfill\n    cvmfsexec_dir: /x\n"
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("cvmfs_repositories is empty" in e for e in caught.value.errors)


DOCKER = "    partition: backfill\n    pilot_runtime: docker\n    pilot_image: site/condor:1\n"


def test_a_docker_pilot_runs_the_image_with_its_contract_and_no_secret(tmp_path: Path) -> None:
    site = _site(tmp_path)
    site._config = _config(tmp_path, CONFIG.replace("    partition: backfill\n", DOCKER))
    script = site.script("tide-maxwell-0000abcd")
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "SECRET-TOKEN-TEXT" not in script
    assert "condor_master" not in script.split("inner=", 1)[0]  # no native HTCondor needed
    assert "image=site/condor:1\n" in script
    env = dict(
        shlex.split(line)[1].split("=", 1)
        for line in script.splitlines()
        if line.startswith("    -e ") and "$" not in line
    )
    assert env["TIDE_RESOURCE_ID"] == "tide-maxwell-0000abcd"
    assert env["TIDE_COLLECTOR"] == "127.0.0.1:29618"
    assert env["TIDE_POOL_DOMAIN"] == "lab.tide"
    assert (env["TIDE_CPUS"], env["TIDE_MEMORY_MB"], env["TIDE_DISK_MB"]) == ("2", "1000", "5000")
    assert env["TIDE_ATTR_HasCvmfs"] == "true"
    assert env["_CONDOR_USE_SHARED_PORT"] == "False"
    assert env["_CONDOR_STARTD_NOCLAIM_SHUTDOWN"] == "600"
    assert env["_CONDOR_NETWORK_INTERFACE"] == "127.0.0.1"
    # The token reaches the container on its stdin, the lifeline after it.
    assert 'cat "$token" >&3' in script
    mounts = [line for line in script.splitlines() if line.strip().startswith("-v")]
    assert not [line for line in mounts if "token" in line], mounts


def test_docker_pilots_with_cvmfsexec_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tide.yml"
    path.write_text(
        CONFIG.replace(
            "    partition: backfill\n",
            DOCKER + "    cvmfsexec_dir: /x\n    cvmfs_repositories: [sft.cern.ch]\n",
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("pilot_runtime: native" in e for e in caught.value.errors), caught.value.errors


def _settings(script: str) -> Mapping[str, str]:
    body = script.split('cat >"$work/condor_config" <<EOF\n', 1)[1].split("\nEOF\n", 1)[0]
    out: dict[str, str] = {}
    for line in textwrap.dedent(body).splitlines():
        if " = " in line and not line.startswith("#"):
            key, value = line.split(" = ", 1)
            out[key] = value
    return out
