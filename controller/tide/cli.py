"""The `tide` command line: run the daemon, check its configuration, preview a
plan, show or drain resources, evacuate a backfill site and resume it; and
`tide onboard` (tide.onboard.cli), which joins a provider host to a pool.

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
from tide.budget import BudgetState, account, hours, moment, runs_out
from tide.config import (
    Config,
    ConfigError,
    check_secret_file,
    check_secrets,
    load_config,
)
from tide.model import ALIVE, Create, Demand, Plan, State
from tide.onboard import cli as onboard_cli
from tide.sites.base import Capability
from tide.store import StateFileError, Store, StoreError


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
    evacuate = command(
        "evacuate",
        "give a backfill site's nodes back to its owners now (maintenance, data taking):"
        " running jobs are vacated to their schedds, and the site boots nothing until"
        " `tide resume`",
    )
    evacuate.add_argument("--site", required=True)
    evacuate.add_argument(
        "--nodes", type=int, default=None, help="how many (the least busy first); default: all"
    )
    evacuate.add_argument(
        "--wait-s",
        type=float,
        default=60.0,
        help="wait this long for the daemon to give them back (0: do not wait)",
    )
    resume = command("resume", "let an evacuated backfill site boot again")
    resume.add_argument("--site", required=True)
    onboard_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["onboard"]:
        return onboard_cli.main(build_parser(), argv)
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
        "evacuate": _evacuate,
        "resume": _resume,
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
        # A state file that is not Tide's: restarting cannot help, and exit 2
        # stops systemd's restarts (RestartPreventExitStatus).
        return 2 if isinstance(exc, StateFileError) else 1


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _status(config: Config, args: argparse.Namespace) -> int:
    now = time.time()
    budgets: list[str] = []
    with Store.open(config.loop.state_file, exclusive=False) as store:
        resources = store.alive()
        for name, site in sorted(config.sites.items()):
            rule = site.budget_rule()
            if rule is not None:
                alive = [r.id for r in resources if r.site == name]
                state = account(rule, store.runs(name, rule.since), alive, now)
                budgets.append(budget_line(name, state, now))
    counts: dict[tuple[str, str], int] = {}
    for r in resources:
        counts[(r.site, r.state.value)] = counts.get((r.site, r.state.value), 0) + 1
    states = [s for s in State if s is not State.GONE]
    rows = [
        [site, *(str(counts.get((site, s.value), 0)) for s in states)]
        for site in sorted(set(config.sites) | {r.site for r in resources})
    ]
    print(_table(["SITE", *(s.value.upper() for s in states)], rows))
    if budgets:
        print()
        print("\n".join(budgets))
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


def budget_line(name: str, state: BudgetState, now: float) -> str:
    """One site's budget, as `tide status` shows it."""
    rule = state.rule
    pilots = state.pilots_affordable
    room = f"room for {pilots} more pilot{'' if pilots == 1 else 's'}"
    if pilots == 0:
        room = f"no more pilots: {state.why_no_pilot().removeprefix('budget: ')}"
    return (
        f"budget {name}: {hours(state.used_core_s)} of {hours(rule.total_core_s)} core-hours "
        f"used since {moment(rule.since)} ({state.fraction_used:.1%}), "
        f"{hours(state.left_core_s)} left; "
        f"{state.cores_in_use} cores in use, runs out {runs_out(state.runs_out_at(now), now)}; "
        f"{room}"
    )


def _pool_demand(config: Config) -> str:
    """The pool's idle jobs as `tide run` sees them, as a table; a line
    saying why when the pool cannot be asked (status never fails for that)."""
    from tide import assemble  # noqa: PLC0415
    from tide.htcondor import client as htcondor_client  # noqa: PLC0415

    try:
        check_secret_file(config.pool.token_file)
        folder = htcondor_client.configure(config.pool.collector, config.pool.token_file)
    except (ConfigError, OSError) as exc:
        return f"demand: unknown ({exc})"
    try:
        demand, complete = assemble.demand_source(config)()
    except Exception as exc:
        return f"demand: unknown: the pool at {config.pool.collector} did not answer ({exc})"
    finally:
        htcondor_client.unconfigure(folder)
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
        if store.get(resource) is None:
            print(f"tide: {resource}: no such resource in the store", file=sys.stderr)
            return 1
        try:
            store.request_drain(resource, time.time())
        except StoreError as exc:
            print(f"tide: {exc}", file=sys.stderr)
            return 1
    print(
        f"{resource}: draining; the daemon drains its startd (running jobs finish),"
        " then removes it. Demand does not undo an operator's drain."
    )
    return 0


