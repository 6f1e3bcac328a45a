"""The `tide` command line. For now it knows its version and its help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tide import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tide",
        description=(
            "Tide scales opportunistic resources (OpenStack VMs, Slurm backfill, "
            "Docker workers) into an HTCondor pool on demand."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tide {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
