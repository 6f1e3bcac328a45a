"""The package's layers: what a module may load, and the site kinds' one registry.

Each import check runs in a fresh interpreter, so what an earlier test
imported cannot hide a violation.
"""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from tide.config import check_secrets, load_config
from tide.configbase import SiteSettings
from tide.sites import kinds as kinds_module
from tide.sites.base import Capability, SiteAdapter, SiteError, Unsupported

BINDINGS = ("htcondor2", "classad2", "htcondor")
CLIENTS = ("docker", "openstack", "keystoneauth1", "asyncssh")


def loaded_after(module: str, watched: tuple[str, ...]) -> list[str]:
    """Which of `watched` a fresh interpreter has loaded after importing `module`."""
    code = f"import sys, {module}\nprint(' '.join(m for m in {watched!r} if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.split()


@pytest.mark.parametrize(
    "module", ["tide.loop", "tide.policy", "tide.actuator", "tide.observe", "tide.store"]
)
def test_the_core_loads_no_htcondor_binding_and_no_site_client(module: str) -> None:
    assert loaded_after(module, BINDINGS + CLIENTS) == []


def test_reading_a_configuration_loads_no_site_client() -> None:
    assert loaded_after("tide.config", BINDINGS + CLIENTS) == []


def kinds() -> list[type[SiteSettings]]:
    registered = vars(kinds_module)["SiteConfig"]  # Annotated[A | B | C, discriminator]
    union = typing.get_args(registered)[0]
    return list(typing.get_args(union))


def test_every_kind_is_registered_once_with_a_distinct_tag() -> None:
    tags = [model.model_json_schema()["properties"]["kind"]["const"] for model in kinds()]
    assert sorted(tags) == ["docker", "openstack", "slurm_backfill"]
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize(
    ("kind", "adapter"),
    [
        ("docker", "tide.sites.docker.adapter:DockerSite"),
        ("openstack", "tide.sites.openstack.adapter:OpenStackSite"),
        ("slurm", "tide.sites.slurm.adapter:SlurmBackfillSite"),
    ],
)
def test_an_adapter_declares_its_kinds_capabilities(kind: str, adapter: str) -> None:
    module, _, name = adapter.partition(":")
    cls = getattr(__import__(module, fromlist=[name]), name)
    config = next(m for m in kinds() if m.__module__ == f"tide.sites.{kind}.config")
    assert issubclass(cls, SiteAdapter)
    assert cls.capabilities == config.capabilities


class Plain(SiteAdapter):
    """An adapter with no capability beyond create, list and destroy."""

    def __init__(self) -> None:
        self.name = "plain"

    def create(self, resource_id: str) -> dict[str, str]:
        return {}

    def list_owned(self) -> list[typing.Any]:
        return []

    def destroy(self, resource_id: str, details: typing.Mapping[str, str]) -> None:
        return None


def test_a_capability_a_kind_lacks_is_a_clear_site_error() -> None:
    site = Plain()
    assert site.capabilities == frozenset()
    with pytest.raises(Unsupported, match="site plain: its kind cannot owners") as info:
        site.owner_queue()
    assert isinstance(info.value, SiteError)
    assert not info.value.retryable
    with pytest.raises(Unsupported, match="cannot drain"):
        site.drain_startd("r", "why")
    assert Capability.DRAIN.value == "drain"


def test_a_slurm_sites_login_key_is_checked_as_a_secret(tmp_path: Path) -> None:
    token = tmp_path / "pool.token"
    key = tmp_path / "id_ed25519"
    known = tmp_path / "known_hosts"
    for path in (token, key, known):
        path.write_text("x")
        path.chmod(0o600)
    key.chmod(0o644)
    config = tmp_path / "tide.yaml"
    config.write_text(
        "pool: {collector: 'cm:9618', domain: d, token_file: " + str(token) + "}\n"
        "sites:\n"
        "  hpc:\n"
        "    kind: slurm_backfill\n"
        "    partition: backfill\n"
        "    shape: {cpus: 1, memory_mb: 1, disk_mb: 1}\n"
        f"    worker_token_file: {token}\n"
        f"    login: {{host: login, user: u, key_file: {key}, known_hosts_file: {known}}}\n",
        encoding="utf-8",
    )
    with pytest.raises(Exception, match="id_ed25519: mode 0644"):
        check_secrets(load_config(config))
