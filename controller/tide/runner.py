"""Where the controller's external calls run: one lane per site (and one for
the pool), so no site, schedd or hung API can delay another site.

Each lane runs one call at a time, in order, on its own thread. The loop
submits a lane's work and waits for it only up to a budget; a lane still
running after that is *busy*, and the loop leaves its site alone (observes
nothing, acts on nothing there) until the call returns. Every call also has
a deadline of its own at the adapter (tide.sites.base.DeadlineExceeded),
so a busy lane comes back.

A Runner is injected, so the fault simulator runs the same loop with a
deterministic runner on a virtual clock (tests/simulation).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    """A call submitted to a lane."""

    def done(self) -> bool: ...

    def result(self) -> T_co:
        """Its value; raises what the call raised (call only when done)."""
        ...


class Runner(Protocol):
    def submit(self, lane: str, call: Callable[[], T]) -> Pending[T]:
        """Run `call` on `lane`'s thread, after what the lane runs already."""
        ...

    def busy(self, lane: str) -> bool:
        """Whether `lane` still runs something submitted earlier."""
        ...

    def wait(self, pending: Iterable[Pending[object]], budget_s: float) -> None:
        """Return when every one is done, or after `budget_s`."""
        ...


class ThreadRunner:
    """A Runner with one worker thread per lane (daemon threads: a call hung
    past every deadline never keeps the process from exiting)."""

    def __init__(self) -> None:
        self._lanes: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._last: dict[str, concurrent.futures.Future[object]] = {}
        self._lock = threading.Lock()

    def submit(self, lane: str, call: Callable[[], T]) -> Pending[T]:
        with self._lock:
            executor = self._lanes.get(lane)
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"tide-{lane}"
                )
                self._lanes[lane] = executor
            future = executor.submit(call)
            self._last[lane] = future  # type: ignore[assignment]
        return future

    def busy(self, lane: str) -> bool:
        with self._lock:
            last = self._last.get(lane)
        return last is not None and not last.done()

    def wait(self, pending: Iterable[Pending[object]], budget_s: float) -> None:
        futures = [p for p in pending if isinstance(p, concurrent.futures.Future)]
        if futures:
            concurrent.futures.wait(futures, timeout=max(0.0, budget_s))

    def close(self) -> None:
        """Stop taking work; calls under way are left to finish on their own."""
        with self._lock:
            for executor in self._lanes.values():
                executor.shutdown(wait=False, cancel_futures=True)
            self._lanes.clear()


class InlineRunner:
    """A Runner that runs each call at once, in the caller's thread (`tide
    plan`, unit tests): nothing is ever busy."""

    def submit(self, lane: str, call: Callable[[], T]) -> Pending[T]:
        return _Done(call)

    def busy(self, lane: str) -> bool:
        return False

    def wait(self, pending: Iterable[Pending[object]], budget_s: float) -> None:
        return None


class _Done(Pending[T]):
    def __init__(self, call: Callable[[], T]) -> None:
        self._value: T | None = None
        self._error: Exception | None = None
        try:
            self._value = call()
        except Exception as exc:  # returned to the caller through result()
            self._error = exc

    def done(self) -> bool:
        return True

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
