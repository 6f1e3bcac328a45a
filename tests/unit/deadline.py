"""Helpers for the unit tests of calls that must not hang."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

import pytest


class Silent:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self._held.append(self._sock.accept()[0])

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


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
