"""The provider host's prerequisites, checked before anything is changed.

`HostFacts` is read from the host at the edge (`host_facts`); `problems`
is pure: each failed check is named with what to do about it. INFN's
rule for disk: 20 GB per core for the jobs' scratch space, plus the CVMFS
cache when the host runs CVMFS.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

SUPPORTED = {("debian", "13"), ("debian", "12"), ("ubuntu", "24.04"), ("ubuntu", "22.04")}
"""(ID, VERSION_ID) of /etc/os-release that onboarding supports."""
INSTALLABLE = {("debian", "13"): "Debian", ("ubuntu", "24.04"): "Ubuntu"}
"""Where Docker Engine with Compose v2 comes from the distribution's own
packages (the docker_engine role's vars/<family>.yml list them)."""
GB = 1000**3


@dataclass(frozen=True)
class HostFacts:
    os_id: str
    os_version: str
    euid: int
    cpus: int
    docker_cli: bool
    docker_engine: bool  # the engine answers
    compose_v2: bool
    apt: bool
    fuse: bool  # /dev/fuse is a character device
    cgroups: bool  # /sys/fs/cgroup is mounted (v1 or v2)
    free_bytes: int  # where the engine keeps containers (its data root)
    free_path: str


@dataclass(frozen=True)
class Problem:
    check: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}. Fix: {self.fix}"


def docker_installable(f: HostFacts) -> bool:
    return f.apt and (f.os_id, f.os_version) in INSTALLABLE


def disk_needed(cores: int, *, per_core_gb: float, cvmfs_cache_mb: int) -> int:
    """Bytes a host needs free: per_core_gb per core, plus the CVMFS cache."""
    return int(cores * per_core_gb * GB) + cvmfs_cache_mb * 1000**2


def problems(
    f: HostFacts,
    *,
    cores: int | None,
    cvmfs: bool,
    per_core_gb: float,
    cvmfs_cache_mb: int,
) -> list[Problem]:
    """Every prerequisite `f` fails, for a slot of `cores` (None: all the
    host's) with or without CVMFS."""
    out: list[Problem] = []
    if (f.os_id, f.os_version) not in SUPPORTED:
        names = ", ".join(f"{i} {v}" for i, v in sorted(SUPPORTED))
        out.append(
            Problem(
                "os",
                f"{f.os_id or 'unknown'} {f.os_version} is not supported",
                f"use one of: {names}",
            )
        )
    if f.euid != 0:
        out.append(Problem("root", "onboarding changes the host", "run it as root (sudo)"))
    if not (f.docker_cli and f.compose_v2) and not docker_installable(f):
        out.append(
            Problem(
                "docker",
                "Docker Engine with the Compose v2 plugin is not installed, and this OS has "
                "no package for it",
                "install Docker Engine and docker-compose-plugin from "
                "https://docs.docker.com/engine/install/, then run tide onboard again",
            )
        )
    if cvmfs and not f.fuse:
        out.append(
            Problem(
                "fuse",
                "/dev/fuse is missing: CVMFS cannot mount repositories",
                "load the fuse module (modprobe fuse), or onboard without --cvmfs-repository",
            )
        )
    if not f.cgroups:
        out.append(
            Problem(
                "cgroups",
                "/sys/fs/cgroup is not mounted: containers cannot be limited",
                "boot with cgroups (systemd does this by default)",
            )
        )
    want = cores if cores is not None else f.cpus
    need = disk_needed(want, per_core_gb=per_core_gb, cvmfs_cache_mb=cvmfs_cache_mb if cvmfs else 0)
    if f.free_bytes < need:
        out.append(
            Problem(
                "disk",
                f"{f.free_bytes / GB:.1f} GB free at {f.free_path}, {need / GB:.1f} GB needed "
                f"({per_core_gb:g} GB per core for {want} cores"
                + (f" + {cvmfs_cache_mb} MB CVMFS cache)" if cvmfs else ")"),
                "free space there, give fewer --cpus, or lower --disk-per-core-gb",
            )
        )
    return out


# --- reading the facts (I/O) -------------------------------------------------


def _os_release() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


def _ok(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _data_root() -> str:
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.DockerRootDir}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "/var/lib/docker"
    root = done.stdout.strip()
    return root if done.returncode == 0 and root.startswith("/") else "/var/lib/docker"


def _existing(path: str) -> str:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)


def host_facts() -> HostFacts:
    release = _os_release()
    docker_cli = shutil.which("docker") is not None
    engine = docker_cli and _ok(["docker", "version", "--format", "{{.Server.Version}}"])
    root = _existing(_data_root() if engine else "/var/lib/docker")
    try:
        fuse = stat.S_ISCHR(os.stat("/dev/fuse").st_mode)
    except OSError:
        fuse = False
    return HostFacts(
        os_id=release.get("ID", ""),
        os_version=release.get("VERSION_ID", ""),
        euid=os.geteuid(),
        cpus=os.cpu_count() or 1,
        docker_cli=docker_cli,
        docker_engine=engine,
        compose_v2=docker_cli and _ok(["docker", "compose", "version"]),
        apt=shutil.which("apt-get") is not None,
        fuse=fuse,
        cgroups=Path("/sys/fs/cgroup").is_dir() and any(Path("/sys/fs/cgroup").iterdir()),
        free_bytes=shutil.disk_usage(root).free,
        free_path=root,
    )


__all__ = ["HostFacts", "Problem", "disk_needed", "docker_installable", "host_facts", "problems"]
