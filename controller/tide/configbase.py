"""The building blocks of the configuration's models, and what every site
kind's model shares (SiteSettings).

Every model forbids unknown keys, takes types strictly (a quoted "10" is not
a number; an int is accepted as a float) and is frozen: a typo in a config
that spends money must stop the daemon at start, not be ignored. Each site
kind's own model lives in its package (tide.sites.<kind>.config) and is
registered once, in tide.sites.kinds.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, model_validator
from pydantic_core import PydanticCustomError

from tide.budget import BudgetRule
from tide.htcondor import tokens
from tide.model import Shape, Site, SiteLimits
from tide.sites.base import Capability, PoolEndpoint, SiteError

if TYPE_CHECKING:
    from tide.sites.base import SiteAdapter

SITE_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
# Resource ids are tide-<site>-<8 hex> and become host names: 14 + 40 characters stay
# well inside a DNS label's 63, leaving room should the id gain a part.
SITE_NAME_MAX = 40
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):([0-9]{1,5})$")


def _site_name(name: str) -> str:
    if not SITE_NAME.match(name):
        raise PydanticCustomError(
            "site_name",
            "site name must match ^[a-z][a-z0-9-]*$: it becomes part of "
            "resource ids, container and server names",
            {},
        )
    if len(name) > SITE_NAME_MAX:
        raise PydanticCustomError(
            "site_name_length",
            "site name must be at most {max} characters: resource ids "
            "tide-<site>-<8 hex> must fit a 63-character host name label",
            {"max": SITE_NAME_MAX},
        )
    return name


def host_port(value: str) -> str:
    match = _HOST_PORT.match(value)
    if not match or not 0 < int(match.group(2)) <= 65535:
        raise PydanticCustomError(
            "host_port",
            "must be host:port, e.g. cm.example.org:9618",
            {},
        )
    return value


def ipv4_or_empty(value: str) -> str:
    if value:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise PydanticCustomError(
                "ipv4_address",
                "must be an IPv4 address, e.g. 192.0.2.10, or empty for every interface",
                {},
            ) from None
    return value


def _not_empty_path(path: Path) -> Path:
    if path == Path():
        raise PydanticCustomError("empty_path", "must be a file path, not empty", {})
    return path


SiteName = Annotated[str, AfterValidator(_site_name)]
# Paths come from YAML as strings; strict mode alone would only take Path objects.
FilePath = Annotated[Path, Field(strict=False), AfterValidator(_not_empty_path)]


def _scalar(value: object) -> str | bool | int | float:
    if not isinstance(value, str | bool | int | float):
        raise PydanticCustomError("scalar", "must be a string, number or boolean", {})
    return value


# One check, one message: a plain union would report a failure per member type.
AttributeValue = Annotated[str | bool | int | float, PlainValidator(_scalar)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LimitsConfig(Model):
    max_resources: int = Field(
        default=10,
        ge=0,
        description="Resources alive at once. 10 keeps a forgotten demo cheap; 0 pauses.",
    )
    max_booting: int = Field(
        default=5,
        ge=1,
        description="Boots in flight at once. 5 ramps up fast without flooding a site's API.",
    )
    boot_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="A boot with no slot advertised by then is destroyed. 10 minutes covers "
        "a cold VM image pull and condor start.",
    )
    idle_timeout_s: float = Field(
        default=300.0,
        ge=0,
        description="A running resource idle this long is drained. 5 minutes bridges the gap "
        "between a user's job batches without paying for long idle time.",
    )
    lost_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="A running resource whose slot has been missing from the collector this "
        "long is destroyed; until then it counts as busy. A restarted collector has lost every "
        "ad until the startds' next update (UPDATE_INTERVAL, 30 s in tide/condor), and that "
        "must never make the controller give back a worker running jobs. 15 minutes is "
        "HTCondor's CLASSAD_LIFETIME.",
    )
    backoff_base_s: float = Field(
        default=30.0,
        ge=0,
        description="After a failed boot, wait this long before the next, doubling per "
        "failure. 30 s rides out a transient API error.",
    )
    backoff_max_s: float = Field(
        default=900.0,
        ge=0,
        description="Cap of the doubling backoff. 15 minutes retries a broken site often "
        "enough to notice its recovery.",
    )

    owner_quiet_s: float = Field(
        default=60.0,
        ge=0,
        description="Backfill sites: boot again only once the owners have had no job "
        "waiting for this long. A minute keeps a burst of owner jobs from making Tide "
        "submit and evacuate pilots in turn.",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> Self:
        if self.backoff_max_s < self.backoff_base_s:
            raise PydanticCustomError(
                "backoff_order",
                "backoff_max_s ({max}) must be >= backoff_base_s ({base})",
                {"max": self.backoff_max_s, "base": self.backoff_base_s},
            )
        return self


class ShapeConfig(Model):
    cpus: int = Field(gt=0, description="CPUs of the one partitionable slot. Required.")
    memory_mb: int = Field(gt=0, description="Memory of the slot in MiB. Required.")
    disk_mb: int = Field(gt=0, description="Disk of the slot in MiB. Required.")


class SiteSettings(Model):
    """What every site kind's model has: the shape, attributes, limits and worker token."""

    shape: ShapeConfig = Field(
        description="The machine one resource gives the pool; the policy matches jobs against "
        "it before booting anything. Required: no shape fits every site."
    )
    attributes: dict[str, AttributeValue] = Field(
        default_factory=dict,
        description="Attributes the site's workers advertise, also put into its machine "
        "prototype so jobs that require them match. None by default.",
    )
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig,
        description="How far and how fast to scale this site.",
    )
    worker_token_file: FilePath | None = Field(
        default=None,
        description="IDTOKEN handed to every worker of the site to join the pool (one token "
        "shared by them all); a path only. Required unless worker_signing_key_file is set.",
    )
    worker_signing_key_file: FilePath | None = Field(
        default=None,
        description="The pool's workers' signing key (the central_manager role fetches it as "
        "workers_signing_key, 0600): each worker gets a token of its own, minted by the "
        "controller, naming it alone and expiring (worker_token_lifetime_s). Instead of "
        "worker_token_file.",
    )
    worker_token_lifetime_s: int = Field(
        default=86400,
        ge=600,
        le=34560000,
        description="How long a worker's own token is valid; the controller gives a live worker "
        "a new one when half of it has passed. A day by default: a token stolen from a "
        "destroyed worker stops working within it. A Slurm pilot's token is not renewed: "
        "it lasts the site's boot timeout plus the walltime plus 10 minutes.",
    )

    @model_validator(mode="after")
    def _worker_credential(self) -> Self:
        token, key = self.worker_token_file, self.worker_signing_key_file
        if token is None and key is None:
            raise PydanticCustomError(
                "worker_credential",
                "worker_token_file is required: the IDTOKEN the site's workers join the pool "
                "with (or worker_signing_key_file, to give each worker a token of its own)",
                {},
            )
        if token is not None and key is not None:
            raise PydanticCustomError(
                "worker_credential",
                "set worker_token_file or worker_signing_key_file, not both",
                {},
            )
        return self

    def shared_token_file(self) -> Path:
        """The shared worker token (a site without a signing key always has one)."""
        if self.worker_token_file is None:  # the validator above makes this unreachable
            raise ValueError("no worker_token_file")
        return self.worker_token_file

    # What every kind declares (the one place each fact about a kind lives):
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    """What its adapter can do beyond create, list and destroy (tide.sites.base)."""

    def owner_grace(self) -> float:
        """Seconds an owner job waits before it is evacuated for (backfill kinds)."""
        return 0.0

    def max_job_duration(self) -> int | None:
        """The longest runtime a job may declare (AllowedJobDuration) and
        still start on a worker of this site; None: no limit."""
        return None

    def end_margin(self) -> float:
        """Seconds before a resource's advertised end (TideEndTime) from which it
        takes no job and is no capacity (kinds whose resources end: Slurm)."""
        return 0.0

    def budget_rule(self) -> BudgetRule | None:
        """The site's allocation of core hours, with what one resource costs
        (kinds whose resources have a walltime: Slurm); None: no budget."""
        return None

    def secret_files(self) -> list[Path]:
        """Every secret file this site's configuration names (each must be 0600)."""
        return [f for f in (self.worker_token_file, self.worker_signing_key_file) if f is not None]

    def signing_key(self, name: str) -> tokens.SigningKey | None:
        """The workers' signing key `worker_signing_key_file` names, read and
        checked (0600, a key); None for a site of shared tokens. Raises
        SiteError (not retryable) naming the site and the problem."""
        if self.worker_signing_key_file is None:
            return None
        try:
            return tokens.SigningKey.read(
                self.worker_signing_key_file, key_id=tokens.WORKERS_KEY_ID
            )
        except tokens.TokenError as exc:
            raise SiteError(
                f"site {name}: worker_signing_key_file: {exc}", retryable=False
            ) from None

    def build(self, name: str, *, owner: str, pool: PoolEndpoint) -> SiteAdapter:
        """The site's adapter, its client library imported only now. Contacts
        no site. Raises SiteError for a site that cannot be built."""
        raise NotImplementedError  # every kind's model overrides it


def site_model(name: str, site: SiteSettings) -> Site:
    """The policy's view of a configured site."""
    s, lim = site.shape, site.limits
    return Site(
        name=name,
        shape=Shape(cpus=s.cpus, memory_mb=s.memory_mb, disk_mb=s.disk_mb),
        limits=SiteLimits(
            max_resources=lim.max_resources,
            max_booting=lim.max_booting,
            boot_timeout_s=lim.boot_timeout_s,
            idle_timeout_s=lim.idle_timeout_s,
            lost_timeout_s=lim.lost_timeout_s,
            owner_quiet_s=lim.owner_quiet_s,
            owner_grace_s=site.owner_grace(),
            end_margin_s=site.end_margin(),
            backoff_base_s=lim.backoff_base_s,
            backoff_max_s=lim.backoff_max_s,
        ),
        budget=site.budget_rule(),
    )
