"""One source of truth: role defaults agree with their argument specs, the
image tags (roles and controller) agree with the collection version, the lab's
ports are unique."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tide.config import DockerSiteConfig

TOP = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (TOP / "roles").iterdir() if (p / "meta").is_dir())


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("role", ROLES)
def test_role_defaults_match_argument_spec(role: str) -> None:
    defaults = _yaml(TOP / "roles" / role / "defaults" / "main.yml") or {}
    options = _yaml(TOP / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]["main"][
        "options"
    ]
    assert set(defaults) == set(options), f"{role}: defaults and spec name different variables"
    for name, spec in options.items():
        assert name.startswith(f"{role}_"), f"{name} lacks the role prefix {role}_"
        assert spec.get("description"), f"{name} has no description"
        if spec.get("required"):
            assert defaults[name] in ("", None, []), f"{name} is required but has a default"
        else:
            assert spec.get("default") == defaults[name], f"{name}: spec and defaults differ"


@pytest.mark.parametrize("role", ROLES)
def test_role_is_documented(role: str) -> None:
    readme = TOP / "roles" / role / "README.md"
    assert readme.is_file()
    text = readme.read_text()
    defaults = _yaml(TOP / "roles" / role / "defaults" / "main.yml") or {}
    missing = [name for name in defaults if name not in text]
    assert not missing, f"{role}/README.md does not document {missing}"


def test_image_tags_follow_the_collection_version() -> None:
    version = _yaml(TOP / "galaxy.yml")["version"]
    project = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]["version"]
    assert project == version
    for role, var in [
        ("central_manager", "central_manager_image"),
        ("condor_worker", "condor_worker_image"),
    ]:
        image = _yaml(TOP / "roles" / role / "defaults" / "main.yml")[var]
        assert image == f"tide/condor:{version}"


def test_the_controller_boots_the_image_of_its_release() -> None:
    version = _yaml(TOP / "galaxy.yml")["version"]
    assert DockerSiteConfig.model_fields["image"].default == f"tide/condor:{version}"


def test_lab_ports_are_unique_and_cover_every_worker() -> None:
    group_vars = _yaml(TOP / "inventories" / "lab" / "group_vars" / "all.yml")
    ports = group_vars["tide_lab_ports"]
    hosts = _yaml(TOP / "inventories" / "lab" / "hosts.yml")
    workers = set(hosts["all"]["children"]["workers"]["hosts"])
    assert set(ports["workers"]) == workers
    every = [
        ports["collector"],
        ports["squid"],
        *ports["workers"].values(),
        *ports["tests"].values(),
    ]
    assert len(every) == len(set(every)), every
