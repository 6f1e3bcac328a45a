"""Telling a worker's startd to drain, through the worker's own site.

A drained startd starts no new job; a running one keeps its retirement time
(the image's MAXJOBRETIREMENTTIME) to finish, then the startd reports every
slot "Drained". The controller gives a resource back only after that, so a
job matched in the moment before the drain is never killed.

Why through the site and not over the pool: execute nodes hold no signing
key, so they cannot verify an IDTOKEN and grant no remote caller more than
READ (images/condor/README.md). Every site has a privileged channel to its
workers instead, and the startd is told by `condor_drain` run beside it,
authenticated locally (FS): the Docker site runs it inside the container,
the OpenStack site's servers read the request from their metadata service
(the image's tide-drain-watch), a Slurm pilot is signalled through Slurm.
Withdrawing a worker's ads is never a drain: it removes claimed slots from
the collector while their jobs run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tide.sites.base import Capability, SiteAdapter, SiteError


class Startds(Protocol):
    """Drains and undrains the startd of one resource."""

    def drain(self, site: str, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        """Start a graceful drain; returns a request id. `only_idle`: the
        startd itself refuses if it holds a claim (DrainRefused, or later in
        its ads for a site that tells it asynchronously), so a job matched
        the moment before is never evicted. Raises if the drain could not be
        started."""
        ...

    def cancel_drain(self, site: str, resource_id: str, request_id: str) -> None:
        """Cancel a drain started by `drain`. Raises if it could not be cancelled."""
        ...


class SiteStartds:
    """Startds drained by their sites' adapters, where the kind can (Capability.DRAIN)."""

    def __init__(self, adapters: Mapping[str, SiteAdapter]) -> None:
        self._sites = {
            name: adapter
            for name, adapter in adapters.items()
            if Capability.DRAIN in adapter.capabilities
        }

    def drain(self, site: str, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        return self._site(site).drain_startd(resource_id, reason, only_idle=only_idle)

    def cancel_drain(self, site: str, resource_id: str, request_id: str) -> None:
        self._site(site).cancel_startd_drain(resource_id, request_id)

    def _site(self, site: str) -> SiteAdapter:
        adapter = self._sites.get(site)
        if adapter is None:
            raise SiteError(f"site {site}: its adapter cannot drain a startd", retryable=False)
        return adapter
