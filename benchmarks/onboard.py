"""Figures of `tide onboard`, written to benchmarks/results/onboard.json.

onboard_s        `tide onboard` on a fresh lab host (systemd, no Docker
                 engine: tests/bin/lab-hosts fresh), from the command's
                 start to its exit with the slot in the pool. Tide is
                 installed first (the bootstrap script, not timed) and the
                 images are preloaded on the host as archives (--images,
                 the air-gapped path), so the run installs Docker Engine
                 from the host's package cache, loads the images, writes
                 the recipe, starts it and waits for the slot
onboard_rerun_s  the same command again right after: it changes nothing

Each metric holds its raw `runs` (3 by default) and their `median`. Run
with `python -m benchmarks.onboard` after `make lab`.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests import lab, onboard_lab

from benchmarks import report

RESULTS = Path(__file__).resolve().parent / "results" / "onboard.json"


def _timed(source: str) -> float:
    start = time.monotonic()
    done = onboard_lab.onboard(source)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"tide onboard failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def one_run() -> tuple[float, float]:
    onboard_lab.fresh_host()
    source = onboard_lab.stage_kit((lab.STATE / "secrets" / "worker.token").read_text().strip())
    # Tide itself, by the bootstrap script (not timed): --export touches nothing.
    exported = onboard_lab.onboard(source, "--export", "/root/bundle")
    if exported.returncode != 0:
        raise RuntimeError(f"installing Tide failed:\n{exported.stderr[-3000:]}")
    return _timed(source), _timed(source)


def main() -> None:
    parser = report.parser(__doc__.splitlines()[0], RESULTS)
    parser.set_defaults(runs=3)
    args = parser.parse_args()
    runs: int = args.runs
    measured = report.source()
    first: list[float] = []
    again: list[float] = []
    try:
        for i in range(runs):
            a, b = one_run()
            first.append(a)
            again.append(b)
            print(f"[bench] run {i + 1}/{runs}: onboard_s {a:.1f}, onboard_rerun_s {b:.1f}")
    finally:
        onboard_lab.remove_host()
    report.write(args.output, {"onboard_s": first, "onboard_rerun_s": again}, measured=measured)


if __name__ == "__main__":
    main()
