"""The Slurm backfill site, for real: `tide run` reaches the lab's Slurm
cluster (tests/bin/lab-slurm) over SSH through its login node, as the
cluster's `tide` account, and scales pilots - native HTCondor startds in
Slurm jobs - into the lab pool for grid jobs that only the site can run.

- Backfill fills idle nodes when grid jobs wait, and the jobs complete.
- An owner job submitted while backfill holds every node starts; every grid
  job evicted for it returns to idle in its schedd and later completes.
- No pilot is submitted while owner jobs wait.
- `tide evacuate --site S --nodes N` gives back N nodes, least busy first.
- A pilot runs every job inside cvmfsexec when the site has no CVMFS, and
  an idle pilot is drained and leaves.
- A controller killed in the middle of an evacuation and started again
  leaves no orphan pilot: the store and the cluster agree; the evicted
  grid jobs complete once the site is resumed.
- Docker pilots (pilot_runtime: docker) run the tide/condor image on the
  engine whose socket the cluster's nodes have; an evacuated or killed
  pilot leaves no container behind.
- Each pilot joins with a token of its own (the site has the workers'
  signing key). A native pilot's jobs run as the pilot's user, in a mount
  namespace of their own (bubblewrap) where they find no token; where a
  node allows none, a job could read it, and it advertises nothing but
  that pilot, for no longer than the pilot can live.
- A pilot with a short walltime takes a job that fits and refuses one
  whose declared runtime does not, drains before its end, and a
  replacement boots before that end while demand lasts.
- A pilot whose startd cannot start (a setting it refuses) ends at once
  with the tail of HTCondor's logs in its Slurm output, and the controller
  logs the reason and counts a failed boot.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import lab, slurm_lab
from tests.integration.test_controller import Daemon, _secret, _submit
from tests.integration.test_worker_tokens import assert_advertises_only_its_own
from tests.pool import client
from tests.probes import JWT, assert_no_token_in_state
from tide.htcondor import tokens
from tide.sites.slurm.adapter import PILOT_TOKEN_MARGIN_S, walltime_s

GRID_JOB_S = 20
# The lab cluster preempts backfill for `owner` jobs itself (bf_interval 1 s):
# Tide leaves those jobs to it for this long. `owner-nopreempt` jobs are Tide's.
OWNER_GRACE_S = 3
NODES = len(slurm_lab.NODES)


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    slurm_lab.slurm_up()
    yield
    _cancel_all()


def _cancel_all() -> None:
    """Every Slurm job of the lab cluster's users, and the grid jobs of these tests."""
    for user in (slurm_lab.PILOT_USER, slurm_lab.OWNER_USER):
        slurm_lab.slurm("scancel", "-u", user, user="root")
    lab.in_container(
        lab.CM_HOST,
        lab.CM_CONTAINER,
        "condor_rm",
        "-constraint",
        "TideSlurmTest =?= true",
        check=False,
    )


def _config(tmp: Path, owner: str, site: str, extra: Mapping[str, object]) -> Path:
    settings = {
        "attributes": {"TideSiteKind": "slurm"},
        "owner_partitions": [slurm_lab.OWNER_PARTITION, slurm_lab.NOPREEMPT_PARTITION],
        "owner_grace_s": OWNER_GRACE_S,
        "walltime": "01:00:00",
        "idle_exit_s": 300,
        **extra,
    }
    return lab.controller_config(
        tmp,
        token=_secret(tmp, "controller.token"),
        owner=owner,
        sites=slurm_lab.backfill_site(
            tmp,
            site,
            {"worker_signing_key_file": str(_secret(tmp, "workers_signing_key"))},
            settings=settings,
            limits={"idle_timeout_s": 30, "owner_quiet_s": 5},
        ),
    )


@contextmanager
def _daemon(tmp: Path, extra: Mapping[str, object] | None = None) -> Iterator[Daemon]:
    tag = uuid.uuid4().hex[:6]
    owner, site = f"test-{tag}", f"hpc{tag}"
    d = Daemon(_config(tmp, owner, site, extra or {}), owner, site, tmp / "tide.log")
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        _cancel_all()
    text = d.log.read_text()
    assert d.code in (0, None), text[-3000:]
    assert not re.search(JWT, text), "a token in the controller's log"
    assert_no_token_in_state(tmp)


