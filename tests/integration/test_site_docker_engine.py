"""The Docker site (controller/tide/sites/docker/adapter.py) against this machine's
real Docker engine and the real worker image tide/condor: the containers it
runs (settings, token mount, labels), the shared ports it hands out, what it
lists, and that create and destroy are idempotent.

Every container here carries a tide-owner label unique to the test and is
removed afterwards, whatever happened; nothing else on the engine is
touched. The workers point at a collector nobody listens on (127.0.0.1:1):
they run, but never join a pool.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import docker
import docker.errors
import pytest
import requests

from tide.config import DockerSiteConfig
from tide.htcondor import tokens
from tide.model import Shape
from tide.sites.base import (
    OWNER_TAG,
    RESOURCE_ID_TAG,
    SITE_TAG,
    Owned,
    PoolEndpoint,
    QuotaExceeded,
    SiteAdapter,
    SiteError,
)
from tide.sites.docker.adapter import EXECUTE_DIR, PORT_LABEL, TOKEN_PATH, DockerSite

IMAGE = "tide/condor:0.1.0"
POOL = PoolEndpoint(collector="127.0.0.1:1", pool_domain="unit.tide")
# Clear of the lab's 29618-29680 and of the integration test's 29700-29709.
FIRST_PORT, LAST_PORT = 29900, 29902
GRACE_S = 5  # the workers never run a job: no need for the real 30 s


def _engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        pytest.skip(f"no Docker engine answers: {exc}", allow_module_level=True)
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        reason = f"{IMAGE} is not on this Docker engine: run make images"
        pytest.skip(reason, allow_module_level=True)
    return client


CLIENT = _engine()


def _remove_owned_by(owner: str) -> None:
    for container in CLIENT.containers.list(all=True, filters={"label": f"{OWNER_TAG}={owner}"}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(v=True, force=True)


@pytest.fixture
def owner() -> Iterator[str]:
    """An owner unique to the test; its containers, and those of its
    `-other` twin, are removed afterwards."""
    name = f"test-{uuid4().hex[:8]}"
    yield name
    for who in (name, f"{name}-other"):
        _remove_owned_by(who)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "worker.token"
    path.write_text(f"fake-token-{uuid4().hex}\n")
    path.chmod(0o600)
    return path


def _site(
    owner: str,
    token_file: Path | None,
    *,
    name: str = "local",
    image: str = IMAGE,
    shape: Shape | None = None,
    key: tokens.SigningKey | None = None,
    lifetime_s: int = 3600,
) -> DockerSite:
    """The site with the shared `token_file`, or minting each worker's own with `key`."""
    credential: dict[str, object] = (
        {"worker_token_file": str(token_file)}
        if key is None
        else {"worker_signing_key_file": str(key.path), "worker_token_lifetime_s": lifetime_s}
    )
    config = DockerSiteConfig.model_validate(
        {
            "kind": "docker",
            "image": image,
            "shape": {"cpus": 1, "memory_mb": 512, "disk_mb": 1024},
            "attributes": {"SiteName": "UNIT", "TideSiteKind": "docker", "Fast": True},
            "port_range_start": FIRST_PORT,
            "port_range_end": LAST_PORT,
            "bind_address": "127.0.0.1",
            **credential,
        }
    )
    return DockerSite(
        name,
        config,
        client=CLIENT,
        owner=owner,
        pool=POOL,
        worker_token_file=token_file,
        signing_key=key,
        token_lifetime_s=lifetime_s,
        shape=shape,
        stop_grace_s=GRACE_S,
    )


def _inspect(container_id: str) -> dict[str, Any]:
    attrs: dict[str, Any] = CLIENT.api.inspect_container(container_id)
    return attrs


def _gone(ref: str) -> bool:
    try:
        CLIENT.containers.get(ref)
    except docker.errors.NotFound:
        return True
    return False


def test_it_is_a_site_adapter(owner: str, token_file: Path) -> None:
    site: SiteAdapter = _site(owner, token_file)
    assert site.name == "local"


