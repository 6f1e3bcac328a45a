"""What the policy asks the edge to do. Each is also one line in the log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Restart:
    """`docker restart` it now; `attempt` counts since its counts were last reset."""

    container: str
    why: str
    attempt: int


@dataclass(frozen=True)
class Recheck:
    """Look at the container's health now and report it (a deferred restart is due)."""

    container: str


@dataclass(frozen=True)
class RestartDependents:
    """Find the containers that depend on this one and report them."""

    dependency: str


@dataclass(frozen=True)
class Note:
    """Nothing to do but log: a decision worth knowing about."""

    what: str
    container: str
    why: str


Action = Restart | Recheck | RestartDependents | Note
