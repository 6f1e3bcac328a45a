"""FAKE Keystone v3 (tests only; see fake_openstack): version discovery and
password authentication scoped to the one project, answered with a token and
a service catalog of the fake's compute, image and network endpoints."""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import timedelta
from typing import Any

from tests.doubles.fake_openstack_base import (
    NOT_AUTHENTICATED,
    REGION,
    Call,
    Project,
    Reply,
    Route,
    dig,
    keystone_error,
    now,
    route,
)

TOKEN_LIFETIME = timedelta(hours=1)
# Where each service's endpoint sits under the fake's one address (as devstack lays them out).
CATALOG = (
    ("identity", "keystone", "/v3"),
    ("compute", "nova", "/compute/v2.1"),
    ("image", "glance", "/image"),
    ("network", "neutron", "/network"),
)


class FakeKeystone:
    def __init__(self, project: Project) -> None:
        self._project = project
        self._tokens: set[str] = set()

    def routes(self) -> list[Route]:
        return [
            route("GET", r"/?", self._versions, needs_token=False),
            route("GET", r"/v3/?", self._version, needs_token=False),
            route("POST", r"/v3/auth/tokens", self._issue_token, needs_token=False),
        ]

    def valid(self, token: str | None) -> bool:
        with self._project.lock:
            return token is not None and token in self._tokens

    def _document(self) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self._project.base}/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }

    def _versions(self, call: Call, match: re.Match[str]) -> Reply:
        return Reply(300, {"versions": {"values": [self._document()]}})

    def _version(self, call: Call, match: re.Match[str]) -> Reply:
        return Reply(200, {"version": self._document()})

    def _issue_token(self, call: Call, match: re.Match[str]) -> Reply:
        identity = dig(call.body, "auth", "identity")
        user = dig(identity, "password", "user")
        scope = dig(call.body, "auth", "scope", "project")
        if not isinstance(user, dict) or dig(identity, "methods") != ["password"]:
            message = "Expecting to find identity in auth. The server could not comply."
            return keystone_error(400, "Bad Request", message)
        p = self._project
        good = (
            user.get("name") == p.username
            and user.get("password") == p.password
            and dig(user, "domain", "name") == "Default"
            and dig(scope, "name") == p.name
            and dig(scope, "domain", "name") == "Default"
        )
        if not good:
            return keystone_error(401, "Unauthorized", NOT_AUTHENTICATED)
        token = secrets.token_hex(32)
        with p.lock:
            self._tokens.add(token)
        return Reply(201, {"token": self._token_body()}, {"X-Subject-Token": token})

    def _token_body(self) -> dict[str, Any]:
        p = self._project
        domain = {"id": "default", "name": "Default"}
        return {
            "methods": ["password"],
            "user": {"id": p.user_id, "name": p.username, "domain": domain},
            "audit_ids": [secrets.token_urlsafe(16)],
            "issued_at": now(),
            "expires_at": now(TOKEN_LIFETIME),
            "project": {"id": p.id, "name": p.name, "domain": domain},
            "is_domain": False,
            "roles": [{"id": uuid.uuid4().hex, "name": "member"}],
            "catalog": [self._service(*entry) for entry in CATALOG],
        }

    def _service(self, kind: str, name: str, path: str) -> dict[str, Any]:
        endpoint = {
            "id": uuid.uuid4().hex,
            "interface": "public",
            "region": REGION,
            "region_id": REGION,
            "url": f"{self._project.base}{path}",
        }
        return {"id": uuid.uuid4().hex, "type": kind, "name": name, "endpoints": [endpoint]}


__all__ = ["CATALOG", "FakeKeystone"]
