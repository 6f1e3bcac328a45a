"""The controller's configuration: one YAML file, validated before anything runs.

A typo in a config that spends money (it boots servers) must stop the daemon
at start, not be ignored: every model forbids unknown keys and takes types
strictly (a quoted "10" is not a number; an int is accepted as a float);
tide.configbase holds those rules, each site kind its own model
(tide.sites.kinds). Every error names the key's dotted path and its line in the file, so the
operator can fix them all in one pass.

Secrets stay out of this file: it names token *files*, and the daemon checks
their modes with check_secret_file() when it starts.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from tide.configbase import FilePath, Model, SiteName, host_port, site_model
from tide.htcondor import tokens
from tide.sites.kinds import (
    DockerSiteConfig,
    OpenStackSiteConfig,
    SiteConfig,
    SlurmBackfillSiteConfig,
)
from tide.sites.slurm.config import SshLoginConfig
from tide.yaml_lines import YamlDocument, YamlSyntaxError, parse_yaml


class ConfigError(Exception):
    """The configuration is unusable; `errors` holds one `file:line: path: message` each."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


class PoolConfig(Model):
    collector: Annotated[str, AfterValidator(host_port)] = Field(
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


class LoopConfig(Model):
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


class MetricsConfig(Model):
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


def _some_sites(sites: dict[str, SiteConfig]) -> dict[str, SiteConfig]:
    if not sites:
        raise PydanticCustomError("no_sites", "configure at least one site to scale into", {})
    return sites


class Config(Model):
    pool: PoolConfig = Field(description="The HTCondor pool Tide serves. Required.")
    loop: LoopConfig = Field(default_factory=LoopConfig, description="The decision loop.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus endpoint."
    )
    sites: Annotated[dict[SiteName, SiteConfig], AfterValidator(_some_sites)] = Field(
        description="Sites to scale into, by name. Required: at least one."
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


def check_secrets(config: Config, now: float | None = None) -> None:
    """Every token file `config` names exists and is private
    (check_secret_file), and every site's shared worker token is one that
    can be handed to workers: not expired, of this pool, no wider than a
    worker's (tokens.worker_token_problem)."""
    check_secret_file(config.pool.token_file)
    for name, site in config.sites.items():
        for path in site.secret_files():
            check_secret_file(path)
        if site.worker_token_file is not None:
            try:
                text = site.worker_token_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError([f"{site.worker_token_file}: cannot read: {exc}"]) from None
            problem = tokens.worker_token_problem(
                text, now=time.time() if now is None else now, domain=config.pool.domain
            )
            if problem is not None:
                raise ConfigError(
                    [f"{site.worker_token_file}: sites.{name}.worker_token_file: {problem}"]
                )


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
