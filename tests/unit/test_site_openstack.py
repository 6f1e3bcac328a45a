"""The OpenStack site (controller/tide/sites/openstack/adapter.py) at the level of
openstacksdk's proxy calls: the exact calls and arguments it makes, the user
data it boots servers with, how cloud errors map to SiteError, and that the
worker token never leaks into a log or an error. No cloud is contacted: the
connection is FakeConnection, and the errors are the SDK's own exception
classes, built the way the SDK builds them from a cloud's response."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import classad2
import pytest
import requests
import yaml
from keystoneauth1 import exceptions as ksa_exceptions
from openstack import exceptions as os_exceptions
from openstack.compute.v2.server import Server
from openstack.connection import Connection
from pydantic import ValidationError

from tests.doubles.fake_nova import InertHypervisor
from tests.doubles.fake_openstack import FakeOpenStack
from tests.doubles.fake_openstack_base import Reply
from tests.unit.deadline import Silent, within
from tide.config import OpenStackSiteConfig
from tide.htcondor import tokens
from tide.htcondor.tokens import SigningKey
from tide.sites.base import (
    DeadlineExceeded,
    Owned,
    PoolEndpoint,
    QuotaExceeded,
    SiteAdapter,
    SiteError,
)
from tide.sites.openstack import adapter as openstack_site
from tide.sites.openstack.adapter import METADATA_URL, USER_DATA_MAX, WORKER_IMAGE, OpenStackSite

TOP = Path(__file__).resolve().parents[2]


def _b64url(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


# Shaped like an HTCondor IDTOKEN (a JWT), made up for these tests.
TOKEN = ".".join(
    [
        _b64url({"alg": "HS256", "kid": "POOL"}),
        _b64url(
            {
                "iat": 1700000000,
                "iss": "cm.example.org",
                "jti": "0123456789abcdef",
                "scope": "condor:/READ condor:/ADVERTISE_MASTER condor:/ADVERTISE_STARTD",
                "sub": "worker@pool.example.org",
            }
        ),
        _b64url("signature-of-the-test-token-0123456789"),
    ]
)
OWNER = "tide-prod"
POOL = PoolEndpoint(collector="cm.example.org:9618", pool_domain="pool.example.org")
RID = "tide-cloud-0badc0de"


# --- the test double ----------------------------------------------------------


@dataclass
class FakeFound:
    """What find_image/find_flavor/find_network return: a resource with an id."""

    id: str
    name: str


@dataclass
class FakeServer:
    """What compute.servers() and compute.create_server() return."""

    id: str
    name: str
    status: str = "BUILD"
    metadata: dict[str, str] | None = None


class FakeProxy:
    """Records each call as (service.method, kwargs) in the connection's log;
    a failure set in `conn.fail[service.method]` is raised instead."""

    def __init__(self, conn: FakeConnection, service: str) -> None:
        self._conn = conn
        self._service = service

    def _call(self, method: str, **kwargs: Any) -> None:
        name = f"{self._service}.{method}"
        self._conn.calls.append((name, kwargs))
        failure = self._conn.fail.get(name)
        if failure is not None:
            raise failure

    def _find(self, kind: str, catalog: dict[str, FakeFound], name_or_id: str, **kw: Any) -> Any:
        for found in catalog.values():
            if name_or_id in (found.id, found.name):
                return found
        if kw.get("ignore_missing", True):
            return None
        # As openstack.resource.Resource._find raises it.
        raise os_exceptions.NotFoundException(f"No {kind} found for {name_or_id}")


class FakeImage(FakeProxy):
    def find_image(self, name_or_id: str, ignore_missing: bool = True) -> Any:
        self._call("find_image", name_or_id=name_or_id, ignore_missing=ignore_missing)
        return self._find("Image", self._conn.images, name_or_id, ignore_missing=ignore_missing)


class FakeNetwork(FakeProxy):
    def find_network(self, name_or_id: str, ignore_missing: bool = True, **query: Any) -> Any:
        self._call("find_network", name_or_id=name_or_id, ignore_missing=ignore_missing, **query)
        return self._find("Network", self._conn.networks, name_or_id, ignore_missing=ignore_missing)


class FakeCompute(FakeProxy):
    def find_flavor(self, name_or_id: str, ignore_missing: bool = True, **query: Any) -> Any:
        self._call("find_flavor", name_or_id=name_or_id, ignore_missing=ignore_missing, **query)
        return self._find("Flavor", self._conn.flavors, name_or_id, ignore_missing=ignore_missing)

    def create_server(self, **attrs: Any) -> FakeServer:
        self._call("create_server", **attrs)
        server = FakeServer(
            id=f"srv-{len(self._conn.servers) + 1}",
            name=attrs["name"],
            metadata=dict(attrs.get("metadata") or {}),
        )
        self._conn.servers.append(server)
        return server

    def servers(
        self, details: bool = True, all_projects: bool = False, **query: Any
    ) -> Iterator[FakeServer]:
        self._call("servers", details=details, all_projects=all_projects, **query)
        # Nova takes `name` as a regular expression searched in the name.
        pattern = query.get("name")
        return iter(
            [s for s in self._conn.servers if pattern is None or re.search(pattern, s.name)]
        )

    def delete_server(self, server: Any, ignore_missing: bool = True, force: bool = False) -> None:
        self._call("delete_server", server=server, ignore_missing=ignore_missing, force=force)
        found = [s for s in self._conn.servers if s.id == server]
        if not found and not ignore_missing:
            raise os_exceptions.NotFoundException(f"No Server found for {server}")
        self._conn.servers = [s for s in self._conn.servers if s.id != server]


@dataclass
class FakeConnection:
    """A test double of openstack.connection.Connection: the compute, image
    and network proxies with the methods the site uses, their signatures as in
    openstacksdk 4.22, answering from the lists below and recording every call."""

    images: dict[str, FakeFound] = field(
        default_factory=lambda: {"img": FakeFound("img-0001", "tide-worker-debian")}
    )
    flavors: dict[str, FakeFound] = field(
        default_factory=lambda: {"flv": FakeFound("flv-0002", "m1.large")}
    )
    networks: dict[str, FakeFound] = field(
        default_factory=lambda: {"net": FakeFound("net-0003", "private")}
    )
    servers: list[FakeServer] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.compute = FakeCompute(self, "compute")
        self.image = FakeImage(self, "image")
        self.network = FakeNetwork(self, "network")

    def called(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for call, kwargs in self.calls if call == name]


# --- helpers ------------------------------------------------------------------


def _config(**changes: Any) -> OpenStackSiteConfig:
    data: dict[str, Any] = {
        "kind": "openstack",
        "cloud": "mycloud",
        "image": "tide-worker-debian",
        "flavor": "m1.large",
        "network": "private",
        "key_name": "ops",
        "security_groups": ["condor", "egress"],
        "metadata": {"project": "physics"},
        "worker_token_file": "/etc/tide/worker.token",
        "shape": {"cpus": 8, "memory_mb": 16384, "disk_mb": 40000},
        "attributes": {"SiteName": "CLOUD", "HasDocker": True, "Speed": 1.5, "Cores": 2},
    }
    data.update(changes)
    return OpenStackSiteConfig.model_validate(data)


def _site(conn: FakeConnection, config: OpenStackSiteConfig | None = None) -> OpenStackSite:
    return OpenStackSite(
        "cloud",
        config or _config(),
        conn=cast(Connection, conn),
        owner=OWNER,
        pool=POOL,
        worker_token=TOKEN + "\n",  # as read from the file
    )


def _http_error(status: int, body: dict[str, Any], method: str = "POST") -> Exception:
    """The exception the SDK raises for this response of Nova's (through its own
    raise_from_response); the response is made here, nothing is sent."""
    response = requests.Response()
    response.status_code = status
    response.reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found"}.get(status, "")
    response.headers["content-type"] = "application/json"
    response.headers["x-openstack-request-id"] = "req-5f3c2a1e-0000-4000-8000-000000000000"
    response._content = json.dumps(body).encode()
    response.request = requests.Request(method, "http://127.0.0.1:8774/v2.1/servers").prepare()
    try:
        os_exceptions.raise_from_response(response)
    except os_exceptions.HttpException as exc:
        return exc
    raise AssertionError(f"raise_from_response did not raise for {status}")


def _user_data(conn: FakeConnection) -> str:
    (create,) = conn.called("compute.create_server")
    return base64.b64decode(create["user_data"], validate=True).decode()


def _files(cloud_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in cloud_config["write_files"]}


# --- create ---------------------------------------------------------------------


def test_create_resolves_then_creates_one_server_with_the_exact_arguments() -> None:
    conn = FakeConnection()
    details = _site(conn).create(RID)

    assert [name for name, _ in conn.calls] == [
        "image.find_image",
        "compute.find_flavor",
        "network.find_network",
        "compute.create_server",
    ]
    assert conn.called("image.find_image") == [
        {"name_or_id": "tide-worker-debian", "ignore_missing": False}
    ]
    assert conn.called("compute.find_flavor") == [
        {"name_or_id": "m1.large", "ignore_missing": False}
    ]
    assert conn.called("network.find_network") == [
        {"name_or_id": "private", "ignore_missing": False}
    ]
    (create,) = conn.called("compute.create_server")
    user_data = create.pop("user_data")
    assert create == {
        "name": RID,
        "image_id": "img-0001",
        "flavor_id": "flv-0002",
        "networks": [{"uuid": "net-0003"}],
        "key_name": "ops",
        "security_groups": [{"name": "condor"}, {"name": "egress"}],
        "metadata": {
            "project": "physics",
            "tide-owner": OWNER,
            "tide-site": "cloud",
            "tide-resource-id": RID,
        },
    }
    assert base64.b64decode(user_data, validate=True).startswith(b"#cloud-config\n")
    assert details == {"server_id": "srv-1"}


# Resource.__init__ itself warns about its _compute_attributes hook (SDK 4.22).
@pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning")
def test_the_create_arguments_make_the_request_body_nova_expects() -> None:
    """The arguments are real Server attributes: the SDK's own request body
    (built offline, not sent) carries them under Nova's names, user data as given."""
    conn = FakeConnection()
    _site(conn).create(RID)
    (create,) = conn.called("compute.create_server")
    request = Server(**create)._prepare_request(requires_id=False, prepend_key=True)
    body = cast(dict[str, Any], request.body)["server"]
    assert body == {
        "name": RID,
        "imageRef": "img-0001",
        "flavorRef": "flv-0002",
        "networks": [{"uuid": "net-0003"}],
        "key_name": "ops",
        "security_groups": [{"name": "condor"}, {"name": "egress"}],
        "metadata": create["metadata"],
        "user_data": create["user_data"],  # the proxy layer does not encode it: we do
    }


