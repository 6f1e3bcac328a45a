"""The configuration of a Slurm backfill site: workers are pilot jobs in a
cluster's backfill partition, given back when the cluster's owners wait.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Self

from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from tide.budget import BudgetRule
from tide.configbase import FilePath, Model, SiteSettings, site_model
from tide.sites.base import Capability, PoolEndpoint

if TYPE_CHECKING:
    from tide.sites.base import SiteAdapter

_SLURM_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_SLURM_WALLTIME = r"^([0-9]+-)?[0-9]{1,3}:[0-9]{2}:[0-9]{2}$"


class SshLoginConfig(Model):
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


def _moment(value: object) -> object:
    """A date or a time, also written as ISO 8601 text (YAML reads an unquoted
    date as a date already)."""
    if not isinstance(value, str):
        return value
    try:
        if "T" in value or " " in value.strip():
            return datetime.datetime.fromisoformat(value)
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError(
            "moment",
            "{value!r} is neither a date (YYYY-MM-DD) nor a time (YYYY-MM-DDTHH:MM:SS, UTC "
            "unless it names its offset)",
            {"value": value},
        ) from None


class BudgetConfig(Model):
    core_hours: float = Field(
        gt=0,
        allow_inf_nan=False,
        description="The allocation, in core-hours (cores x hours, as the centre grants it). "
        "Required.",
    )
    since: Annotated[datetime.date | datetime.datetime, BeforeValidator(_moment)] = Field(
        description="When it counts from: a date (midnight UTC) or a time. Required: the "
        "start of the allocation period.",
    )
    warn_at: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [0.5, 0.8, 0.9, 1.0],
        description="Fractions used at which the controller logs a warning (each once).",
    )

    def since_s(self) -> float:
        """`since` as seconds since the epoch (a naive time is UTC)."""
        when = self.since
        if not isinstance(when, datetime.datetime):
            when = datetime.datetime.combine(when, datetime.time())
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return when.timestamp()


class SlurmBackfillSiteConfig(SiteSettings):
    kind: Literal["slurm_backfill"] = Field(
        description="Workers are pilot jobs in a Slurm cluster's backfill partition, given "
        "back to the cluster's owners when they wait."
    )
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.DRAIN, Capability.OWNERS})
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
    drain_before_end_s: int = Field(
        default=900,
        ge=0,
        description="A pilot takes no new job this long before its walltime ends, nor one "
        "whose declared runtime (AllowedJobDuration) would outlast that; it drains then, "
        "and the controller counts it as capacity no more and boots its replacement while "
        "demand lasts. Less than the walltime, and over 2 minutes: Slurm's walltime warning "
        "(SIGTERM 60 s before the end, which vacates) may come a minute early. 15 minutes.",
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
        description="Folder for the pilots' logs and their staged tokens (0700), "
        "relative to the submitting user's home on the cluster's shared file system.",
    )
    condor_config: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")], str] = Field(
        default_factory=dict,
        description="Extra HTCondor settings of the pilots' startds (e.g. "
        "NETWORK_INTERFACE). None by default.",
    )
    budget: BudgetConfig | None = Field(
        default=None,
        description="The project's allocation of core hours: the controller accounts what its "
        "pilots use, never starts one whose walltime (x its cores) could overspend what is "
        "left, and reports what is left (tide status, tide_budget_* metrics). None: no budget.",
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

    @model_validator(mode="after")
    def _drain_before_end_within_walltime(self) -> Self:
        from tide.sites.slurm.adapter import walltime_s  # noqa: PLC0415

        if self.drain_before_end_s >= walltime_s(self.walltime):
            raise PydanticCustomError(
                "drain_before_end_s",
                "drain_before_end_s ({drain} s) must be less than the walltime ({walltime}): "
                "a pilot would take no job at all; lower drain_before_end_s or raise walltime",
                {"drain": self.drain_before_end_s, "walltime": self.walltime},
            )
        return self

    def owner_grace(self) -> float:
        return self.owner_grace_s

    def end_margin(self) -> float:
        return float(self.drain_before_end_s)

    def budget_rule(self) -> BudgetRule | None:
        from tide.sites.slurm.adapter import walltime_s  # noqa: PLC0415

        if self.budget is None:
            return None
        return BudgetRule(
            core_hours=self.budget.core_hours,
            since=self.budget.since_s(),
            warn_at=tuple(sorted(self.budget.warn_at)),
            pilot_cpus=self.shape.cpus,
            pilot_walltime_s=float(walltime_s(self.walltime)),
        )

    def max_job_duration(self) -> int | None:
        from tide.sites.slurm.adapter import walltime_s  # noqa: PLC0415

        return walltime_s(self.walltime) - self.drain_before_end_s

    def secret_files(self) -> list[Path]:
        login = [] if self.login is None else [self.login.key_file]
        return [*super().secret_files(), *login]

    def build(self, name: str, *, owner: str, pool: PoolEndpoint) -> SiteAdapter:
        from tide.executors import Executor, LocalExecutor, SshExecutor, SshTarget  # noqa: PLC0415
        from tide.sites.slurm.adapter import SlurmBackfillSite  # noqa: PLC0415

        executor: Executor
        if self.login is None:
            executor = LocalExecutor()
        else:
            login = self.login
            executor = SshExecutor(
                SshTarget(
                    host=login.host,
                    port=login.port,
                    user=login.user,
                    key_file=login.key_file,
                    known_hosts_file=login.known_hosts_file,
                    max_sessions=login.max_sessions,
                )
            )
        return SlurmBackfillSite(
            name,
            self,
            executor=executor,
            owner=owner,
            pool=pool,
            worker_token_file=self.worker_token_file,
            signing_key=self.signing_key(name),
            boot_timeout_s=self.limits.boot_timeout_s,
            shape=site_model(name, self).shape,
        )
