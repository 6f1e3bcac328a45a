"""The crash soak: the real `tide run`, with a Docker site on this machine's
engine against the lab pool, killed with SIGKILL at 20 or more random
moments while waves of jobs make it scale the site up and down, and started
again each time on the same state file.

The moments are seeded random delays after each start (0.2-6 s), so kills
land in the daemon's start, in creates, drains, destroys and idle cycles
(the states the store held at each kill are printed). After each kill, with
no daemon running, every worker container must have a record in the state
file (the store is written before every call: a container without one is
leaked). At the end, once every job is done and the site is back at zero:
no container without a live record (leaked), no live record without a
container (forgotten), and every job completed exactly once (condor_history:
each job once, exit code 0, started once, none still queued).

The four figures (kills, resources leaked, resources forgotten, jobs killed
or lost) are printed and written as one JSON line to
$TIDE_STATE_DIR/crash_soak.json for the benchmarks. A failing seed replays
with `TIDE_CRASH_SOAK_SEED=<seed> pytest tests/integration/test_controller_crashes.py`.
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker

from tests import lab
from tests.integration.test_controller import Daemon, _secret, _submit

SEED = int(os.environ.get("TIDE_CRASH_SOAK_SEED", "11"))
MIN_KILLS = 20
KILL_PHASE_S = 125.0  # kills go on at least this long: over every wave's boots, jobs and drains
KILL_AFTER_S = (0.2, 6.0)  # each kill this long after the start, uniformly
WAVES = 4
WAVE_EVERY_S = 32.0  # plus up to 5 s of jitter
WAVE_JOBS = (2, 5)
JOB_SECONDS = (10, 25)
IDLE_TIMEOUT_S = 6  # short, so the site scales down between waves, under the kills
MAX_WORKERS = 4
SETTLE_S = 200.0  # after the last kill: the jobs finish and the site scales to zero
LAST_RUN_MIN_S = 5.0  # the last daemon runs at least this long (up, a few cycles) before judging
RESULTS = lab.STATE / "crash_soak.json"
_MSG = re.compile(r'\bmsg=("(?:[^"\\]|\\.)*"|\S+)')


@dataclass(frozen=True)
class Wave:
    at_s: float
    jobs: int
    seconds: int


@dataclass
class Soak:
    """What the soak saw: the waves' clusters, and at each kill the daemon's
    last log event and the states its store held."""

    clusters: dict[str, int] = field(default_factory=dict)  # cluster id -> jobs
    kills: int = 0
    last_events: Counter[str] = field(default_factory=Counter)
    states_at_kills: Counter[str] = field(default_factory=Counter)
    leaked_at_kills: list[str] = field(default_factory=list)
    kill_times: list[str] = field(default_factory=list)  # UTC, to read beside the daemon's log


def _config(tmp: Path, owner: str, site: str) -> Path:
    return lab.controller_config(
        tmp,
        token=_secret(tmp, "controller.token"),
        owner=owner,
        sites=f"""\
            {site}:
              kind: docker
              shape: {{cpus: 1, memory_mb: 512, disk_mb: 1024}}
              attributes: {{SiteName: LAB, TideSiteKind: docker}}
              worker_token_file: {_secret(tmp, "worker.token")}
              port_range_start: 29710
              port_range_end: 29719
              bind_address: 127.0.0.1
              limits:
                max_resources: {MAX_WORKERS}
                max_booting: {MAX_WORKERS}
                idle_timeout_s: {IDLE_TIMEOUT_S}
            """,
    )


def _containers(owner: str) -> set[str]:
    """Resource ids of every container carrying this owner's tag, in any state."""
    client = docker.from_env()
    found = client.containers.list(all=True, filters={"label": f"tide-owner={owner}"})
    return {c.labels.get("tide-resource-id") or c.name or "" for c in found}