def test_ownership_tags_win_over_configured_metadata() -> None:
    conn = FakeConnection()
    config = _config(metadata={"tide-owner": "someone-else", "tide-site": "x", "team": "a"})
    _site(conn, config).create(RID)
    (create,) = conn.called("compute.create_server")
    assert create["metadata"] == {
        "team": "a",
        "tide-owner": OWNER,
        "tide-site": "cloud",
        "tide-resource-id": RID,
    }


def test_no_key_and_no_security_groups_leave_the_cloud_defaults() -> None:
    conn = FakeConnection()
    _site(conn, _config(key_name=None, security_groups=[])).create(RID)
    (create,) = conn.called("compute.create_server")
    assert "key_name" not in create
    assert "security_groups" not in create


def test_image_flavor_and_network_are_looked_up_once() -> None:
    conn = FakeConnection()
    site = _site(conn)
    site.create(RID)
    site.create("tide-cloud-00000002")
    assert len(conn.called("image.find_image")) == 1
    assert len(conn.called("compute.find_flavor")) == 1
    assert len(conn.called("network.find_network")) == 1
    assert len(conn.called("compute.create_server")) == 2


def test_create_does_not_wait_for_the_server() -> None:
    conn = FakeConnection()
    _site(conn).create(RID)
    assert not [name for name, _ in conn.calls if "wait" in name or name == "compute.get_server"]


