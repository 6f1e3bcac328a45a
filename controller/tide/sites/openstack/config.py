"""The configuration of an OpenStack site: workers are servers in a cloud."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from tide.configbase import FilePath, SiteSettings
from tide.sites.base import Capability, PoolEndpoint, SiteError

if TYPE_CHECKING:
    from tide.sites.base import SiteAdapter


class OpenStackSiteConfig(SiteSettings):
    kind: Literal["openstack"] = Field(description="Workers are servers in an OpenStack cloud.")
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.DRAIN})
    cloud: str = Field(min_length=1, description="Entry in clouds.yaml. Required.")
    image: str = Field(min_length=1, description="Server image. Required: clouds differ.")
    flavor: str = Field(min_length=1, description="Server flavor. Required: clouds differ.")
    network: str = Field(min_length=1, description="Network to attach. Required: clouds differ.")
    key_name: str | None = Field(
        default=None, description="SSH keypair; none by default, workers need no login."
    )
    security_groups: list[str] = Field(
        default_factory=list, description="Security groups; none means the project's default."
    )
    user_data_template: FilePath | None = Field(
        default=None, description="cloud-init template; None uses the one built into Tide."
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Extra server metadata; Tide adds its ownership tag."
    )
    api_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Seconds one request to the cloud may take before it counts as failed "
        "(retried next cycle); a healthy cloud answers in a second or two.",
    )

    def build(self, name: str, *, owner: str, pool: PoolEndpoint) -> SiteAdapter:
        import openstack  # noqa: PLC0415  (openstacksdk is loaded only for a cloud site)
        import openstack.exceptions  # noqa: PLC0415

        from tide.sites.openstack import adapter  # noqa: PLC0415

        try:
            # No call yet: openstacksdk authenticates at the first one.
            conn = openstack.connect(cloud=self.cloud, api_timeout=self.api_timeout_s)
        except openstack.exceptions.SDKException as exc:  # e.g. no such entry in clouds.yaml
            raise SiteError(f"site {name}: sites.{name}.cloud: {exc}", retryable=False) from None
        key = self.signing_key(name)
        token = None
        if key is None:
            try:
                token = self.shared_token_file().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SiteError(
                    f"site {name}: the worker token file {self.worker_token_file}: {exc}",
                    retryable=False,
                ) from None
        return adapter.OpenStackSite(
            name,
            self,
            conn=conn,
            owner=owner,
            pool=pool,
            worker_token=token,
            signing_key=key,
            token_lifetime_s=self.worker_token_lifetime_s,
            boot_timeout_s=self.limits.boot_timeout_s,
        )
