"""tide.runner.ThreadRunner: one lane per site, a hung lane delays no other,
and a hung call never keeps the process from exiting."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from tide.runner import ThreadRunner


def test_a_hung_lane_is_busy_and_delays_no_other() -> None:
    runner = ThreadRunner()
    release = threading.Event()
    try:
        hung = runner.submit("a", lambda: release.wait(30))
        quick = runner.submit("b", lambda: "done")
        started = time.monotonic()
        runner.wait([hung, quick], budget_s=0.3)
        assert time.monotonic() - started < 5  # the budget, not the hung call
        assert quick.done()
        assert quick.result() == "done"
        assert not hung.done()
        assert runner.busy("a")
        assert not runner.busy("b")
        again = runner.submit("b", lambda: 1 / 0)
        runner.wait([again], budget_s=5)
        assert isinstance(_raised(again.result), ZeroDivisionError)
    finally:
        release.set()
        runner.close()


def _raised(call: object) -> BaseException | None:
    try:
        call()  # type: ignore[operator]
    except BaseException as exc:  # the error the lane's call raised
        return exc
    return None


def test_a_hung_call_does_not_keep_the_process_alive() -> None:
    script = (
        "import time\n"
        "from tide.runner import ThreadRunner\n"
        "r = ThreadRunner()\n"
        "r.submit('hung', lambda: time.sleep(60))\n"
        "time.sleep(0.2)\n"
        "r.close()\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert time.monotonic() - started < 20