# --- user data ------------------------------------------------------------------


def test_user_data_is_cloud_config_writing_the_token_0600() -> None:
    conn = FakeConnection()
    _site(conn).create(RID)
    text = _user_data(conn)
    assert text.startswith("#cloud-config\n")
    cloud_config = yaml.safe_load(text)
    token = _files(cloud_config)["/opt/tide/condor_worker/secrets/token"]
    assert token["permissions"] == "0600"
    assert token["owner"] == "root:root"
    assert token["content"] == TOKEN
    assert "/opt/tide/condor_worker/condor.d/site.conf" in _files(cloud_config)
    assert ["docker", "compose", "-f", "/opt/tide/condor_worker/compose.yaml", "up", "-d"] in (
        cloud_config["runcmd"]
    )


def test_user_data_writes_the_worker_compose_project() -> None:
    conn = FakeConnection()
    _site(conn).create(RID)
    files = _files(yaml.safe_load(_user_data(conn)))
    compose_file = files["/opt/tide/condor_worker/compose.yaml"]
    assert compose_file["permissions"] == "0644"
    assert TOKEN not in compose_file["content"]  # only in the 0600 secret file
    compose = yaml.safe_load(compose_file["content"])
    condor = compose["services"]["condor"]
    assert condor["image"] == WORKER_IMAGE
    assert condor["network_mode"] == "host"
    assert condor["secrets"] == ["token"]
    assert compose["secrets"] == {"token": {"file": "./secrets/token"}}
    env = condor["environment"]
    assert all(isinstance(value, str) for value in env.values())
    assert {k: v for k, v in env.items() if not k.startswith("TIDE_ATTR_")} == {
        "TIDE_CONDOR_ROLES": "execute",
        "TIDE_POOL_DOMAIN": "pool.example.org",
        "TIDE_COLLECTOR": "cm.example.org:9618",
        "TIDE_NODE_NAME": RID,
        "TIDE_RESOURCE_ID": RID,
        "TIDE_SITE_NAME": "CLOUD",  # the SiteName attribute
        "TIDE_CPUS": "8",
        "TIDE_MEMORY_MB": "16384",
        "TIDE_DISK_MB": "40000",
        "TIDE_DRAIN_URL": METADATA_URL,  # its drain channel: the metadata service
    }
    # Typed ClassAd expressions, as the image's TIDE_ATTR_<Name> takes them; SiteName
    # comes through TIDE_SITE_NAME, and TideSite is what the machine prototype says.
    attrs = {k.removeprefix("TIDE_ATTR_"): v for k, v in env.items() if k.startswith("TIDE_ATTR_")}
    assert attrs == {
        "Cores": "2",
        "HasDocker": "true",
        "Speed": "1.5",
        "TideSite": '"cloud"',
    }
    ad = classad2.ClassAd({name: classad2.ExprTree(expr) for name, expr in attrs.items()})
    assert ad.eval("Cores") == 2
    assert ad.eval("HasDocker") is True
    assert ad.eval("Speed") == 1.5
    assert ad.eval("TideSite") == "cloud"


def test_the_compose_project_sets_only_variables_the_role_sets() -> None:
    """One compose project: the variables are those roles/condor_worker writes."""
    conn = FakeConnection()
    _site(conn).create(RID)
    files = _files(yaml.safe_load(_user_data(conn)))
    env = yaml.safe_load(files["/opt/tide/condor_worker/compose.yaml"]["content"])["services"][
        "condor"
    ]["environment"]
    role = (TOP / "roles/condor_worker/templates/compose.yaml.j2").read_text()
    role_vars = set(re.findall(r"\b(TIDE_[A-Z_]+[A-Z])\b", role))
    ours = {"TIDE_ATTR_" if k.startswith("TIDE_ATTR_") else k for k in env}
    assert ours - {"TIDE_ATTR_"} <= role_vars
    assert "TIDE_ATTR_" in role