def test_create_runs_a_worker_as_the_condor_worker_role_would(owner: str, token_file: Path) -> None:
    rid = f"{owner}-w1"
    site = _site(owner, token_file, shape=Shape(cpus=2, memory_mb=1024, disk_mb=2048))
    details = site.create(rid)
    attrs = _inspect(details["container_id"])
    assert details == {"container_id": attrs["Id"], "port": str(FIRST_PORT)}
    assert attrs["Name"] == f"/{rid}"
    assert attrs["Config"]["Image"] == IMAGE

    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    tide_env = {key: value for key, value in env.items() if key.startswith("TIDE_")}
    assert tide_env == {
        "TIDE_CONDOR_ROLES": "execute",
        "TIDE_POOL_DOMAIN": "unit.tide",
        "TIDE_COLLECTOR": "127.0.0.1:1",
        "TIDE_PORT": str(FIRST_PORT),
        "TIDE_BIND_ADDRESS": "127.0.0.1",
        "TIDE_NODE_NAME": rid,
        "TIDE_RESOURCE_ID": rid,
        "TIDE_SITE_NAME": "UNIT",  # the SiteName attribute, advertised by the worker itself
        "TIDE_CPUS": "2",  # the shape given, not the configured one
        "TIDE_MEMORY_MB": "1024",
        "TIDE_DISK_MB": "2048",
        "TIDE_ATTR_Fast": "true",
        "TIDE_ATTR_TideSiteKind": '"docker"',
        "TIDE_ATTR_TideSite": '"local"',
    }

    # The token: a read-only file mount, and nowhere else in what the engine keeps.
    mounts = {mount["Destination"]: mount for mount in attrs["Mounts"]}
    token_mount = mounts[TOKEN_PATH]
    assert (token_mount["Type"], token_mount["Source"]) == ("bind", str(token_file))
    assert token_mount["RW"] is False
    assert mounts[EXECUTE_DIR]["Type"] == "volume"
    token = token_file.read_text().strip()
    assert token not in json.dumps(attrs)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600  # left as it was

    assert attrs["Config"]["Labels"] == {
        **attrs["Config"]["Labels"],  # the image's own labels, if any
        OWNER_TAG: owner,
        SITE_TAG: "local",
        RESOURCE_ID_TAG: rid,
        PORT_LABEL: str(FIRST_PORT),
        "tide.autoheal": "true",
        "tide.role": "condor_worker",
    }
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "host"
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert attrs["Config"]["StopSignal"] == "SIGTERM"
    image_health = CLIENT.images.get(IMAGE).attrs["Config"]["Healthcheck"]
    assert attrs["Config"].get("Healthcheck", image_health) == image_health
    assert attrs["State"]["Status"] in ("running", "restarting")


def test_ports_are_the_lowest_free_and_a_full_range_is_quota(owner: str, token_file: Path) -> None:
    # Another controller's worker on the same engine holds the range's first port:
    # on host networking two workers cannot share one.
    other = _site(f"{owner}-other", token_file)
    assert other.create(f"{owner}-other-w")["port"] == str(FIRST_PORT)

    site = _site(owner, token_file)
    first = site.create(f"{owner}-a")
    second = site.create(f"{owner}-b")
    assert (first["port"], second["port"]) == (str(FIRST_PORT + 1), str(FIRST_PORT + 2))
    with pytest.raises(QuotaExceeded) as caught:
        site.create(f"{owner}-c")
    assert caught.value.retryable
    assert f"{FIRST_PORT}-{LAST_PORT}" in str(caught.value)
    assert _gone(f"{owner}-c")

    site.destroy(f"{owner}-a", first)
    assert site.create(f"{owner}-d")["port"] == str(FIRST_PORT + 1)


def test_list_owned_sees_only_this_owners_containers_at_this_site(
    owner: str, token_file: Path
) -> None:
    site = _site(owner, token_file)
    assert site.list_owned() == []
    details = site.create(f"{owner}-mine")
    _site(f"{owner}-other", token_file).create(f"{owner}-other-theirs")
    _site(owner, token_file, name="fat").create(f"{owner}-fat")

    (owned,) = site.list_owned()
    assert owned == Owned(resource_id=f"{owner}-mine", status=owned.status, details=details)
    assert owned.status in ("running", "restarting")


