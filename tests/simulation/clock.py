"""The simulator's virtual clock, and a runner that gives each site a lane.

Nothing in the simulator reads a real clock: time moves only when a
simulated call (or the driver, between daemon cycles) advances it, and the
world's events (jobs ending, startds re-advertising, ...) run when the
clock passes their time.

Lanes model concurrency without threads: inside `with clock.lane(name)`,
`advance` moves only that lane's cursor (from the time the lane was first
entered in this step) and `clock()` reads it; world events are not run
inside a lane. `join()` ends the step: the clock moves to the latest lane
end, running the world's events due up to then in time order. Lanes run one
after another (sorted), so a lane sees what earlier lanes did at once: an
approximation that keeps the simulator deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

from tests.simulation.faults import SimCrash

T = TypeVar("T")


class VirtualClock:
    """`now`, `advance(dt)`, and callable (returns the current lane's time, or now)."""

    def __init__(self, start: float) -> None:
        self.now = start
        self._lanes: dict[str, float] = {}
        self._lane: str | None = None
        # The world runs its events due up to a time through this hook.
        self.on_advance: Callable[[float], None] | None = None

    def __call__(self) -> float:
        return self.now if self._lane is None else self._lanes[self._lane]

    @property
    def in_lane(self) -> bool:
        return self._lane is not None

    def advance(self, dt: float) -> None:
        if self._lane is not None:
            self._lanes[self._lane] += dt
            return
        self.run_until(self.now + dt)

    def run_until(self, t: float) -> None:
        """Move now to t (never back), running the world's events due by then."""
        if self.on_advance is not None:
            self.on_advance(t)
        self.now = max(self.now, t)

    @contextmanager
    def lane(self, name: str) -> Iterator[None]:
        if self._lane is not None:
            raise RuntimeError(f"lane {name!r} entered inside lane {self._lane!r}")
        self._lanes.setdefault(name, self.now)
        self._lane = name
        try:
            yield
        finally:
            self._lane = None

    def end_step(self, until: float) -> None:
        """End of a concurrent step at `until`: lanes still running past it
        go on beyond this step (their sites are busy)."""
        self._lanes.clear()
        self._lane = None
        self.run_until(until)

    def join(self) -> None:
        """End of a concurrent step: now becomes the latest lane end."""
        end = max(self._lanes.values(), default=self.now)
        self._lanes.clear()
        self._lane = None
        self.run_until(end)


class SimRunner:
    """Runs each site's batch of calls in its own lane, in sorted order, and
    joins: the step takes as long as its slowest site. An exception from a
    batch is returned in its place; a SimCrash (the process killed) propagates."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock

    def run(self, batches: Mapping[str, Callable[[], T]]) -> dict[str, T | BaseException]:
        out: dict[str, T | BaseException] = {}
        try:
            for name in sorted(batches):
                with self.clock.lane(name):
                    try:
                        out[name] = batches[name]()
                    except SimCrash:
                        raise
                    except Exception as exc:
                        out[name] = exc
        finally:
            self.clock.join()
        return out