def test_site_name_defaults_to_the_site_and_odd_strings_stay_valid_yaml() -> None:
    conn = FakeConnection()
    config = _config(attributes={"Kind": 'cloud "spot": 50% #1\nnext'})
    _site(conn, config).create(RID)
    files = _files(yaml.safe_load(_user_data(conn)))
    env = yaml.safe_load(files["/opt/tide/condor_worker/compose.yaml"]["content"])["services"][
        "condor"
    ]["environment"]
    assert env["TIDE_SITE_NAME"] == "cloud"
    assert classad2.ExprTree(env["TIDE_ATTR_Kind"]).eval() == 'cloud "spot": 50% #1\nnext'


def test_reserved_attributes_are_not_passed_to_the_worker() -> None:
    conn = FakeConnection()
    config = _config(attributes={"sitename": "ARM", "Cpus": 99, "TideSite": "other", "A": 1})
    _site(conn, config).create(RID)
    files = _files(yaml.safe_load(_user_data(conn)))
    env = yaml.safe_load(files["/opt/tide/condor_worker/compose.yaml"]["content"])["services"][
        "condor"
    ]["environment"]
    assert env["TIDE_SITE_NAME"] == "ARM"
    assert env["TIDE_CPUS"] == "8"
    assert {k for k in env if k.startswith("TIDE_ATTR_")} == {"TIDE_ATTR_A", "TIDE_ATTR_TideSite"}
    assert env["TIDE_ATTR_TideSite"] == '"cloud"'


def test_a_bad_attribute_name_is_refused_at_once() -> None:
    with pytest.raises(SiteError, match=r"sites\.cloud\.attributes.*'Has Docker'") as err:
        _site(FakeConnection(), _config(attributes={"Has Docker": True}))
    assert not err.value.retryable


def test_a_site_template_is_used(tmp_path: Path) -> None:
    template = tmp_path / "user-data.j2"
    template.write_text("#!/bin/sh\necho {{ resource_id }} {{ site_name }} {{ cpus }}\n")
    conn = FakeConnection()
    _site(conn, _config(user_data_template=str(template))).create(RID)
    assert _user_data(conn) == f"#!/bin/sh\necho {RID} CLOUD 8\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("#cloud-config\n{{ no_such_variable }}\n", "is undefined"),
        ("#cloud-config\n{% if %}\n", "line 2"),
    ],
)
def test_a_broken_template_fails_when_the_site_is_made(
    tmp_path: Path, text: str, problem: str
) -> None:
    template = tmp_path / "user-data.j2"
    template.write_text(text)
    with pytest.raises(SiteError, match=r"sites\.cloud\.user_data_template") as err:
        _site(FakeConnection(), _config(user_data_template=str(template)))
    assert problem in str(err.value)
    assert not err.value.retryable


def test_a_missing_template_fails_when_the_site_is_made(tmp_path: Path) -> None:
    missing = tmp_path / "nope.j2"
    with pytest.raises(SiteError, match=r"user_data_template: cannot read"):
        _site(FakeConnection(), _config(user_data_template=str(missing)))


def test_user_data_over_novas_limit_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "user-data.j2"
    template.write_text("#cloud-config\n# " + "x" * USER_DATA_MAX + "\n")
    with pytest.raises(SiteError, match="over Nova's 65535") as err:
        _site(FakeConnection(), _config(user_data_template=str(template)))
    assert not err.value.retryable


def test_an_empty_token_is_refused() -> None:
    blank = "\n"
    with pytest.raises(SiteError, match="worker token is empty"):
        OpenStackSite(
            "cloud",
            _config(),
            conn=cast(Connection, FakeConnection()),
            owner=OWNER,
            pool=POOL,
            worker_token=blank,
        )


# --- errors -----------------------------------------------------------------------

QUOTA_403 = {
    "forbidden": {
        "code": 403,
        "message": "Quota exceeded for cores: Requested 8, but already used 40 of 40 cores",
    }
}
QUOTA_413 = {"overLimit": {"code": 413, "message": "Quota exceeded for instances: Requested 1"}}


@pytest.mark.parametrize(("status", "body"), [(403, QUOTA_403), (413, QUOTA_413)])
def test_quota_refusal_is_quota_exceeded(status: int, body: dict[str, Any]) -> None:
    conn = FakeConnection()
    conn.fail["compute.create_server"] = _http_error(status, body)
    with pytest.raises(QuotaExceeded, match="quota exceeded") as err:
        _site(conn).create(RID)
    assert err.value.retryable
    assert isinstance(err.value, SiteError)


def test_a_forbidden_that_is_not_quota_is_not_retryable() -> None:
    conn = FakeConnection()
    conn.fail["compute.create_server"] = _http_error(
        403, {"forbidden": {"code": 403, "message": "Policy doesn't allow os_compute_api"}}
    )
    with pytest.raises(SiteError) as err:
        _site(conn).create(RID)
    assert not isinstance(err.value, QuotaExceeded)
    assert not err.value.retryable


@pytest.mark.parametrize(
    ("catalog", "setting"),
    [("flavors", "flavor"), ("images", "image"), ("networks", "network")],
)
def test_an_unknown_image_flavor_or_network_is_named_and_not_retryable(
    catalog: str, setting: str
) -> None:
    conn = FakeConnection()
    setattr(conn, catalog, {})
    with pytest.raises(
        SiteError, match=rf"{setting} '[^']+' \(sites\.cloud\.{setting}\) not found"
    ):
        _site(conn).create(RID)
    assert not conn.called("compute.create_server")


def test_a_404_response_for_the_flavor_is_not_retryable() -> None:
    conn = FakeConnection()
    conn.fail["compute.find_flavor"] = _http_error(
        404, {"itemNotFound": {"code": 404, "message": "Flavor m1.large could not be found."}}
    )
    with pytest.raises(SiteError, match="flavor") as err:
        _site(conn).create(RID)
    assert not err.value.retryable
    assert "sites.cloud.flavor" in str(err.value)


