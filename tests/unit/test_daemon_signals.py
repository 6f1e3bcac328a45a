"""The daemon's signals (controller/tide/daemon.py): SIGTERM and SIGINT stop
it; SIGHUP, which would kill it by default, is logged and changes nothing,
since the configuration is read at start only. The handlers are installed
in this test process and put back afterwards."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from tide.daemon import install_signal_handlers

DEADLINE_S = 30.0


@pytest.fixture
def handlers() -> Iterator[threading.Event]:
    """install_signal_handlers on a fresh event; the old handlers come back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    stop = threading.Event()
    install_signal_handlers(stop)
    yield stop
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _hup_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The daemon's log lines, once there is one; fails after DEADLINE_S."""
    end = time.monotonic() + DEADLINE_S
    while True:  # Python runs the handler in this thread, between two bytecodes
        messages = [r.getMessage() for r in caplog.records if r.name == "tide.daemon"]
        if messages or time.monotonic() > end:
            return messages
        time.sleep(0.01)


def test_sighup_is_logged_and_does_not_stop_the_daemon(
    handlers: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    handler = signal.getsignal(signal.SIGHUP)
    assert callable(handler), handler  # not SIG_DFL (terminate) nor SIG_IGN (silent)
    caplog.set_level(logging.INFO, logger="tide")
    os.kill(os.getpid(), signal.SIGHUP)  # would end this test run if it were not handled
    messages = _hup_logged(caplog)
    assert len(messages) == 1, messages
    assert not handlers.is_set()
    assert "configuration is read at start only" in messages[0]
    assert "restart" in messages[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_the_daemon(handlers: threading.Event, sig: signal.Signals) -> None:
    handler = signal.getsignal(sig)
    assert callable(handler), handler
    os.kill(os.getpid(), sig)
    assert handlers.wait(DEADLINE_S)