def test_create_again_with_the_same_id_returns_the_same_container(
    owner: str, token_file: Path
) -> None:
    site = _site(owner, token_file)
    rid = f"{owner}-twice"
    first = site.create(rid)
    assert site.create(rid) == first
    assert [o.resource_id for o in site.list_owned()] == [rid]

    # A container that merely has the name is not taken for one of ours.
    taken = f"{owner}-taken"
    CLIENT.containers.create(IMAGE, name=taken, labels={OWNER_TAG: f"{owner}-other"})
    with pytest.raises(SiteError, match="without this site's labels") as caught:
        site.create(taken)
    assert not caught.value.retryable


def test_create_starts_a_container_an_earlier_create_left_unstarted(
    owner: str, token_file: Path
) -> None:
    site = _site(owner, token_file)
    rid = f"{owner}-half"
    details = site.create(rid)
    container = CLIENT.containers.get(details["container_id"])
    container.stop(timeout=GRACE_S)
    container.remove(v=True)
    # As if the engine made it and the create call was lost before the start.
    CLIENT.api.create_container(
        IMAGE,
        name=rid,
        labels={OWNER_TAG: owner, SITE_TAG: "local", RESOURCE_ID_TAG: rid, PORT_LABEL: "29901"},
        environment={"TIDE_CONDOR_ROLES": "execute"},
    )
    again = site.create(rid)
    assert again["port"] == "29901"
    assert _inspect(again["container_id"])["State"]["Status"] != "created"


def test_destroy_removes_the_container_and_again_is_fine(owner: str, token_file: Path) -> None:
    site = _site(owner, token_file)
    rid = f"{owner}-gone"
    details = site.create(rid)
    volumes = [
        mount["Name"]
        for mount in _inspect(details["container_id"])["Mounts"]
        if mount["Type"] == "volume"
    ]
    assert volumes
    site.destroy(rid, details)
    assert _gone(details["container_id"])
    for volume in volumes:  # the execute volume goes with it
        with pytest.raises(docker.errors.NotFound):
            CLIENT.volumes.get(volume)
    site.destroy(rid, details)
    site.destroy(rid, {})
    assert site.list_owned() == []


def test_destroy_without_details_finds_the_container_by_name(owner: str, token_file: Path) -> None:
    site = _site(owner, token_file)
    details = site.create(f"{owner}-nameonly")
    site.destroy(f"{owner}-nameonly", {})
    assert _gone(details["container_id"])


def test_destroy_leaves_a_container_without_this_sites_labels(owner: str, token_file: Path) -> None:
    theirs = _site(f"{owner}-other", token_file)
    rid = f"{owner}-theirs"
    details = theirs.create(rid)
    _site(owner, token_file).destroy(rid, {})
    _site(owner, token_file).destroy(rid, details)
    assert not _gone(details["container_id"])


def test_a_missing_image_is_named_and_not_retryable(owner: str, token_file: Path) -> None:
    image = f"tide/condor:absent-{uuid4().hex[:8]}"
    site = _site(owner, token_file, image=image)
    with pytest.raises(SiteError) as caught:
        site.create(f"{owner}-noimage")
    assert not caught.value.retryable
    assert image in str(caught.value)
    assert "load" in str(caught.value)
    assert _gone(f"{owner}-noimage")


def test_an_unreachable_engine_is_retryable(tmp_path: Path, token_file: Path) -> None:
    config = DockerSiteConfig.model_validate(
        {
            "kind": "docker",
            "engine_url": f"unix://{tmp_path}/absent.sock",
            "shape": {"cpus": 1, "memory_mb": 512, "disk_mb": 1024},
            "worker_token_file": str(token_file),
        }
    )
    client = docker.DockerClient(base_url=config.engine_url, version="1.41")
    site = DockerSite(
        "local", config, client=client, owner="nobody", pool=POOL, worker_token_file=token_file
    )
    for call in (site.list_owned, lambda: site.create("tide-local-0badc0de")):
        with pytest.raises(SiteError, match="cannot reach the Docker engine") as caught:
            call()
        assert caught.value.retryable
    with pytest.raises(SiteError) as destroying:
        site.destroy("tide-local-0badc0de", {})
    assert destroying.value.retryable