def test_a_refused_create_is_not_retryable_and_looks_the_ids_up_again() -> None:
    conn = FakeConnection()
    site = _site(conn)
    conn.fail["compute.create_server"] = _http_error(
        400, {"badRequest": {"code": 400, "message": "Invalid key_name provided."}}
    )
    with pytest.raises(SiteError, match="Invalid key_name provided") as err:
        site.create(RID)
    assert not err.value.retryable
    assert "HTTP 400" in str(err.value)
    del conn.fail["compute.create_server"]
    site.create(RID)
    assert len(conn.called("compute.find_flavor")) == 2


@pytest.mark.parametrize(
    "failure",
    [
        _http_error(503, {"computeFault": {"code": 503, "message": "Service Unavailable"}}),
        _http_error(500, {"computeFault": {"code": 500, "message": "Unexpected API Error."}}),
        ksa_exceptions.ConnectFailure("Unable to establish connection to http://127.0.0.1:8774"),
        ksa_exceptions.ConnectTimeout("Request to http://127.0.0.1:8774 timed out"),
    ],
)
def test_outages_are_retryable(failure: Exception) -> None:
    conn = FakeConnection()
    conn.fail["compute.create_server"] = failure
    with pytest.raises(SiteError) as err:
        _site(conn).create(RID)
    assert err.value.retryable
    assert not isinstance(err.value, QuotaExceeded)


def test_an_unreachable_cloud_while_listing_is_retryable() -> None:
    conn = FakeConnection()
    conn.fail["compute.servers"] = ksa_exceptions.ConnectFailure("no route to host")
    with pytest.raises(SiteError, match="cannot reach the cloud") as err:
        _site(conn).list_owned()
    assert err.value.retryable


def test_bad_credentials_are_not_retryable() -> None:
    conn = FakeConnection()
    conn.fail["image.find_image"] = ksa_exceptions.Unauthorized("The request you have made ...")
    with pytest.raises(SiteError, match="mycloud") as err:
        _site(conn).create(RID)
    assert not err.value.retryable


# --- the token stays secret -----------------------------------------------------------


def test_the_token_never_reaches_a_log_or_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    conn = FakeConnection()
    site = _site(conn)
    details = site.create(RID)
    encoded = conn.called("compute.create_server")[0]["user_data"]
    site.list_owned()
    site.destroy(RID, details)
    # A cloud that echoes the request back in its error message.
    conn.fail["compute.create_server"] = _http_error(
        400,
        {
            "badRequest": {
                "code": 400,
                "message": f"Invalid input for field/attribute user_data. Value: {encoded}. "
                f"token {TOKEN}",
            }
        },
    )
    with pytest.raises(SiteError) as err:
        site.create("tide-cloud-00000002")
    parts = [TOKEN, *TOKEN.split("."), encoded, encoded[100:160]]
    message = str(err.value)
    assert "<redacted>" in message
    assert err.value.__cause__ is None  # the SDK's unscrubbed exception is not chained
    assert err.value.__suppress_context__
    records = [record.getMessage() for record in caplog.records]
    assert records  # the site does log what it does
    for part in parts:
        assert part not in message
        for record in records:
            assert part not in record


# --- list_owned -------------------------------------------------------------------------


def test_list_owned_keeps_only_this_controllers_servers_of_this_site() -> None:
    conn = FakeConnection()
    site = _site(conn)
    site.create(RID)
    conn.servers += [
        FakeServer("srv-f1", "tide-cloud-11111111", "ACTIVE", {"tide-owner": "tide-test"}),
        FakeServer(
            "srv-f2",
            "tide-other-22222222",
            "ACTIVE",
            {"tide-owner": OWNER, "tide-site": "other", "tide-resource-id": "tide-other-22222222"},
        ),
        FakeServer("srv-f3", "bastion", "ACTIVE", None),
        FakeServer("srv-f4", "tide-cloud-33333333", "ACTIVE", {"tide-resource-id": "x"}),
        FakeServer(
            "srv-f5",
            "tide-cloud-44444444",
            "ERROR",
            {"tide-owner": OWNER, "tide-site": "cloud", "tide-resource-id": "tide-cloud-44444444"},
        ),
    ]
    owned = site.list_owned()
    assert owned == [
        Owned(resource_id=RID, status="BUILD", details={"server_id": "srv-1"}),
        Owned(
            resource_id="tide-cloud-44444444",
            status="ERROR",
            details={"server_id": "srv-f5"},
            failed=True,  # the cloud says it will never come up
        ),
    ]
    assert conn.called("compute.servers") == [{"details": True, "all_projects": False}]


# --- destroy -----------------------------------------------------------------------------


def test_destroy_deletes_the_recorded_server_and_is_idempotent() -> None:
    conn = FakeConnection()
    site = _site(conn)
    details = site.create(RID)
    site.destroy(RID, details)
    site.destroy(RID, details)  # already gone: fine
    assert conn.called("compute.delete_server") == [
        {"server": "srv-1", "ignore_missing": True, "force": False},
        {"server": "srv-1", "ignore_missing": True, "force": False},
    ]
    assert site.list_owned() == []


