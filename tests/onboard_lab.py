"""A fresh lab host for `tide onboard` (tests/bin/lab-hosts fresh): a
systemd server that no role has touched, on this machine's network, and
the kit an admin would bring to it - the bootstrap script `tide-onboard`,
Tide (its source) with every dependency (the lab's wheelhouse: offline), the
image archives, the worker token (0600) and the lab's daemon.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from tests import lab

HOST = "tide-lab-onboard"
KIT = "/root/kit"
PORT = lab.TEST_PORTS["onboard_worker"]
SITE = "LAB-ONBOARD"
SQUID_PORT = lab.TEST_PORTS["onboard_squid"]
EXPORT_PORT = lab.TEST_PORTS["onboard_export_worker"]
IMAGES = ("condor", "autoheal", "squid", "cvmfs-double")
CVMFS_IMAGE = "tide/cvmfs-double:0.1.0"  # the lab's contract double of the CVMFS image
LAB_HOSTS = str(lab.TOP / "tests" / "bin" / "lab-hosts")


def fresh_host() -> None:
    lab.run([LAB_HOSTS, "fresh", HOST], timeout=300)


def remove_host() -> None:
    lab.run([LAB_HOSTS, "rm", HOST], check=False)


def tide_source(into: Path) -> Path:
    """Tide's source (the project, and the roles and worker image files its
    package links to): pip builds it on the host, offline, with setuptools
    from the wheelhouse."""
    src = into / "tide"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(lab.TOP / name, src / name)
    (src / "images").mkdir()
    for name in ("controller", "roles", "images/condor"):
        shutil.copytree(
            lab.TOP / name,
            src / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    return src


def daemon_json() -> str:
    """The lab's docker_engine_daemon_options (it shares this machine's network)."""
    lab_vars = yaml.safe_load((lab.TOP / "inventories/lab/group_vars/all.yml").read_text())
    return json.dumps(lab_vars["docker_engine_daemon_options"])


def stage_kit(token: str) -> str:
    """Copy the kit into the host; returns the path there of Tide's source."""
    with tempfile.TemporaryDirectory() as tmp:
        kit = Path(tmp) / "kit"
        kit.mkdir()
        source = tide_source(kit)
        shutil.copytree(lab.STATE / "wheelhouse", kit / "wheels")
        shutil.copy(lab.TOP / "controller/tide/onboard/tide-onboard", kit / "tide-onboard")
        (kit / "images").mkdir()
        (kit / "daemon.json").write_text(daemon_json())
        lab.run(["docker", "cp", str(kit), f"{HOST}:{KIT}"], timeout=300)
    for name in IMAGES:
        archive = lab.STATE / "images" / f"{name}.tar"
        lab.run(["docker", "cp", str(archive), f"{HOST}:{KIT}/images/{name}.tar"], timeout=300)
    set_token(token)
    return f"{KIT}/{source.name}"


def set_token(token: str, name: str = "worker.token") -> None:
    """A token file in the kit, 0600, written through stdin."""
    lab.run(
        ["docker", "exec", "-i", HOST, "sh", "-c", f"umask 077 && cat > {KIT}/{name}"],
        input_text=token + "\n",
    )


def onboard(
    wheel: str, *args: str, kit_file: str = "worker.token"
) -> subprocess.CompletedProcess[str]:
    """The bootstrap script on the host, as its admin runs it (as root)."""
    argv = [
        "docker", "exec",
        "-e", f"TIDE_ONBOARD_WHEELS={KIT}/wheels", "-e", f"TIDE_ONBOARD_PACKAGE={wheel}",
        HOST, "sh", f"{KIT}/tide-onboard",
    ]  # fmt: skip
    if "--uninstall" not in args:
        argv += [
            "--collector", lab.COLLECTOR, "--site", SITE, "--token-file", f"{KIT}/{kit_file}",
            "--port", str(PORT), "--bind-address", "127.0.0.1", "--images", f"{KIT}/images",
            "--docker-daemon-json", f"{KIT}/daemon.json",
        ]  # fmt: skip
    return lab.run([*argv, *args], check=False, timeout=900)


def host_is_clean() -> list[str]:
    """What onboarding left on the host (empty: nothing)."""
    left: list[str] = []
    for folder in ("condor_worker", "autoheal", "cvmfs", "squid"):
        if lab.on_host(HOST, "test", "-e", f"/opt/tide/{folder}", check=False).returncode == 0:
            left.append(f"/opt/tide/{folder}")
    for path in ("/etc/systemd/system/tide-cvmfs-propagation.service", "/cvmfs", "/var/lib/cvmfs"):
        if lab.on_host(HOST, "test", "-e", path, check=False).returncode == 0:
            left.append(path)
    if lab.on_host(HOST, "test", "-e", "/opt/tide/onboard.json", check=False).returncode == 0:
        left.append("/opt/tide/onboard.json")
    if lab.on_host(HOST, "sh", "-c", "command -v dockerd", check=False).returncode == 0:
        left.append("dockerd")
    return left
