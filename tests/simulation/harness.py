"""THE seam between the simulator and the controller: everything that knows
how to build, drive and crash the controller lives here.

- `start(world, path)` opens the state file (CrashingStore: a crash may
  happen immediately before or after any store write) and builds the real
  tide.loop.Controller over the world's seams, as tide.daemon does: the
  configured sites, plus every site the state file still holds resources
  at that the configuration no longer names, retired (tide.assemble's
  with_retiring_sites rebuilds those from their last configuration; here
  the world still has them), and a LaneRunner for tide.runner.
- `Handle.cycle()` is one pass of tide.loop.run_forever's loop, without
  threads or sleeping: the driver waits on the virtual clock.
- `Handle.crash()` is the process killed: the store closed, nothing else.
- The operators' requests go through the store's request API, as tide.cli.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from tests.simulation.clock import VirtualClock
from tests.simulation.faults import Faults, SimCrash
from tests.simulation.pool import read_demand
from tests.simulation.world import World
from tide.htcondor.demand import SCHEDD_MEMORY_S, missing_schedds
from tide.htcondor.startds import SiteStartds
from tide.loop import Controller
from tide.model import Demand, State
from tide.runner import Pending
from tide.sites.base import SiteAdapter
from tide.store import Store, StoreError

log = logging.getLogger("tests.simulation")

COLLECTOR_WARMUP_S = 330.0
"""tide.config's default: the simulated schedds re-advertise within 300 s of a
collector restart (SCHEDD_RELEARN_S), the startds within 30 s."""

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class CrashingStore(Store):
    """The real store; every write (all go through _write) may be preceded or
    followed by a crash, or refused with sqlite3.OperationalError."""

    faults: Faults | None = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        faults = self.faults
        if faults is not None:
            faults.store_write("before")
        with super()._write() as conn:
            yield conn
        if faults is not None:
            faults.store_write("after")


class _SimPending(Pending[T_co]):
    def __init__(self, clock: VirtualClock, end: float, value: object, error: Exception | None):
        self._clock, self.end, self._value, self._error = clock, end, value, error

    def done(self) -> bool:
        return self.end <= self._clock.now

    def result(self) -> T_co:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class LaneRunner:
    """tide.runner.Runner on the virtual clock: a call runs at once in its
    lane (its simulated durations move only that lane), and is done when the
    lane's time has passed; `wait` ends the step at the latest lane end or
    at the budget, whichever is first. A lane still running after that is
    busy until its end: its site is left alone, as the real loop does with a
    thread still in a call."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self._busy_until: dict[str, float] = {}
        self._step: list[float] = []

    def submit(self, lane: str, call: Callable[[], T]) -> Pending[T]:
        value: object = None
        error: Exception | None = None
        try:
            with self.clock.lane(lane):
                try:
                    value = call()
                except SimCrash:
                    raise
                except Exception as exc:  # returned through result(), as a Future does
                    error = exc
                end = self.clock()
        except SimCrash:
            self._step.clear()
            raise
        self._busy_until[lane] = max(self._busy_until.get(lane, end), end)
        self._step.append(end)
        return _SimPending(self.clock, end, value, error)

    def busy(self, lane: str) -> bool:
        return self._busy_until.get(lane, self.clock.now) > self.clock.now

    def wait(self, pending: Iterable[Pending[object]], budget_s: float) -> None:
        ends = [p.end for p in pending if isinstance(p, _SimPending)]
        now = self.clock.now
        self._step.clear()
        self.clock.end_step(min(max(ends, default=now), now + budget_s))


class Handle:
    """A running controller process."""

    def __init__(self, world: World, store: CrashingStore, controller: Controller) -> None:
        self.world = world
        self.store: CrashingStore | None = store
        self.controller: Controller | None = controller
        self.cycles = 0

    def cycle(self) -> bool:
        """One pass of tide.loop.run_forever's loop; whether it completed (a
        failed one, e.g. on a store error, may not have recorded what it saw)."""
        c = self.controller
        assert c is not None
        self.cycles += 1
        try:
            c.cycle()
        except Exception:
            log.exception("cycle failed")
            return False
        return True

    def crash(self) -> None:
        """The process is killed: the store's file is closed (as the kernel
        would), nothing else runs."""
        if self.store is not None:
            self.store.faults = None
            self.store.close()
        self.store = None
        self.controller = None


def _demand(world: World, store: Store) -> Callable[[], tuple[tuple[Demand, ...], bool]]:
    """tide.assemble.demand_source's completeness over the simulated pool."""

    def read() -> tuple[tuple[Demand, ...], bool]:
        demand, answered, listed = read_demand(world)
        now = world.clock()
        missing = missing_schedds(listed, store.schedds_seen(), now)
        store.saw_schedds(answered, now, now - 2 * SCHEDD_MEMORY_S)
        return demand, answered == set(listed) and not missing

    return read


def start(world: World, store_path: Path) -> Handle:
    """Start the daemon over the world's configured sites (may raise SimCrash)."""
    store = CrashingStore.open(store_path, exclusive=True)
    assert isinstance(store, CrashingStore)
    store.faults = world.faults
    try:
        retiring = {r.site for r in store.alive()} - set(world.configured)
        names = sorted(set(world.configured) | retiring)
        adapters: dict[str, SiteAdapter] = {name: world.sites[name] for name in names}
        controller = Controller(
            sites={
                name: (replace(world.site_model(name), retiring=name in retiring), adapter)
                for name, adapter in adapters.items()
            },
            store=store,
            demand=_demand(world, store),
            slots=world.slots,
            startds=SiteStartds(adapters),
            metrics=None,
            clock=world.clock,
            new_id=world.new_id,
            runner=LaneRunner(world.clock),
            collector_warmup_s=COLLECTOR_WARMUP_S,
        )
    except BaseException:
        store.faults = None
        store.close()
        raise
    return Handle(world, store, controller)


# --- operators (as tide.cli does) ------------------------------------------------


def operator_drain(store: Store, rid: str, now: float) -> bool:
    """`tide drain <rid>`: False if refused (not running or draining)."""
    r = store.get(rid)
    if r is None or r.state not in (State.RUNNING, State.DRAINING):
        return False
    try:
        store.request_drain(rid, now)
    except StoreError:
        return False
    return True


def operator_evacuate(store: Store, site: str, nodes: int | None) -> None:
    """`tide evacuate --site <site> [--nodes N]` (without waiting)."""
    store.request_evacuate(site, nodes)


def operator_resume(store: Store, site: str) -> None:
    """`tide resume --site <site>`."""
    store.request_resume(site)


class Operator:
    """The operators' commands over their own connection to the state file."""

    def __init__(self, world: World, store: Store) -> None:
        self.world = world
        self.store = store

    def drain(self, rid: str) -> bool:
        return operator_drain(self.store, rid, self.world.clock())

    def evacuate(self, site: str, nodes: int | None) -> None:
        operator_evacuate(self.store, site, nodes)

    def resume(self, site: str) -> None:
        operator_resume(self.store, site)