def test_destroy_without_details_finds_the_server_by_its_tags() -> None:
    conn = FakeConnection()
    site = _site(conn)
    site.create(RID)
    # Same name, another controller's: never touched.
    conn.servers.append(FakeServer("srv-x", RID, "ACTIVE", {"tide-owner": "tide-test"}))
    site.destroy(RID, {})
    assert conn.called("compute.servers")[-1] == {
        "details": True,
        "all_projects": False,
        "name": RID,
    }
    assert conn.called("compute.delete_server") == [
        {"server": "srv-1", "ignore_missing": True, "force": False}
    ]
    assert [s.id for s in conn.servers] == ["srv-x"]
    site.destroy(RID, {})  # nothing left of ours: no call, no error
    assert len(conn.called("compute.delete_server")) == 1


def test_destroy_during_an_outage_is_retryable() -> None:
    conn = FakeConnection()
    conn.fail["compute.delete_server"] = _http_error(
        503, {"computeFault": {"code": 503, "message": "Service Unavailable"}}, "DELETE"
    )
    with pytest.raises(SiteError) as err:
        _site(conn).destroy(RID, {"server_id": "srv-1"})
    assert err.value.retryable


def test_the_site_is_a_site_adapter() -> None:
    adapter: SiteAdapter = _site(FakeConnection())  # checked by mypy
    assert adapter.name == "cloud"


# --- deadlines: a cloud that never answers ------------------------------------------
#
# These run the real openstacksdk (made by tide.assemble.build_adapter, as the
# daemon makes it) against servers on 127.0.0.1: a socket that accepts and
# never answers, and the fake cloud of tests/doubles with a Nova that hangs.

DEADLINE_S = 60.0
"""How long a test waits for a call that must time out: far over its API timeout."""


def _clouds_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, document: object) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump(document))
    clouds.chmod(0o600)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))


def _built_site(tmp_path: Path, **changes: Any) -> SiteAdapter:
    """The site as the daemon builds it. (tide.assemble is imported here: it
    imports the controller's loop, which the adapters' tests need not.)"""
    from tide.assemble import build_adapter  # noqa: PLC0415

    token = tmp_path / "worker.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = _config(worker_token_file=str(token), **changes)
    return build_adapter("cloud", config, owner=OWNER, pool=POOL)


def test_a_cloud_that_never_answers_is_a_deadline_exceeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = Silent()
    try:
        auth = {
            "auth_url": f"http://127.0.0.1:{silent.port}/v3",
            "username": "tide",
            "password": "not-a-secret",
            "project_name": "physics",
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        }
        _clouds_yaml(
            tmp_path,
            monkeypatch,
            {"clouds": {"mycloud": {"auth": auth, "region_name": "R", "identity_api_version": 3}}},
        )
        site = _built_site(tmp_path, api_timeout_s=0.5)  # contacts nothing
        error = within(DEADLINE_S, site.list_owned)
    finally:
        silent.close()
    assert isinstance(error, DeadlineExceeded), error
    assert error.retryable
    assert str(error).startswith("site cloud: listing servers: no answer within the deadline")


class NoHypervisor:
    """The fake cloud's servers run nowhere (no server is booted here)."""

    def boot(self, server_id: str, user_data: bytes | None) -> None:
        raise AssertionError("no boot expected")

    def destroy(self, server_id: str) -> None:
        pass


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


class HungNova(FakeOpenStack):
    """The fake cloud; Keystone answers, Nova's server listing never does.
    (Its handler threads wait for good: they are daemon threads.)"""

    never = threading.Event()

    def handle(self, method: str, target: str, headers: Mapping[str, str], raw: bytes) -> Reply:
        if target.startswith("/compute/v2.1/servers"):
            self.never.wait()
        return super().handle(method, target, headers, raw)


def test_a_hung_nova_call_is_a_deadline_exceeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HungNova(NoHypervisor(), port=_free_port()) as cloud:
        _clouds_yaml(tmp_path, monkeypatch, cloud.clouds_yaml("mycloud"))
        site = _built_site(tmp_path, api_timeout_s=1.0)
        error = within(DEADLINE_S, site.list_owned)
        assert cloud.recorded("POST /v3/auth/tokens")  # authenticated, then Nova hung
    assert isinstance(error, DeadlineExceeded), error
    assert error.retryable
    assert "listing servers" in str(error)


def test_the_daemon_connects_with_an_api_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenStack(NoHypervisor(), port=_free_port()) as cloud:
        _clouds_yaml(tmp_path, monkeypatch, cloud.clouds_yaml("mycloud"))
        site = _built_site(tmp_path)
        assert isinstance(site, OpenStackSite)
        session = site._conn.session
        assert session.timeout == openstack_site.API_TIMEOUT_S == 30.0
        assert site.list_owned() == []  # and it works
        tuned = _built_site(tmp_path, api_timeout_s=7.5)  # a site's api_timeout_s
        assert isinstance(tuned, OpenStackSite)
        assert tuned._conn.session.timeout == 7.5


@pytest.mark.parametrize("value", [0, -1, 601, "soon"])
def test_an_api_timeout_out_of_range_names_the_key(value: object) -> None:
    with pytest.raises(ValidationError, match="api_timeout_s"):
        _config(api_timeout_s=value)