def test_a_missing_token_file_is_refused(tmp_path: Path, token_file: Path) -> None:
    with pytest.raises(SiteError, match="worker token file") as caught:
        _site("nobody", tmp_path / "absent.token")
    assert not caught.value.retryable
    empty = tmp_path / "empty.token"
    empty.touch()
    with pytest.raises(SiteError, match="not a non-empty file"):
        _site("nobody", empty)


# --- each worker's own token -----------------------------------------------------


@pytest.fixture
def signing_key(tmp_path: Path) -> tokens.SigningKey:
    path = tmp_path / "workers_signing_key"
    path.write_bytes(os.urandom(48))
    path.chmod(0o600)
    return tokens.SigningKey.read(path, key_id=tokens.WORKERS_KEY_ID)


def _keyed_site(owner: str, key: tokens.SigningKey, lifetime_s: int = 3600) -> DockerSite:
    return _site(owner, None, key=key, lifetime_s=lifetime_s)


def _token_in(container_id: str) -> tuple[str, str]:
    """The worker's token file as the container holds it (running or not):
    its mode and owner's uid, and its text."""
    chunks, _ = CLIENT.containers.get(container_id).get_archive("/etc/condor/tokens.d/tide")
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        (member,) = tar.getmembers()
        data = tar.extractfile(member)
        assert data is not None
        return f"{member.mode & 0o777:o} {member.uid}", data.read().decode().strip()


def test_each_worker_gets_a_token_of_its_own_and_no_mount(
    owner: str, signing_key: tokens.SigningKey
) -> None:
    site = _keyed_site(owner, signing_key)
    first, second = f"{owner}-t1", f"{owner}-t2"
    made = {rid: site.create(rid) for rid in (first, second)}
    seen: dict[str, str] = {}
    for rid, details in made.items():
        attrs = _inspect(details["container_id"])
        assert TOKEN_PATH not in {m["Destination"] for m in attrs["Mounts"]}
        mode_owner, token = _token_in(details["container_id"])
        assert mode_owner == "600 0"
        payload = tokens.verify(signing_key, token)
        assert payload["sub"] == f"tide-worker-{rid}@{POOL.pool_domain}"
        assert payload["scope"] == " ".join(tokens.WORKER_SCOPES)
        assert payload["exp"] - payload["iat"] == 3600
        assert token not in json.dumps(attrs)  # not in what the engine keeps
        seen[rid] = token
    assert seen[first] != seen[second]
    # The entrypoint kept the handed-in token (no mounted one to install).
    assert CLIENT.containers.get(made[first]["container_id"]).status in ("running", "restarting")


def test_a_token_is_renewed_when_half_its_lifetime_has_passed(
    owner: str, signing_key: tokens.SigningKey
) -> None:
    now = [1_000_000.0]
    site = _keyed_site(owner, signing_key, lifetime_s=600)
    site._clock = lambda: now[0]
    rid = f"{owner}-renew"
    details = site.create(rid)
    _, before = _token_in(details["container_id"])
    assert site.tokens_due([rid], now[0] + 299) == []
    assert site.tokens_due([rid], now[0] + 300) == [rid]
    assert site.tokens_due(["unknown-since-a-restart"], now[0]) == ["unknown-since-a-restart"]
    now[0] += 300
    site.renew_tokens([rid, f"{owner}-no-such-container"])
    mode_owner, after = _token_in(details["container_id"])
    assert mode_owner == "600 0"
    assert after != before
    assert tokens.verify(signing_key, after)["iat"] == 1_000_300
    assert site.tokens_due([rid], now[0]) == []


def test_an_unstarted_container_gets_its_token_before_it_starts(
    owner: str, signing_key: tokens.SigningKey
) -> None:
    site = _keyed_site(owner, signing_key)
    rid = f"{owner}-late"
    # As if the engine made it and the create call was lost before the token and the start.
    CLIENT.api.create_container(
        IMAGE,
        name=rid,
        labels={OWNER_TAG: owner, SITE_TAG: "local", RESOURCE_ID_TAG: rid, PORT_LABEL: "29902"},
        environment={"TIDE_CONDOR_ROLES": "execute"},
    )
    again = site.create(rid)
    _, token = _token_in(again["container_id"])
    assert tokens.verify(signing_key, token)["sub"] == f"tide-worker-{rid}@{POOL.pool_domain}"
