"""The steps of `tide onboard`, in order, each explained as it runs:
settings (tide.onboard.cli) -> the host's prerequisites -> the pool accepts
the token -> Docker, images, files, services (pyinfra) -> the slot in the
pool -> a summary. Nothing is changed before every check passed; a first
onboarding that fails later is rolled back.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tide.onboard import checks, deploy, pool
from tide.onboard.bundle import Project, plan
from tide.onboard.export import ExportError, export
from tide.onboard.recipe import role_defaults
from tide.onboard.settings import Settings

Say = Callable[[str], None]


@dataclass(frozen=True)
class Smoke:
    """--smoke-test: a token that may submit, and the schedd (None: the first)."""

    submit_token: str = field(repr=False)
    schedd: str | None


_TOKEN = Path("secrets/token")


def export_bundle(settings: Settings, folder: Path, say: Say) -> int:
    try:
        where = export(settings, plan(settings), folder)
    except ExportError as exc:
        print(f"tide onboard: {exc}")
        return 2
    say(f"wrote the compose bundle to {where}; its README.md says how to start it")
    return 0


def _family(facts: checks.HostFacts) -> str:
    return {"debian": "Debian", "ubuntu": "Ubuntu"}.get(facts.os_id, facts.os_id)


def _daemon_options(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise deploy.DeployError(f"--docker-daemon-json {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise deploy.DeployError(f"--docker-daemon-json {path}: not a JSON object")
    return loaded


def _host_ok(settings: Settings, say: Say, per_core_gb: float) -> checks.HostFacts | None:
    say("checking this host")
    facts = checks.host_facts()
    cache_mb = int(role_defaults("cvmfs")["cvmfs_quota_limit_mb"])
    found = checks.problems(
        facts,
        cores=settings.cpus,
        cvmfs=bool(settings.cvmfs_repositories),
        per_core_gb=per_core_gb,
        cvmfs_cache_mb=cache_mb,
    )
    for problem in found:
        print(f"tide onboard: {problem}")
    return None if found else facts


def onboard(
    settings: Settings,
    say: Say,
    *,
    images: Path | None,
    daemon_json: Path | None,
    per_core_gb: float,
    wait_s: float,
    smoke: Smoke | None = None,
) -> int:
    start = time.monotonic()
    projects = plan(settings)
    ready = _preflight(settings, projects, say, per_core_gb)
    if isinstance(ready, int):
        print("tide onboard: nothing was changed")
        return ready
    facts, previous = ready
    record = previous or deploy.Record()
    try:
        job = _Job(settings, projects, facts, record, say, images, daemon_json)
        changed = _deploy(job)
        # A worker (re)started now must be the one seen, not its predecessor's ad.
        since = job.worker_started
        say(f"waiting for the slot of {settings.node_name} in the pool")
        if not pool.wait_for(
            "the slot", lambda: bool(pool.slots(settings, since)), wait_s, say, interval_s=0.5
        ):
            raise deploy.DeployError(
                f"the slot did not appear in the pool within {wait_s:.0f} s: see "
                f"docker compose --project-directory {_worker(projects).folder} logs"
            )
    except (deploy.DeployError, OSError) as exc:
        print(f"tide onboard: {exc}")
        if previous is None:
            say("rolling back: removing what this first onboarding made")
            _remove(record, say)
            print("tide onboard: rolled back; this host is as before")
        return 1
    took = time.monotonic() - start
    tested = None
    if smoke is not None:
        say("smoke test: a job for this slot")
        try:
            tested = pool.smoke_test(settings, smoke.submit_token, smoke.schedd, wait_s, say)
        except pool.PoolError as exc:
            _summary(settings, projects, changed, took, None)
            print(f"tide onboard: the host is onboarded, but the smoke test failed: {exc}")
            return 1
    _summary(settings, projects, changed, took, tested)
    return 0


def _preflight(
    settings: Settings, projects: list[Project], say: Say, per_core_gb: float
) -> tuple[checks.HostFacts, deploy.Record | None] | int:
    """The host's prerequisites, the pool's answer, and what onboarding made
    here before: the facts and the earlier record, or the exit code."""
    facts = _host_ok(settings, say, per_core_gb)
    if facts is None:
        return 2
    say(f"asking the pool at {settings.collector} whether it accepts the token")
    try:
        pool.check_token(settings)
    except pool.PoolError as exc:
        print(f"tide onboard: {exc}")
        return 1
    try:
        previous = deploy.Record.load()
    except deploy.DeployError as exc:
        print(f"tide onboard: {exc}")
        return 2
    foreign = [str(p.folder) for p in projects if Path(p.folder).exists()]
    if previous is None and foreign:
        print(
            f"tide onboard: {', '.join(foreign)} exist(s) but tide onboard did not make them "
            "(provider.yml, or a recipe by hand?): remove them, or keep managing this host "
            "that way"
        )
        return 2
    return facts, previous


def _worker(projects: list[Project]) -> Project:
    return next(p for p in projects if p.role == "condor_worker")


@dataclass
class _Job:
    settings: Settings
    projects: list[Project]
    facts: checks.HostFacts
    record: deploy.Record
    say: Say
    images: Path | None
    daemon_json: Path | None
    worker_started: float | None = None  # Unix time the worker was (re)started


def _deploy(job: _Job) -> dict[str, bool]:
    settings, projects, facts, record, say = (
        job.settings,
        job.projects,
        job.facts,
        job.record,
        job.say,
    )
    changed: dict[str, bool] = {}
    if not (facts.docker_cli and facts.compose_v2):
        say("installing Docker Engine")
        ops, packages = deploy.docker_ops(_family(facts), _daemon_options(job.daemon_json))
        record.packages = sorted(set(record.packages) | set(packages))
        record.save()
        changed |= deploy.run_ops(ops, say)
    # What a changed configuration no longer has (e.g. no more CVMFS) goes.
    wanted = {str(p.folder) for p in projects}
    units = {str(u.path) for p in projects for u in p.units}
    folders = {str(f) for p in projects for f in p.folders}
    dropped = deploy.Record(
        projects=[p for p in record.projects if p["folder"] not in wanted],
        units=[u for u in record.units if u not in units],
        folders=[f for f in record.folders if f not in folders],
    )
    if dropped.projects or dropped.units or dropped.folders:
        changed |= deploy.run_ops(deploy.remove_ops(dropped), say)
    record.projects = [{"role": p.role, "folder": str(p.folder)} for p in projects]
    record.units = sorted(units)
    record.folders = sorted(folders)
    record.settings = {k: v for k, v in asdict(settings).items() if k != "token"}
    record.save()
    missing = deploy.missing_images(projects)
    if missing:
        say(f"making the images present: {', '.join(missing)}")
        record.images = sorted(set(record.images) | set(missing))
        record.save()
        changed |= deploy.run_ops(deploy.image_ops(missing, job.images), say)
    say("writing the compose projects")
    changed |= deploy.run_ops(deploy.file_ops(projects), say)
    changed |= deploy.run_ops(deploy.unit_ops(projects), say)
    starts = deploy.start_ops(projects, changed)
    if any(name == deploy.start_name("condor_worker") for name, _, _ in starts):
        job.worker_started = time.time() - 1  # DaemonStartTime has whole seconds
    if starts:
        say("starting the services (up to a few minutes while they turn healthy)")
    changed |= deploy.run_ops(starts, say)
    return changed


def _summary(
    settings: Settings,
    projects: list[Project],
    changed: dict[str, bool],
    took_s: float,
    tested: pool.SmokeTest | None,
) -> None:
    names = pool.slots(settings)
    worker = _worker(projects).folder
    count = sum(changed.values())
    print(
        f"tide onboard: done in {took_s:.1f} s, {count} change(s)"
        + (" - nothing to do" if count == 0 else "")
    )
    print(f"  slot:      {', '.join(names)} in pool {settings.pool_domain} ({settings.collector})")
    print(f"  site:      {settings.site_name}, TideResourceId {settings.node_name}")
    if tested is not None:
        print(
            f"  smoke test: job {tested.job} ran on {tested.slot} and exited 0 "
            f"({tested.seconds:.1f} s)"
        )
    print(f"  services:  {', '.join(str(p.folder) for p in projects)}")
    print(f"  check:     docker compose --project-directory {worker} ps")
    print(f"             docker compose --project-directory {worker} logs condor")
    print(f"  in pool:   condor_status -constraint 'TideResourceId == \"{settings.node_name}\"'")
    print("  leave:     tide onboard --uninstall")


def _remove(record: deploy.Record, say: Say) -> None:
    deploy.run_ops(deploy.remove_ops(record), say)
    deploy.STATE_FILE.unlink(missing_ok=True)


def uninstall(say: Say, *, wait_s: float) -> int:
    """Remove everything onboarding made; the slot leaves the pool."""
    try:
        record = deploy.Record.load()
    except deploy.DeployError as exc:
        print(f"tide onboard: {exc}")
        return 1
    if record is None:
        say(f"nothing to remove: no {deploy.STATE_FILE} (this host was not onboarded)")
        return 0
    settings = _recorded(record)
    try:
        _remove(record, say)
    except deploy.DeployError as exc:
        print(f"tide onboard: {exc}")
        return 1
    if settings is not None:
        say("waiting for the slot to leave the pool")
        if not pool.wait_for("the slot to leave", lambda: not pool.slots(settings), wait_s, say):
            print(f"tide onboard: the slot of {settings.node_name} is still in the pool")
            return 1
    venv = Path(sys.prefix)
    try:
        deploy.run_ops(deploy.bootstrap_ops(venv), say)
    except deploy.DeployError as exc:
        print(f"tide onboard: {exc}")
        return 1
    gone = deploy.remove_venv(venv)  # last: this command runs from it
    print(
        "tide onboard: removed; the slot has left the pool"
        + (f"; {venv} removed too" if gone else "")
    )
    return 0


def _recorded(record: deploy.Record) -> Settings | None:
    """The settings of the last onboarding, with its token (read before the
    files go), to watch the slot leave; None when they cannot be read."""
    worker = next((p for p in record.projects if p["role"] == "condor_worker"), None)
    try:
        token = (Path(worker["folder"]) / _TOKEN).read_text(encoding="utf-8") if worker else ""
        fields = {**record.settings, "token": token.strip()}
        fields["cvmfs_repositories"] = tuple(fields.get("cvmfs_repositories", ()))
        return Settings(**fields) if token else None
    except (OSError, TypeError):
        return None


__all__ = ["Smoke", "export_bundle", "onboard", "uninstall"]
