"""A FAKE OpenStack cloud, for tests only: a small HTTP service on 127.0.0.1
that speaks just enough Keystone v3, Nova (compute API v2.1, microversions
2.1-2.96), Glance v2 and Neutron v2.0 for openstacksdk 4.22 to make the calls
tide.sites.openstack.adapter.OpenStackSite makes, through `openstack.connect()` and a
clouds.yaml, as against a real cloud. The services sit under one address as
devstack lays them out (/v3, /compute/v2.1, /image, /network).

It serves (every request is recorded in `requests`; one no route matches
gets a 404 and shows in `unhandled()`):

    GET  /  /v3                         Keystone version discovery
    POST /v3/auth/tokens                password auth, project scope -> token + catalog
    GET  /compute/  /compute/v2.1       Nova version discovery
    GET  /compute/v2.1/flavors[/detail]  /compute/v2.1/flavors/{id}     find_flavor
    GET  /compute/v2.1/servers[/detail]  (name as a regex, status)     servers()
    GET  /compute/v2.1/servers/{id}                                     get_server
    POST /compute/v2.1/servers          BUILD, then ACTIVE or ERROR    create_server
    DELETE /compute/v2.1/servers/{id}                                   delete_server
    GET  /compute/v2.1/limits  /compute/v2.1/os-keypairs
    GET  /image/  /image/v2/images  /image/v2/images/{id}              find_image
    GET  /network/  /network/v2.0/networks[/{id}]                      find_network
    GET  /network/v2.0/security-groups

It checks what the real services check for these calls: a valid
X-Auth-Token on every resource call (401 without); the user's password and
project; the compute microversion (406 outside 2.1-2.96); on create, the
body's shape (unknown keys, name, networks required from 2.37, metadata
strings of at most 255, user data base64 of at most 65535) -> 400, an
unknown flavor, image, network, key pair or security group -> 400 with
Nova's message, over 128 metadata items -> 403, and the instance quota
(`max_servers`) -> 403 "Quota exceeded for instances: ...", in Nova's
error shape ({"forbidden": {"code": 403, "message": ...}}).

It can hang: `cloud.nova.hang_create_s = 60` holds every create request 60 s
before serving it (the client's timeout runs out first; the server is then
created all the same, as by a cloud that was only slow), `creates_held`
counts those held now, and stopping the fake answers them 503.

What it is not: no scheduler, ports or addresses (every server shows
127.0.0.1), no cores/RAM quota, no pagination, one project and no admin
view; and a server's status follows its user data (ERROR when the hypervisor
cannot run it, where a real cloud says ACTIVE and the failure shows only in
the guest). What a server runs is up to the `Hypervisor` it is given
(fake_openstack_hypervisor runs them on a lab host).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from tests.doubles.fake_glance_neutron import FakeGlance, FakeNeutron
from tests.doubles.fake_keystone import FakeKeystone
from tests.doubles.fake_nova import (
    BootFailed,
    FakeNova,
    FakeServer,
    Hypervisor,
    InertHypervisor,
    requested_microversion,
)
from tests.doubles.fake_openstack_base import (
    HOST,
    NOT_AUTHENTICATED,
    REGION,
    Call,
    Project,
    Reply,
    Route,
    keystone_error,
    nova_error,
)

PORT = 29740


@dataclass(frozen=True)
class Recorded:
    """One request the fake got. The body (a password, user data) stays out of repr."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any = field(repr=False)
    status: int
    authenticated: bool  # a valid X-Auth-Token came with it
    microversion: str | None  # the compute microversion asked for
    route: str | None  # e.g. "POST /compute/v2.1/servers"; None: no route matched


