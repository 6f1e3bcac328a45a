"""FAKE Nova (tests only; see fake_openstack): compute API v2.1 with
microversions 2.1-2.96, for flavors, servers (create, list, get, delete,
update metadata), limits and key pairs, and a METADATA SERVICE for the
servers: GET /fake-metadata/<server id>/openstack/latest/meta_data.json
(a real cloud serves /openstack/latest/meta_data.json at 169.254.169.254
and knows the server by its address; on the lab's shared network the path
says which server asks, so a server reads only its own). A created server
is BUILD until its `Hypervisor` has run its user data, then ACTIVE (or
ERROR with the failure as its fault); a deleted one is "deleting" until
the hypervisor has removed it, then gone.

A HUNG Nova on demand: `FakeNova.hang_create_s` holds every create request
that long before serving it (a cloud whose API stalls: the client's own
timeout runs out first, and the server may appear later all the same);
`hang_delete_s` does the same to deletes, and the server is deleted late.
`InertHypervisor` runs nothing, for tests that need only the cloud's API."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tests.doubles.fake_openstack_base import (
    HOST,
    Call,
    Flavor,
    Named,
    Project,
    Reply,
    Route,
    dig,
    nova_error,
    now,
    route,
)

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 96)  # Nova 2024.1 "Caracal"
USER_DATA_MAX = 65535
METADATA_ITEMS_MAX = 128
METADATA_TEXT_MAX = 255
V21 = "/compute/v2.1"
# The keys of POST /servers' body Nova's schema knows (2.96); any other is a 400.
_CREATE_KEYS = frozenset(
    {
        "name",
        "imageRef",
        "flavorRef",
        "networks",
        "metadata",
        "user_data",
        "key_name",
        "security_groups",
        "adminPass",
        "OS-DCF:diskConfig",
        "accessIPv4",
        "accessIPv6",
        "availability_zone",
        "block_device_mapping_v2",
        "config_drive",
        "min_count",
        "max_count",
        "return_reservation_id",
        "description",
        "tags",
        "hostname",
    }
)

Version = tuple[int, int]
VersionedHandler = Callable[[Call, re.Match[str], Version], Reply]


class BootFailed(Exception):
    """The hypervisor could not run the server: it goes to ERROR with this as its fault."""


class Hypervisor(Protocol):
    """What runs the fake's servers. Calls for one server never overlap."""

    def boot(self, server_id: str, user_data: bytes | None) -> None:
        """Start the server from its decoded user data; raise BootFailed."""
        ...

    def destroy(self, server_id: str) -> None:
        """Remove everything the server runs; idempotent."""
        ...


class InertHypervisor:
    """A Hypervisor whose servers run nothing: they go ACTIVE at once and no
    worker ever joins a pool. For tests of the cloud's API alone."""

    def boot(self, server_id: str, user_data: bytes | None) -> None:
        return None

    def destroy(self, server_id: str) -> None:
        return None


@dataclass
class FakeServer:
    id: str
    name: str
    image: Named
    flavor: Flavor
    networks: list[Named]
    metadata: dict[str, str]
    user_data: bytes | None = field(repr=False)
    key_name: str | None
    security_groups: list[str]
    created: str
    status: str = "BUILD"
    task_state: str | None = "spawning"
    fault: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


def requested_microversion(headers: Mapping[str, str]) -> str | None:
    """The compute microversion a request asks for, as written, or None
    (header names in lower case)."""
    modern = headers.get("openstack-api-version", "")
    if modern.lower().startswith("compute "):
        return modern.split(None, 1)[1].strip()
    legacy = headers.get("x-openstack-nova-api-version")
    return None if legacy is None else legacy.strip()


