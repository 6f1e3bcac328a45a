"""`python -m tests.simulation --seed N [-v]` replays one schedule;
`python -m tests.simulation --schedules 5000 [--jobs 2]` runs many."""

from __future__ import annotations

import argparse
import collections
import sys
import time

from tests.simulation.schedule import describe, random_scenario, replay_command, run, run_many


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__)
    p.add_argument("--seed", type=int, help="replay this schedule")
    p.add_argument("-v", "--verbose", action="store_true", help="print every step")
    p.add_argument("--schedules", type=int, default=100)
    p.add_argument("--first", type=int, default=0, help="first seed of --schedules")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    if args.seed is not None:
        scenario = random_scenario(args.seed)
        print(describe(scenario))
        result = run(scenario, out=print if args.verbose else None)
        print(f"{result.cycles} cycles, {result.crashes} crashes, {result.jobs} jobs")
        if result.violation is not None:
            print(f"seed {args.seed}: {result.violation}")
            return 1
        print(f"seed {args.seed}: every invariant held")
        return 0
    started = time.monotonic()
    failed = []
    by_invariant: collections.Counter[str] = collections.Counter()
    n = 0
    for result in run_many(range(args.first, args.first + args.schedules), args.jobs):
        n += 1
        if result.violation is not None:
            failed.append(result)
            by_invariant[result.violation.invariant] += 1
    took = time.monotonic() - started
    print(f"{n} schedules in {took:.1f}s, {len(failed)} failed")
    for inv, count in sorted(by_invariant.items()):
        print(f"  invariant {inv}: {count}")
    for result in sorted(failed, key=lambda r: r.seed)[:10]:
        print(f"seed {result.seed}: {result.violation}\n  replay: {replay_command(result.seed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
