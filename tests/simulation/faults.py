"""Faults the simulator injects: crashes, failed and hung calls, races.

A crash is `SimCrash`, a BaseException, so the controller's `except
Exception` (its per-site isolation) cannot swallow it: it unwinds the whole
process, as SIGKILL would. It is raised immediately before or after a store
write (tide.store.Store._write, wrapped by harness.CrashingStore) or an
external call ("after": the call's effect happened, then the crash).

Every decision is drawn from the world's seeded random.Random, in program
order, so a schedule replays exactly from its seed. Hand-built schedules
add `scripted` hooks that decide a point's fault first.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import tide.sites.base
from tide.sites.base import SiteError

CALL_DEADLINE_S = 30.0
"""How long a hung call blocks before its deadline raises DeadlineExceeded."""

Outcome = Literal["ok", "fail", "hang", "late"]
When = Literal["before", "after", "outcome"]
Hook = Callable[[str, When], str | None]
"""A scripted fault: (point, when) -> "crash", or an Outcome for when="outcome",
or None to let the random schedule decide. A hook may also act (a race)."""


class SimCrash(BaseException):
    """The controller's process was killed here (not an Exception on purpose)."""


class DeadlineExceeded(tide.sites.base.DeadlineExceeded):
    """A call hung past its deadline (its effect may still happen: late): the
    adapters' own exception, as the real ones raise it."""


class SimFailure(SiteError):
    """A simulated call that failed (retryable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


@dataclass(frozen=True)
class FaultRates:
    """Per-schedule probabilities, drawn from its seed."""

    crash: float = 0.0  # at each store write and external call, before and after
    max_crashes: int = 0  # random crashes per schedule at most
    fail: float = 0.0  # an external call fails
    hang: float = 0.0  # an external call hangs past its deadline
    late: float = 0.5  # a hung call's effect still happens, later
    store_error: float = 0.0  # a store write raises sqlite3.OperationalError
    race: float = 0.0  # an operator or the world acts inside an external call


class Faults:
    """Decides, at each point, whether a fault happens there."""

    def __init__(self, rates: FaultRates, rng: random.Random, log: Callable[[str], None]) -> None:
        self.rates = rates
        self.rng = rng
        self.quiet = False  # settling: no random faults
        self.crashes_left = rates.max_crashes
        self.scripted: list[Hook] = []
        self._log = log

    def _script(self, point: str, when: When) -> str | None:
        for hook in self.scripted:
            action = hook(point, when)
            if action is not None:
                return action
        return None

    def crash_point(self, point: str, when: When) -> None:
        """Raise SimCrash here if the schedule says so."""
        action = self._script(point, when)
        may = action is None and not self.quiet and self.crashes_left > 0 and self.rates.crash
        if may and self.rng.random() < self.rates.crash:
            self.crashes_left -= 1
            action = "crash"
        if action == "crash":
            self._log(f"FAULT crash {when} {point}")
            raise SimCrash(f"{when} {point}")

    def store_write(self, when: When) -> None:
        self.crash_point("store.write", when)
        may = when == "before" and not self.quiet and self.rates.store_error
        if may and self.rng.random() < self.rates.store_error:
            self._log("FAULT store write: database is locked")
            raise sqlite3.OperationalError("database is locked")

    def outcome(self, point: str) -> Outcome:
        """How an external call ends."""
        action = self._script(point, "outcome")
        if action in ("ok", "fail", "hang", "late"):
            return action  # type: ignore[return-value]
        if self.quiet:
            return "ok"
        r = self.rates
        x = self.rng.random()
        if x < r.fail:
            return "fail"
        if x < r.fail + r.hang:
            return "late" if self.rng.random() < r.late else "hang"
        return "ok"

    def races(self) -> bool:
        return not self.quiet and self.rates.race > 0 and self.rng.random() < self.rates.race
