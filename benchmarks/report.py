"""What every benchmark writes: each metric's raw runs and median, and the
commit measured."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parent.parent


def arguments(description: str, default_output: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=5, help="runs of each metric (default 5)")
    parser.add_argument("--output", type=Path, default=default_output)
    return parser.parse_args()


def summary(runs: list[float]) -> dict[str, Any]:
    return {"runs": [round(r, 3) for r in runs], "median": round(statistics.median(runs), 3)}


def write(path: Path, figures: dict[str, list[float]]) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=TOP, capture_output=True, text=True, check=True
    ).stdout.strip()
    result: dict[str, Any] = {
        "commit": commit,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result.update({name: summary(runs) for name, runs in figures.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] wrote {path}: {json.dumps(result)}", flush=True)
