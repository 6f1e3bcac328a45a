"""A helper for the unit tests of calls that must not hang."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest


def within(deadline_s: float, call: Callable[[], object]) -> BaseException | None:
    """Run call in a thread; the exception it raised, None if it returned. Fails
    the test if it is still running after deadline_s (a hung call)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(deadline_s)
    if thread.is_alive():
        pytest.fail(f"the call was still running after {deadline_s:g} s: no deadline")
    return outcome[0]