def _backfill_site(config: Config, site: str) -> str | None:
    """Why `site` cannot be evacuated, or None."""
    if site not in config.sites:
        return f"no site {site!r} in the configuration (sites: {', '.join(sorted(config.sites))})"
    if Capability.OWNERS not in config.sites[site].capabilities:
        return f"site {site!r} is not a backfill site (kind slurm_backfill): nothing to give back"
    return None


def _evacuate(config: Config, args: argparse.Namespace) -> int:
    site: str = args.site
    problem = _backfill_site(config, site)
    if problem is None and args.nodes is not None and args.nodes < 1:
        problem = f"--nodes {args.nodes}: give at least 1 (or leave it out for all)"
    if problem is not None:
        print(f"tide: {problem}", file=sys.stderr)
        return 2
    with Store.open(config.loop.state_file, exclusive=False) as store:
        before = {r.id for r in store.alive(site) if r.state in ALIVE}
        store.request_evacuate(site, args.nodes)
        want = len(before) if args.nodes is None else min(args.nodes, len(before))
        print(
            f"{site}: paused (no new boot until `tide resume --site {site}`); asked the daemon"
            f" to give back {want} of {len(before)} resources"
        )
        deadline = time.monotonic() + args.wait_s
        started = time.monotonic()
        gone = 0
        while args.wait_s > 0 and gone < want:
            alive = {r.id for r in store.alive(site) if r.state in ALIVE}
            now_gone = len(before - alive)
            if now_gone != gone:
                gone = now_gone
                print(f"{site}: {gone} of {want} given back ({time.monotonic() - started:.1f}s)")
            if time.monotonic() >= deadline:
                print(
                    f"tide: {site}: {want - gone} not given back after {args.wait_s:.0f}s:"
                    " is the daemon running? (`systemctl status tide-controller`)",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.2)
    return 0


def _resume(config: Config, args: argparse.Namespace) -> int:
    site: str = args.site
    problem = _backfill_site(config, site)
    if problem is not None:
        print(f"tide: {problem}", file=sys.stderr)
        return 2
    with Store.open(config.loop.state_file, exclusive=False) as store:
        store.request_resume(site)
    print(f"{site}: resumed; the daemon boots there again when jobs wait and the owners do not")
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
    if plan.held_back:
        print()
        print(
            _table(
                ["HELD BACK", "TARGET", "WHY"],
                [
                    [
                        type(h.action).__name__.lower(),
                        h.action.site if isinstance(h.action, Create) else h.action.resource,
                        h.why,
                    ]
                    for h in plan.held_back
                ],
            )
        )
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
    from tide.daemon import configured_adapters  # noqa: PLC0415
    from tide.htcondor import client as htcondor_client  # noqa: PLC0415
    from tide.sites.base import PoolEndpoint  # noqa: PLC0415

    check_secrets(config)
    folder = htcondor_client.configure(config.pool.collector, config.pool.token_file)
    try:
        with Store.open(config.loop.state_file, exclusive=False) as store:
            config, retiring = assemble.with_retiring_sites(config, store, write=False)
            owner = config.loop.owner or socket.gethostname()
            pool = PoolEndpoint(config.pool.collector, config.pool.domain)
            controller = assemble.build_controller(
                config,
                store,
                adapters=configured_adapters(config, owner, pool),
                metrics=None,
                retiring=retiring,
                plan_only=True,
            )
            _print_plan(controller.preview())
    finally:
        htcondor_client.unconfigure(folder)
    return 0


def _run(config: Config, args: argparse.Namespace) -> int:
    from tide.daemon import run_daemon  # noqa: PLC0415

    return run_daemon(config, args.log_level)


if __name__ == "__main__":
    raise SystemExit(main())