def _pilots(site: str) -> dict[str, str]:
    """The site's pilots in the cluster's queue: name -> state."""
    out = slurm_lab.slurm("squeue", "--me", "--noheader", "--format=%j %T")
    pairs = (line.split() for line in out.splitlines() if line.strip())
    return {name: state for name, state in pairs if name.startswith(f"tide-{site}-")}


def _grid_jobs(site: str, count: int, seconds: int = GRID_JOB_S) -> str:
    return _submit(site, seconds, count, "request_disk = 10MB", "+TideSlurmTest = true")


def _jobs(cluster: str) -> list[tuple[int, int]]:
    """(JobStatus, NumJobStarts) of a cluster's jobs still queued."""
    out = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_q", cluster, "-af", "JobStatus", "NumJobStarts"
    ).stdout
    return [(int(a), int(b)) for a, b in (line.split() for line in out.splitlines() if line)]


def _done(cluster: str) -> int:
    out = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_history", cluster, "-af", "ExitCode"
    ).stdout
    return sum(1 for code in out.split() if code == "0")


def _until(what: str, check: Callable[[], bool], timeout: float = 240) -> None:
    lab.wait_for(what, check, timeout=timeout)


def _until_jobs(cluster: str, want: list[tuple[int, int]], what: str, timeout: float) -> None:
    """Wait until the cluster's (JobStatus, NumJobStarts), sorted, are `want`."""
    seen: list[tuple[int, int]] = []

    def check() -> bool:
        nonlocal seen
        seen = sorted(_jobs(cluster))
        return seen == want

    try:
        lab.wait_for(what, check, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: (JobStatus, NumJobStarts) last {seen}") from None


def _all_running(cluster: str) -> None:
    _until(
        "every grid job running on a pilot",
        lambda: [s for s, _ in _jobs(cluster)] == [2] * NODES,
    )


def _owner_job(seconds: int, partition: str = slurm_lab.OWNER_PARTITION) -> str:
    return slurm_lab.sbatch(
        f"#!/bin/bash\nsleep {seconds}\n",
        user=slurm_lab.OWNER_USER,
        partition=partition,
        extra=("--nodes=1", "--exclusive"),
    )


def test_backfill_fills_idle_nodes_and_gives_them_to_owners(tmp_path: Path) -> None:
    with _daemon(tmp_path) as d:
        cluster = _grid_jobs(d.site, NODES, seconds=600)
        _all_running(cluster)
        assert sorted(_pilots(d.site).values()) == ["RUNNING"] * NODES  # every node backfilled
        # The owners come back: their job starts, the evicted grid job is idle
        # again (not lost), and no pilot is submitted while they wait.
        owner = _owner_job(30)
        slurm_lab.wait_for_state(owner, {"RUNNING"}, timeout=60)
        _until(
            "the evicted grid job back to idle",
            lambda: sorted(_jobs(cluster))[0] == (1, 1),
            timeout=60,
        )
        assert list(_pilots(d.site).values()).count("RUNNING") == NODES - 1
        # The owner job ends; after the owners' quiet time a pilot comes back
        # and the evicted job runs again.
        _until_jobs(
            cluster,
            # NumJobStarts counts a start once it ended: the evicted job's first.
            [(2, 0)] * (NODES - 1) + [(2, 1)],
            "the evicted job running again, the others untouched",
            timeout=180,
        )
        d.tide("evacuate", "--site", d.site, "--nodes", "2")
        _until(
            "two nodes given back",
            lambda: list(_pilots(d.site).values()).count("RUNNING") == NODES - 2,
            timeout=60,
        )
        _until(
            "the two evacuated nodes' jobs back to idle",
            lambda: sorted(s for s, _ in _jobs(cluster)) == [1, 1, 2, 2],
            timeout=60,
        )
        status = d.tide("status", "--no-demand")
        assert status.splitlines()[1].split()[3] == str(NODES - 2), status  # running
        d.tide("resume", "--site", d.site)


def test_tide_evacuates_exactly_what_owners_lack_least_busy_first(tmp_path: Path) -> None:
    # Owners on a partition that does not preempt: only Tide gives nodes back.
    with _daemon(tmp_path) as d:
        busy = _grid_jobs(d.site, NODES - 1, seconds=600)
        _until(
            "three pilots busy, a fourth booted for nothing yet",
            lambda: [s for s, _ in _jobs(busy)] == [2] * (NODES - 1),
        )
        idle_pilot = _grid_jobs(d.site, 1, seconds=5)  # its pilot is idle afterwards
        _until("the short job done", lambda: _done(idle_pilot) == 1)
        pilots = _pilots(d.site)
        assert sorted(pilots.values()) == ["RUNNING"] * NODES
        owners = [_owner_job(60, slurm_lab.NOPREEMPT_PARTITION) for _ in range(2)]
        for job in owners:
            slurm_lab.wait_for_state(job, {"RUNNING"}, timeout=60)
        # Exactly two nodes given back: the idle pilot first, then one busy one.
        _until_jobs(busy, [(1, 1)] + [(2, 0)] * (NODES - 2), "one busy job evicted", 60)
        assert list(_pilots(d.site).values()).count("RUNNING") == NODES - 2
        log = d.log.read_text()
        assert log.count("msg=evacuating") == 2, log[-3000:]
        assert "given back, 0 running jobs vacated" in log


def test_no_pilot_while_owner_jobs_wait(tmp_path: Path) -> None:
    owners = [_owner_job(25) for _ in range(NODES + 1)]  # every node, and one waiting
    slurm_lab.wait_for_state(owners[0], {"RUNNING"}, timeout=60)
    with _daemon(tmp_path) as d:
        cluster = _grid_jobs(d.site, 2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # owners wait: the daemon submits nothing
            assert _pilots(d.site) == {}
            time.sleep(1)
        _until("the grid jobs done once the owners are", lambda: _done(cluster) == 2, 300)


def test_a_restart_mid_evacuation_leaves_no_orphan_pilot(tmp_path: Path) -> None:
    with _daemon(tmp_path) as d:
        cluster = _grid_jobs(d.site, NODES, seconds=60)
        _all_running(cluster)
        d.tide("evacuate", "--site", d.site, "--wait-s", "0")
        time.sleep(0.5)
        d.kill()  # in the middle of it
        d.start()
        _until("every pilot given back", lambda: _pilots(d.site) == {}, timeout=60)
        _until(
            "the store agrees: nothing alive",
            lambda: d.tide("status", "--no-demand").splitlines()[1].split()[1:] == ["0"] * 6,
            timeout=60,
        )
        assert sorted(_jobs(cluster)) == [(1, 1)] * NODES  # all back to idle, none lost
        d.tide("resume", "--site", d.site)
        _until("every evicted grid job completed", lambda: _done(cluster) == NODES, 300)
        d.stop()


CVMFSEXEC_DIR = "/opt/tide/cvmfsexec"


def test_a_pilot_runs_jobs_inside_cvmfsexec_and_leaves_when_idle(tmp_path: Path) -> None:
    # The distribution the cvmfs role installed (cvmfsexec mode, with the
    # lab's cvmfsexec double) on the lab's cvmfsexec worker, copied to the
    # cluster's nodes as a site would put it on a shared file system.
    dist = lab.on_host(lab.CVMFSEXEC_WORKER_HOST, "tar", "-C", CVMFSEXEC_DIR, "-c", ".")
    slurm_lab.slurm("mkdir", "-p", CVMFSEXEC_DIR, user="root")
    lab.run(
        ["docker", "exec", "-i", slurm_lab.CONTAINER, "tar", "-C", CVMFSEXEC_DIR, "-x"],
        input_text=dist.stdout,
    )
    extra = {"cvmfsexec_dir": CVMFSEXEC_DIR, "cvmfs_repositories": lab.CVMFS_REPOSITORIES}
    with _daemon(tmp_path, extra) as d:
        cluster = _grid_jobs(d.site, 1, seconds=5)  # a pilot comes for it
        _until("the grid job done on a pilot", lambda: _done(cluster) == 1)
        (pilot,) = _pilots(d.site)  # idle now, for idle_timeout_s
        job = lab.run_job('echo "$TIDE_CVMFSEXEC_DOUBLE"', on=pilot)
        assert job.exit_code == "0"
        assert job.output.startswith(f"repositories={' '.join(lab.CVMFS_REPOSITORIES)} "), job
        # Idle for idle_timeout_s: drained if idle (SIGURG to the pilot:
        # condor_drain -check), given back once its startd says Drained; the
        # Slurm job ends.
        _until("the idle pilot drained and gone", lambda: _pilots(d.site) == {}, timeout=180)
        log = d.log.read_text()
        assert "startd draining" in log, log[-3000:]
        assert "request=SIGURG" in log, log[-3000:]
        assert "drained: no job left" in log, log[-3000:]


def _pilot_containers() -> dict[str, str]:
    """Docker pilots' containers on this machine's engine: pilot -> Slurm job id."""
    out = lab.run(
        [
            "docker", "ps", "--filter", "label=tide.pilot", "--format",
            '{{.Label "tide.pilot"}} {{.Label "tide.slurm-job"}}',
        ]
    ).stdout  # fmt: skip
    return dict(line.split() for line in out.splitlines() if line.strip())


def test_docker_pilots_run_tide_condor_and_leave_nothing_behind(tmp_path: Path) -> None:
    # The cluster's nodes may run containers (the lab engine's socket is
    # mounted in): each pilot runs the tide/condor image, token on stdin.
    with _daemon(tmp_path, {"pilot_runtime": "docker"}) as d:
        cluster = _grid_jobs(d.site, 2, seconds=600)
        _until("both grid jobs running", lambda: [s for s, _ in _jobs(cluster)] == [2, 2])
        pilots = _pilots(d.site)
        assert sorted(pilots.values()) == ["RUNNING"] * 2
        assert sorted(_pilot_containers()) == sorted(pilots)
        (evacuated, killed) = sorted(pilots)
        for pilot in pilots:  # each grid job's process runs inside its pilot's container
            top = lab.run(["docker", "top", f"tide-pilot-{pilot}", "-o", "pid,args"]).stdout
            assert "condor_starter" in top, top
        # An evacuation vacates the job back to idle and the container is gone.
        d.tide("evacuate", "--site", d.site, "--nodes", "1", "--wait-s", "0")
        _until("one pilot given back", lambda: len(_pilots(d.site)) == 1, timeout=60)
        _until("its container gone", lambda: evacuated not in _pilot_containers(), timeout=30)
        _until_jobs(cluster, [(1, 1), (2, 0)], "the evacuated job back to idle", 60)
        # A pilot killed outright (SIGKILL to its batch shell) takes its
        # container with it: the lifeline ends.
        job_id = _pilot_containers()[killed]
        slurm_lab.slurm("scancel", "--batch", "--signal=KILL", job_id)
        _until("the killed pilot's container gone", lambda: _pilot_containers() == {}, 60)
        _until_jobs(cluster, [(1, 1), (1, 1)], "both jobs back to idle", 120)
        d.tide("resume", "--site", d.site)


# A job's search for tokens wherever the pilot's user may keep them: this
# node's temporary folders (the pilots' work folders) and the user's home
# (the controller's staging folder), each found token printed whole.
_FIND_TOKENS = (
    'home=$(getent passwd "$(id -u)" | cut -d: -f6); echo user $(id -un); '
    f"for f in $(grep -rlsE '{JWT}' /tmp /var/tmp \"$home\" 2>/dev/null); do "
    'echo "FOUND $f $(head -n 1 "$f")"; done; echo done'
)


def _pilot_token(pilot: str) -> str:
    """A running pilot's token, read from its work folder as its user (as a
    job could where a node has no user namespaces)."""
    out = slurm_lab.slurm("sh", "-c", 'cat ~/.tide/"$1"-*.out', "-", pilot)
    match = re.search(r"started HTCondor \(master pid \d+\) in (/\S+)", out)
    assert match, out
    return slurm_lab.slurm("cat", f"{match.group(1)}/tokens/worker.token").strip()


def test_a_pilots_own_token_is_hidden_from_its_jobs_and_advertises_nothing_else(
    tmp_path: Path,
) -> None:
    # All of the lab's nodes share one /tmp: what other pilots of this user
    # keep there is on the node of this test's pilot. One killed outright
    # left its folder (its lock free), another still runs (its lock held).
    fake = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0aWRlLXRlc3QifQ.c2lnbmF0dXJl"
    plant = (
        'set -e; umask 077; for d in "$1" "$2"; do mkdir -p "$d/tokens"; '
        'printf "%s\\n" "$3" >"$d/tokens/worker.token"; : >"$d/alive"; done; '
        'nohup flock "$2/alive" sleep 900 >/dev/null 2>&1 &'
    )
    # (Paths in the cluster's container, where the pilots make theirs.)
    dead, live = (f"/tmp/tide-pilot.{tmp_path.name[-6:]}{end}" for end in "DL")  # noqa: S108
    slurm_lab.slurm("bash", "-c", plant, "-", dead, live, fake)
    try:
        with _daemon(tmp_path) as d:
            _hidden_from_jobs(tmp_path, d.site)
        # The dead pilot's folder went when the pilot started; the live one's stays.
        folders = slurm_lab.slurm("sh", "-c", 'ls -d "$@" 2>/dev/null || true', "-", dead, live)
        assert folders.split() == [live], folders
    finally:
        slurm_lab.slurm("sh", "-c", 'pkill -f "flock $2/alive"; rm -rf "$@"', "-", dead, live)


def _hidden_from_jobs(tmp_path: Path, site: str) -> None:
    """A job on this site's pilot finds no token; the pilot's own is bounded."""
    cluster = _grid_jobs(site, 1, seconds=5)  # a pilot comes for it
    _until("the grid job done on a pilot", lambda: _done(cluster) == 1)
    (pilot,) = _pilots(site)
    # The lab's nodes have bubblewrap and unprivileged user namespaces:
    # a job runs in a mount namespace where the pilot's folder and the
    # staged tokens are empty. It finds no token at all.
    htcondor2 = client()
    (ad,) = htcondor2.Collector(lab.COLLECTOR).query(
        htcondor2.AdTypes.Startd,
        constraint=f'TideResourceId == "{pilot}"',
        projection=["TideJobNamespace"],
    )
    assert ad.get("TideJobNamespace") == "bubblewrap", ad
    job = lab.run_job(_FIND_TOKENS, on=pilot)
    assert job.output.rstrip().endswith("done"), job
    assert "FOUND " not in job.output, job.output
    assert f"user {slurm_lab.PILOT_USER}\n" in job.output, job.output
    # Where a node has none, a job could read the token: its bounds.
    token = _pilot_token(pilot)
    payload = tokens.claims(token)["payload"]
    assert payload["sub"] == tokens.worker_identity(pilot, lab.POOL_DOMAIN)
    assert payload["scope"] == "condor:/ADVERTISE_STARTD condor:/ADVERTISE_MASTER"
    bound = 600 + walltime_s("01:00:00") + PILOT_TOKEN_MARGIN_S  # boot timeout: the default
    assert payload["exp"] - payload["iat"] == bound
    # What a job can do with it: advertise its own pilot, nothing else.
    assert_advertises_only_its_own(tmp_path, token, pilot)


def test_a_pilot_whose_startd_cannot_start_ends_at_once_and_the_controller_says_why(
    tmp_path: Path,
) -> None:
    # NUM_CPUS must be a number: the real startd refuses to start, and its
    # master would start it again for ever.
    with _daemon(tmp_path, {"condor_config": {"NUM_CPUS": "many"}}) as d:
        _grid_jobs(d.site, 1)
        _until(
            "a pilot that failed to boot, in the controller's log",
            lambda: "failed to boot" in d.log.read_text(),
            timeout=180,
        )
        _until(
            "its failed boot counted",
            lambda: "boot failed at the site" in d.log.read_text(),
            timeout=60,
        )
    text = d.log.read_text()
    (line,) = [x for x in text.splitlines() if "failed to boot" in x][:1]
    pilot = re.search(r"pilot (tide-\S+) \(job (\d+)\)", line)
    assert pilot, line
    assert "the STARTD exited with status" in line, line
    assert "NUM_CPUS" in line, line  # the startd's own words
    # Its Slurm output: why, and the tail of each of HTCondor's logs.
    output = slurm_lab.slurm("cat", f".tide/{pilot[1]}-{pilot[2]}.out")
    assert "tide-pilot: boot failed: the STARTD exited with status" in output
    assert "--- the last lines of HTCondor's pilot.log ---" in output  # the master's (-t)
    assert "--- the last lines of HTCondor's StartLog ---" in output
    # Its own report, not the boot timeout, ended it ("boot timeout: ..." otherwise).
    assert not re.search(r"boot timeout: \S+ \d+s, no slot advertised", text)
    state = tmp_path / "state" / "state.sqlite3"
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        (failures,) = conn.execute(
            "SELECT failures FROM sites WHERE name = ?", (d.site,)
        ).fetchone()
    finally:
        conn.close()
    assert failures >= 1


def _pilot_slots(site: str) -> list[tuple[str, str, str, int, int]]:
    """(resource, State, Activity, TideEndTime, TideTakesJobsUntil) of the
    site's slots in the pool."""
    out = lab.in_container(
        lab.CM_HOST,
        lab.CM_CONTAINER,
        "condor_status",
        "-const",
        f'TideSite == "{site}"',
        "-af",
        "TideResourceId",
        "State",
        "Activity",
        "TideEndTime",
        "TideTakesJobsUntil",
        check=False,
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    return [
        (r[0], r[1], r[2], int(r[3]), int(r[4]))
        for r in rows
        if len(r) == 5 and r[3].isdigit() and r[4].isdigit()
    ]


def _submitted(d: Daemon) -> int:
    return len(re.findall(r"submitted as job", d.log.read_text()))


def test_a_pilot_near_its_walltime_refuses_what_will_not_fit_drains_and_is_replaced(
    tmp_path: Path,
) -> None:
    # A 4-minute walltime (Slurm counts whole minutes), no new job in the
    # last 150 s: a pilot takes jobs for 90 s, and only jobs declared to end
    # by then. (Slurm's walltime warning, --signal=B:TERM@60, may come up
    # to a minute early: the margin must be over two minutes for the drain
    # to come first.)
    settings = {"walltime": "00:04:00", "drain_before_end_s": 150}
    with _daemon(tmp_path, settings) as d:
        fits = _submit(d.site, 15, 1, "allowed_job_duration = 30", "+TideSlurmTest = true")
        # Declared longer than any pilot of the site takes jobs: demand for no pilot.
        never = _submit(d.site, 1, 1, "allowed_job_duration = 600", "+TideSlurmTest = true")
        _until("the job that fits done", lambda: _done(fits) == 1, timeout=180)
        ((first, _, _, end, until),) = _pilot_slots(d.site)
        # A job that would fit a younger pilot (with 30 s to spare), declared
        # to outlast what is left of this one's, submitted once the pilot is
        # idle (it counts as capacity for it): it waits for the replacement.
        while time.time() + 60 <= until + 3:
            time.sleep(0.5)
        late = _submit(d.site, 3, 1, "allowed_job_duration = 60", "+TideSlurmTest = true")
        # The pilot, idle, refuses it up to the moment it stops taking jobs ...
        while time.time() < until - 2:
            time.sleep(1)
        assert _jobs(late) == [(1, 0)], "the pilot took a job that would outlast its time"
        # ... then drains, and is given back once drained, before its end ...
        gone = re.compile(rf'resource={first} reason="ending in (\d+)s: drained, no job left"')
        _until(
            "the pilot drained and given back before its end",
            lambda: gone.search(d.log.read_text()) is not None,
            timeout=max(1.0, end - time.time()),
        )
        match = gone.search(d.log.read_text())
        assert match
        assert int(match[1]) > 0
        # ... and its replacement was booted for the waiting job before that end.
        _until("a replacement submitted", lambda: _submitted(d) >= 2, timeout=10)
        assert time.time() < end, "the replacement came only after the pilot's end"
        _until("the late job done on the replacement", lambda: _done(late) == 1, timeout=120)
        # The job declared too long for any pilot: none took it, and it is
        # demand for no site (no pilot is booted for it).
        assert _jobs(never) == [(1, 0)]
        demand = d.tide("status").split("DEMAND", 1)[1]
        assert "(unmatched)" in demand
        assert d.site not in demand
        lab.in_container(lab.CM_HOST, lab.CM_CONTAINER, "condor_rm", never, check=False)


def test_a_budget_too_small_for_one_more_pilot_stops_boots_and_says_why(tmp_path: Path) -> None:
    # A pilot (1 core, whole node) for 10 minutes could cost 1/6 core-hour:
    # 0.25 core-hours pay for one, never for a second while it lives.
    settings = {
        "walltime": "00:10:00",
        "drain_before_end_s": 150,
        "budget": {"core_hours": 0.25, "since": "2026-01-01", "warn_at": [0.02]},
    }
    with _daemon(tmp_path, settings) as d:
        cluster = _submit(d.site, 10, 3, "request_disk = 10MB", "+TideSlurmTest = true")
        _until("every job done, on the one pilot", lambda: _done(cluster) == 3, timeout=240)
        assert _submitted(d) == 1, d.log.read_text()[-3000:]
        log = d.log.read_text()
        held = re.findall(r'msg="actions held back".*why="(budget: [^"]*)"', log)
        assert held, log[-3000:]
        assert "one more pilot could use 0.17 (1 cores x 10 min walltime)" in held[-1]
        # Its warning once 2 % (18 core-seconds) was used, with when it runs out.
        assert re.search(r'msg=budget .*used="[0-9]+% \(warns at 2%\)".*runs_out=', log), log
        status = d.tide("status", "--no-demand")
        line = next(s for s in status.splitlines() if s.startswith(f"budget {d.site}:"))
        assert " of 0.25 core-hours used since 2026-01-01 00:00 UTC" in line, status
        assert "no more pilots: " in line, status