def test_a_drain_reaches_the_server_through_its_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real SDK against the fake cloud: the request lands in the server's
    # metadata, where the server's metadata service serves it to the worker.
    with FakeOpenStack(InertHypervisor(), port=_free_port()) as cloud:
        _clouds_yaml(tmp_path, monkeypatch, cloud.clouds_yaml("mycloud"))
        from tide.assemble import build_adapter  # noqa: PLC0415

        token = tmp_path / "worker.token"
        token.write_text(TOKEN + "\n")
        config = _config(
            worker_token_file=str(token),
            image="debian-13-docker",
            flavor="m1.small",
            security_groups=["condor-worker"],
        )
        site = build_adapter("cloud", config, owner=OWNER, pool=POOL)
        assert isinstance(site, OpenStackSite)
        server_id = site.create(RID)["server_id"]
        meta_url = f"{cloud.project.base}/fake-metadata/{server_id}/openstack/latest/meta_data.json"

        def served() -> object:
            return requests.get(meta_url, timeout=10).json()["meta"].get("tide-drain")

        request = site.drain_startd(RID, "idle 30s", only_idle=True)
        assert re.fullmatch(r"[0-9a-f]{12}", request)
        assert served() == f"{request} idle"
        again = site.drain_startd(RID, "tide drain")
        assert again != request
        assert served() == f"{again} graceful"
        site.cancel_startd_drain(RID, again)
        assert served() == ""  # the worker cancels the drain it started
        meta = next(s for s in cloud.servers() if s.id == server_id).metadata
        assert meta["tide-owner"] == OWNER  # the ownership tags stay
        with pytest.raises(SiteError, match="not listed") as caught:
            site.drain_startd("tide-cloud-99999999", "x")
        assert caught.value.retryable


def test_an_unknown_cloud_is_a_site_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clouds_yaml(tmp_path, monkeypatch, {"clouds": {}})
    with pytest.raises(SiteError, match=r"site cloud: sites\.cloud\.cloud: .*mycloud") as caught:
        _built_site(tmp_path)
    assert not caught.value.retryable


# --- malformed answers ----------------------------------------------------------------

MINE = {"tide-owner": OWNER, "tide-site": "cloud"}


def test_a_server_without_metadata_is_not_ours() -> None:
    conn = FakeConnection()
    conn.servers = [FakeServer("srv-1", "bastion", "ACTIVE", None)]
    assert _site(conn).list_owned() == []


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        (
            FakeServer("srv-1", "x", "ACTIVE", cast(Any, ["tide-owner", OWNER])),
            "metadata is a list",
        ),
        (FakeServer(cast(Any, None), RID, "ACTIVE", MINE), "has no id"),
        (FakeServer("", RID, "ACTIVE", MINE), "has no id"),
        (FakeServer("srv-1", cast(Any, None), "ACTIVE", MINE), "neither a name nor a resource id"),
        (
            FakeServer("srv-1", RID, "ACTIVE", {**MINE, "tide-resource-id": cast(Any, 7)}),
            "tide-resource-id is not a string",
        ),
    ],
)
def test_a_malformed_server_listing_is_a_site_error(server: FakeServer, problem: str) -> None:
    conn = FakeConnection()
    conn.servers = [server]
    with pytest.raises(SiteError) as caught:
        _site(conn).list_owned()
    message = str(caught.value)
    assert message.startswith("site cloud: listing servers: malformed answer from the cloud: ")
    assert problem in message
    assert caught.value.retryable


@pytest.mark.parametrize("failure", [KeyError("servers"), TypeError("not a mapping")])
def test_the_sdk_failing_on_a_malformed_answer_is_a_site_error(failure: Exception) -> None:
    conn = FakeConnection()
    conn.fail["compute.servers"] = failure
    with pytest.raises(SiteError, match="listing servers: malformed answer") as caught:
        _site(conn).list_owned()
    assert caught.value.retryable


def test_a_lookup_without_an_id_is_a_site_error() -> None:
    conn = FakeConnection()
    conn.flavors = {"flv": FakeFound(cast(Any, None), "m1.large")}
    with pytest.raises(SiteError, match="looking up the flavor: malformed answer"):
        _site(conn).create(RID)
    assert not conn.called("compute.create_server")


class GarbledNova(FakeOpenStack):
    """The fake cloud, its server listing replaced by `listing`."""

    listing: object = None

    def handle(self, method: str, target: str, headers: Mapping[str, str], raw: bytes) -> Reply:
        if method == "GET" and target.startswith("/compute/v2.1/servers/detail"):
            return Reply(200, self.listing)
        return super().handle(method, target, headers, raw)


@pytest.mark.parametrize(
    "listing",
    [
        {"servers": "garbage"},
        {"no-servers": []},
        {"servers": [{"id": "srv-1", "name": None, "metadata": MINE}]},
        {"servers": [{"id": None, "name": RID, "metadata": MINE}]},
    ],
)
def test_a_garbled_nova_listing_through_the_real_sdk_is_a_site_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listing: object
) -> None:
    cloud = GarbledNova(NoHypervisor(), port=_free_port())
    cloud.listing = listing
    with cloud:
        _clouds_yaml(tmp_path, monkeypatch, cloud.clouds_yaml("mycloud"))
        site = _built_site(tmp_path)
        with pytest.raises(SiteError, match="site cloud: listing servers: ") as caught:
            site.list_owned()
    assert caught.value.retryable


# --- servers' own tokens (worker_signing_key_file) ------------------------------


def _keyed_site(
    conn: Connection | FakeConnection, key: SigningKey, now: list[float], **config: Any
) -> OpenStackSite:
    return OpenStackSite(
        "cloud",
        _config(
            worker_token_file=None,
            worker_signing_key_file="/etc/tide/workers_signing_key",
            **config,
        ),
        conn=cast(Connection, conn),
        owner=OWNER,
        pool=POOL,
        signing_key=key,
        token_lifetime_s=3600,
        boot_timeout_s=300,
        clock=lambda: now[0],
    )


