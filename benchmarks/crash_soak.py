"""Crash soak figures, written to benchmarks/results/controller.json beside
the other controller figures (kept).

crash_soak      the real lab test (tests/integration/test_controller_crashes.py):
                `tide run` with a Docker site on the lab pool SIGKILLed at
                random moments (creates, drains, destroys, idle cycles) while
                waves of jobs scale it up and down, restarted each time.
                Figures: kills, resources leaked, resources forgotten, jobs
                killed (the test's own JSON, $TIDE_STATE_DIR/crash_soak.json).
                Goal: 0 leaked, 0 forgotten, 0 killed.
crash_soak_sim  the same four figures from the fault simulator
                (tests/simulation) over its 5,000 seeded schedules: crashes
                (every kind: before and after every store write and external
                call), and the schedules that broke each invariant (a kill,
                a leak, a forgotten resource end the schedule as a failure).

Needs the lab running for the first (`make bench` starts it); `--no-lab`
measures only the simulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.simulation.schedule import run_many

from benchmarks import report

OUTPUT = report.TOP / "benchmarks" / "results" / "controller.json"
SCHEDULES = 5000


def lab_figures() -> dict[str, object]:
    """Run the lab's crash soak test; its figures."""
    state = Path(os.environ.get("TIDE_STATE_DIR", report.TOP / ".lab"))
    result = state / "crash_soak.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "TIDE_TEST_LAB": "external"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/integration/test_controller_crashes.py"],
        cwd=report.TOP,
        env=env,
        check=False,
    )
    figures: dict[str, object] = json.loads(result.read_text())
    figures["test_passed"] = done.returncode == 0
    return figures


def sim_figures(schedules: int) -> dict[str, object]:
    started = time.monotonic()
    results = list(run_many(range(schedules), 2))
    broken = Counter(r.violation.invariant for r in results if r.violation is not None)
    return {
        "schedules": schedules,
        "seconds": round(time.monotonic() - started, 1),
        "crashes": sum(r.crashes for r in results),
        "failed": sum(broken.values()),
        "jobs_killed": broken.get("1 no job killed", 0),
        "resources_leaked": broken.get("2 nothing leaked", 0),
        "resources_forgotten": broken.get("3 nothing forgotten", 0),
        "goal": "0 failed",
    }


def main() -> int:
    p = report.parser(__doc__ or "", OUTPUT)
    p.add_argument("--no-lab", action="store_true", help="measure the simulator only")
    p.add_argument("--schedules", type=int, default=SCHEDULES)
    args = p.parse_args()
    measured = report.source()
    figures: dict[str, dict[str, object]] = {}
    if not args.no_lab:
        lab = lab_figures()
        lab["goal"] = "0 leaked, 0 forgotten, 0 jobs killed"
        figures["crash_soak"] = lab
    figures["crash_soak_sim"] = sim_figures(args.schedules)
    report.write(args.output, figures, measured=measured)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