def _records(state_file: Path, site: str) -> dict[str, str]:
    """The state file's non-GONE records of the site: id -> state. Read-only
    (the test must not finish a schema a killed daemon left half-made)."""
    if not state_file.exists():
        return {}
    conn = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True, timeout=10)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "resources" not in tables:
            return {}
        rows = conn.execute(
            "SELECT id, state FROM resources WHERE site = ? AND state != 'gone'", (site,)
        ).fetchall()
    finally:
        conn.close()
    return {str(rid): str(state) for rid, state in rows}


def _last_event(text: str) -> str:
    events = _MSG.findall(text)
    return events[-1].strip('"') if events else "(none since the start: starting, or idle)"


def _queued(clusters: dict[str, int]) -> list[str]:
    if not clusters:
        return []
    constraint = " || ".join(f"ClusterId == {c}" for c in clusters)
    out = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_q", "-allusers", "-constraint", constraint,
        "-af", "ClusterId", "ProcId",
    ).stdout  # fmt: skip
    return [".".join(line.split()) for line in out.splitlines() if line.strip()]


def _history(clusters: dict[str, int]) -> list[dict[str, str]]:
    constraint = " || ".join(f"ClusterId == {c}" for c in clusters)
    keys = ("cluster", "proc", "exit_code", "starts", "status", "by_signal")
    out = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_history", "-constraint", constraint,
        "-af", "ClusterId", "ProcId", "ExitCode", "NumJobStarts", "JobStatus", "ExitBySignal",
    ).stdout  # fmt: skip
    return [dict(zip(keys, line.split(), strict=True)) for line in out.splitlines() if line]


def _jobs_figures(clusters: dict[str, int]) -> tuple[list[str], list[str]]:
    """(killed, lost) job ids: killed = completed but not cleanly exactly once
    (started again, a signal, a non-zero exit); lost = not completed exactly once."""
    history = _history(clusters)
    seen = Counter(f"{j['cluster']}.{j['proc']}" for j in history)
    killed = sorted(
        f"{j['cluster']}.{j['proc']}"
        for j in history
        if j["starts"] != "1" or j["by_signal"] != "false" or j["exit_code"] != "0"
    )
    completed = Counter(f"{j['cluster']}.{j['proc']}" for j in history if j["status"] == "4")
    expected = [f"{c}.{p}" for c, n in clusters.items() for p in range(n)]
    lost = sorted(
        {j for j in expected if completed[j] != 1 or seen[j] != 1} | set(_queued(clusters))
    )
    return killed, lost


def _waves(rng: random.Random) -> list[Wave]:
    return [
        Wave(
            i * WAVE_EVERY_S + rng.uniform(0, 5), rng.randint(*WAVE_JOBS), rng.randint(*JOB_SECONDS)
        )
        for i in range(WAVES)
    ]


def _soak(d: Daemon, state_file: Path, waves: list[Wave], rng: random.Random, soak: Soak) -> None:
    """Start, wait a random moment, SIGKILL, check; until enough kills over
    every wave. The daemon is left running."""
    started = time.monotonic()
    todo = list(waves)
    while soak.kills < MIN_KILLS or time.monotonic() - started < KILL_PHASE_S or todo:
        offset = d.log.stat().st_size if d.log.exists() else 0
        d.start()
        deadline = time.monotonic() + rng.uniform(*KILL_AFTER_S)
        while (left := deadline - time.monotonic()) > 0:
            if todo and time.monotonic() - started >= todo[0].at_s:
                wave = todo.pop(0)
                soak.clusters[_submit(d.site, wave.seconds, wave.jobs)] = wave.jobs
            time.sleep(min(0.05, max(left, 0)))
        assert d.proc is not None
        if d.proc.poll() is not None:
            raise AssertionError(
                f"the daemon stopped by itself ({d.proc.returncode}):\n{d.log.read_text()[-3000:]}"
            )
        d.kill()
        soak.kills += 1
        soak.kill_times.append(datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3])
        # No daemon runs now: every container must be one the store knows.
        records = _records(state_file, d.site)
        soak.leaked_at_kills += sorted(_containers(d.owner) - set(records))
        soak.states_at_kills.update(records.values())
        with d.log.open() as log:
            log.seek(offset)
            soak.last_events[_last_event(log.read())] += 1
    d.start()  # the last start: it finishes the work


