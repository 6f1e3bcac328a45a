"""The controller's configuration: one YAML file, validated before anything runs.

A typo in a config that spends money (it boots servers) must stop the daemon
at start, not be ignored: every model forbids unknown keys and takes types
strictly (a quoted "10" is not a number; an int is accepted as a float).
Every error names the key's dotted path and its line in the file, so the
operator can fix them all in one pass.

Secrets stay out of this file: it names token *files*, and the daemon checks
their modes with check_secret_file() when it starts.
"""

from __future__ import annotations

import ipaddress
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from tide.model import Shape, Site, SiteLimits
from tide.yaml_lines import YamlDocument, YamlSyntaxError, parse_yaml

SITE_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
# Resource ids are tide-<site>-<8 hex> and become host names: 14 + 40 characters stay
# well inside a DNS label's 63, leaving room should the id gain a part.
SITE_NAME_MAX = 40
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):([0-9]{1,5})$")


class ConfigError(Exception):
    """The configuration is unusable; `errors` holds one `file:line: path: message` each."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


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


def _host_port(value: str) -> str:
    match = _HOST_PORT.match(value)
    if not match or not 0 < int(match.group(2)) <= 65535:
        raise PydanticCustomError(
            "host_port",
            "must be host:port, e.g. cm.example.org:9618",
            {},
        )
    return value


def _ipv4_or_empty(value: str) -> str:
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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PoolConfig(_Model):
    collector: Annotated[str, AfterValidator(_host_port)] = Field(
        description="The pool's collector as host:port. Required: no default pool exists."
    )
    domain: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")] = Field(
        description="The pool's domain (UID_DOMAIN and TRUST_DOMAIN, as the central manager's "
        "central_manager_pool_domain). Required: the workers Tide starts join with it."
    )
    token_file: FilePath = Field(
        description="IDTOKEN the controller presents to query the pool. Required, and a path "
        "only: the token itself never sits in this file."
    )
    collector_warmup_s: float = Field(
        default=330.0,
        ge=0,
        description="How long a (re)started collector is not trusted to know every schedd "
        "and slot: schedds advertise every SCHEDD_INTERVAL (300 s by default), Tide's workers "
        "every 30 s. Meanwhile absence proves nothing: no scale-down, no boot timed out. "
        "Default 330 s; a pool with a shorter SCHEDD_INTERVAL may set less. 0 disables.",
    )
    schedds: list[str] = Field(
        default_factory=list,
        description="Schedds whose idle jobs count as demand. Empty (the default) means every "
        "schedd the collector knows, which is right for a pool Tide serves whole.",
    )


class LoopConfig(_Model):
    owner: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]*$", max_length=63)] | None = Field(
        default=None,
        description="This controller's name in the ownership tags of everything it starts. "
        "None (the default) takes the host name. Two controllers sharing a cloud project or a "
        "Docker engine must have different owners: each destroys what it owns and nothing else.",
    )
    interval_s: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between decisions. 2 s reacts to a burst within a few seconds "
        "while keeping collector queries cheap.",
    )
    state_file: FilePath = Field(
        default=Path("/var/lib/tide/state.sqlite3"),
        description="SQLite file recording every resource Tide owns, so a restart neither "
        "forgets nor duplicates one. The default follows the FHS place for daemon state.",
    )


class MetricsConfig(_Model):
    port: int = Field(
        default=9800,
        ge=0,
        le=65535,
        description="Prometheus metrics port; 0 disables the endpoint. 9800 is clear of "
        "HTCondor's 9618 and the usual exporter ports.",
    )
    address: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the metrics endpoint binds. Loopback by default: exposing it "
        "is a deliberate choice.",
    )


class LimitsConfig(_Model):
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


class ShapeConfig(_Model):
    cpus: int = Field(gt=0, description="CPUs of the one partitionable slot. Required.")
    memory_mb: int = Field(gt=0, description="Memory of the slot in MiB. Required.")
    disk_mb: int = Field(gt=0, description="Disk of the slot in MiB. Required.")


class _SiteBase(_Model):
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
    worker_token_file: FilePath = Field(
        description="IDTOKEN handed to the site's workers to join the pool. Required; a path only."
    )


class DockerSiteConfig(_SiteBase):
    kind: Literal["docker"] = Field(description="Workers are containers on a Docker engine.")
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
    bind_address: Annotated[str, AfterValidator(_ipv4_or_empty)] = Field(
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


class OpenStackSiteConfig(_SiteBase):
    kind: Literal["openstack"] = Field(description="Workers are servers in an OpenStack cloud.")
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


_SLURM_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_SLURM_WALLTIME = r"^([0-9]+-)?[0-9]{1,3}:[0-9]{2}:[0-9]{2}$"


class SshLoginConfig(_Model):
    host: str = Field(min_length=1, description="The cluster's login node. Required.")
    port: int = Field(default=22, ge=1, le=65535, description="Its SSH port; the standard one.")
    user: str = Field(
        min_length=1,
        description="The account Tide submits pilots as. Required: it is the site's to give.",
    )
    key_file: FilePath = Field(
        description="Private key of that account (mode 0600). Required; a path only: the "
        "key never sits in this file. Only key authentication is used."
    )
    known_hosts_file: FilePath = Field(
        description="known_hosts with the login node's host key. Required: host keys are "
        "always verified, never accepted on first use."
    )
    max_sessions: int = Field(
        default=8,
        ge=1,
        description="Commands in flight at once over the one connection. 8 stays well under "
        "OpenSSH's default MaxSessions (10).",
    )


class SlurmBackfillSiteConfig(_SiteBase):
    kind: Literal["slurm_backfill"] = Field(
        description="Workers are pilot jobs in a Slurm cluster's backfill partition, given "
        "back to the cluster's owners when they wait."
    )
    login: SshLoginConfig | None = Field(
        default=None,
        description="Reach Slurm over SSH through this login node. None (the default) runs "
        "the Slurm commands locally: the controller runs on a host of the cluster.",
    )
    partition: Annotated[str, Field(pattern=_SLURM_NAME)] = Field(
        description="The partition pilots are submitted to: the cluster's backfill (low "
        "priority, preemptable) partition. Required: clusters name it differently."
    )
    qos: Annotated[str, Field(pattern=_SLURM_NAME)] | None = Field(
        default=None, description="QOS of the pilots; none by default (the partition's)."
    )
    account: Annotated[str, Field(pattern=_SLURM_NAME)] | None = Field(
        default=None, description="Account charged for the pilots; none: the user's default."
    )
    walltime: Annotated[str, Field(pattern=_SLURM_WALLTIME)] = Field(
        default="12:00:00",
        description="Time limit of one pilot ([D-]HH:MM:SS). 12 h fits common backfill "
        "limits; a pilot ends sooner when idle (idle_exit_s) or when owners need the node.",
    )
    whole_node: bool = Field(
        default=True,
        description="Pilots take whole nodes (--exclusive): one node is one resource, and "
        "evacuating one frees one node for the owners.",
    )
    owner_partitions: list[Annotated[str, Field(pattern=_SLURM_NAME)]] = Field(
        default_factory=list,
        description="Partitions where the owners' jobs wait. Tide boots nothing while "
        "owner jobs wait there and evacuates pilots for them. Empty with no owner_qos and "
        "no owner_accounts: every partition but the pilots' own.",
    )
    owner_qos: list[Annotated[str, Field(pattern=_SLURM_NAME)]] = Field(
        default_factory=list, description="Only owner jobs of these QOS count; empty: any."
    )
    owner_accounts: list[Annotated[str, Field(pattern=_SLURM_NAME)]] = Field(
        default_factory=list, description="Only owner jobs of these accounts count; empty: any."
    )
    owner_grace_s: float = Field(
        default=0.0,
        ge=0,
        description="An owner job waits this long before Tide evacuates for it (it blocks "
        "new pilots at once). 0, the default, evacuates at once. On a cluster that preempts "
        "the backfill partition for its owners itself, set it a little above its scheduler's "
        "reaction (bf_interval, 30 s by default), so that the two never give back a node each.",
    )
    idle_exit_s: int = Field(
        default=600,
        ge=0,
        description="A pilot whose startd had no claim this long exits by itself "
        "(STARTD_NOCLAIM_SHUTDOWN), even with the controller gone. 0: never. 10 minutes.",
    )
    max_job_retirement_s: int = Field(
        default=3600,
        ge=0,
        description="When a pilot is drained gracefully (not evacuated), its running jobs "
        "get this long to finish. Owners waiting never wait for it: evacuation vacates.",
    )
    work_dir: str = Field(
        default=".tide",
        min_length=1,
        description="Folder for the pilots' logs and the staged worker token (0700), "
        "relative to the submitting user's home on the cluster's shared file system.",
    )
    condor_config: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")], str] = Field(
        default_factory=dict,
        description="Extra HTCondor settings of the pilots' startds (e.g. "
        "NETWORK_INTERFACE). None by default.",
    )
    command_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a Slurm command may take before it counts as failed.",
    )
    cvmfsexec_dir: str | None = Field(
        default=None,
        min_length=1,
        description="CVMFS for clusters without it: the folder, on the nodes (a shared file "
        "system), of the cvmfsexec distribution the cvmfs role installs in its cvmfsexec mode "
        "(cvmfs_cvmfsexec_dir). Every grid job then runs inside `cvmfsexec REPO... --`. None: "
        "the nodes have CVMFS, or the jobs need none.",
    )
    cvmfs_repositories: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")]] = Field(
        default_factory=list,
        description="The repositories cvmfsexec mounts for each job, advertised as "
        "TideCvmfsRepositories. Required with cvmfsexec_dir.",
    )

    pilot_runtime: Literal["native", "docker"] = Field(
        default="native",
        description="How a pilot starts its startd. native (the default): the nodes' own "
        "HTCondor install, as the submitting user. docker: the tide/condor image "
        "(pilot_image) on the node's Docker engine, for sites that let their users run "
        "containers (the docker CLI and its socket on the nodes); the node needs no HTCondor.",
    )
    pilot_image: str = Field(
        default="tide/condor:0.1.0",
        min_length=1,
        description="The worker image docker pilots run; it must already be on the nodes' "
        "engine (docker load, as air-gapped sites do). The one this release of Tide builds.",
    )

    @model_validator(mode="after")
    def _docker_pilot_without_cvmfsexec(self) -> Self:
        if self.pilot_runtime == "docker" and self.cvmfsexec_dir is not None:
            raise PydanticCustomError(
                "cvmfsexec_dir",
                "cvmfsexec_dir works with pilot_runtime: native only: docker pilots take CVMFS "
                "from the node (/cvmfs); unset cvmfsexec_dir or use pilot_runtime: native",
                {},
            )
        return self

    @model_validator(mode="after")
    def _cvmfs_pair(self) -> Self:
        if self.cvmfsexec_dir is not None and not self.cvmfs_repositories:
            raise PydanticCustomError(
                "cvmfs_repositories",
                "cvmfsexec_dir is set but cvmfs_repositories is empty: name the repositories "
                "cvmfsexec mounts for each job",
                {},
            )
        return self


SiteConfig = Annotated[
    DockerSiteConfig | OpenStackSiteConfig | SlurmBackfillSiteConfig, Field(discriminator="kind")
]


def _some_sites(sites: dict[str, SiteConfig]) -> dict[str, SiteConfig]:
    if not sites:
        raise PydanticCustomError("no_sites", "configure at least one site to scale into", {})
    return sites


class Config(_Model):
    pool: PoolConfig = Field(description="The HTCondor pool Tide serves. Required.")
    loop: LoopConfig = Field(default_factory=LoopConfig, description="The decision loop.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus endpoint."
    )
    sites: Annotated[dict[SiteName, SiteConfig], AfterValidator(_some_sites)] = Field(
        description="Sites to scale into, by name. Required: at least one."
    )


def site_model(name: str, site: SiteConfig) -> Site:
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
            backoff_base_s=lim.backoff_base_s,
            backoff_max_s=lim.backoff_max_s,
        ),
    )


def check_secret_file(path: Path) -> None:
    """Refuse a token file that is missing or readable beyond its owner (mode 0600 at most)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError([f"{path}: secret file unreadable: {exc.strerror}"]) from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError([f"{path}: secret file is not a regular file"])
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise ConfigError(
            [f"{path}: mode {mode:04o} lets group or others read a secret; chmod 600"]
        )