def _metadata_token(meta: Mapping[str, str]) -> str:
    return "".join(meta.get(f"{openstack_site.TOKEN_KEY}{i}", "") for i in range(4))


def test_a_keyed_server_boots_with_a_short_token_and_gets_its_working_one_in_metadata() -> None:
    key = SigningKey("tide-workers", os.urandom(32))
    now = [1_000_000.0]
    conn = FakeConnection()
    site = _keyed_site(conn, key, now)
    site.create(RID)
    (create,) = conn.called("compute.create_server")
    files = _files(yaml.safe_load(_user_data(conn)))
    boot = files["/opt/tide/condor_worker/secrets/token"]["content"]
    boot_claims = tokens.verify(key, boot)
    assert boot_claims["sub"] == f"tide-worker-{RID}@{POOL.pool_domain}"
    assert boot_claims["exp"] - boot_claims["iat"] == 300 + openstack_site.BOOT_TOKEN_MARGIN_S
    meta = create["metadata"]
    working = _metadata_token(meta)
    claims = tokens.verify(key, working)
    assert claims["sub"] == boot_claims["sub"]
    assert claims["scope"] == " ".join(tokens.WORKER_SCOPES)
    assert claims["exp"] - claims["iat"] == 3600
    assert working not in _user_data(conn)  # the user data holds the boot token alone
    assert all(len(v) <= 255 for v in meta.values())
    assert meta["tide-owner"] == OWNER  # beside the ownership tags
    assert site.tokens_due([RID], now[0] + 1799) == []
    assert site.tokens_due([RID], now[0] + 1800) == [RID]
    assert site.tokens_due(["unknown-since-a-restart"], now[0]) == ["unknown-since-a-restart"]
    site.destroy(RID, {"server_id": "srv-1"})
    assert site.tokens_due([RID], now[0]) == [RID]  # forgotten: no age known


def test_the_user_data_keeps_slot_users_off_the_metadata_service_first() -> None:
    conn = FakeConnection()
    _site(conn).create(RID)
    runcmd = yaml.safe_load(_user_data(conn))["runcmd"]
    guard = runcmd[0]
    assert guard[:4] == ["iptables", "-w", "-I", "OUTPUT"]
    assert guard[guard.index("-d") + 1] == "169.254.169.254"
    assert guard[guard.index("--uid-owner") + 1] == openstack_site.SLOT_UIDS == "62001-65534"
    assert guard[-2:] == ["-j", "REJECT"]
    assert runcmd[1][0] == "ip6tables"
    assert runcmd[-1][:2] == ["docker", "compose"]  # the worker starts after the guard


def test_a_token_goes_into_metadata_whole_or_not_at_all() -> None:
    token = "eyJ" + "a" * 600
    meta = openstack_site.token_metadata(token)
    assert list(meta) == [f"tide-token-{i}" for i in range(4)]
    assert _metadata_token(meta) == token
    assert meta["tide-token-3"] == ""  # a shorter token clears what a longer one left
    with pytest.raises(ValueError, match="does not fit"):
        openstack_site.token_metadata("x" * 1021)


def test_a_keyed_server_is_renewed_through_the_real_sdk_and_a_gone_one_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = SigningKey("tide-workers", os.urandom(32))
    now = [1_000_000.0]
    caplog.set_level(logging.DEBUG)
    with FakeOpenStack(InertHypervisor(), port=_free_port()) as cloud:
        _clouds_yaml(tmp_path, monkeypatch, cloud.clouds_yaml("mycloud"))
        import openstack  # noqa: PLC0415

        conn = openstack.connect(cloud="mycloud", api_timeout=10)
        site = _keyed_site(
            conn,
            key,
            now,
            image="debian-13-docker",
            flavor="m1.small",
            security_groups=["condor-worker"],
        )
        server_id = site.create(RID)["server_id"]
        meta_url = f"{cloud.project.base}/fake-metadata/{server_id}/openstack/latest/meta_data.json"

        def served() -> str:
            return _metadata_token(requests.get(meta_url, timeout=10).json()["meta"])

        first = served()
        assert tokens.verify(key, first)["iat"] == 1_000_000
        now[0] += 1800
        site.renew_tokens([RID, "tide-cloud-gone"])
        second = served()
        assert second != first
        assert tokens.verify(key, second)["iat"] == 1_000_000 + 1800
        assert site.tokens_due([RID], now[0]) == []
        assert site.tokens_due(["tide-cloud-gone"], now[0]) == ["tide-cloud-gone"]
        meta = next(s for s in cloud.servers() if s.id == server_id).metadata
        assert meta["tide-owner"] == OWNER
    text = caplog.text
    for token in (first, second):
        for part in token.split("."):
            assert part not in text


def test_a_keyed_site_is_built_without_a_shared_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "workers_signing_key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    from tide.assemble import build_adapter  # noqa: PLC0415

    config = _config(worker_token_file=None, worker_signing_key_file=str(key_file))
    with FakeOpenStack(InertHypervisor(), port=_free_port()) as cloud:
        _clouds_yaml(tmp_path, monkeypatch, cloud.clouds_yaml("mycloud"))
        site = build_adapter("cloud", config, owner=OWNER, pool=POOL)
    assert isinstance(site, OpenStackSite)
    assert site.tokens_due([RID], 0.0) == [RID]
