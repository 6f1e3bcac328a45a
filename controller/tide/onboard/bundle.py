"""The files of the provider recipe for one host, as provider.yml would
write them: each role's own templates rendered with its own defaults and
the onboarding settings (tide.onboard.recipe). Pure: a plan, no I/O.

The roles and where their files go (the roles' tasks say the same):
squid (with --squid), cvmfs (container mode, with repositories), the
condor worker, and autoheal - started in that order, each a compose
project in its own folder under /opt/tide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from tide.onboard.recipe import render, resolve, role_defaults
from tide.onboard.settings import Settings


@dataclass(frozen=True)
class File:
    """One file on the host: its absolute path, content and mode."""

    path: PurePosixPath
    content: str = field(repr=False)
    mode: int = 0o644
    secret: bool = False  # content is never printed or logged


@dataclass(frozen=True)
class Project:
    """One role's compose project: its folder, files and the image it runs."""

    role: str
    folder: PurePosixPath
    image: str
    files: tuple[File, ...]
    units: tuple[File, ...] = ()  # systemd units the role installs
    folders: tuple[PurePosixPath, ...] = ()  # more folders the role makes (0755)


def role_variables(role: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The role's defaults with `overrides`, resolved."""
    return resolve({**role_defaults(role), **overrides})


def _project(role: str, variables: dict[str, Any], files: list[tuple[str, str]]) -> Project:
    v = role_variables(role, variables)
    folder = PurePosixPath(v[f"{role}_dir"])
    rendered = tuple(
        File(folder / dest, render(role, template, variables)) for template, dest in files
    )
    return Project(role, folder, str(v[f"{role}_image"]), rendered)


def plan(s: Settings) -> list[Project]:
    """The compose projects onboarding deploys for `s`, in start order."""
    host = {"inventory_hostname": s.node_name}
    projects: list[Project] = []
    if s.squid:
        projects.append(
            _project(
                "squid",
                {
                    **host,
                    "squid_allowed_clients": ["127.0.0.0/8"],
                    **({"squid_port": s.squid_port} if s.squid_port else {}),
                },
                [("compose.yaml.j2", "compose.yaml")],
            )
        )
    cvmfs: dict[str, Any] = {}
    if s.cvmfs_repositories:
        variables = {
            **host,
            "cvmfs_mode": "container",
            "cvmfs_repositories": list(s.cvmfs_repositories),
            "cvmfs_http_proxy": s.proxy,
        }
        if s.cvmfs_image:
            variables["cvmfs_image"] = s.cvmfs_image
        project = _project("cvmfs", variables, [("compose.yaml.j2", "compose.yaml")])
        unit = File(
            PurePosixPath("/etc/systemd/system/tide-cvmfs-propagation.service"),
            render("cvmfs", "tide-cvmfs-propagation.service.j2", variables),
        )
        v = role_variables("cvmfs", variables)
        # As the role's tasks: /cvmfs (the unit makes it a shared mount) and the cache.
        folders = (PurePosixPath("/cvmfs"), PurePosixPath(v["cvmfs_cache_dir"]))
        projects.append(
            Project(project.role, project.folder, project.image, project.files, (unit,), folders)
        )
        cvmfs = {
            "mode": "container",
            "repositories": list(s.cvmfs_repositories),
            "container": v["cvmfs_container_name"],
            "cvmfsexec_dir": "",
            "cache_dir": v["cvmfs_cache_dir"],
        }
    worker = {
        **host,
        "condor_worker_collector": s.collector,
        "condor_worker_pool_domain": s.pool_domain,
        "condor_worker_site_name": s.site_name,
        "condor_worker_cpus": s.cpus,
        "condor_worker_memory_mb": s.memory_mb,
        "condor_worker_cvmfs": cvmfs,
        **({"condor_worker_port": s.port} if s.port else {}),
        "condor_worker_bind_address": s.bind_address,
    }
    project = _project(
        "condor_worker",
        worker,
        [("compose.yaml.j2", "compose.yaml"), ("site.conf.j2", "condor.d/site.conf")],
    )
    token = File(project.folder / "secrets" / "token", s.token.strip() + "\n", 0o600, secret=True)
    projects.append(Project(project.role, project.folder, project.image, (*project.files, token)))
    projects.append(_project("autoheal", host, [("compose.yaml.j2", "compose.yaml")]))
    return projects


__all__ = ["File", "Project", "plan", "role_variables"]
