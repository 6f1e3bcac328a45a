"""Figures of the controller's loop on the lab pool, written to
benchmarks/results/controller.json beside controller_decide's (kept).

reaction_s    an idle job first seen in the schedd -> the site's create call.
              The real loop (tide.assemble.build_controller: the real demand
              source and slot observer; tide.loop.run_forever at a 1 s
              interval) runs in its own process (benchmarks.loop_harness)
              with a site that records its calls and creates nothing.
              20 trials, median and p95; each removes its job and waits
              for the boot to be destroyed, so the next is a fresh scale-up.
end_to_end_s  condor_submit -> the job running (JobStatus 2) on a worker that
              `tide run`, with a Docker site on this machine's engine,
              created for it. 5 trials, each from no worker at all: the
              previous one's worker is drained and removed by the daemon
              (idle_timeout_s 2) before the next job is submitted. The site
              gives each worker a token of its own (worker_signing_key_file,
              the lab's workers' key), as the controller role's sites do.
token_issue_ms  one worker's own token issued and handed over: minted and put
              into its running container (DockerSite.renew_tokens, the path
              create takes too), 100 issues, median and p95.

Each trial submits one job, as physicist on the central manager, that only
a worker of the benchmark's own site (a unique name) can run, so no other
job in the pool counts as its demand or lands on its workers. Needs the
running lab and nothing else (nothing is converged): run with
`python -m benchmarks.controller_loop`.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
from tests import lab

from benchmarks import report
from tide.config import DockerSiteConfig, load_config
from tide.htcondor import client as htcondor_client
from tide.sites.base import PoolEndpoint
from tide.store import Store

RESULTS = Path(__file__).resolve().parent / "results" / "controller.json"
METRICS = ("reaction_s", "end_to_end_s", "token_issue_ms")
TOKEN_ISSUES = 100
INTERVAL_S = 1.0
"""The lab's loop interval (controller_interval_s); `tide run`'s default is 2 s."""
REACTION_GOAL_P95_S = 2.0
POLL_S = 0.01
"""Schedd polls while a job is awaited: a query takes about 2 ms, so t0 is
known to about 12 ms."""
E2E_POLL_S = 0.05
E2E_PORTS = (29760, 29769)
E2E_IDLE_TIMEOUT_S = 2
E2E_JOB_S = 5
NEGOTIATOR_CYCLE_DELAY_S = 20.0
"""HTCondor's default NEGOTIATOR_CYCLE_DELAY: the negotiator starts a cycle at
most this often, so where a submit falls in that period sets much of end_to_end_s."""
SHAPE = "{cpus: 1, memory_mb: 512, disk_mb: 1024}"
STOP_GRACE_S = 30


@dataclass(frozen=True)
class Bench:
    """What both measurements share: a private folder, the tokens, the pool client."""

    tmp: Path
    token: Path  # the controller's pool token (READ), a 0600 copy
    worker_token: Path  # the workers' token, a 0600 copy
    workers_key: Path  # the workers' signing key, a 0600 copy
    schedd: Any
    collector: Any
    htcondor: Any
    interval_s: float
    shared_token: bool = False  # the workers share the pool's token (the baseline)

    def worker_credential(self) -> str:
        """The sites' worker credential: each worker's own token, minted with
        the workers' key, or (shared_token) the pool's one worker token."""
        if self.shared_token:
            return f"worker_token_file: {self.worker_token}"
        return f"worker_signing_key_file: {self.workers_key}"


# --- the pool ---------------------------------------------------------------


def _secret(tmp: Path, name: str) -> Path:
    copy = tmp / name
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write((lab.STATE / "secrets" / name).read_text(encoding="utf-8"))
    return copy


def _submit(site: str, trial: int, seconds: int) -> str:
    """Submit one job that only a worker of `site` can run, tagged with the
    site and trial; returns its cluster id."""
    lines = [
        "executable = /bin/sleep",
        f"arguments = {seconds}",
        "request_cpus = 1",
        "request_memory = 100MB",
        f'requirements = (TARGET.TideSite == "{site}")',
        f'+TideBench = "{site}"',
        f"+TideBenchTrial = {trial}",
        "queue",
    ]
    script = (
        f'cd "$(mktemp -d /tmp/{site}.XXXXXX)" && printf "%s\\n" '
        + " ".join(f"'{line}'" for line in lines)
        + " > j.sub && condor_submit -terse j.sub | cut -d. -f1"
    )
    cluster = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "bash", "-c", script, user="physicist"
    ).stdout.strip()
    if not cluster.isdigit():
        raise RuntimeError(f"condor_submit printed {cluster!r}")
    return cluster


def _forget_jobs(site: str) -> None:
    """Remove the benchmark's jobs still queued and their submit folders."""
    lab.in_container(
        lab.CM_HOST,
        lab.CM_CONTAINER,
        "bash",
        "-c",
        f"condor_rm -constraint 'TideBench =?= \"{site}\"' >/dev/null 2>&1; rm -rf /tmp/{site}.*",
        user="physicist",
        check=False,
    )


