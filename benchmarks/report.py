"""What every benchmark writes: each metric's raw runs, their median (and
p95 where it is asked for), and the commit measured.

A results file may hold the metrics of several benchmarks, measured at
different times (controller.json: the policy's and the loop's), so each
metric carries its own `commit`, `dirty` (whether the working tree had
uncommitted changes) and `measured_at`, and `write` replaces only the
metrics it is given, keeping the others as they are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parent.parent
_PROVENANCE = ("commit", "dirty", "measured_at")


def parser(description: str, default_output: Path) -> argparse.ArgumentParser:
    """The options every benchmark takes; a benchmark may add its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=5, help="runs of each metric (default 5)")
    parser.add_argument("--output", type=Path, default=default_output)
    return parser


def arguments(description: str, default_output: Path) -> argparse.Namespace:
    return parser(description, default_output).parse_args()


def repeat(name: str, runs: int, measure: Callable[[], float]) -> list[float]:
    """Measure `runs` times, printing each figure as it comes."""
    figures: list[float] = []
    for i in range(runs):
        figures.append(measure())
        print(f"[bench] {name} run {i + 1}/{runs}: {figures[-1]:.3f}", flush=True)
    return figures


def p95(runs: list[float]) -> float:
    """The 95th percentile, interpolated between the closest ranks
    (statistics.quantiles' "inclusive" method: the runs are the population)."""
    if len(runs) < 2:
        return runs[0]
    return statistics.quantiles(runs, n=20, method="inclusive")[-1]


def summary(runs: list[float], *, with_p95: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {
        "runs": [round(r, 3) for r in runs],
        "median": round(statistics.median(runs), 3),
    }
    if with_p95:
        result["p95"] = round(p95(runs), 3)
    return result


def source() -> dict[str, Any]:
    """The commit of the working tree (short) and whether it had uncommitted
    changes, not counting the results files themselves (a run of one
    benchmark must not mark the next one's figures dirty)."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=TOP, capture_output=True, text=True, check=True
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")),
    }


def write(
    path: Path,
    figures: Mapping[str, list[float] | Mapping[str, Any]],
    *,
    measured: Mapping[str, Any] | None = None,
) -> None:
    """Write each metric into the results file at `path`, keeping the file's
    other metrics. A metric is its raw runs (summarised here) or a mapping
    made with `summary` and anything else to say about it. `measured` is
    what `source()` returned when the measuring began (the code then loaded);
    by default it is taken now."""
    provenance = {
        **(measured or source()),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result = _existing(path)
    for name, figure in figures.items():
        metric = summary(figure) if isinstance(figure, list) else dict(figure)
        result[name] = {**metric, **provenance}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] wrote {', '.join(figures)} to {path}", flush=True)


def _existing(path: Path) -> dict[str, Any]:
    """The metrics already in the file. One written before metrics carried
    their own commit has it at the top level: it moves into each metric."""
    if not path.exists():
        return {}
    old: dict[str, Any] = json.loads(path.read_text())
    shared = {key: old.pop(key) for key in _PROVENANCE if key in old}
    return {
        name: {**metric, **{k: v for k, v in shared.items() if k not in metric}}
        for name, metric in old.items()
    }