class FakeOpenStack:
    """`with FakeOpenStack(hypervisor) as cloud:` serves on 127.0.0.1:`port`.
    `cloud.project` holds the one project's user, images, flavors, networks,
    key pairs, security groups and instance quota (`max_servers`)."""

    def __init__(self, hypervisor: Hypervisor, *, port: int = PORT) -> None:
        self.project = Project(base=f"http://{HOST}:{port}")
        self.port = port
        self.requests: list[Recorded] = []
        self.keystone = FakeKeystone(self.project)
        self.nova = FakeNova(self.project, hypervisor)
        serve = getattr(hypervisor, "use_metadata_service", None)
        if serve is not None:  # its servers read their metadata from this fake
            serve(f"{self.project.base}/fake-metadata")
        self._routes: list[Route] = [
            *self.keystone.routes(),
            *self.nova.routes(),
            *FakeGlance(self.project).routes(),
            *FakeNeutron(self.project).routes(),
        ]
        self._http: ThreadingHTTPServer | None = None

    # --- lifecycle ------------------------------------------------------

    def __enter__(self) -> FakeOpenStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        http = _HTTPServer((HOST, self.port), _RequestHandler)
        http.cloud = self
        threading.Thread(target=http.serve_forever, name="fake-openstack", daemon=True).start()
        self._http = http

    def stop(self, timeout: float = 120) -> None:
        """Stop serving (creates held by the hang switch are answered 503), then
        wait (up to `timeout` each) for boots and deletions under way."""
        self.nova.release_hangs()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self.nova.wait(timeout)

    # --- the test's view ------------------------------------------------

    def clouds_yaml(self, cloud: str) -> dict[str, Any]:
        """A clouds.yaml document whose one entry, `cloud`, is this fake
        (it holds the user's password: write it 0600)."""
        p = self.project
        auth = {
            "auth_url": f"{p.base}/v3",
            "username": p.username,
            "password": p.password,
            "project_name": p.name,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        }
        entry = {"auth": auth, "region_name": REGION, "interface": "public"}
        return {"clouds": {cloud: {**entry, "identity_api_version": 3}}}

    def servers(self) -> list[FakeServer]:
        return self.nova.servers()

    def recorded(self, route: str) -> list[Recorded]:
        """The requests a route ("POST /compute/v2.1/servers") served."""
        with self.project.lock:
            return [r for r in self.requests if r.route == route]

    def unhandled(self) -> list[Recorded]:
        with self.project.lock:
            return [r for r in self.requests if r.route is None]

    # --- serving --------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], raw: bytes) -> Reply:
        """Serve one request (header names in lower case) and record it."""
        url = urlsplit(target)
        query = parse_qs(url.query)
        authenticated = self.keystone.valid(headers.get("x-auth-token"))
        name: str | None = None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body, reply = None, nova_error(400, "badRequest", "Malformed request body")
        else:
            call = Call(method, url.path, query, headers, body)
            reply, name = self._dispatch(call, authenticated)
        record = Recorded(
            method,
            url.path,
            query,
            body,
            reply.status,
            authenticated,
            requested_microversion(headers),
            name,
        )
        with self.project.lock:
            self.requests.append(record)
        return reply

    def _dispatch(self, call: Call, authenticated: bool) -> tuple[Reply, str | None]:
        for r in self._routes:
            match = r.pattern.fullmatch(call.path)
            if match is None or r.method != call.method:
                continue
            if r.needs_token and not authenticated:
                reply = keystone_error(401, "Unauthorized", NOT_AUTHENTICATED)
                www = {"WWW-Authenticate": f"Keystone uri='{self.project.base}/v3'"}
                return Reply(reply.status, reply.body, www), r.name
            return r.handler(call, match), r.name
        return Reply(404, "404 Not Found\n\nThe resource could not be found.\n"), None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    cloud: FakeOpenStack


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's session expects
    server_version = "FakeOpenStack/1"

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the cloud records every request itself."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = cast(_HTTPServer, self.server).cloud.handle(self.command, self.path, headers, raw)
        if reply.body is None:
            payload, kind = b"", "application/json"
        elif isinstance(reply.body, str):
            payload, kind = reply.body.encode(), "text/plain; charset=UTF-8"
        else:
            payload, kind = json.dumps(reply.body).encode(), "application/json"
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a hung create): as a cloud, carry on


__all__ = [
    "PORT",
    "BootFailed",
    "FakeOpenStack",
    "FakeServer",
    "Hypervisor",
    "InertHypervisor",
    "Recorded",
]