def load_config(path: Path) -> Config:
    """Read and validate the file; raise ConfigError listing every problem with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from exc
    try:
        doc = parse_yaml(text)
    except YamlSyntaxError as exc:
        where = f"{path}" if exc.line is None else f"{path}:{exc.line}"
        raise ConfigError([f"{where}: {exc}"]) from exc
    errors = [(dup.line, f"{dup.path}: duplicate key") for dup in doc.duplicate_keys()]
    try:
        config = Config.model_validate(doc.data)
    except ValidationError as exc:
        errors += [_describe(doc, err) for err in exc.errors()]
    if errors:  # in file order, so they can be fixed top to bottom
        raise ConfigError([f"{path}:{line}: {text}" for line, text in sorted(errors)])
    return config


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "union_tag_not_found": "required key is missing (docker, openstack or slurm_backfill)",
    "model_type": "must be a mapping of keys",
}
_NO_INPUT = {"extra_forbidden", "missing", "union_tag_not_found", "union_tag_invalid"}


def _describe(doc: YamlDocument, err: ErrorDetails) -> tuple[int, str]:
    """Where (line) and what (dotted path and message) one pydantic error is."""
    loc = [part for part in err["loc"] if part != "[key]"]
    # A discriminated union puts the tag in the loc: sites.<name>.<kind>.limits.
    if len(loc) >= 3 and loc[0] == "sites" and isinstance(doc.data, dict):
        sites = doc.data.get("sites")
        site = sites.get(loc[1]) if isinstance(sites, dict) else None
        if isinstance(site, dict) and site.get("kind") == loc[2]:
            del loc[2]
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("kind")
    message = _MESSAGES.get(err["type"], err["msg"])
    value = err.get("input")
    if err["type"] not in _NO_INPUT and isinstance(value, str | int | float | bool | None):
        message += f" (got {value!r})"
    where = ".".join(str(part) for part in loc) or "(top level)"
    return doc.line_of(loc), f"{where}: {message}"


def check_secrets(config: Config) -> None:
    """Every token file `config` names exists and is private (check_secret_file)."""
    check_secret_file(config.pool.token_file)
    for site in config.sites.values():
        check_secret_file(site.worker_token_file)
        if isinstance(site, SlurmBackfillSiteConfig) and site.login is not None:
            check_secret_file(site.login.key_file)


__all__ = [
    "Config",
    "ConfigError",
    "DockerSiteConfig",
    "OpenStackSiteConfig",
    "SiteConfig",
    "SlurmBackfillSiteConfig",
    "SshLoginConfig",
    "check_secret_file",
    "check_secrets",
    "load_config",
    "site_model",
]
