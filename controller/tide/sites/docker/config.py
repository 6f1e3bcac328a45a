"""The configuration of a Docker site: workers are containers on an engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Self

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from tide.configbase import SiteSettings, ipv4_or_empty
from tide.sites.base import Capability, PoolEndpoint

if TYPE_CHECKING:
    from tide.sites.base import SiteAdapter


class DockerSiteConfig(SiteSettings):
    kind: Literal["docker"] = Field(description="Workers are containers on a Docker engine.")
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.DRAIN})
    engine_url: str = Field(
        default="unix:///var/run/docker.sock", description="Docker engine to use; the local socket."
    )
    image: str = Field(
        default="tide/condor:0.1.0",
        description="Worker image; the one this release of Tide builds.",
    )
    network_mode: str = Field(
        default="host",
        description="Container network. Host networking lets the startd be reached at the "
        "host's address without port mapping.",
    )
    port_range_start: int = Field(
        default=29700,
        ge=1,
        le=65535,
        description="First HTCondor shared port for the site's workers: on host networking "
        "each worker needs its own. 29700 is clear of HTCondor's 9618 and the lab's 296xx.",
    )
    port_range_end: int = Field(
        default=29799,
        ge=1,
        le=65535,
        description="Last shared port, inclusive. 100 ports are more workers than one engine "
        "holds; a full range refuses the next worker until one is destroyed.",
    )
    bind_address: Annotated[str, AfterValidator(ipv4_or_empty)] = Field(
        default="",
        description="IPv4 address the workers' daemons bind to (TIDE_BIND_ADDRESS). Empty, the "
        "default, means every interface, so the startd is reachable from the pool.",
    )

    @model_validator(mode="after")
    def _port_range_order(self) -> Self:
        if self.port_range_end < self.port_range_start:
            raise PydanticCustomError(
                "port_range_order",
                "port_range_end ({end}) must be >= port_range_start ({start})",
                {"end": self.port_range_end, "start": self.port_range_start},
            )
        return self

    def build(self, name: str, *, owner: str, pool: PoolEndpoint) -> SiteAdapter:
        from tide.sites.docker import adapter  # noqa: PLC0415  (loads the docker SDK)

        client = adapter.engine_client(name, self.engine_url, timeout_s=adapter.API_TIMEOUT_S)
        key = self.signing_key(name)
        return adapter.DockerSite(
            name,
            self,
            client=client,
            owner=owner,
            pool=pool,
            worker_token_file=self.worker_token_file,
            signing_key=key,
            token_lifetime_s=self.worker_token_lifetime_s,
        )
