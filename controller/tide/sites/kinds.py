"""The site kinds Tide knows, registered here once.

A kind is one package, tide.sites.<kind>: `config` (its configuration model,
a SiteSettings with a `kind` tag, the capabilities its adapter has, the
secret files it names, and `build`, which imports the adapter and its
client library only when a site of the kind is configured) and `adapter`
(the SiteAdapter). Adding a kind is a package and one entry below.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tide.sites.docker.config import DockerSiteConfig
from tide.sites.openstack.config import OpenStackSiteConfig
from tide.sites.slurm.config import SlurmBackfillSiteConfig

SiteConfig = Annotated[
    DockerSiteConfig | OpenStackSiteConfig | SlurmBackfillSiteConfig, Field(discriminator="kind")
]
"""One configured site, of whichever kind its `kind` key names."""

__all__ = ["DockerSiteConfig", "OpenStackSiteConfig", "SiteConfig", "SlurmBackfillSiteConfig"]
