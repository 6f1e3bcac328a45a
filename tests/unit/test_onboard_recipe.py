"""tide onboard renders the provider roles' own templates with their own
defaults: checked here against Ansible itself (ansible-playbook, local
connection, the same templates and defaults), file by file, so the two
paths cannot drift apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tide.onboard.recipe import MANAGED, RecipeError, render, resolve, role_defaults

TOP = Path(__file__).resolve().parents[2]

VARIABLES: dict[str, Any] = {
    "inventory_hostname": "provider-1",
    "condor_worker_collector": "127.0.0.1:29618",
    "condor_worker_pool_domain": "lab.tide",
    "condor_worker_site_name": "DESY-HH",
    "condor_worker_cpus": 8,
    "condor_worker_site_attributes": {"HasDocker": True, "Flavour": "fat", "Slots": 3},
    "condor_worker_condor_config": {"START": "TARGET.RequestCpus <= 4", "SUSPEND": False},
    "condor_worker_cvmfs": {
        "mode": "container",
        "repositories": ["sft.cern.ch", "cms.cern.ch"],
        "container": "tide-cvmfs",
        "cvmfsexec_dir": "",
        "cache_dir": "/var/lib/cvmfs",
    },
    "condor_worker_depends_on": ["tide-squid"],
    "cvmfs_repositories": ["sft.cern.ch", "cms.cern.ch"],
    "cvmfs_http_proxy": "http://127.0.0.1:3128",
    "cvmfs_config": {"CVMFS_DEBUGLOG": "/var/log/cvmfs.log"},
    "squid_allowed_clients": ["127.0.0.0/8", "198.51.100.0/24"],  # rendered, never reached
}

TEMPLATES = [
    (role, path.name)
    for role in ("condor_worker", "autoheal", "cvmfs", "squid", "docker_engine")
    for path in sorted((TOP / "roles" / role / "templates").glob("*.j2"))
]


def _without_header(text: str, managed: str) -> str:
    header = f"#\n# {managed}\n#\n"
    assert text.startswith(header) or managed not in text, text[:200]
    return text.removeprefix(header)


@pytest.fixture(scope="module")
def ansible_rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], str]:
    """Every template as Ansible's template module writes it."""
    out = tmp_path_factory.mktemp("ansible")
    tasks: list[dict[str, Any]] = []
    for role, name in TEMPLATES:
        tasks.append(
            {
                "name": f"{role} {name}",
                "ansible.builtin.template": {
                    "src": str(TOP / "roles" / role / "templates" / name),
                    "dest": str(out / f"{role}--{name}"),
                    "mode": "0644",
                },
                "vars": {**role_defaults(role), **VARIABLES},
            }
        )
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    playbook = out / "render.yml"
    playbook.write_text(yaml.safe_dump(play))
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-playbook")),
            "-i", "localhost,", "-c", "local", "-e", json.dumps(
                {"ansible_python_interpreter": sys.executable}
            ), str(playbook),
        ],
        capture_output=True, text=True, check=False, cwd=TOP,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return {(r, n): (out / f"{r}--{n}").read_text() for r, n in TEMPLATES}


@pytest.mark.parametrize(("role", "name"), TEMPLATES)
def test_onboarding_renders_each_template_as_ansible_does(
    role: str, name: str, ansible_rendered: dict[tuple[str, str], str]
) -> None:
    ours = render(role, name, VARIABLES)
    theirs = ansible_rendered[(role, name)]
    assert _without_header(ours, MANAGED) == _without_header(theirs, "Ansible managed")


def test_defaults_that_refer_to_variables_are_resolved() -> None:
    resolved = resolve({**role_defaults("condor_worker"), "inventory_hostname": "h1"})
    assert resolved["condor_worker_resource_id"] == "h1"
    assert resolved["condor_worker_node_name"] == "h1"


def test_a_variable_no_one_set_is_named() -> None:
    with pytest.raises(RecipeError, match="inventory_hostname"):
        render("condor_worker", "compose.yaml.j2", {})


def test_a_template_that_is_not_there_is_named() -> None:
    with pytest.raises(RecipeError, match=r"role squid has no template nope\.j2"):
        render("squid", "nope.j2", {})
