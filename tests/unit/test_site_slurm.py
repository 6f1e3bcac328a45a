"""The Slurm backfill site's pure parts: its configuration, the owners'
queue parsed from squeue/sinfo output, and the pilot script it renders
(checked by bash itself); and at the edge of its calls, with an executor
answering as Slurm would (or the real LocalExecutor running a stand-in
squeue that hangs): the deadline of every command, sbatch's --export=NIL,
and malformed output as a SiteError. Its calls to a real Slurm are tested
on the lab's cluster (tests/integration/test_site_slurm.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tide.config import ConfigError, SlurmBackfillSiteConfig, load_config
from tide.executors import CommandTimedOut, Completed, LocalExecutor
from tide.htcondor import tokens
from tide.htcondor.tokens import SigningKey
from tide.model import Shape
from tide.sites.base import DeadlineExceeded, OwnerQueue, PoolEndpoint, SiteError
from tide.sites.slurm.adapter import (
    PILOT_TOKEN_MARGIN_S,
    SlurmBackfillSite,
    ending_nodes,
    owner_queue_from,
    walltime_s,
)

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
        (  # the default walltime is 12 h
            "    partition: backfill",
            "    partition: backfill\n    drain_before_end_s: 43200",
            "drain_before_end_s (43200 s) must be less than the walltime (12:00:00)",
        ),
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
        pending_nodes=3, free_nodes=2, new_nodes=3, waiting={"11": 1, "12": 2}
    )


def test_the_site_names_the_waiting_jobs_and_keeps_no_clock(tmp_path: Path) -> None:
    # The grace time is the policy's (tide.policy.owners_due_nodes, persisted
    # first-seen times): the adapter reports the same queue whenever asked.
    answers = iter([SQUEUE, SINFO, "", SQUEUE, SINFO, ""])

    class Queue(NoExecutor):
        def run(
            self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
        ) -> Completed:
            return Completed(tuple(argv), 0, next(answers), "")

    site = _site(tmp_path, Queue())
    site._config = _config(
        tmp_path,
        CONFIG.replace("partition: backfill\n", "partition: backfill\n    owner_grace_s: 5\n", 1),
    )
    first = site.owner_queue()
    assert first == OwnerQueue(
        pending_nodes=3, free_nodes=2, new_nodes=3, waiting={"11": 1, "12": 2}
    )
    assert site.owner_queue() == first


def test_an_empty_queue_waits_for_nothing() -> None:
    assert owner_queue_from("", "max-001|idle*\n", pilots_partition="backfill") == OwnerQueue(0, 1)


def test_nodes_of_jobs_about_to_end_count_as_coming_back() -> None:
    # Being preempted (GraceTime 5 s), its walltime nearly up, and three that
    # keep their nodes; Slurm's words for no limit (UNLIMITED, INVALID) count for nothing.
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
) -> SlurmBackfillSite:
    token = tmp_path / "worker.token"
    token.write_text("SECRET-TOKEN-TEXT")
    return SlurmBackfillSite(
        "maxwell",
        _config(tmp_path),
        executor=executor or NoExecutor(),
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
    # Every job through the wrapper, which runs it in a namespace of its own
    # where the node allows (and says which it did).
    assert settings["USER_JOB_WRAPPER"] == "$work/job-wrapper"
    assert settings["TideJobNamespace"] == '"$namespace"'
    assert "TideJobNamespace" in settings["STARTD_ATTRS"].split()
    assert "\nUSER_CONFIG_FILE =\n" in script  # none from the home a job can write


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
    assert settings["USER_JOB_WRAPPER"] == "$work/job-wrapper"
    assert settings["TideCvmfsRepositories"] == '"sft.cern.ch,cms.cern.ch"'
    assert "printf ' %q sft.cern.ch cms.cern.ch --' \"$cvmfsexec/cvmfsexec\"" in script


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
    """The native pilot's HTCondor configuration as its script writes it
    (bash runs the part that writes it; the pilot's shell variables stay
    as their names): each setting's last value, a reference to its own
    earlier value ($(NAME)) expanded as HTCondor does."""
    return _config_settings(_written_config(script))


def _written_config(script: str) -> str:
    part = script[
        script.index('cat >"$work/condor_config"') : script.index("export CONDOR_CONFIG=")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "condor_config"
        prelude = (
            "work='$work' user='$user' paths= namespace='$namespace' SLURM_JOB_ID=\n"
            "end='$end' takes_jobs_until='$takes_jobs_until'\n"
        )
        body = part.replace('"$work/condor_config"', shlex.quote(str(out)))
        subprocess.run(["bash", "-c", prelude + body], check=True)
        return out.read_text()


def _config_settings(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.replace("\\\n", " ").splitlines():
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or line.lstrip().startswith("#") or " " in key:
            continue
        out[key] = value.strip().replace(f"$({key})", out.get(key, "")).strip()
    return out


# --- the calls: deadlines, environment, malformed answers --------------------------


class Scripted(NoExecutor):
    """Answers each command from `answers` (by its first word; "sh" is the
    token staging), recording every argv and its timeout."""

    def __init__(self, answers: Mapping[str, str | Exception]) -> None:
        self.answers = dict(answers)
        self.calls: list[tuple[tuple[str, ...], float]] = []

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
    ) -> Completed:
        self.calls.append((tuple(argv), timeout_s))
        answer = self.answers.get(argv[0], "")
        if isinstance(answer, Exception):
            raise answer
        return Completed(tuple(argv), 0, answer, "")


STAGED = {"sh": "/home/tide/.tide\n"}


def test_pilots_are_submitted_with_none_of_the_controllers_environment(tmp_path: Path) -> None:
    executor = Scripted({**STAGED, "sbatch": "4242\n"})
    assert _site(tmp_path, executor).create("tide-maxwell-0000abcd") == {"job_id": "4242"}
    (sbatch,) = [argv for argv, _ in executor.calls if argv[0] == "sbatch"]
    assert "--export=NIL" in sbatch
    assert not [arg for arg in sbatch if arg.startswith("--export") and arg != "--export=NIL"]


def test_the_pilot_sets_its_own_path_and_home(tmp_path: Path) -> None:
    """With --export=NIL a job may start with next to no environment: the
    script's first lines give it a standard PATH and the user's HOME."""
    script = _site(tmp_path).script("tide-maxwell-0000abcd")
    prologue = script.split("\ntoken=", 1)[0]
    probe = prologue + '\nprintf "%s\\n%s\\n" "$PATH" "$HOME"\n'
    done = subprocess.run(
        ["/usr/bin/env", "-i", "/bin/bash", "-s"],
        input=probe,
        text=True,
        capture_output=True,
        check=True,
    )
    path, home = done.stdout.splitlines()
    assert {"/usr/bin", "/bin", "/usr/sbin"} <= set(path.split(":"))
    assert home.startswith("/")  # the user's, from the passwd entry


def test_every_slurm_command_has_the_configured_deadline(tmp_path: Path) -> None:
    executor = Scripted({**STAGED, "sbatch": "4242\n"})
    site = _site(tmp_path, executor)
    site.create("tide-maxwell-0000abcd")
    site.list_owned()
    site.owner_queue()
    site.destroy("tide-maxwell-0000abcd", {"job_id": "4242"})
    timeout = _config(tmp_path).command_timeout_s
    assert {argv[0] for argv, _ in executor.calls} == {"sh", "sbatch", "squeue", "sinfo", "scancel"}
    assert {t for _, t in executor.calls} == {timeout}


def test_a_hung_slurm_command_is_killed_and_a_deadline_exceeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real squeue that never answers, run by the real LocalExecutor."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\nexec sleep 300\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    site = _site(tmp_path, LocalExecutor())  # type: ignore[arg-type]
    site._config = _config(
        tmp_path,
        CONFIG.replace(
            "partition: backfill\n", "partition: backfill\n    command_timeout_s: 0.5\n", 1
        ),
    )
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="site maxwell: listing pilots") as caught:
        site.list_owned()
    assert caught.value.retryable
    assert time.monotonic() - started < 60  # not the 300 s of the sleep


def test_a_command_timeout_over_ssh_is_a_deadline_exceeded_too(tmp_path: Path) -> None:
    executor = Scripted({"squeue": CommandTimedOut("squeue on tide@login: timed out after 30 s")})
    with pytest.raises(DeadlineExceeded) as caught:
        _site(tmp_path, executor).owner_queue()
    assert caught.value.retryable


OURS = "tide-owner=tide-lab tide-site=maxwell"


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("garbage\n", "JOBID|NAME|STATE|TIME|COMMENT"),
        ("77|tide-maxwell-1|RUNNING|1:00\n", "JOBID|NAME|STATE|TIME|COMMENT"),
        (f"x77|tide-maxwell-1|RUNNING|1:00|{OURS}\n", "numeric id"),
        (f"77||RUNNING|1:00|{OURS}\n", "numeric id"),
        (f"²|tide-maxwell-1|RUNNING|1:00|{OURS}\n", "numeric id"),
        (f"77|tide-maxwell-1|RUNNING|1:x|{OURS}\n", "time used"),
    ],
)
def test_a_malformed_pilot_listing_is_a_site_error(
    tmp_path: Path, output: str, problem: str
) -> None:
    site = _site(tmp_path, Scripted({"squeue": f"5|someone-elses|PENDING|0:00|other\n{output}"}))
    with pytest.raises(SiteError) as caught:
        site.list_owned()
    message = str(caught.value)
    assert message.startswith("site maxwell: listing pilots: squeue printed line 2 ")
    assert problem in message
    assert caught.value.retryable


def test_other_jobs_fields_are_not_checked(tmp_path: Path) -> None:
    listing = (
        f"5_[1-3]|a|PENDING|0:00|\n6|b|RUNNING|1:00|whatever\n"
        f"77|tide-maxwell-1|RUNNING|1:02:03|{OURS}\n"
    )
    owned = _site(tmp_path, Scripted({"squeue": listing})).list_owned()
    assert [(o.resource_id, o.details, o.placed) for o in owned] == [
        ("tide-maxwell-1", {"job_id": "77"}, True)
    ]
    # When it got its node, from Slurm's count of its time there (tide.budget).
    assert owned[0].started_at == pytest.approx(time.time() - 3724, abs=5)


@pytest.mark.parametrize("printed", ["", "Submitted batch job 12\n", "12x\n", "²\n"])
def test_sbatch_printing_no_job_id_is_a_site_error(tmp_path: Path, printed: str) -> None:
    site = _site(tmp_path, Scripted({**STAGED, "sbatch": printed}))
    with pytest.raises(
        SiteError, match=r"site maxwell: submitting pilot \S+: sbatch printed no job id"
    ):
        site.create("tide-maxwell-0000abcd")


@pytest.mark.parametrize(
    ("answers", "problem"),
    [
        ({"squeue": "11|1|Resources\n"}, "squeue printed line 1 '11|1|Resources'"),
        ({"squeue": "11|one|Resources|owner\n"}, "squeue printed line 1"),
        ({"squeue": "11|-1|Resources|owner\n"}, "JOBID|NODES|REASON|PARTITION"),
        ({"sinfo": "max-001 idle\n"}, "sinfo printed line 1 'max-001 idle', not NODE|STATE"),
        ({"sinfo": "max-001|idle|extra\n"}, "sinfo printed line 1"),
    ],
)
def test_a_malformed_owners_queue_is_a_site_error(
    tmp_path: Path, answers: dict[str, str], problem: str
) -> None:
    site = _site(tmp_path, Scripted(answers))
    with pytest.raises(SiteError) as caught:
        site.owner_queue()
    assert str(caught.value).startswith("site maxwell: reading the owners' queue: ")
    assert problem in str(caught.value)
    assert caught.value.retryable


@pytest.mark.parametrize("running", ["1\n", "x|0:05\n", "1|5 minutes\n", "1|1:2:3:4\n"])
def test_malformed_time_left_is_a_value_error(running: str) -> None:
    with pytest.raises(ValueError, match=r"squeue printed line 1 .*NODES\|TIME_LEFT"):
        ending_nodes(running)


def test_malformed_time_left_makes_the_owners_queue_a_site_error(tmp_path: Path) -> None:
    class Queue(NoExecutor):
        def run(
            self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
        ) -> Completed:
            running = "--states=RUNNING" in argv
            return Completed(tuple(argv), 0, "2|in 5 s\n" if running else "", "")

    with pytest.raises(SiteError, match="site maxwell: reading the owners' queue: squeue printed"):
        _site(tmp_path, Queue()).owner_queue()


def test_an_unreadable_token_file_is_a_site_error(tmp_path: Path) -> None:
    site = _site(tmp_path, Scripted({}))
    (tmp_path / "worker.token").unlink()
    with pytest.raises(SiteError, match="staging the worker token: cannot read") as caught:
        site.create("tide-maxwell-0000abcd")
    assert not caught.value.retryable


# --- pilots' own tokens -------------------------------------------------------


def _keyed_site(tmp_path: Path, executor: NoExecutor) -> tuple[SlurmBackfillSite, SigningKey]:
    key = SigningKey("tide-workers", os.urandom(32))
    site = SlurmBackfillSite(
        "maxwell",
        _config(tmp_path),
        executor=executor,
        owner="tide-lab",
        pool=PoolEndpoint("127.0.0.1:29618", "lab.tide"),
        signing_key=key,
        boot_timeout_s=300,
        shape=Shape(2, 1000, 5000),
    )
    return site, key


class Recording(Scripted):
    """Scripted, keeping each command's stdin too; a command that runs
    sbatch (the submission with a token is `sh -c ... sbatch ...`) prints
    a job id."""

    def __init__(self, answers: Mapping[str, str | Exception]) -> None:
        super().__init__(answers)
        self.stdins: list[str | None] = []

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
    ) -> Completed:
        self.stdins.append(stdin)
        done = super().run(argv, stdin=stdin, timeout_s=timeout_s)
        return Completed(tuple(argv), 0, "4242\n", "") if "sbatch" in argv else done


def test_each_pilot_is_submitted_with_a_token_of_its_own_on_stdin(tmp_path: Path) -> None:
    executor = Recording(STAGED)
    site, key = _keyed_site(tmp_path, executor)
    assert site.create("tide-maxwell-0000abcd") == {"job_id": "4242"}
    (argv, _), stdin = executor.calls[-1], executor.stdins[-1]
    assert argv[:2] == ("sh", "-c")
    assert "--export=NIL" in argv
    token_file = "/home/tide/.tide/tokens/tide-maxwell-0000abcd.token"  # noqa: S105
    assert argv[4] == token_file
    assert stdin is not None
    token, script = stdin.split("\n", 1)
    assert not [arg for arg in argv if token in arg or "eyJ" in arg]  # never on a command line
    assert token not in script
    assert script.startswith("#!/bin/bash")
    payload = tokens.verify(key, token)
    assert payload["sub"] == "tide-worker-tide-maxwell-0000abcd@lab.tide"
    # Bounded by the pilot's life: the boot timeout, the walltime (12 h), a margin.
    assert payload["exp"] - payload["iat"] == 300 + 12 * 3600 + PILOT_TOKEN_MARGIN_S
    # The pilot reads it from there and removes it; the script holds no secret.
    assert f"token={token_file}\n" in script
    assert 'rm -f "$token"' in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_the_token_is_written_0600_and_taken_back_if_sbatch_fails(tmp_path: Path) -> None:
    """The real submit command, sbatch replaced by a stand-in that reads the script."""
    executor = Recording(STAGED)
    site, _ = _keyed_site(tmp_path, executor)
    site.create("tide-maxwell-0000abcd")
    (argv, _), stdin = executor.calls[-1], executor.stdins[-1]
    assert stdin is not None
    token_file = tmp_path / "own.token"
    sh, dash_c, command, name = argv[:4]
    assert argv[5] == str((300 + PILOT_TOKEN_MARGIN_S) // 60 + 1)  # the orphans' age
    # An orphan (its pilot cancelled behind the controller's back) is swept
    # on the way; a token staged a moment ago for another pilot is not.
    orphan, fresh = tmp_path / "tide-maxwell-old.token", tmp_path / "tide-maxwell-new.token"
    for path in (orphan, fresh):
        path.write_text("x\n")
    os.utime(orphan, (time.time() - 20 * 60, time.time() - 20 * 60))
    for exit_code in (0, 3):
        stand_in = f'cat > "{tmp_path}/script"; echo 4242; exit {exit_code}'
        done = subprocess.run(
            [sh, dash_c, command, name, str(token_file), "11", "sh", "-c", stand_in],
            input=stdin,
            text=True,
            capture_output=True,
            check=False,
        )
        assert done.returncode == exit_code, done.stderr
        assert (tmp_path / "script").read_text() == stdin.split("\n", 1)[1]
        if exit_code == 0:
            assert token_file.read_text() == stdin.split("\n", 1)[0] + "\n"
            assert token_file.stat().st_mode & 0o777 == 0o600
            token_file.unlink()
        else:
            assert not token_file.exists()
    assert not orphan.exists()
    assert fresh.exists()


def test_a_destroyed_pilots_token_is_removed_and_stale_ones_swept(tmp_path: Path) -> None:
    executor = Recording(STAGED)
    site, _ = _keyed_site(tmp_path, executor)
    site.destroy("tide-maxwell-0000abcd", {"job_id": "4242"})
    commands = [argv for argv, _ in executor.calls]
    assert commands[-1] == ("rm", "-f", "--", "/home/tide/.tide/tokens/tide-maxwell-0000abcd.token")
    (stage,) = [argv for argv in commands if argv[0] == "sh"]
    minutes = (300 + PILOT_TOKEN_MARGIN_S) // 60 + 1  # the boot timeout and the margin
    assert f"-mmin +{minutes} -delete" in stage[2]
    assert "rm -f worker.token" in stage[2]  # no shared token left from before


def test_walltimes_in_seconds() -> None:
    assert walltime_s("12:00:00") == 43200
    assert walltime_s("2-01:00:05") == 2 * 86400 + 3605


# --- a pilot whose boot failed ------------------------------------------------


class Listing(NoExecutor):
    """squeue answered from `queues` in turn, sbatch with job 73; the rest
    (staging, the reasons of failed boots) run by the real shell, with HOME
    at `home`."""

    def __init__(self, queues: Sequence[str], home: Path) -> None:
        self.queues = iter(queues)
        self.home = home
        self.calls: list[tuple[str, ...]] = []

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
    ) -> Completed:
        self.calls.append(tuple(argv))
        if argv[0] == "squeue":
            return Completed(tuple(argv), 0, next(self.queues), "")
        if argv[0] == "sbatch":
            return Completed(tuple(argv), 0, "73\n", "")
        done = subprocess.run(
            list(argv),
            env={"HOME": str(self.home), "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
        )
        return Completed(tuple(argv), done.returncode, done.stdout, done.stderr)


def test_a_pilot_whose_boot_failed_is_reported_ended_and_failed_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failed = tmp_path / ".tide" / "failed" / "tide-lab" / "maxwell"  # this owner's, this site's
    failed.mkdir(parents=True)
    other = tmp_path / ".tide" / "failed" / "tide-lab" / "desy"  # another site's: not read
    other.mkdir()
    (other / "tide-desy-e.reason").write_text("not this site's\n")
    # Left before this controller started: read at its first listing.
    (failed / "tide-maxwell-c.reason").write_text("HTCondor's master exited (status 1)\n")
    old = failed / "tide-maxwell-old.reason"
    old.write_text("long ago\n")
    os.utime(old, (time.time() - 30 * 60, time.time() - 30 * 60))
    a, b = f"71|tide-maxwell-a|RUNNING|0:05|{OURS}\n", f"72|tide-maxwell-b|RUNNING|0:05|{OURS}\n"
    executor = Listing([a + b, b, b, ""], tmp_path)
    site = _site(tmp_path, executor)

    with caplog.at_level("WARNING"):
        first = site.list_owned()
    assert [c[0] for c in executor.calls] == ["squeue", "sh"]
    assert [(o.resource_id, o.ended) for o in first] == [
        ("tide-maxwell-a", False),
        ("tide-maxwell-b", False),
        ("tide-maxwell-c", True),
    ]
    assert not old.exists()  # swept: its pilot's record is long gone
    assert [r.getMessage().split("pilot ", 1)[1] for r in caplog.records] == [
        "tide-maxwell-c (job ?) failed to boot: HTCondor's master exited (status 1)"
    ]
    # Pilot a fails; pilot d is submitted and fails before the next listing sees it.
    (failed / "tide-maxwell-a.reason").write_text(
        'the STARTD exited with status 4: ERROR "SLOT_TYPE_1: too many cpus"\n'
    )
    assert site.create("tide-maxwell-d") == {"job_id": "73"}
    (failed / "tide-maxwell-d.reason").write_text("the STARTD died due to signal 11\n")
    caplog.clear()
    executor.calls.clear()
    with caplog.at_level("WARNING"):
        second = {o.resource_id: o for o in site.list_owned()}
    (read,) = [c for c in executor.calls if c[0] == "sh"]
    assert read[-2:] == ("tide-maxwell-a", "tide-maxwell-d")  # only those that left
    gone = second["tide-maxwell-a"]
    assert (gone.failed, gone.ended, gone.placed, gone.details) == (
        True,
        True,
        False,
        {"job_id": "71"},
    )
    assert second["tide-maxwell-d"].details == {"job_id": "73"}
    assert [r.getMessage().split("pilot ", 1)[1] for r in caplog.records] == [
        "tide-maxwell-a (job 71) failed to boot: the STARTD exited with status 4: "
        'ERROR "SLOT_TYPE_1: too many cpus"',
        "tide-maxwell-d (job 73) failed to boot: the STARTD died due to signal 11",
    ]
    # Still reported (should the cycle that read it fail); read and logged once.
    caplog.clear()
    executor.calls.clear()
    assert sorted(o.resource_id for o in site.list_owned()) == [
        "tide-maxwell-a",
        "tide-maxwell-b",
        "tide-maxwell-c",
        "tide-maxwell-d",
    ]
    assert [c[0] for c in executor.calls] == ["squeue"]
    assert not caplog.records
    # A pilot that left the queue with no reason behind it ended; it did not fail.
    assert "tide-maxwell-b" not in [o.resource_id for o in site.list_owned()]
    assert executor.calls[-1][-1] == "tide-maxwell-b"


def _native_pilot(
    tmp_path: Path,
    master: str,
    *,
    site: SlurmBackfillSite | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The native pilot's script, run by bash with a stand-in condor_master
    (`master`: its body) on PATH, in a staging folder of its own."""
    staging, bin_dir, tmp = tmp_path / "staging", tmp_path / "bin", tmp_path / "tmp"
    for folder in (staging, bin_dir, tmp):
        folder.mkdir(exist_ok=True)
    (staging / "worker.token").write_text("x\n")
    stand_in = bin_dir / "condor_master"
    stand_in.write_text('#!/bin/bash\nlog="$(dirname "$CONDOR_CONFIG")/log"\n' + master)
    stand_in.chmod(0o755)
    site = site or _site(tmp_path)
    site._work_dir = str(staging)
    return subprocess.run(
        ["bash", "-s"],
        input=site.script("tide-maxwell-0000abcd"),
        cwd=staging,
        env={
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "TMPDIR": str(tmp),
            "HOME": str(tmp),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("master", "reason"),
    [
        (  # the startd exits at its start; the master would restart it for ever
            # (a shell's background job ignores SIGQUIT: the stand-in sets its own
            # handler first, as HTCondor does; then the startd's log as HTCondor 23
            # writes it, lines that look like errors first, and the master's line)
            "exec python3 - \"$log\" <<'EOF'\n"
            "import signal, sys, time\n"
            "signal.signal(signal.SIGQUIT, lambda *_: sys.exit(0))\n"
            "open(sys.argv[1] + '/StartLog', 'w').write(\n"
            "    '12/07/26 16:00:01 Daemon Log is logging: D_ALWAYS D_ERROR\\n'\n"
            "    '12/07/26 16:00:01 Failed to run hibernation plugin\\n'\n"
            "    '12/07/26 16:00:01 ERROR \"SLOT_TYPE_1: too many cpus\" at line 1\\n')\n"
            "print('12/07/26 16:00:01 The STARTD (pid 4321) exited with status 4', flush=True)\n"
            "time.sleep(300)\n"
            "EOF\n",
            "the STARTD exited with status 4: "
            '12/07/26 16:00:01 ERROR "SLOT_TYPE_1: too many cpus" at line 1',
        ),
        (  # the master itself
            'echo "ERROR: cannot read the configuration" >&2\nexit 1\n',
            "HTCondor's master exited (status 1) before the startd was up: "
            "ERROR: cannot read the configuration",
        ),
    ],
)
def test_a_native_pilot_whose_daemons_fail_ends_at_once_and_says_why(
    tmp_path: Path, master: str, reason: str
) -> None:
    started = time.monotonic()
    done = _native_pilot(tmp_path, master)
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - started < 30  # not the boot timeout's minutes
    assert f"tide-pilot: boot failed: {reason}" in done.stderr
    assert "--- the last lines of HTCondor's" in done.stderr
    reason_file = tmp_path / "staging" / "failed/tide-lab/maxwell/tide-maxwell-0000abcd.reason"
    assert reason_file.read_text() == reason + "\n"
    assert list((tmp_path / "tmp").iterdir()) == []  # its folder (the token) is gone


def test_a_native_pilot_whose_startd_is_up_is_no_failure(tmp_path: Path) -> None:
    """Up (its address written), then its master ends: the pilot's end, not a failed boot."""
    master = "echo \"12/07/26 16:00:01 Setting ready state 'Ready' for STARTD\"\nsleep 1\nexit 0\n"
    done = _native_pilot(tmp_path, master)
    assert done.returncode == 0, done.stderr
    assert "boot failed" not in done.stderr
    assert not (tmp_path / "staging" / "failed").exists()


def test_a_native_pilot_advertises_its_end_and_takes_no_job_that_outlasts_it(
    tmp_path: Path,
) -> None:
    settings = _settings(_site(tmp_path).script("tide-maxwell-0000abcd"))
    assert settings["TideEndTime"] == "$end"
    assert settings["TideTakesJobsUntil"] == "$takes_jobs_until"
    assert {"TideEndTime", "TideTakesJobsUntil"} <= set(settings["STARTD_ATTRS"].split())
    # The recipe's START, and no job after the cut nor one declared to outlast it.
    assert settings["START"] == (
        "(True) && time() < $takes_jobs_until && (TARGET.AllowedJobDuration =?= undefined"
        " || time() + TARGET.AllowedJobDuration <= $takes_jobs_until)"
    )


@pytest.mark.parametrize("slurm_end", [True, False])
def test_a_native_pilot_ends_when_slurm_says_and_drains_before(
    tmp_path: Path, slurm_end: bool
) -> None:
    """Run for real (a stand-in master and condor_drain): the end is Slurm's
    SLURM_JOB_END_TIME, else the start and the walltime; the drain comes
    drain_before_end_s before it (here at once: the end is near)."""
    now = int(time.time())
    end = now + 100 if slurm_end else now + 12 * 3600
    site = _site(tmp_path)
    site._config = site._config.model_copy(
        update={"drain_before_end_s": 100 if slurm_end else 12 * 3600 - 1}
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    drain = bin_dir / "condor_drain"
    drain.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/drained\n')
    drain.chmod(0o755)
    master = (
        f'cp "$CONDOR_CONFIG" {tmp_path}/config\n'
        "echo \"12/07/26 16:00:01 Setting ready state 'Ready' for STARTD\"\n"
        f"for _ in $(seq 50); do [ -s {tmp_path}/drained ] && exit 0; sleep 0.1; done\nexit 1\n"
    )
    env = {"SLURM_JOB_END_TIME": str(end)} if slurm_end else {"SLURM_JOB_START_TIME": str(now)}
    done = _native_pilot(tmp_path, master, site=site, env=env)
    assert done.returncode == 0, done.stderr
    written = _config_settings((tmp_path / "config").read_text())
    assert abs(int(written["TideEndTime"]) - end) <= 2
    assert int(written["TideTakesJobsUntil"]) <= now + 2  # the cut: now, at the latest
    assert f"the walltime ends at {written['TideEndTime']}" in (tmp_path / "drained").read_text()