def _settled(d: Daemon, state_file: Path, clusters: dict[str, int], since: float) -> bool:
    if time.monotonic() - since < LAST_RUN_MIN_S:
        return False
    return not _queued(clusters) and not _containers(d.owner) and not _records(state_file, d.site)


def test_a_daemon_killed_at_random_moments_leaks_forgets_and_kills_nothing(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)  # noqa: S311 - a replayable schedule, not a secret
    waves = _waves(rng)
    tag = uuid.uuid4().hex[:6]
    owner, site = f"test-{tag}", f"soak{tag}"
    config = _config(tmp_path, owner, site)
    state_file = tmp_path / "state" / "state.sqlite3"
    d = Daemon(config, owner, site, tmp_path / "tide.log")
    replay = f"TIDE_CRASH_SOAK_SEED={SEED} pytest tests/integration/test_controller_crashes.py"
    print(f"\n[crash soak] seed {SEED} (replay: {replay}); waves {waves}", flush=True)
    began = time.monotonic()
    soak = Soak()
    try:
        _soak(d, state_file, waves, rng, soak)
        last_start = time.monotonic()
        killed_s = last_start - began
        try:
            lab.wait_for(
                "every job done and the site back at zero",
                lambda: _settled(d, state_file, soak.clusters, last_start),
                SETTLE_S,
            )
        except AssertionError as exc:
            print(f"[crash soak] {exc}", flush=True)  # the figures below say what is left
        d.stop()
        containers, records = _containers(owner), _records(state_file, site)
        leaked = sorted(containers - set(records))
        forgotten = sorted(set(records) - containers)
        jobs_killed, jobs_lost = _jobs_figures(soak.clusters)
        figures = {
            "kills": soak.kills,
            "resources_leaked": len(leaked),
            "resources_forgotten": len(forgotten),
            "jobs_killed": len(jobs_killed),
            "jobs_lost": len(jobs_lost),
            "jobs": sum(soak.clusters.values()),
            "leaked_at_kills": len(soak.leaked_at_kills),
            "states_at_kills": dict(soak.states_at_kills),
            "last_event_before_kills": dict(soak.last_events),
            "seed": SEED,
            "kill_phase_s": round(killed_s, 1),
            "duration_s": round(time.monotonic() - began, 1),
            "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        RESULTS.write_text(json.dumps(figures, sort_keys=True) + "\n")
        print(
            f"[crash soak] kills {soak.kills}, resources leaked {len(leaked)}, resources "
            f"forgotten {len(forgotten)}, jobs killed {len(jobs_killed)} / lost "
            f"{len(jobs_lost)} of {figures['jobs']} ({figures['duration_s']} s)\n"
            f"[crash soak] store states at the kills: {dict(soak.states_at_kills)}\n"
            f"[crash soak] last event before each kill: {dict(soak.last_events)}",
            flush=True,
        )
        text = d.log.read_text()
        assert d.code == 0, text[-3000:]
        assert soak.kills >= MIN_KILLS
        assert not soak.leaked_at_kills, (
            f"containers without a record at a kill: {soak.leaked_at_kills}"
        )
        assert not leaked, f"leaked (a container, no live record): {leaked}; {records}"
        assert not forgotten, f"forgotten (a live record, no container): {forgotten}"
        assert not jobs_killed, (
            f"jobs not run cleanly exactly once: {jobs_killed} (condor_history "
            f"{_history(soak.clusters)}; kills at {soak.kill_times}; log {d.log})"
        )
        assert not jobs_lost, f"jobs not completed exactly once: {jobs_lost}"
        assert not containers, "the site did not scale back to zero"
        assert not records, "the store did not settle at zero"
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        for cluster in soak.clusters:
            lab.in_container(lab.CM_HOST, lab.CM_CONTAINER, "condor_rm", cluster, check=False)
        client = docker.from_env()
        for container in client.containers.list(all=True, filters={"label": f"tide-owner={owner}"}):
            container.stop(timeout=30)  # stopped first: its startd withdraws its ads
            container.remove(v=True)
