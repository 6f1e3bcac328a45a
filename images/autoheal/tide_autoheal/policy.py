"""What autoheal does, decided without I/O and without a clock.

The edge (engine.py) feeds observations in (a container's health, that it
started, who depends on a recovered one) with the time they were made, and
carries out the actions that come back. Time is a plain number of seconds on any
monotonic scale, so tests pass it in and never sleep.

Per container the policy remembers:
- whether it is *down* (unhealthy, or (re)started and not yet healthy): its
  next healthy observation is then a recovery, and a recovery restarts its
  dependents (a new or restarted CVMFS container means a fresh mount);
- its restarts: the times within the window (the give-up cap counts these)
  and the attempts since it was last healthy for a while (the backoff
  exponent);
- a deferred restart, when the backoff said "not yet".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from tide_autoheal.actions import Action, Note, Recheck, Restart, RestartDependents

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
Cause = Literal["unhealthy", "dependency"]


@dataclass(frozen=True)
class Settings:
    backoff_base: float = 10.0
    """Wait before the second restart; short, so a one-off glitch heals fast."""
    backoff_factor: float = 2.0
    """Each further restart waits this much longer than the one before."""
    backoff_max: float = 600.0
    """No wait exceeds ten minutes: a container that may heal is retried."""
    max_restarts: int = 10
    """Restarts within the window before autoheal gives up on a container."""
    window: float = 3600.0
    """The window, in seconds, the give-up cap counts restarts in."""
    healthy_reset: float = 300.0
    """Healthy this long and the attempts and restart counts start afresh."""

    def __post_init__(self) -> None:
        if self.backoff_base <= 0 or self.backoff_max < self.backoff_base:
            raise ValueError("backoff: need 0 < base <= max")
        if self.backoff_factor < 1:
            raise ValueError("backoff factor must be at least 1")
        if self.max_restarts < 1 or self.window <= 0 or self.healthy_reset < 0:
            raise ValueError("need max_restarts >= 1, window > 0, healthy_reset >= 0")


@dataclass(frozen=True)
class Record:
    health: str = "unknown"
    down: str = ""  # why it is down ("" when it is not): its recovery restarts dependents
    healthy_since: float | None = None
    restarts: tuple[float, ...] = ()  # our restarts within the window
    attempts: int = 0  # restarts since it was last healthy for healthy_reset seconds
    last_restart: float | None = None
    gave_up: bool = False
    due: float | None = None  # a restart deferred by the backoff ...
    due_cause: Cause = "unhealthy"  # ... and why it was wanted
    due_why: str = ""


def backoff_delay(settings: Settings, attempts: int) -> float:
    """The wait after the last restart before the next one: none for the first."""
    if attempts == 0:
        return 0.0
    delay = settings.backoff_base * settings.backoff_factor ** (attempts - 1)
    return min(delay, settings.backoff_max)


def parse_depends_on(value: str) -> tuple[str, ...]:
    """`a, b` -> ("a", "b"): container names, commas between, spaces ignored."""
    return tuple(name.strip().lstrip("/") for name in value.split(",") if name.strip())


class Policy:
    """The state machine: one Record per container name, changed only here."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.records: dict[str, Record] = {}

    def health(self, name: str, status: str, autoheal: bool, now: float) -> list[Action]:
        """The container's health is `status` (healthy, unhealthy, starting, ...)."""
        rec, actions = self._settled(name, now)
        if status == HEALTHY:
            return actions + self._healthy(name, rec, now)
        rec = replace(rec, health=status, healthy_since=None)
        if status == UNHEALTHY:
            rec = replace(rec, down=rec.down or "unhealthy")
            self.records[name] = rec
            if autoheal:
                actions += self._request(name, "unhealthy", "unhealthy", now)
            return actions
        self.records[name] = rec
        return actions

    def started(self, name: str, now: float) -> list[Action]:
        """The container (re)started: by anyone, for any reason, new or not."""
        rec, actions = self._settled(name, now)
        self.records[name] = replace(rec, down=rec.down or "started", healthy_since=None)
        return actions

    def forget(self, name: str) -> None:
        """The container was removed; a new one of that name starts afresh."""
        self.records.pop(name, None)

    def dependency_recovered(
        self, dependency: str, candidates: Iterable[tuple[str, Sequence[str]]], now: float
    ) -> list[Action]:
        """Restart those `candidates` (name, depends-on names) that depend on `dependency`."""
        actions: list[Action] = []
        for name, depends_on in candidates:
            if dependency in depends_on and name != dependency:
                why = f"dependency {dependency} recovered"
                actions += self._settled(name, now)[1]
                actions += self._request(name, "dependency", why, now)
        return actions

    def tick(self, now: float) -> list[Action]:
        """Time has passed: settle counts, and fire deferred restarts that are due."""
        actions: list[Action] = []
        for name in list(self.records):
            rec, notes = self._settled(name, now)
            actions += notes
            if rec.due is None or now < rec.due:
                continue
            self.records[name] = replace(rec, due=None)
            if rec.due_cause == "unhealthy":
                actions.append(Recheck(name))  # only if it is still unhealthy
            else:
                actions += self._request(name, rec.due_cause, rec.due_why, now)
        return actions

    def next_due(self) -> float | None:
        """When tick() next has a deferred restart to fire, if ever."""
        dues = [rec.due for rec in self.records.values() if rec.due is not None]
        return min(dues, default=None)

    def _healthy(self, name: str, rec: Record, now: float) -> list[Action]:
        actions: list[Action] = []
        if rec.gave_up:
            # A fresh cap of restarts; the backoff keeps growing until it stays healthy.
            rec = replace(rec, gave_up=False, restarts=())
            actions.append(Note("resumed", name, "healthy again after autoheal gave up"))
        if rec.down:
            actions.append(Note("recovered", name, f"healthy after it was {rec.down}"))
            actions.append(RestartDependents(name))
        if rec.due is not None and rec.due_cause == "unhealthy":
            actions.append(Note("cancelled", name, "healthy again before its deferred restart"))
            rec = replace(rec, due=None)
        since = now if rec.healthy_since is None else rec.healthy_since
        self.records[name] = replace(rec, health=HEALTHY, down="", healthy_since=since)
        return actions

    def _request(self, name: str, cause: Cause, why: str, now: float) -> list[Action]:
        """Restart `name` now, or defer it by the backoff, or give up."""
        s = self.settings
        rec = self.records.get(name, Record())
        if rec.gave_up:
            # It said so when it gave up: sweeps must not say it again.
            return [] if cause == "unhealthy" else [Note("skipped", name, f"{why}, but gave up")]
        rec = replace(rec, restarts=tuple(t for t in rec.restarts if now - t < s.window))
        if len(rec.restarts) >= s.max_restarts:
            self.records[name] = replace(rec, gave_up=True, due=None)
            why = (
                f"{why}; {len(rec.restarts)} restarts within {s.window:g}s: "
                "no more restarts until it is healthy again"
            )
            return [Note("gave-up", name, why)]
        last = now if rec.last_restart is None else rec.last_restart
        earliest = last + backoff_delay(s, rec.attempts)
        if now < earliest:
            return self._defer(name, rec, cause, why, due=earliest, now=now)
        self.records[name] = replace(
            rec,
            restarts=(*rec.restarts, now),
            attempts=rec.attempts + 1,
            last_restart=now,
            down=rec.down or "restarted",
            healthy_since=None,
            health="starting",
            due=None,
        )
        return [Restart(name, why, rec.attempts + 1)]

    def _defer(
        self, name: str, rec: Record, cause: Cause, why: str, *, due: float, now: float
    ) -> list[Action]:
        if rec.due is not None:
            self.records[name] = rec
            if cause in (rec.due_cause, "unhealthy"):
                return []  # already deferred, and said so
            # Its own recovery must not cancel a restart its dependency asked for.
            self.records[name] = replace(rec, due_cause=cause, due_why=why)
            return [Note("deferred", name, f"{why}; joins the deferred restart")]
        self.records[name] = replace(rec, due=due, due_cause=cause, due_why=why)
        why = f"{why}; backoff after {rec.attempts} restarts: restart in {due - now:.0f}s"
        return [Note("deferred", name, why)]

    def _settled(self, name: str, now: float) -> tuple[Record, list[Action]]:
        """The record, with its counts reset if it has stayed healthy long enough."""
        rec = self.records.get(name, Record())
        since = rec.healthy_since
        if since is None or now - since < self.settings.healthy_reset:
            return rec, []
        if not (rec.attempts or rec.restarts):
            return rec, []
        rec = replace(rec, attempts=0, restarts=(), last_restart=None)
        self.records[name] = rec
        why = f"healthy for {now - since:.0f}s: restart counts reset"
        return rec, [Note("reset", name, why)]