def _parse_version(text: str) -> Version | None:
    if text == "latest":
        return MAX_VERSION
    match = re.fullmatch(r"(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def _dotted(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


class FakeNova:
    def __init__(self, project: Project, hypervisor: Hypervisor) -> None:
        self._project = project
        self._hypervisor = hypervisor
        self._servers: dict[str, FakeServer] = {}
        self._threads: list[threading.Thread] = []
        self.deleted: list[str] = []  # ids of servers deleted, in order
        # The hang switch: each create request is held this long before it is
        # served (0: served at once). A hang cut short by release_hangs()
        # (the fake stopping) is answered 503 and creates nothing.
        self.hang_create_s = 0.0
        self.hang_delete_s = 0.0  # ... and each delete (then carried out all the same)
        self.hung_creates: list[float] = []  # time.monotonic() each held create arrived
        self._hangs_held = 0
        self._release = threading.Event()

    def routes(self) -> list[Route]:
        v = self._versioned
        return [
            route("GET", r"/compute/?", self._versions, needs_token=False),
            route("GET", rf"{V21}/?", self._version, needs_token=False),
            route("GET", rf"{V21}/flavors(?P<detail>/detail)?", v(self._list_flavors)),
            route("GET", rf"{V21}/flavors/(?P<id>[^/]+)", v(self._get_flavor)),
            route("GET", rf"{V21}/servers(?P<detail>/detail)?", v(self._list_servers)),
            route("GET", rf"{V21}/servers/(?P<id>[^/]+)", v(self._get_server)),
            route("POST", rf"{V21}/servers", v(self._create_server)),
            route("DELETE", rf"{V21}/servers/(?P<id>[^/]+)", v(self._delete_server)),
            route("POST", rf"{V21}/servers/(?P<id>[^/]+)/metadata", v(self._update_metadata)),
            route(
                "GET",
                r"/fake-metadata/(?P<id>[^/]+)/openstack/latest/meta_data\.json",
                self._meta_data,
                needs_token=False,
            ),
            route("GET", rf"{V21}/limits", v(self._limits)),
            route("GET", rf"{V21}/os-keypairs", v(self._keypairs)),
        ]

    def servers(self) -> list[FakeServer]:
        """A snapshot of the servers that exist (deleting ones included)."""
        with self._project.lock:
            return [replace(s, metadata=dict(s.metadata)) for s in self._servers.values()]

    @property
    def creates_held(self) -> int:
        """Create requests being held by the hang switch right now."""
        with self._project.lock:
            return self._hangs_held

    def release_hangs(self) -> None:
        """End every hang now (and any later one at once): those creates get a 503."""
        self._release.set()

    def wait(self, timeout: float) -> None:
        """Wait for boots and deletions under way."""
        with self._project.lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    # --- versions -------------------------------------------------------

    def _versioned(self, handler: VersionedHandler) -> Callable[[Call, re.Match[str]], Reply]:
        """Negotiate the microversion (default 2.1; 406 outside 2.1-2.96) and
        say in the reply which one answered."""

        def serve(call: Call, match: re.Match[str]) -> Reply:
            wanted = requested_microversion(call.headers)
            version = MIN_VERSION if wanted is None else _parse_version(wanted)
            if version is None or not MIN_VERSION <= version <= MAX_VERSION:
                message = (
                    f"Version {wanted} is not supported by the API. "
                    f"Minimum is {_dotted(MIN_VERSION)} and maximum is {_dotted(MAX_VERSION)}."
                )
                return nova_error(406, "computeFault", message)
            reply = handler(call, match, version)
            headers = {
                "OpenStack-API-Version": f"compute {_dotted(version)}",
                "X-OpenStack-Nova-API-Version": _dotted(version),
                "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
                "x-openstack-request-id": f"req-{uuid.uuid4()}",
            }
            return replace(reply, headers={**reply.headers, **headers})

        return serve

    def _document(self) -> dict[str, Any]:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": _dotted(MAX_VERSION),
            "min_version": _dotted(MIN_VERSION),
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{self._project.base}{V21}/"}],
        }

    def _versions(self, call: Call, match: re.Match[str]) -> Reply:
        return Reply(200, {"versions": [self._document()]})

    def _version(self, call: Call, match: re.Match[str]) -> Reply:
        return Reply(200, {"version": self._document()})

    # --- flavors, limits, key pairs -------------------------------------

    def _flavor_view(self, flavor: Flavor, detail: bool) -> dict[str, Any]:
        link = f"{self._project.base}{V21}/flavors/{flavor.id}"
        view: dict[str, Any] = {"id": flavor.id, "name": flavor.name}
        view["links"] = [{"rel": "self", "href": link}]
        if detail:
            view |= {"vcpus": flavor.vcpus, "ram": flavor.ram, "disk": flavor.disk, "swap": 0}
            view |= {"OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False}
            view |= {"os-flavor-access:is_public": True, "rxtx_factor": 1.0}
            view |= {"description": None, "extra_specs": {}}
        return view

    def _list_flavors(self, call: Call, match: re.Match[str], version: Version) -> Reply:
        detail = match["detail"] is not None
        with self._project.lock:
            flavors = [self._flavor_view(f, detail) for f in self._project.flavors]
        return Reply(200, {"flavors": flavors})

    def _get_flavor(self, call: Call, match: re.Match[str], version: Version) -> Reply:
        with self._project.lock:
            for flavor in self._project.flavors:
                if flavor.id == match["id"]:
                    return Reply(200, {"flavor": self._flavor_view(flavor, True)})
        return nova_error(404, "itemNotFound", f"Flavor {match['id']} could not be found.")

    def _limits(self, call: Call, match: re.Match[str], version: Version) -> Reply:
        with self._project.lock:
            used, limit = len(self._servers), self._project.max_servers
        absolute = {
            "maxTotalInstances": -1 if limit is None else limit,
            "totalInstancesUsed": used,
            "maxTotalCores": -1,
            "totalCoresUsed": 0,
            "maxTotalRAMSize": -1,
            "totalRAMUsed": 0,
            "maxServerMeta": METADATA_ITEMS_MAX,
            "maxTotalKeypairs": 100,
            "maxServerGroups": 10,
            "maxServerGroupMembers": 10,
            "totalServerGroupsUsed": 0,
        }
        return Reply(200, {"limits": {"absolute": absolute, "rate": []}})

    def _keypairs(self, call: Call, match: re.Match[str], version: Version) -> Reply:
        with self._project.lock:
            pairs = [{"keypair": {"name": k.name, "type": "ssh"}} for k in self._project.keypairs]
        return Reply(200, {"keypairs": pairs})

    # --- servers --------------------------------------------------------

    def _server_view(self, server: FakeServer, version: Version) -> dict[str, Any]:
        link = f"{self._project.base}{V21}/servers/{server.id}"
        f = server.flavor
        flavor: dict[str, Any] = {"id": f.id}
        if version >= (2, 47):  # the flavor is embedded, not linked
            flavor = {"vcpus": f.vcpus, "ram": f.ram, "disk": f.disk, "ephemeral": 0, "swap": 0}
            flavor |= {"original_name": f.name, "extra_specs": {}}
        address = {"addr": HOST, "version": 4, "OS-EXT-IPS:type": "fixed"}
        vm_state = "building" if server.status == "BUILD" else server.status.lower()
        view: dict[str, Any] = {
            "id": server.id,
            "name": server.name,
            "status": server.status,
            "tenant_id": self._project.id,
            "user_id": self._project.user_id,
            "metadata": dict(server.metadata),
            "hostId": "",
            "image": {"id": server.image.id},
            "flavor": flavor,
            "created": server.created,
            "updated": server.created,
            "addresses": {n.name: [address] for n in server.networks},
            "accessIPv4": "",
            "accessIPv6": "",
            "links": [{"rel": "self", "href": link}],
            "OS-DCF:diskConfig": "MANUAL",
            "OS-EXT-AZ:availability_zone": "nova",
            "OS-EXT-STS:task_state": server.task_state,
            "OS-EXT-STS:vm_state": vm_state,
            "OS-EXT-STS:power_state": 1 if server.status == "ACTIVE" else 0,
            "key_name": server.key_name,
            "security_groups": [{"name": g} for g in server.security_groups],
            "config_drive": "",
            "progress": 0,
            "locked": False,
            "description": None,
            "tags": [],
        }
        if server.fault is not None:
            view["fault"] = {"code": 500, "message": server.fault, "created": server.created}
        return view

    def _list_servers(self, call: Call, match: re.Match[str], version: Version) -> Reply:
        """Nova takes `name` as a regular expression searched in the name."""
        name = call.query.get("name", [None])[-1]
        status = call.query.get("status", [None])[-1]
        try:
            pattern = re.compile(name) if name is not None else None
        except re.error:
            return nova_error(400, "badRequest", f"Invalid regular expression: {name}")
        with self._project.lock:
            views = [
                self._server_view(s, version)
                for s in self._servers.values()
                if (pattern is None or pattern.search(s.name))
                and (status is None or s.status == status.upper())
            ]
        if match["detail"] is None:
            views = [{k: v[k] for k in ("id", "name", "links")} for v in views]
        return Reply(200, {"servers": views})

    def _get_server(self, call: Call, match: re.Match[str], version: Version) -> Reply:
        with self._project.lock:
            server = self._servers.get(match["id"])
            if server is not None:
                return Reply(200, {"server": self._server_view(server, version)})
        return nova_error(404, "itemNotFound", f"Instance {match['id']} could not be found.")

    def _create_server(self, call: Call, match: re.Match[str], version: Version) -> Reply:
        hang = self.hang_create_s
        if hang > 0:
            with self._project.lock:
                self.hung_creates.append(time.monotonic())
                self._hangs_held += 1
            try:
                released = self._release.wait(hang)
            finally:
                with self._project.lock:
                    self._hangs_held -= 1
            if released:
                return nova_error(503, "computeFault", "The fake cloud is shutting down.")
        problem = create_shape_problem(call.body, version)
        if problem is not None:
            return nova_error(400, "badRequest", f"Invalid input for field/attribute {problem}")
        with self._project.lock:
            server = self._new_server(call.body["server"])
            if isinstance(server, Reply):
                return server
            used, limit = len(self._servers), self._project.max_servers
            if limit is not None and used + 1 > limit:
                message = (
                    f"Quota exceeded for instances: Requested 1, but already used "
                    f"{used} of {limit} instances"
                )
                return nova_error(403, "forbidden", message)
            self._servers[server.id] = server
        self._background(self._boot, server)
        link = f"{self._project.base}{V21}/servers/{server.id}"
        created = {
            "id": server.id,
            "links": [{"rel": "self", "href": link}],
            "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": g} for g in server.security_groups],
            "adminPass": secrets.token_urlsafe(9),
        }
        return Reply(202, {"server": created}, {"Location": link})

    def _new_server(self, request: dict[str, Any]) -> FakeServer | Reply:
        """The server a well-formed create request describes, or Nova's refusal
        (in Nova's order: flavor, image, key pair, networks, security groups,
        metadata quota). Called under the lock."""
        p = self._project
        flavor_ref = str(request["flavorRef"]).rsplit("/", 1)[-1]
        flavor = next((f for f in p.flavors if f.id == flavor_ref), None)
        image = next((i for i in p.images if i.id == request.get("imageRef")), None)
        key_name = request.get("key_name")
        networks = request.get("networks")  # a list, or "auto"/"none"
        uuids = [dig(n, "uuid") for n in networks] if isinstance(networks, list) else []
        groups = [str(dig(g, "name")) for g in request.get("security_groups") or []]
        known_networks = {n.id for n in p.networks}
        known_groups = {g.name for g in p.security_groups} | {g.id for g in p.security_groups}
        metadata: dict[str, str] = dict(request.get("metadata") or {})
        refusals = [
            (flavor is None, f"Flavor {flavor_ref} could not be found."),
            (image is None, f"Image {request.get('imageRef')} could not be found."),
            (
                key_name is not None and key_name not in {k.name for k in p.keypairs},
                "Invalid key_name provided.",
            ),
            *[(u not in known_networks, f"Network {u} could not be found.") for u in uuids],
            *[(g not in known_groups, f"Security group {g} not found.") for g in groups],
        ]
        refused = next((message for failed, message in refusals if failed), None)
        if refused is not None:
            return nova_error(400, "badRequest", refused)
        if len(metadata) > METADATA_ITEMS_MAX:
            message = f"Maximum number of metadata items exceeds {METADATA_ITEMS_MAX}"
            return nova_error(403, "forbidden", message)
        assert flavor is not None
        assert image is not None
        user_data = request.get("user_data")
        return FakeServer(
            id=str(uuid.uuid4()),
            name=str(request["name"]),
            image=image,
            flavor=flavor,
            networks=[n for n in p.networks if n.id in uuids],
            metadata=metadata,
            user_data=None if user_data is None else base64.b64decode(user_data),
            key_name=key_name,
            security_groups=groups or ["default"],
            created=now(),
        )

    def _delete_server(self, call: Call, match: re.Match[str], version: Version) -> Reply:
        if self.hang_delete_s > 0:  # the client gives up; the delete lands late all the same
            self._release.wait(self.hang_delete_s)
        with self._project.lock:
            server = self._servers.get(match["id"])
            if server is None:
                return nova_error(
                    404, "itemNotFound", f"Instance {match['id']} could not be found."
                )
            again = server.task_state == "deleting"
            server.task_state = "deleting"
        if not again:
            self._background(self._teardown, server)
        return Reply(204)

    def _update_metadata(self, call: Call, match: re.Match[str], version: Version) -> Reply:
        """POST /servers/{id}/metadata: merge the given items (Nova's "update")."""
        items = dig(call.body, "metadata")
        if not isinstance(items, dict) or not all(
            _text(k, 1) and _text(v, 0) for k, v in items.items()
        ):
            message = f"metadata. Keys and values must be strings of at most {METADATA_TEXT_MAX}"
            return nova_error(400, "badRequest", f"Invalid input for field/attribute {message}")
        with self._project.lock:
            server = self._servers.get(match["id"])
            if server is None:
                return nova_error(
                    404, "itemNotFound", f"Instance {match['id']} could not be found."
                )
            merged = {**server.metadata, **items}
            if len(merged) > METADATA_ITEMS_MAX:
                message = f"Maximum number of metadata items exceeds {METADATA_ITEMS_MAX}"
                return nova_error(403, "forbidden", message)
            server.metadata = merged
            return Reply(200, {"metadata": dict(merged)})

    def _meta_data(self, call: Call, match: re.Match[str]) -> Reply:
        """The metadata service's meta_data.json of one server."""
        with self._project.lock:
            server = self._servers.get(match["id"])
            if server is None:
                return Reply(404, "404 Not Found\n")
            document = {
                "uuid": server.id,
                "name": server.name,
                "hostname": server.name,
                "meta": dict(server.metadata),
            }
        return Reply(200, document)

    # --- the hypervisor's side ------------------------------------------

    def _background(self, work: Callable[[FakeServer], None], server: FakeServer) -> None:
        thread = threading.Thread(target=work, args=(server,), name=f"fake-nova-{server.id[:8]}")
        with self._project.lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _boot(self, server: FakeServer) -> None:
        fault: str | None
        with server.lock:
            try:
                self._hypervisor.boot(server.id, server.user_data)
            except Exception as exc:  # BootFailed, or the hypervisor itself broke
                status, fault = "ERROR", f"{type(exc).__name__}: {exc}"
            else:
                status, fault = "ACTIVE", None
            with self._project.lock:
                server.status, server.fault = status, fault
                if server.task_state != "deleting":
                    server.task_state = None

    def _teardown(self, server: FakeServer) -> None:
        with server.lock:  # after the boot, if it is still running
            try:
                self._hypervisor.destroy(server.id)
            except Exception as exc:
                with self._project.lock:
                    server.status, server.task_state = "ERROR", None
                    server.fault = f"delete failed: {type(exc).__name__}: {exc}"
                return
        with self._project.lock:
            self._servers.pop(server.id, None)
            self.deleted.append(server.id)


