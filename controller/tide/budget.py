"""A site's allocation of core hours (an HPC project's budget): what its
pilots have used since the date it counts from, what those still alive may
yet use, and how many more pilots it can pay for. Pure functions: no I/O, no
clock.

The accounting is the controller's own (its store's `usage` records: one
per resource, from when it was first seen holding its machine to when it
was first seen gone), since Slurm's accounting (sacct) needs a slurmdbd
that not every cluster lets a project read. Both ends are seen within a
cycle of the truth, and a pilot is charged no longer than its walltime.

The promise: no pilot is started whose walltime could overspend the
budget. So every resource still alive reserves the rest of its walltime
(a queued pilot all of it, from when it starts), and a new pilot may start
only if what is left after those reservations pays for its whole walltime
(`cpus x walltime`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

HOUR_S = 3600.0


@dataclass(frozen=True)
class BudgetRule:
    """A site's budget as configured, with what one pilot of it costs."""

    core_hours: float  # the allocation
    since: float  # when it counts from (seconds on the loop's clock)
    warn_at: tuple[float, ...]  # fractions used at which a warning is logged
    pilot_cpus: int  # the cores one pilot holds (the site's shape)
    pilot_walltime_s: float  # how long Slurm lets one run

    @property
    def total_core_s(self) -> float:
        return self.core_hours * HOUR_S

    @property
    def pilot_core_s(self) -> float:
        """The most one pilot can cost: its cores for its whole walltime."""
        return self.pilot_cpus * self.pilot_walltime_s


@dataclass(frozen=True)
class Run:
    """One resource's use of its machine, as recorded."""

    resource_id: str
    cpus: int
    started_at: float | None  # first seen holding its machine; None: never (queued)
    ended_at: float | None  # first seen gone; None: not yet


@dataclass(frozen=True)
class BudgetState:
    """What a budget looks like now."""

    rule: BudgetRule
    used_core_s: float  # charged since rule.since, alive pilots up to now
    reserved_core_s: float  # the rest of the walltime of the pilots still alive
    cores_in_use: int  # cores held by pilots running now: the rate it is spent at

    @property
    def left_core_s(self) -> float:
        """What is left of the allocation (negative: overspent)."""
        return self.rule.total_core_s - self.used_core_s

    @property
    def free_core_s(self) -> float:
        """What is left once the pilots alive have used their whole walltime."""
        return self.left_core_s - self.reserved_core_s

    @property
    def pilots_affordable(self) -> int:
        """How many more pilots may start: each could run its whole walltime."""
        cost = self.rule.pilot_core_s
        if cost <= 0 or self.free_core_s < cost:
            return 0
        return int(self.free_core_s // cost)

    @property
    def fraction_used(self) -> float:
        total = self.rule.total_core_s
        return 1.0 if total <= 0 else self.used_core_s / total

    def runs_out_at(self, now: float) -> float | None:
        """When the allocation is spent at the current rate (None: nothing runs)."""
        if self.cores_in_use <= 0:
            return None
        return now + max(0.0, self.left_core_s) / self.cores_in_use

    def why_no_pilot(self) -> str:
        """Why no further pilot may start (for the plan's held-back list)."""
        return (
            f"budget: {hours(self.free_core_s)} core-hours free of {hours(self.left_core_s)} "
            f"left (the pilots alive may use the rest), one more pilot could use "
            f"{hours(self.rule.pilot_core_s)} ({self.rule.pilot_cpus} cores x "
            f"{duration(self.rule.pilot_walltime_s)} walltime)"
        )


def account(rule: BudgetRule, runs: Iterable[Run], alive: Iterable[str], now: float) -> BudgetState:
    """The budget now, from the site's runs and the resources still alive
    (the ids of every resource not gone, started or not)."""
    by_id = {run.resource_id: run for run in runs}
    used = 0.0
    cores = 0
    for run in by_id.values():
        if run.started_at is None:
            continue
        stop = now if run.ended_at is None else min(run.ended_at, now)
        stop = min(stop, run.started_at + rule.pilot_walltime_s)
        used += run.cpus * max(0.0, stop - max(run.started_at, rule.since))
    reserved = 0.0
    for rid in alive:
        mine = by_id.get(rid)
        if mine is None or mine.started_at is None:
            reserved += rule.pilot_core_s
            continue
        rest = mine.started_at + rule.pilot_walltime_s - now
        if rest > 0:
            reserved += mine.cpus * rest
            cores += mine.cpus
    return BudgetState(rule, used, reserved, cores)


def crossed(state: BudgetState, warned: float) -> float | None:
    """The highest warning fraction the budget has reached above `warned`
    (the highest already warned of), or None."""
    reached = [f for f in state.rule.warn_at if warned < f <= state.fraction_used]
    return max(reached) if reached else None


def hours(core_s: float) -> str:
    """Core-seconds as core-hours: two decimals below 100, whole ones above."""
    value = core_s / HOUR_S
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def duration(seconds: float) -> str:
    """A walltime in words: minutes below two hours, hours above."""
    return f"{seconds / 60:g} min" if seconds < 2 * HOUR_S else f"{seconds / HOUR_S:g} h"


def moment(at: float) -> str:
    """A time, to the minute, in UTC."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def runs_out(at: float | None, now: float) -> str:
    """When a budget runs out (BudgetState.runs_out_at), in words."""
    if at is None:
        return "not at this rate: no pilot runs"
    return f"{moment(at)} (in {(at - now) / HOUR_S:.1f} h)"
