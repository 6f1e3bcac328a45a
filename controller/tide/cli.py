"""The `tide` command line: run the daemon, check its configuration, preview a
plan, show or drain resources.

Exit codes: 0 done, 1 the command failed (e.g. an unknown resource), 2 a
usage or configuration error.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tide import __version__
from tide.config import Config, ConfigError, check_secret_file, check_secrets, load_config
from tide.loop import HELD
from tide.model import Create, Demand, Plan, State
from tide.store import Store, StoreError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tide",
        description=(
            "Tide scales opportunistic resources (OpenStack VMs, Slurm backfill, "
            "Docker workers) into an HTCondor pool on demand."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tide {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", required=True, type=Path, metavar="FILE")
        return p

    run = command("run", "run the controller until SIGTERM or SIGINT")
    run.add_argument("--log-level", default="INFO")
    command(
        "check",
        "validate the configuration as `tide run` does at start, contacting nothing",
    )
    command("plan", "show what the controller would do now, changing nothing")
    status = command(
        "status",
        "resources by site and state (the state file), and the pool's idle jobs"
        " matched to sites or to none (asked of the pool now)",
    )
    status.add_argument(
        "--no-demand", action="store_true", help="show the state file only; ask the pool nothing"
    )
    drain = command(
        "drain", "drain a resource for good: the daemon drains its startd, then removes it"
    )
    drain.add_argument("resource")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    commands = {
        "check": _check,
        "status": _status,
        "drain": _drain,
        "plan": _plan,
        "run": _run,
    }
    try:
        return commands[args.command](config, args)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"tide: {exc}", file=sys.stderr)
        return 1


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _status(config: Config, args: argparse.Namespace) -> int:
    with Store.open(config.loop.state_file, exclusive=False) as store:
        resources = store.alive()
    counts: dict[tuple[str, str], int] = {}
    for r in resources:
        counts[(r.site, r.state.value)] = counts.get((r.site, r.state.value), 0) + 1
    states = [s for s in State if s is not State.GONE]
    rows = [
        [site, *(str(counts.get((site, s.value), 0)) for s in states)]
        for site in sorted(set(config.sites) | {r.site for r in resources})
    ]
    print(_table(["SITE", *(s.value.upper() for s in states)], rows))
    if resources:
        print()
        print(
            _table(
                ["RESOURCE", "SITE", "STATE", "SINCE"],
                [[r.id, r.site, r.state.value, f"{r.state_since:.0f}"] for r in resources],
            )
        )
    if not args.no_demand:
        print()
        print(_pool_demand(config))
    return 0


def _pool_demand(config: Config) -> str:
    """The pool's idle jobs as `tide run` sees them, as a table; a line
    saying why when the pool cannot be asked (status never fails for that)."""
    from tide import assemble  # noqa: PLC0415

    try:
        check_secret_file(config.pool.token_file)
        folder = assemble.configure_htcondor(config.pool.collector, config.pool.token_file)
    except (ConfigError, OSError) as exc:
        return f"demand: unknown ({exc})"
    try:
        demand, complete = assemble.demand_source(config)()
    except Exception as exc:
        return f"demand: unknown: the pool at {config.pool.collector} did not answer ({exc})"
    finally:
        assemble.remove_htcondor_config(folder)
    return demand_table(demand, complete)


def demand_table(demand: Sequence[Demand], complete: bool) -> str:
    """Idle autoclusters and the sites that can run them ("-": none can, so
    no site is scaled for them), then the totals."""
    rows = [
        [
            d.key,
            str(d.idle_jobs),
            str(d.cpus),
            str(d.memory_mb),
            str(d.disk_mb),
            ",".join(d.sites) or "- (unmatched)",
        ]
        for d in sorted(demand, key=lambda d: d.key)
    ]
    matched = sum(d.idle_jobs for d in demand if d.sites)
    unmatched = sum(d.idle_jobs for d in demand if not d.sites)
    lines = [
        _table(["DEMAND", "IDLE JOBS", "CPUS", "MEMORY_MB", "DISK_MB", "SITES"], rows)
        if rows
        else "demand: no idle job",
        f"{matched} idle jobs matched to a site, {unmatched} unmatched (no site can run them)",
    ]
    if not complete:
        lines.append("incomplete: a schedd did not answer; its jobs are not counted")
    return "\n".join(lines)


def _drain(config: Config, args: argparse.Namespace) -> int:
    resource: str = args.resource
    with Store.open(config.loop.state_file, exclusive=False) as store:
        r = store.get(resource)
        if r is None:
            print(f"tide: {resource}: no such resource in the store", file=sys.stderr)
            return 1
        if r.state not in (State.RUNNING, State.DRAINING):
            print(
                f"tide: {resource} is {r.state.value}: only a running or draining resource"
                " can be drained (a boot is removed by the daemon when demand goes)",
                file=sys.stderr,
            )
            return 1
        store.set_detail(resource, HELD, True)
        if r.state is State.RUNNING:
            store.move(resource, State.DRAINING, time.time(), "operator drain (tide drain)")
    print(
        f"{resource}: draining; the daemon drains its startd (running jobs finish),"
        " then removes it. Demand does not undo an operator's drain."
    )
    return 0


def _print_plan(plan: Plan) -> None:
    rows = [
        [
            type(a).__name__.lower(),
            a.site if isinstance(a, Create) else a.resource,
            str(a.count) if isinstance(a, Create) else "1",
            a.reason,
        ]
        for a in plan.actions
    ]
    print(_table(["ACTION", "TARGET", "COUNT", "REASON"], rows) if rows else "no action")
    if plan.unmatched:
        print()
        print(
            _table(
                ["UNMATCHED DEMAND", "IDLE JOBS", "CPUS", "MEMORY_MB", "DISK_MB"],
                [
                    [d.key, str(d.idle_jobs), str(d.cpus), str(d.memory_mb), str(d.disk_mb)]
                    for d in plan.unmatched
                ],
            )
        )


def _check(config: Config, args: argparse.Namespace) -> int:
    """What `tide run` checks before it contacts anything: the file (loaded by
    main), the token files' modes and the sites' worker attributes. The
    controller role validates a new config with it before it replaces the old."""
    from tide.sites.base import worker_attributes  # noqa: PLC0415
    from tide.yaml_lines import parse_yaml  # noqa: PLC0415

    check_secrets(config)
    path: Path = args.config
    doc = parse_yaml(path.read_text(encoding="utf-8"))  # loaded fine once: parses again
    errors: list[tuple[int, str]] = []
    for name, site in config.sites.items():
        for attribute, value in site.attributes.items():
            try:
                worker_attributes(name, {attribute: value})
            except ValueError as exc:
                loc = ["sites", name, "attributes", attribute]
                errors.append((doc.line_of(loc), f"{'.'.join(loc)}: {exc}"))
    if errors:
        raise ConfigError([f"{path}:{line}: {text}" for line, text in sorted(errors)])
    sites = ", ".join(f"{name} ({site.kind})" for name, site in config.sites.items())
    print(
        f"{path}: ok: pool {config.pool.domain} at {config.pool.collector}, "
        f"owner {config.loop.owner or socket.gethostname()}, "
        f"{len(config.sites)} site{'' if len(config.sites) == 1 else 's'}: {sites}"
    )
    return 0


def _plan(config: Config, args: argparse.Namespace) -> int:
    from tide import assemble  # noqa: PLC0415

    check_secrets(config)
    folder = assemble.configure_htcondor(config.pool.collector, config.pool.token_file)
    try:
        with Store.open(config.loop.state_file, exclusive=False) as store:
            controller = assemble.build_controller(config, store, adapters=None, metrics=None)
            _print_plan(controller.preview())
    finally:
        assemble.remove_htcondor_config(folder)
    return 0


def _run(config: Config, args: argparse.Namespace) -> int:
    from tide.daemon import run_daemon  # noqa: PLC0415

    return run_daemon(config, args.log_level)


if __name__ == "__main__":
    raise SystemExit(main())