def create_shape_problem(body: Any, version: Version) -> str | None:
    """What Nova's JSON schema for POST /servers would reject ("<field>. <why>"), or None."""
    request = dig(body, "server")
    if not isinstance(request, dict):
        return "server. 'server' is a required property"
    unknown = sorted(set(request) - _CREATE_KEYS)
    networks = request.get("networks")
    metadata = request.get("metadata", {})
    user_data = request.get("user_data")
    checks = [
        (bool(unknown), f"server. Additional properties are not allowed ({unknown} unexpected)"),
        (not _text(request.get("name"), 1), "name. It must be a string of 1-255 characters"),
        ("flavorRef" not in request, "server. 'flavorRef' is a required property"),
        (version >= (2, 37) and networks is None, "server. 'networks' is a required property"),
        (
            networks is not None
            and not (networks in ("auto", "none") or isinstance(networks, list)),
            "networks. It must be a list, 'auto' or 'none'",
        ),
        (
            not isinstance(metadata, dict)
            or not all(_text(k, 1) and _text(v, 0) for k, v in metadata.items()),
            f"metadata. Keys and values must be strings of at most {METADATA_TEXT_MAX}",
        ),
        (
            user_data is not None and not _base64(user_data),
            f"user_data. It must be base64 of at most {USER_DATA_MAX} characters",
        ),
    ]
    return next((message for failed, message in checks if failed), None)


def _text(value: object, min_len: int) -> bool:
    return isinstance(value, str) and min_len <= len(value) <= METADATA_TEXT_MAX


def _base64(value: object) -> bool:
    if not isinstance(value, str) or len(value) > USER_DATA_MAX:
        return False
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return False
    return True


__all__ = [
    "MAX_VERSION",
    "MIN_VERSION",
    "BootFailed",
    "FakeNova",
    "FakeServer",
    "Hypervisor",
    "InertHypervisor",
    "create_shape_problem",
    "requested_microversion",
]