def _trial_jobs(site: str, trial: int) -> str:
    return f'TideBench =?= "{site}" && TideBenchTrial =?= {trial}'


@dataclass(frozen=True)
class Seen:
    at: float  # wall clock when the first query that returned the job was sent
    after: float  # when the last query that did not return it was sent
    ad: Any


def _first_seen(
    schedd: Any, constraint: str, projection: Sequence[str], timeout: float, poll: float
) -> Seen:
    """Poll the schedd until a job matches `constraint`."""
    deadline = time.monotonic() + timeout
    after = time.time()
    while True:
        sent = time.time()
        ads = schedd.query(constraint=constraint, projection=list(projection))
        if ads:
            return Seen(sent, after, ads[0])
        if time.monotonic() > deadline:
            raise TimeoutError(f"no job matched {constraint} within {timeout:.0f}s")
        after = sent
        time.sleep(poll)


def _wait(what: str, predicate: Callable[[], bool], timeout: float, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def _alive(state_file: Path) -> list[str]:
    """The resources the controller's store holds alive (as `tide status` reads them)."""
    if not state_file.exists():
        return []
    with Store.open(state_file, exclusive=False) as store:
        return [r.id for r in store.alive()]


# --- the controller -----------------------------------------------------------


def _config(bench: Bench, name: str, owner: str, site: str, site_keys: str) -> Path:
    folder = bench.tmp / name
    folder.mkdir()
    sites = textwrap.dedent(
        f"""\
              {site}:
                kind: docker
                shape: {SHAPE}
                attributes: {{SiteName: LAB, TideSiteKind: docker}}
                {bench.worker_credential()}
            """
    ) + textwrap.indent(textwrap.dedent(site_keys), " " * 2)
    return lab.controller_config(
        folder, token=bench.token, owner=owner, sites=sites, interval_s=bench.interval_s
    )


@contextmanager
def _process(name: str, argv: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A controller process, logging to `log`; stopped by SIGTERM at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), cwd=report.TOP, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    except BaseException:
        print(f"[bench] failed; the log of {name}:\n{_tail(log)}", flush=True)
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code != 0:
            print(f"[bench] {name} exited {code}; its log:\n{_tail(log)}", flush=True)


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _running(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"the controller exited {proc.returncode}:\n{_tail(log)}")


# --- reaction_s ----------------------------------------------------------------


@dataclass
class Record:
    """The calls benchmarks.loop_harness's RecordingSite appended to its file."""

    path: Path
    calls: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0

    def read(self) -> list[dict[str, Any]]:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._offset += len(complete)
            self.calls += [json.loads(line) for line in complete.splitlines()]
        return self.calls

    def find(self, call: str, since: int, resource: str | None = None) -> dict[str, Any] | None:
        for entry in self.read()[since:]:
            if entry["call"] == call and resource in (None, entry["resource"]):
                return entry
        return None


@dataclass
class Reaction:
    """The figures of reaction_s's trials."""

    runs: list[float] = field(default_factory=list)
    from_qdate: list[float] = field(default_factory=list)
    t0_windows: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ReactionSite:
    """The site reaction_s's trials submit to, and what its controller records."""

    name: str
    record: Record
    state_file: Path


def _reaction_trial(
    bench: Bench, site: ReactionSite, trial: int, trials: int
) -> tuple[float, float, float]:
    """One fresh scale-up: (t1 - t0, t1 - QDate, t0's window)."""
    record = site.record
    # Spread the submits evenly over the loop's phase: each trial starts right
    # after the previous one's boot was destroyed, which a cycle did, so
    # without this every job would arrive at about the same point of a cycle.
    time.sleep(bench.interval_s * (trial - 1) / trials)
    mark = len(record.read())
    with ThreadPoolExecutor(1) as pool:
        submitted = pool.submit(_submit, site.name, trial, 600)
        seen = _first_seen(
            bench.schedd,
            f"{_trial_jobs(site.name, trial)} && JobStatus == 1",
            ["ClusterId", "QDate"],
            timeout=60,
            poll=POLL_S,
        )
        cluster = submitted.result()
    deadline = time.monotonic() + 30
    while (create := record.find("create", mark)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no create within 30s of job {cluster} being idle")
        time.sleep(0.005)
    t1 = float(create["at"])

    # Back to no demand and nothing alive before the next trial.
    lab.in_container(lab.CM_HOST, lab.CM_CONTAINER, "condor_rm", cluster, user="physicist")
    _wait(
        f"job {cluster} to leave the queue",
        lambda: (
            not bench.schedd.query(
                constraint=_trial_jobs(site.name, trial), projection=["ClusterId"]
            )
        ),
        timeout=60,
    )
    rid = str(create["resource"])
    _wait(f"{rid} to be destroyed", lambda: record.find("destroy", mark, rid) is not None, 30)
    _wait("the store to hold nothing alive", lambda: not _alive(site.state_file), 30)
    creates = [c for c in record.read()[mark:] if c["call"] == "create"]
    if len(creates) != 1:
        raise RuntimeError(f"trial {trial}: {len(creates)} creates for one job: {creates}")
    return t1 - seen.at, t1 - float(seen.ad["QDate"]), seen.at - seen.after


def measure_reaction(bench: Bench, trials: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    owner, site = f"bench-{tag}", f"reaction-{tag}"
    config = _config(bench, "reaction", owner, site, "limits: {max_resources: 3, max_booting: 3}\n")
    record = Record(config.parent / "calls.jsonl")
    state_file = config.parent / "state" / "state.sqlite3"
    log = config.parent / "controller.log"
    harness = [
        sys.executable,
        "-m",
        "benchmarks.loop_harness",
        "--config",
        str(config),
        "--record",
        str(record.path),
    ]
    print(f"[bench] reaction_s: site {site}, loop every {bench.interval_s:g}s", flush=True)
    figures = Reaction()
    try:
        with _process("the loop harness", harness, log) as proc:
            # Reconciled (it lists its site first) and a cycle or two behind it.
            _wait("the controller to start", lambda: record.find("list", 0) is not None, 60)
            time.sleep(2 * bench.interval_s)
            numbers = itertools.count(1)

            def trial() -> float:
                _running(proc, log)
                reaction, qdate, window = _reaction_trial(
                    bench, ReactionSite(site, record, state_file), next(numbers), trials
                )
                figures.from_qdate.append(qdate)
                figures.t0_windows.append(window)
                return reaction

            figures.runs = report.repeat("reaction_s", trials, trial)
    finally:
        _forget_jobs(site)
    result = report.summary(figures.runs, with_p95=True)
    result.update(
        {
            "trials": trials,
            "goal_p95": REACTION_GOAL_P95_S,
            "interval_s": bench.interval_s,
            "from_qdate_runs": [round(r, 3) for r in figures.from_qdate],
            "notes": {
                "t0": "time.time() when the first schedd query (htcondor2, from this machine, "
                f"every {POLL_S:g}s while the job is submitted) that returned the job idle was "
                "sent; the query before it, which did not, was sent at most t0_window_max_s "
                "earlier. The job's QDate (whole seconds, taken before the submit commits) is "
                "too coarse against a 1 s loop: t1 - QDate is kept as from_qdate_runs",
                "t1": "time.time() at the start of the site adapter's create call, recorded in "
                "the controller's process (same machine, same clock)",
                "site": "benchmarks.loop_harness.RecordingSite: a measurement harness that "
                "creates nothing (no worker starts); everything else is tide run's path: "
                "config, store, build_controller with the real demand source and slot "
                "observer, run_forever",
                "trials": "one job each, removed after the create; the next trial starts once "
                "the controller has destroyed the boot and its store holds nothing alive; "
                "submits are spread evenly over the loop's phase",
                "p95": "interpolated between the closest ranks (statistics.quantiles, inclusive)",
            },
            "t0_window_max_s": round(max(figures.t0_windows), 4),
        }
    )
    return result


# --- end_to_end_s ----------------------------------------------------------------


def _owned(client: docker.DockerClient, owner: str) -> list[str]:
    containers = client.containers.list(all=True, filters={"label": f"tide-owner={owner}"})
    return [c.name or "" for c in containers]


def _remove_workers(client: docker.DockerClient, owner: str) -> None:
    """Every container the owner left: stopped first (its startd withdraws its
    ads), then removed with its volumes."""
    for name in _owned(client, owner):
        try:
            container = client.containers.get(name)
            container.stop(timeout=STOP_GRACE_S)
            container.remove(v=True)
            print(f"[bench] removed container {name}", flush=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            print(f"[bench] could not remove container {name}: {exc}", flush=True)


def _events(log: Path, resource: str) -> dict[str, float]:
    """When the daemon logged each event of one resource (wall clock)."""
    events: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if f"resource={resource}" not in line:
            continue
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        ts, msg = fields.get("ts", ""), fields.get("msg", "")
        if ts and msg and msg not in events:
            events[msg] = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return events


def _negotiator_s(knob: str) -> float | None:
    """A negotiator setting of the central manager, in seconds; None if unset."""
    out = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_config_val", knob, check=False
    ).stdout.strip()
    try:
        return float(out)
    except ValueError:
        return None


@dataclass
class EndToEnd:
    """end_to_end_s's site, its daemon's files and what its trials saw."""

    bench: Bench
    site: str
    owner: str
    folder: Path
    trials: int
    cycle_s: float
    client: docker.DockerClient = field(default_factory=docker.from_env)
    workers: list[str] = field(default_factory=list)
    created_after: list[float] = field(default_factory=list)
    slot_seen_after: list[float] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.folder / "controller.log"

    @property
    def state_file(self) -> Path:
        return self.folder / "state" / "state.sqlite3"

    def no_worker(self) -> bool:
        """No container of the owner, nothing alive in the store, no startd ad of the site."""
        ads = self.bench.collector.query(
            self.bench.htcondor.AdTypes.Startd,
            constraint=f'TideSite =?= "{self.site}"',
            projection=["Name"],
        )
        return not ads and not _owned(self.client, self.owner) and not _alive(self.state_file)

    def trial(self, n: int) -> float:
        _wait("no worker of the site", self.no_worker, 240, poll=0.5)
        # Spread the submits evenly over the negotiator's cycle: each trial
        # starts a fixed time after the previous job started, which a
        # negotiation did, so without this every job would wait about
        # equally long for its match.
        time.sleep(self.cycle_s * (n - 1) / self.trials)
        start = time.time()
        with ThreadPoolExecutor(1) as pool:
            submitted = pool.submit(_submit, self.site, n, E2E_JOB_S)
            seen = _first_seen(
                self.bench.schedd,
                f"{_trial_jobs(self.site, n)} && JobStatus == 2 && RemoteHost =!= undefined",
                ["ClusterId", "RemoteHost"],
                timeout=300,
                poll=E2E_POLL_S,
            )
            cluster = submitted.result()
        worker = str(seen.ad["RemoteHost"]).split("@")[-1]
        if not worker.startswith(f"tide-{self.site}-") or worker in self.workers:
            raise RuntimeError(f"job {cluster} runs on {worker}, not a new worker")
        self.workers.append(worker)
        self._phases(cluster, worker, start)
        _wait(
            f"job {cluster} to complete",
            lambda: (
                not self.bench.schedd.query(
                    constraint=_trial_jobs(self.site, n), projection=["ClusterId"]
                )
            ),
            E2E_JOB_S + 120,
            poll=0.5,
        )
        return seen.at - start

    def _phases(self, cluster: str, worker: str, start: float) -> None:
        """When the daemon logged the worker created and its slot seen."""
        _wait(  # the job may start before the next cycle sees the slot
            f"the daemon to log {worker} created and running",
            lambda: {"created", "running"} <= _events(self.log, worker).keys(),
            10 * self.bench.interval_s,
        )
        events = _events(self.log, worker)
        self.created_after.append(events["created"] - start)
        self.slot_seen_after.append(events["running"] - start)
        print(
            f"[bench]   job {cluster} on {worker}: created after {self.created_after[-1]:.2f}s,"
            f" its slot seen by the controller after {self.slot_seen_after[-1]:.2f}s",
            flush=True,
        )


def measure_end_to_end(bench: Bench, trials: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    owner, site = f"bench-{tag}", f"e2e-{tag}"
    config = _config(
        bench,
        "end_to_end",
        owner,
        site,
        f"""\
        port_range_start: {E2E_PORTS[0]}
        port_range_end: {E2E_PORTS[1]}
        bind_address: 127.0.0.1
        limits: {{max_resources: 1, max_booting: 1, idle_timeout_s: {E2E_IDLE_TIMEOUT_S}}}
        """,
    )
    site_config = load_config(config).sites[site]
    assert isinstance(site_config, DockerSiteConfig)
    image = site_config.image
    cycle_s = _negotiator_s("NEGOTIATOR_CYCLE_DELAY")
    cycle_s = NEGOTIATOR_CYCLE_DELAY_S if cycle_s is None else cycle_s
    e2e = EndToEnd(bench, site, owner, config.parent, trials, cycle_s)
    try:
        e2e.client.images.get(image)
    except docker.errors.ImageNotFound:
        raise RuntimeError(f"{image} is not on this machine's engine: run `make images`") from None
    daemon = [str(lab.VENV_BIN / "tide"), "run", "--config", str(config)]
    print(
        f"[bench] end_to_end_s: site {site} ({image}), loop every {bench.interval_s:g}s",
        flush=True,
    )
    try:
        with _process("tide run", daemon, e2e.log) as proc:
            _wait("the daemon's store", e2e.state_file.exists, 60)
            time.sleep(3 * bench.interval_s)
            numbers = itertools.count(1)

            def trial() -> float:
                _running(proc, e2e.log)
                return e2e.trial(next(numbers))

            runs = report.repeat("end_to_end_s", trials, trial)
            _wait("the last worker to be drained and removed", e2e.no_worker, 240, poll=0.5)
    finally:
        _remove_workers(e2e.client, owner)
        _forget_jobs(site)
    result = report.summary(runs)
    result.update(
        {
            "trials": trials,
            "interval_s": bench.interval_s,
            "idle_timeout_s": E2E_IDLE_TIMEOUT_S,
            "negotiator_cycle_delay_s": e2e.cycle_s,
            "negotiator_interval_s": _negotiator_s("NEGOTIATOR_INTERVAL"),
            "image": image,
            "created_after_s": [round(t, 3) for t in e2e.created_after],
            "slot_seen_after_s": [round(t, 3) for t in e2e.slot_seen_after],
            "notes": {
                "start": "time.time() just before condor_submit is started (as physicist on "
                "the central manager, through two nested docker exec: about 0.1-0.3 s of it)",
                "end": "time.time() when the first schedd query (every "
                f"{E2E_POLL_S:g}s) that returned the job running (JobStatus 2) on a "
                "worker of this site, one no earlier trial used, was sent",
                "site": "tide run (the daemon, a subprocess) with a Docker site on this "
                "machine's engine: host network, bound to 127.0.0.1, ports "
                f"{E2E_PORTS[0]}-{E2E_PORTS[1]}, at most one worker",
                "trials": "each starts with no container of the site's owner, nothing alive in "
                "the daemon's store and no startd ad of the site in the collector (the "
                "previous worker was drained and removed by the daemon); submits are spread "
                "evenly over the negotiator's cycle (negotiator_cycle_delay_s), since a new "
                "slot waits for the next negotiation",
                "phases": "created_after_s and slot_seen_after_s: from the start to the "
                "daemon's log events `created` and `running` (its slot seen in the "
                "collector) of the trial's worker; the rest, to the job running, is the "
                "negotiator's: a submit asks for a negotiation at once (no more often than "
                "negotiator_cycle_delay_s); one that ran before the new slot was in the "
                "collector leaves the job to the next periodic cycle (negotiator_interval_s)",
            },
        }
    )
    return result


# --- token_issue_ms --------------------------------------------------------------


def measure_token_issue(bench: Bench, issues: int) -> dict[str, Any]:
    """A worker of a Docker site with the workers' key, then `issues` tokens
    of its own handed to it one after the other, each timed."""
    tag = uuid.uuid4().hex[:6]
    owner, site_name = f"bench-{tag}", f"tok-{tag}"
    config = _config(
        bench,
        "token_issue",
        owner,
        site_name,
        f"""\
        port_range_start: {E2E_PORTS[0]}
        port_range_end: {E2E_PORTS[1]}
        bind_address: 127.0.0.1
        """,
    )
    site_config = load_config(config).sites[site_name]
    site = site_config.build(
        site_name,
        owner=owner,
        pool=PoolEndpoint(collector=lab.COLLECTOR, pool_domain=lab.POOL_DOMAIN),
    )
    rid = f"tide-{site_name}-{tag}"
    client = docker.from_env()
    print(f"[bench] token_issue_ms: {issues} issues to worker {rid}", flush=True)
    try:
        site.create(rid)
        _wait("the worker to run", lambda: client.containers.get(rid).status == "running", 60)

        def issue() -> float:
            started = time.perf_counter()
            site.renew_tokens([rid])
            return (time.perf_counter() - started) * 1000

        runs = [issue() for _ in range(issues)]
    finally:
        _remove_workers(client, owner)
        client.close()
    result = report.summary(runs, with_p95=True)
    print(f"[bench] token_issue_ms: median {result['median']}, p95 {result['p95']}", flush=True)
    return {
        **result,
        "issues": issues,
        "notes": {
            "what": "mint (HKDF-SHA256 key, HS256) + inspect + the engine's archive API into "
            "the running container's /etc/condor/tokens.d, as DockerSite.renew_tokens does",
        },
    }


# --- main ------------------------------------------------------------------------


def main() -> None:
    parser = report.parser("Figures of the controller's loop on the lab pool.", RESULTS)
    parser.add_argument(
        "--reaction-runs", type=int, default=20, help="trials of reaction_s (default 20)"
    )
    parser.add_argument(
        "--interval-s", type=float, default=INTERVAL_S, help="the loop's interval (default 1)"
    )
    parser.add_argument("--only", choices=METRICS, action="append", help="measure only this metric")
    parser.add_argument(
        "--shared-token",
        action="store_true",
        help="end_to_end_s with the pool's shared worker token (written as "
        "end_to_end_s_shared_token: the baseline of a worker's own token)",
    )
    args = parser.parse_args()
    wanted = args.only or list(METRICS)
    measured = report.source()
    started = time.monotonic()
    print(
        f"[bench] commit {measured['commit']}{' (dirty tree)' if measured['dirty'] else ''}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="tide-bench-"))
    folder: Path | None = None
    try:
        token = _secret(tmp, "controller.token")
        worker_token = _secret(tmp, "worker.token")
        workers_key = _secret(tmp, "workers_signing_key")
        folder = htcondor_client.configure(lab.COLLECTOR, token)
        import htcondor2  # noqa: PLC0415  (after htcondor_client.configure: it reads CONDOR_CONFIG)

        collector = htcondor2.Collector(lab.COLLECTOR)
        schedd = htcondor2.Schedd(collector.locate(htcondor2.DaemonType.Schedd, lab.CM_HOST))
        bench = Bench(
            tmp,
            token,
            worker_token,
            workers_key,
            schedd,
            collector,
            htcondor2,
            args.interval_s,
            shared_token=args.shared_token,
        )
        if "reaction_s" in wanted:
            reaction = measure_reaction(bench, args.reaction_runs)
            report.write(args.output, {"reaction_s": reaction}, measured=measured)
        if "end_to_end_s" in wanted:
            end_to_end = measure_end_to_end(bench, args.runs)
            end_to_end["worker_tokens"] = "one shared" if args.shared_token else "each its own"
            name = "end_to_end_s_shared_token" if args.shared_token else "end_to_end_s"
            report.write(args.output, {name: end_to_end}, measured=measured)
        if "token_issue_ms" in wanted:
            issued = measure_token_issue(bench, TOKEN_ISSUES)
            report.write(args.output, {"token_issue_ms": issued}, measured=measured)
    finally:
        if folder is not None:
            htcondor_client.unconfigure(folder)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[bench] done in {time.monotonic() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
