"""One worker recipe: the condor_worker role's own templates and defaults,
and the tide/condor image's own HTCondor files.

A change made to the role's compose template (or its site.conf template)
reaches every worker the controller makes from it, with nothing else
changed: a Docker site's container, an OpenStack server's user data, a
Docker pilot's container, and a native Slurm pilot's HTCondor
configuration (which also takes the image's own files, as the image
would). The role itself renders for provider hosts and `tide onboard`
(tests/unit/test_onboard_recipe.py). Each test renders from a copy of the
packaged roles (or image files) with one line added, so it fails if any of
them stops rendering from that source."""

from __future__ import annotations

import base64
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tests.unit import test_site_docker as docker_tests
from tests.unit import test_site_openstack as openstack_tests
from tests.unit import test_site_slurm as slurm_tests
from tide.onboard import recipe
from tide.sites import base

MARK = "TIDE_RECIPE_MARK"
SETTING = "TIDE_RECIPE_SETTING = one-place"


@pytest.fixture
def changed_role(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The packaged roles, with the condor_worker role's compose template
    giving the worker one more variable and its site.conf one more setting."""
    roles = tmp_path / "roles"
    shutil.copytree(Path(str(recipe.roles_root())), roles)
    templates = roles / "condor_worker" / "templates"
    compose = templates / "compose.yaml.j2"
    text = compose.read_text()
    anchor = "      TIDE_CONDOR_ROLES: execute\n"
    assert anchor in text
    compose.write_text(text.replace(anchor, f'{anchor}      {MARK}: "one-place"\n'))
    site_conf = templates / "site.conf.j2"
    site_conf.write_text(site_conf.read_text() + SETTING + "\n")
    monkeypatch.setattr(recipe, "roles_root", lambda: roles)
    return roles


def test_a_docker_sites_worker_is_the_roles(changed_role: Path, tmp_path: Path) -> None:
    token = tmp_path / "worker.token"
    token.write_text("fake-token\n")
    token.chmod(0o600)
    with docker_tests.FakeEngine() as engine:
        site = docker_tests._site(engine, token)
        env = site._environment("tide-fat-00000001", 29900)
    assert env[MARK] == "one-place"
    assert env["TIDE_PORT"] == "29900"


def test_an_openstack_servers_user_data_is_the_roles(changed_role: Path) -> None:
    conn = openstack_tests.FakeConnection()
    openstack_tests._site(conn).create(openstack_tests.RID)
    (create,) = conn.called("compute.create_server")
    user_data = yaml.safe_load(base64.b64decode(create["user_data"]).decode())
    files = {entry["path"]: entry["content"] for entry in user_data["write_files"]}
    compose = yaml.safe_load(files["/opt/tide/condor_worker/compose.yaml"])
    assert compose["services"]["condor"]["environment"][MARK] == "one-place"
    assert SETTING in files["/opt/tide/condor_worker/condor.d/site.conf"]


def test_a_docker_pilots_container_is_the_roles(changed_role: Path, tmp_path: Path) -> None:
    site = slurm_tests._site(tmp_path)
    site._config = slurm_tests._config(
        tmp_path, slurm_tests.CONFIG.replace("    partition: backfill\n", slurm_tests.DOCKER)
    )
    script = site.script("tide-maxwell-0000abcd")
    assert f"    -e {shlex.quote(f'{MARK}=one-place')}\n" in script


IMAGE_SETTING = "TIDE_IMAGE_SETTING = one-place"


@pytest.fixture
def changed_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The packaged worker image's HTCondor files, with one more setting in
    its execute role's."""
    image = tmp_path / "worker_image"
    shutil.copytree(Path(str(base.worker_image_root())), image)
    execute = image / "roles.d" / "execute.conf"
    execute.write_text(execute.read_text() + IMAGE_SETTING + "\n")
    monkeypatch.setattr(base, "worker_image_root", lambda: image)
    return image


def test_a_native_pilots_configuration_is_the_image_and_the_roles(
    changed_role: Path, changed_image: Path, tmp_path: Path
) -> None:
    """A native pilot runs no image: its HTCondor configuration is the
    image's own files, what the image's entrypoint writes from the role's
    environment, and the role's site.conf."""
    script = slurm_tests._site(tmp_path).script("tide-maxwell-0000abcd")
    written = slurm_tests._written_config(script)
    settings = slurm_tests._config_settings(written)
    assert settings["TIDE_IMAGE_SETTING"] == "one-place"
    assert settings["TIDE_RECIPE_SETTING"] == "one-place"
    # The role's environment, as the entrypoint turns it into settings.
    assert settings["TideResourceId"] == '"tide-maxwell-0000abcd"'
    assert settings["TideSite"] == '"maxwell"'
    # The site's settings come last, so they win over the image's.
    assert written.rindex(SETTING) > written.rindex(IMAGE_SETTING)


def test_without_the_change_none_of_them_has_it(tmp_path: Path) -> None:
    """The mark comes from the changed role alone (so the tests above can fail)."""
    token = tmp_path / "worker.token"
    token.write_text("fake-token\n")
    token.chmod(0o600)
    with docker_tests.FakeEngine() as engine:
        env = docker_tests._site(engine, token)._environment("tide-fat-00000001", 29900)
    assert MARK not in env
    script = slurm_tests._site(tmp_path).script("tide-maxwell-0000abcd")
    assert "TIDE_IMAGE_SETTING" not in script
    assert "TIDE_RECIPE_SETTING" not in script
