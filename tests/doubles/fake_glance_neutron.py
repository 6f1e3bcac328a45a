"""FAKE Glance v2 and Neutron v2.0 (tests only; see fake_openstack): version
discovery and the lookups openstacksdk's find_image and find_network make
(GET by id, which 404s for a name, then a listing filtered by name), plus
the security group listing."""

from __future__ import annotations

import re
from typing import Any

from tests.doubles.fake_openstack_base import Call, Named, Project, Reply, Route, filtered, route


class FakeGlance:
    def __init__(self, project: Project) -> None:
        self._project = project

    def routes(self) -> list[Route]:
        return [
            route("GET", r"/image/?", self._versions, needs_token=False),
            route("GET", r"/image/v2/images", self._list),
            route("GET", r"/image/v2/images/(?P<id>[^/]+)", self._get),
        ]

    def _versions(self, call: Call, match: re.Match[str]) -> Reply:
        link = [{"rel": "self", "href": f"{self._project.base}/image/v2/"}]
        return Reply(300, {"versions": [{"id": "v2.16", "status": "CURRENT", "links": link}]})

    def _view(self, image: Named) -> dict[str, Any]:
        return {
            "id": image.id,
            "name": image.name,
            "status": "active",
            "visibility": "public",
            "protected": False,
            "os_hidden": False,
            "container_format": "bare",
            "disk_format": "qcow2",
            "min_disk": 0,
            "min_ram": 0,
            "size": 2147483648,
            "owner": self._project.id,
            "tags": [],
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "self": f"/v2/images/{image.id}",
            "file": f"/v2/images/{image.id}/file",
            "schema": "/v2/schemas/image",
        }

    def _list(self, call: Call, match: re.Match[str]) -> Reply:
        with self._project.lock:
            images = [self._view(i) for i in filtered(self._project.images, call.query)]
        return Reply(200, {"images": images, "first": "/v2/images", "schema": "/v2/schemas/images"})

    def _get(self, call: Call, match: re.Match[str]) -> Reply:
        with self._project.lock:
            for image in self._project.images:
                if image.id == match["id"]:
                    return Reply(200, self._view(image))
        return Reply(404, f"404 Not Found\n\nNo image found with ID {match['id']}\n\n")


class FakeNeutron:
    def __init__(self, project: Project) -> None:
        self._project = project

    def routes(self) -> list[Route]:
        return [
            route("GET", r"/network/?", self._versions, needs_token=False),
            route("GET", r"/network/v2.0/networks", self._list),
            route("GET", r"/network/v2.0/networks/(?P<id>[^/]+)", self._get),
            route("GET", r"/network/v2.0/security-groups", self._security_groups),
        ]

    def _versions(self, call: Call, match: re.Match[str]) -> Reply:
        link = [{"rel": "self", "href": f"{self._project.base}/network/v2.0/"}]
        return Reply(200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": link}]})

    def _view(self, network: Named) -> dict[str, Any]:
        return {
            "id": network.id,
            "name": network.name,
            "status": "ACTIVE",
            "admin_state_up": True,
            "shared": False,
            "subnets": [],
            "project_id": self._project.id,
            "tenant_id": self._project.id,
            "mtu": 1500,
            "router:external": False,
            "port_security_enabled": True,
            "availability_zones": ["nova"],
            "tags": [],
            "description": "",
            "revision_number": 1,
        }

    def _list(self, call: Call, match: re.Match[str]) -> Reply:
        with self._project.lock:
            networks = [self._view(n) for n in filtered(self._project.networks, call.query)]
        return Reply(200, {"networks": networks})

    def _get(self, call: Call, match: re.Match[str]) -> Reply:
        with self._project.lock:
            for network in self._project.networks:
                if network.id == match["id"]:
                    return Reply(200, {"network": self._view(network)})
        message = f"Network {match['id']} could not be found."
        return Reply(404, {"NeutronError": {"type": "NetworkNotFound", "message": message}})

    def _security_groups(self, call: Call, match: re.Match[str]) -> Reply:
        with self._project.lock:
            groups = [
                {"id": g.id, "name": g.name, "description": "", "project_id": self._project.id}
                for g in filtered(self._project.security_groups, call.query)
            ]
        return Reply(200, {"security_groups": groups})


__all__ = ["FakeGlance", "FakeNeutron"]
