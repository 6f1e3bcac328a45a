"""What a site admin tells `tide onboard`, validated before anything is
changed: every problem named with its fix. Pure."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import time
from dataclasses import dataclass, field

from tide.htcondor.tokens import WORKER_PREFIX, worker_token_problem
from tide.onboard.recipe import role_defaults

_HOST_PORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*:([0-9]{1,5})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REPOSITORY = re.compile(r"^[a-z0-9][a-z0-9.-]*\.[a-z]+$")
_PROXY = re.compile(r"^((DIRECT|auto|https?://[^ ;|\"]+)[;|]?)+$")


class SettingsError(ValueError):
    """The settings cannot work; `problems` name each one with its fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    collector: str
    token: str = field(repr=False)  # a secret: never printed
    site_name: str
    node_name: str
    cpus: int | None = None
    memory_mb: int | None = None
    cvmfs_repositories: tuple[str, ...] = ()
    cvmfs_proxy: str = ""
    cvmfs_image: str = ""  # "": the cvmfs role's default
    squid: bool = False
    # None: the role's default (squid_port; condor_worker_port, the worker's
    # local shared port) - onboarding keeps no second copy of a default.
    squid_port: int | None = None
    port: int | None = None
    bind_address: str = ""  # "": every interface (condor_worker_bind_address)

    @property
    def pool_domain(self) -> str:
        """The pool's domain: the token's issuer (its TRUST_DOMAIN)."""
        return str(token_claims(self.token)["iss"])

    @property
    def collector_host(self) -> str:
        return self.collector.rsplit(":", 1)[0]

    @property
    def collector_port(self) -> int:
        return int(self.collector.rsplit(":", 1)[1])

    @property
    def proxy(self) -> str:
        """CVMFS's proxy: the one given, or the squid onboarding runs here."""
        if self.cvmfs_proxy or not self.squid:
            return self.cvmfs_proxy
        port = self.squid_port or role_defaults("squid")["squid_port"]
        return f"http://127.0.0.1:{port}"


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def token_claims(token: str) -> dict[str, object]:
    """An IDTOKEN's claims, read without verifying it (only the pool can)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValueError("not an IDTOKEN (three dot-separated parts)")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not an IDTOKEN (its claims do not decode)") from None
    if not isinstance(claims, dict):
        raise ValueError("not an IDTOKEN (its claims are not an object)")
    return claims


def problems(s: Settings) -> list[str]:
    """Every problem of `s`, each with its fix; empty when they can work."""
    return _pool_problems(s) + _host_problems(s)


def _pool_problems(s: Settings) -> list[str]:
    out: list[str] = []
    m = _HOST_PORT.match(s.collector)
    if not m or not 1 <= int(m.group(1)) <= 65535:
        out.append(
            f"--collector {s.collector!r} is not HOST:PORT: give the pool's collector, "
            "e.g. cm.example.org:9618"
        )
    try:
        claims = token_claims(s.token)
    except ValueError as exc:
        out.append(f"the token is {exc}: use the worker token the pool's operators issued")
    else:
        if not isinstance(claims.get("iss"), str) or not _NAME.match(str(claims.get("iss"))):
            out.append("the token names no pool (no 'iss' claim): ask for a worker token")
        # Expired, or allowing less or more than a worker needs.
        problem = worker_token_problem(s.token, now=time.time())
        if problem is not None:
            out.append(problem)
        # A token of one worker's own (the central manager issues one per
        # host) advertises that worker alone: this host must join as it.
        sub = claims.get("sub")
        if isinstance(sub, str) and sub.startswith(WORKER_PREFIX):
            own = sub.removeprefix(WORKER_PREFIX).rsplit("@", 1)[0]
            if own != s.node_name:
                out.append(
                    f"the token is worker {own!r}'s own, but this host would join as "
                    f"{s.node_name!r}: run with --name {own}, or ask for this host's token"
                )
    return out


def _host_problems(s: Settings) -> list[str]:
    out: list[str] = []
    if not _NAME.match(s.site_name):
        out.append(f"--site {s.site_name!r}: letters, digits, '.', '_' and '-' only")
    if not _NAME.match(s.node_name):
        out.append(f"--name {s.node_name!r}: letters, digits, '.', '_' and '-' only")
    if s.bind_address and not _ipv4(s.bind_address):
        out.append(f"--bind-address {s.bind_address!r}: give an IPv4 address of this host")
    for flag, port in (("--port", s.port), ("--squid-port", s.squid_port)):
        if port is not None and not 1 <= port <= 65535:
            out.append(f"{flag} {port}: give a free TCP port of this host (1-65535)")
    for flag, value in (("--cpus", s.cpus), ("--memory-mb", s.memory_mb)):
        if value is not None and value < 1:
            out.append(f"{flag} {value}: give a positive number, or omit it for the whole node")
    for repo in s.cvmfs_repositories:
        if not _REPOSITORY.match(repo):
            out.append(f"--cvmfs-repository {repo!r} is not a repository name, e.g. sft.cern.ch")
    if s.cvmfs_repositories and not s.proxy:
        out.append(
            "CVMFS needs a proxy: give --cvmfs-proxy http://SQUID:3128 (or DIRECT), "
            "or --squid to run one on this host"
        )
    if s.cvmfs_proxy and not _PROXY.match(s.cvmfs_proxy):
        out.append(
            f"--cvmfs-proxy {s.cvmfs_proxy!r} is not in CVMFS_HTTP_PROXY syntax, "
            "e.g. http://squid.example.org:3128 or DIRECT"
        )
    return out


def validated(s: Settings) -> Settings:
    found = problems(s)
    if found:
        raise SettingsError(found)
    return s


__all__ = ["Settings", "SettingsError", "problems", "token_claims", "validated"]
