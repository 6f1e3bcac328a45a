"""What the FAKE OpenStack's services share (tests only; see fake_openstack):
the request and reply types, routes, and the one project's catalog of
images, flavors, networks, key pairs and security groups."""

from __future__ import annotations

import re
import secrets
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

HOST = "127.0.0.1"
REGION = "RegionOne"
NOT_AUTHENTICATED = "The request you have made requires authentication."


@dataclass(frozen=True)
class Named:
    """An image, network, key pair or security group: an id and a name."""

    id: str
    name: str


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram: int
    disk: int


@dataclass(frozen=True)
class Call:
    """One request as a route sees it (header names in lower case)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: Any


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None  # JSON-able; a str is sent as text/plain
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Call, re.Match[str]], Reply]


@dataclass(frozen=True)
class Route:
    """`pattern` matches the whole path; `name` is how records name the route."""

    method: str
    pattern: re.Pattern[str]
    name: str
    handler: Handler
    needs_token: bool


def route(method: str, pattern: str, handler: Handler, *, needs_token: bool = True) -> Route:
    return Route(
        method, re.compile(pattern), f"{method} {_readable(pattern)}", handler, needs_token
    )


def _readable(pattern: str) -> str:
    """/compute/v2.1/servers/(?P<id>[^/]+) -> /compute/v2.1/servers/{id};
    (?P<detail>/detail)? -> [/detail]; a trailing /? goes."""
    text = re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", pattern)
    text = re.sub(r"\(\?P<\w+>(/\w+)\)\?", r"[\1]", text)
    return text.removesuffix("/?") or "/"


@dataclass
class Project:
    """The fake's one project, its one user and what they can use. Services
    read it under `lock`; a test may change the lists and `max_servers`."""

    base: str  # http://127.0.0.1:<port>
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    name: str = "physics"
    user_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    username: str = "tide"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    images: list[Named] = field(
        default_factory=lambda: [Named(str(uuid.uuid4()), "debian-13-docker")]
    )
    flavors: list[Flavor] = field(
        default_factory=lambda: [Flavor(str(uuid.uuid4()), "m1.small", 2, 2048, 20)]
    )
    networks: list[Named] = field(default_factory=lambda: [Named(str(uuid.uuid4()), "private")])
    keypairs: list[Named] = field(default_factory=lambda: [Named("ops", "ops")])
    security_groups: list[Named] = field(
        default_factory=lambda: [
            Named(str(uuid.uuid4()), name) for name in ("default", "condor-worker")
        ]
    )
    max_servers: int | None = None  # the instance quota; None: unlimited
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def now(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def nova_error(status: int, kind: str, message: str) -> Reply:
    """An error as Nova words it: {"badRequest": {"code": 400, "message": ...}}."""
    return Reply(status, {kind: {"code": status, "message": message}})


def keystone_error(status: int, title: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": status, "title": title, "message": message}})


def dig(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]..., or None where a level is missing or not a mapping."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def filtered(items: list[Named], query: Mapping[str, list[str]]) -> list[Named]:
    """A listing filtered on name and id, as Glance and Neutron filter."""
    names, ids = query.get("name"), query.get("id")
    return [i for i in items if (not names or i.name in names) and (not ids or i.id in ids)]


__all__ = [
    "HOST",
    "NOT_AUTHENTICATED",
    "REGION",
    "Call",
    "Flavor",
    "Handler",
    "Named",
    "Project",
    "Reply",
    "Route",
    "dig",
    "filtered",
    "keystone_error",
    "nova_error",
    "now",
    "route",
]
