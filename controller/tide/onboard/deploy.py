"""Carry out the plan on this host with pyinfra operations (the local
connector): Docker Engine when missing (the docker_engine role's packages
and daemon.json), the images, every file of every compose project, the
systemd units, then each project started - only where something changed
or it is not running, so a second run changes nothing. What onboarding
created is recorded in STATE_FILE, for --uninstall and for re-runs.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path, PurePosixPath
from typing import Any

from tide.onboard.bundle import Project
from tide.onboard.recipe import render, role_defaults, role_vars

STATE_FILE = Path("/opt/tide/onboard.json")
Progress = Callable[[str], None]
WAIT_TIMEOUT_S = 300


class DeployError(RuntimeError):
    """An operation failed; the message says which and why."""


@dataclass
class Record:
    """What onboarding created on this host (STATE_FILE)."""

    projects: list[dict[str, str]] = field(default_factory=list)  # role, folder
    units: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # made beside the projects (/cvmfs)
    packages: list[str] = field(default_factory=list)  # installed by onboarding
    images: list[str] = field(default_factory=list)  # loaded by onboarding
    settings: dict[str, Any] = field(default_factory=dict)  # never the token

    @classmethod
    def load(cls, path: Path = STATE_FILE) -> Record | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise DeployError(f"{path} is unreadable ({exc}): remove it and run again") from None
        return cls(**{k: data.get(k, v) for k, v in cls().__dict__.items()})

    def save(self, path: Path = STATE_FILE) -> None:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)


# --- pyinfra -------------------------------------------------------------------


Op = tuple[str, Callable[..., Any], dict[str, Any]]


def run_ops(ops: Sequence[Op], progress: Progress) -> dict[str, bool]:
    """Run pyinfra operations on this host, in order; name -> changed.
    Raises DeployError naming the first operation that failed."""
    if not ops:
        return {}
    from pyinfra.api.config import Config  # noqa: PLC0415
    from pyinfra.api.connect import connect_all  # noqa: PLC0415
    from pyinfra.api.exceptions import PyinfraError  # noqa: PLC0415
    from pyinfra.api.inventory import Inventory  # noqa: PLC0415
    from pyinfra.api.operation import add_op  # noqa: PLC0415
    from pyinfra.api.operations import run_ops as pyinfra_run  # noqa: PLC0415
    from pyinfra.api.state import State  # noqa: PLC0415

    inventory = Inventory((["@local"], {}))  # type: ignore[no-untyped-call]
    state = State(inventory=inventory, config=Config())  # type: ignore[no-untyped-call]
    connect_all(state)
    results = {name: add_op(state, op, name=name, **kwargs) for name, op, kwargs in ops}
    try:
        pyinfra_run(state)
    except PyinfraError as exc:
        failed = [n for n, r in results.items() if not all(m.did_succeed() for m in r.values())]
        raise DeployError(f"{(failed or ['an operation'])[0]}: {exc}") from None
    changed: dict[str, bool] = {}
    for name, result in results.items():
        metas = list(result.values())
        if not all(m.did_succeed() for m in metas):
            raise DeployError(f"{name}: failed")
        changed[name] = any(m.changed for m in metas)
        progress(f"{'changed' if changed[name] else 'ok':7} {name}")
    return changed


def _sh(*argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)


# --- the steps -----------------------------------------------------------------


def docker_ops(os_family: str, daemon_options: dict[str, Any] | None) -> tuple[list[Op], list[str]]:
    """Operations that install and start Docker Engine, with the
    docker_engine role's packages for `os_family` and its daemon.json."""
    from pyinfra.operations import apt, files, systemd  # noqa: PLC0415

    packages = list(role_vars("docker_engine", os_family).get("_docker_engine_packages", []))
    if not packages:
        raise DeployError(f"no Docker packages are known for {os_family}: install Docker first")
    options = (
        daemon_options
        if daemon_options is not None
        else role_defaults("docker_engine")["docker_engine_daemon_options"]
    )
    daemon = render("docker_engine", "daemon.json.j2", {"docker_engine_daemon_options": options})
    ops: list[Op] = [
        ("Write /etc/docker/daemon.json", files.put, {
            "src": StringIO(daemon), "dest": "/etc/docker/daemon.json", "mode": "0644",
        }),
        (f"Install {' '.join(packages)}", apt.packages, {
            "packages": packages, "no_recommends": True,
        }),
        ("Start Docker", systemd.service, {
            "service": "docker.service", "running": True, "enabled": True,
        }),
    ]  # fmt: skip
    return ops, packages


def file_ops(projects: Sequence[Project]) -> list[Op]:
    from pyinfra.operations import files  # noqa: PLC0415

    ops: list[Op] = []
    for p in projects:
        folders = sorted({f.path.parent for f in p.files} | {p.folder, *p.folders})
        for folder in folders:
            secret = any(f.secret and f.path.parent == folder for f in p.files)
            ops.append((f"Directory {folder}", files.directory, {
                "path": str(folder), "mode": "0700" if secret else "0755",
                "user": "root", "group": "root",
            }))  # fmt: skip
        for f in (*p.files, *p.units):
            ops.append((f"File {f.path}", files.put, {
                "src": StringIO(f.content), "dest": str(f.path), "mode": f"{f.mode:04o}",
                "user": "root", "group": "root",
            }))  # fmt: skip
    return ops


