"""Telling a worker's startd to drain, through the worker's own site.

A drained startd starts no new job; a running one keeps its retirement time
(the image's MAXJOBRETIREMENTTIME) to finish, then the startd reports every
slot "Drained". The controller gives a resource back only after that, so a
job matched in the moment before the drain is never killed.

Why through the site and not over the pool: execute nodes hold no signing
key, so they cannot verify an IDTOKEN and grant no remote caller more than
READ (images/condor/README.md). A site with a privileged channel to its
workers (the Docker site: `condor_drain` run as root inside the container,
authenticated by FS) drains them; a site without one (OpenStack) cannot,
and its draining resources are given back once seen with no claimed slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable


class Startds(Protocol):
    """Drains and undrains the startd of one resource."""

    def drain(
        self, site: str, resource_id: str, reason: str, *, only_idle: bool = False
    ) -> str | None:
        """Start a graceful drain; a request id, or None if the site cannot
        drain its workers' startds. `only_idle`: the startd itself refuses if
        it holds a claim (DrainRefused), so a job matched the moment before is
        never evicted. Raises if the drain could not be started."""
        ...

    def cancel_drain(self, site: str, resource_id: str, request_id: str) -> None:
        """Cancel a drain started by `drain`. Raises if it could not be cancelled."""
        ...


@runtime_checkable
class DrainingSite(Protocol):
    """A site adapter that can drain its workers' startds itself."""

    def drain_startd(self, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        """Start a graceful drain; returns a request id. Raises SiteError
        (DrainRefused: `only_idle` and the startd holds a claim)."""
        ...

    def cancel_startd_drain(self, resource_id: str, request_id: str) -> None:
        """Cancel the drain. Raises SiteError."""
        ...


class SiteStartds:
    """Startds drained by their sites' adapters, where the adapter can."""

    def __init__(self, adapters: Mapping[str, object]) -> None:
        self._sites = {
            name: adapter for name, adapter in adapters.items() if isinstance(adapter, DrainingSite)
        }

    def drain(
        self, site: str, resource_id: str, reason: str, *, only_idle: bool = False
    ) -> str | None:
        adapter = self._sites.get(site)
        if adapter is None:
            return None
        return adapter.drain_startd(resource_id, reason, only_idle=only_idle)

    def cancel_drain(self, site: str, resource_id: str, request_id: str) -> None:
        adapter = self._sites.get(site)
        if adapter is not None:
            adapter.cancel_startd_drain(resource_id, request_id)
