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
import queue
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
    """A Runner with one worker thread per lane. The threads are daemon
    threads (not a ThreadPoolExecutor's, which Python joins at exit): a call
    hung past every deadline never keeps the stopping daemon waiting."""

    def __init__(self) -> None:
        self._lanes: dict[str, queue.SimpleQueue[_Job | None]] = {}
        self._last: dict[str, concurrent.futures.Future[object]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, lane: str, call: Callable[[], T]) -> Pending[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                future.set_exception(RuntimeError("runner closed"))
                return future
            jobs = self._lanes.get(lane)
            if jobs is None:
                jobs = queue.SimpleQueue()
                self._lanes[lane] = jobs
                threading.Thread(
                    target=_work, args=(jobs,), name=f"tide-{lane}", daemon=True
                ).start()
            jobs.put(_Job(call, future))  # type: ignore[arg-type]
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
        """Stop taking work; calls under way are left to finish on their own
        (or to end with the process)."""
        with self._lock:
            self._closed = True
            for jobs in self._lanes.values():
                jobs.put(None)
            self._lanes.clear()


class _Job:
    def __init__(self, call: Callable[[], object], future: concurrent.futures.Future[object]):
        self.call, self.future = call, future


def _work(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        if not job.future.set_running_or_notify_cancel():
            continue
        try:
            job.future.set_result(job.call())
        except BaseException as exc:  # handed to whoever waits on it
            job.future.set_exception(exc)


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