def unit_ops(projects: Sequence[Project]) -> list[Op]:
    from pyinfra.operations import systemd  # noqa: PLC0415

    return [
        (f"Unit {u.path.name}", systemd.service, {
            "service": u.path.name, "running": True, "enabled": True, "daemon_reload": True,
        })
        for p in projects
        for u in p.units
    ]  # fmt: skip


def running(folder: PurePosixPath) -> bool:
    done = _sh("docker", "compose", "--project-directory", str(folder), "ps", "-q",
               "--status", "running")  # fmt: skip
    return done.returncode == 0 and bool(done.stdout.strip())


def start_name(role: str) -> str:
    """The name of the operation that starts a role's project."""
    return f"Start {role}"


def start_ops(projects: Sequence[Project], changed: dict[str, bool]) -> list[Op]:
    """`docker compose up` for each project whose files changed (recreated)
    or that is not running; the others are left alone."""
    from pyinfra.operations import server  # noqa: PLC0415

    ops: list[Op] = []
    for p in projects:
        touched = any(changed.get(f"File {f.path}") for f in p.files)
        if not touched and running(p.folder):
            continue
        recreate = " --force-recreate" if touched else ""
        command = (
            f"docker compose --project-directory {shlex.quote(str(p.folder))} up -d --wait "
            f"--wait-timeout {WAIT_TIMEOUT_S}{recreate}"
        )
        ops.append((start_name(p.role), server.shell, {"commands": [command]}))
    return ops


def missing_images(projects: Sequence[Project]) -> list[str]:
    return [
        image
        for image in dict.fromkeys(p.image for p in projects)
        if _sh("docker", "image", "inspect", image).returncode != 0
    ]


def image_ops(images: Sequence[str], archives: Path | None) -> list[Op]:
    """Load each missing image from `archives` (NAME.tar for REPO/NAME:TAG,
    as `docker save` wrote it) or pull it."""
    from pyinfra.operations import server  # noqa: PLC0415

    ops: list[Op] = []
    for image in images:
        name = image.rsplit("/", 1)[-1].split(":", 1)[0]
        archive = archives / f"{name}.tar" if archives else None
        if archive is not None and archive.is_file():
            ops.append(
                (f"Load {image}", server.shell, {"commands": [f"docker load -q -i {archive}"]})
            )
        else:
            ops.append((f"Pull {image}", server.shell, {"commands": [f"docker pull -q {image}"]}))
    return ops


BOOTSTRAP_RECORD = ".tide-bootstrap"
"""In a venv the bootstrap script made: the packages it installed, one per line."""


def bootstrap_ops(venv: Path) -> list[Op]:
    """Remove what the bootstrap script installed for this venv (not the
    venv itself: the running command lives there; see remove_venv)."""
    from pyinfra.operations import apt  # noqa: PLC0415

    try:
        packages = (venv / BOOTSTRAP_RECORD).read_text(encoding="utf-8").split()
    except OSError:
        return []
    if not packages:
        return []
    return [(f"Remove {' '.join(packages)}", apt.packages, {
        "packages": packages, "present": False, "purge": True,
    })]  # fmt: skip


def remove_venv(venv: Path) -> bool:
    """Remove the bootstrap script's venv (and /opt/tide when empty)."""
    if not (venv / BOOTSTRAP_RECORD).is_file():
        return False
    shutil.rmtree(venv, ignore_errors=True)
    with contextlib.suppress(OSError):
        venv.parent.rmdir()
    return True


def remove_ops(record: Record) -> list[Op]:
    """Operations that remove everything `record` says onboarding created."""
    from pyinfra.operations import apt, files, server, systemd  # noqa: PLC0415

    ops: list[Op] = []
    for project in reversed(record.projects):
        folder = project["folder"]
        if Path(folder, "compose.yaml").is_file():
            ops.append((f"Stop {project['role']}", server.shell, {"commands": [
                f"docker compose --project-directory {shlex.quote(folder)} down --volumes "
                "--remove-orphans "
                "--timeout 60"
            ]}))  # fmt: skip
        ops.append((f"Remove {folder}", files.directory, {"path": folder, "present": False}))
    for unit in record.units:
        name = PurePosixPath(unit).name
        ops.append((f"Stop unit {name}", systemd.service, {
            "service": name, "running": False, "enabled": False,
        }))  # fmt: skip
        ops.append((f"Remove {unit}", files.file, {"path": unit, "present": False}))
    for folder in record.folders:
        quoted = shlex.quote(folder)
        ops.append((f"Unmount {folder}", server.shell, {"commands": [
            f"if mountpoint -q {quoted}; then umount -l {quoted}; fi"
        ]}))  # fmt: skip
        ops.append((f"Remove {folder}", files.directory, {"path": folder, "present": False}))
    for image in record.images:
        ops.append((f"Remove image {image}", server.shell, {"commands": [
            f"docker image rm {shlex.quote(image)} || true"
        ]}))  # fmt: skip
    if record.packages:
        ops.append((f"Remove {' '.join(record.packages)}", apt.packages, {
            "packages": record.packages, "present": False, "purge": True,
        }))  # fmt: skip
        ops.append(("Remove /etc/docker", files.directory, {
            "path": "/etc/docker", "present": False,
        }))  # fmt: skip
    return ops


__all__ = [
    "BOOTSTRAP_RECORD",
    "STATE_FILE",
    "DeployError",
    "Record",
    "bootstrap_ops",
    "docker_ops",
    "file_ops",
    "image_ops",
    "missing_images",
    "remove_ops",
    "remove_venv",
    "run_ops",
    "running",
    "start_name",
    "start_ops",
    "unit_ops",
]
