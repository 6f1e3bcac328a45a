"""`tide onboard`: join this host to a pool with one command, leave it with
`--uninstall`, or write the recipe as a compose bundle with `--export`.

Exit codes: 0 done, 1 the pool refused or a step failed (nothing is left
half-done), 2 bad input or a failed prerequisite (nothing was changed).
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from tide.onboard.settings import Settings, SettingsError, validated

DEFAULT_DISK_PER_CORE_GB = 20.0
STDIN = "-"
"""A token file argument that means: read it from stdin."""
DEFAULT_WAIT_S = 300.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "join this host to an HTCondor pool as a worker (the provider recipe: HTCondor "
        "worker, autoheal, and optionally CVMFS and a squid), as root, in one command"
    )
    p = sub.add_parser("onboard", help=text, description=text, allow_abbrev=False)
    pool = p.add_argument_group("the pool")
    pool.add_argument("--collector", metavar="HOST:PORT", help="the pool's collector")
    pool.add_argument(
        "--token-file",
        metavar="FILE",
        help="the worker token the pool's operators issued; '-' reads it from stdin",
    )
    pool.add_argument("--site", help="this host's site, advertised as SiteName")
    host = p.add_argument_group("this host")
    host.add_argument("--name", help="the worker's name (TideResourceId); default: hostname")
    host.add_argument("--cpus", type=int, help="cores to lend; default: all")
    host.add_argument("--memory-mb", type=int, help="memory to lend; default: all")
    host.add_argument(
        "--port", type=int, help="the worker's local port (default: condor_worker_port's, 9618)"
    )
    host.add_argument(
        "--bind-address", default="", help="IPv4 address the worker binds; default: every one"
    )
    host.add_argument(
        "--cvmfs-repository",
        action="append",
        default=[],
        metavar="REPO",
        help="mount this CVMFS repository for jobs (repeat for more)",
    )
    host.add_argument("--cvmfs-proxy", default="", help="CVMFS's squid(s), or DIRECT")
    host.add_argument("--cvmfs-image", default="", help="the CVMFS service image to run")
    host.add_argument("--squid", action="store_true", help="run a squid on this host for CVMFS")
    host.add_argument("--squid-port", type=int, help="its port (default: squid_port's, 3128)")
    host.add_argument(
        "--disk-per-core-gb",
        type=float,
        default=DEFAULT_DISK_PER_CORE_GB,
        help="free disk each lent core needs (INFN's rule: 20)",
    )
    host.add_argument(
        "--images", type=Path, metavar="DIR", help="load missing images from DIR/NAME.tar"
    )
    host.add_argument(
        "--docker-daemon-json",
        type=Path,
        metavar="FILE",
        help="daemon.json for the Docker Engine onboarding installs (default: the "
        "docker_engine role's)",
    )
    what = p.add_argument_group("what to do (default: onboard)")
    what.add_argument(
        "--wait-s", type=float, default=DEFAULT_WAIT_S, help="wait this long for the slot"
    )
    what.add_argument(
        "--smoke-test",
        action="store_true",
        help="then run a job on the slot, submitted with --submit-token-file",
    )
    what.add_argument(
        "--submit-token-file",
        metavar="FILE",
        help="a token of a pool user who may submit (for --smoke-test); '-': stdin",
    )
    what.add_argument("--schedd", help="the schedd for --smoke-test; default: the first listed")
    what.add_argument("--export", type=Path, metavar="DIR", help="write a compose bundle to DIR")
    what.add_argument(
        "--uninstall", action="store_true", help="remove all onboarding made; the slot leaves"
    )


_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def token_on_command_line(argv: Sequence[str]) -> bool:
    """A token (a JWT) among the arguments: it must never be used from there
    (it is in the shell's history and in every process listing)."""
    return any(_JWT.search(arg) for arg in argv)


TOKEN_ON_COMMAND_LINE = (
    "tide onboard: a token was given on the command line, where the shell's history and "  # noqa: S105
    "every process listing keep it: put it in a file (mode 0600) and give --token-file "
    "FILE, or pipe it with --token-file -, and ask the pool's operators to revoke that one"
)


def read_token(path: str) -> str:
    text = sys.stdin.read() if path == STDIN else Path(path).read_text(encoding="utf-8")
    return text.strip()


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the command line, or SettingsError naming every problem."""
    missing = [
        f"--{name.replace('_', '-')} is required"
        for name in ("collector", "token_file", "site")
        if not getattr(args, name)
    ]
    token = ""
    if args.token_file:
        try:
            token = read_token(args.token_file)
        except OSError as exc:
            missing.append(f"--token-file {args.token_file}: {exc.strerror or exc}")
        else:
            if not token:
                missing.append(f"--token-file {args.token_file} is empty")
    if args.smoke_test and not args.submit_token_file:
        missing.append(
            "--smoke-test needs --submit-token-file: a worker token may not submit jobs; ask "
            "the pool's operators for a token of a user who may"
        )
    if [args.token_file, args.submit_token_file].count(STDIN) == 2:
        missing.append("only one of --token-file and --submit-token-file can be read from stdin")
    if missing:
        raise SettingsError(missing)
    return validated(
        Settings(
            collector=args.collector,
            token=token,
            site_name=args.site,
            node_name=args.name or socket.gethostname().split(".")[0],
            cpus=args.cpus,
            memory_mb=args.memory_mb,
            cvmfs_repositories=tuple(args.cvmfs_repository),
            cvmfs_proxy=args.cvmfs_proxy,
            cvmfs_image=args.cvmfs_image,
            squid=args.squid,
            squid_port=args.squid_port,
            port=args.port,
            bind_address=args.bind_address,
        )
    )


def main(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """`tide onboard ARGS` (argv starts with "onboard"); a token among the
    arguments is refused before argparse could echo it."""
    if token_on_command_line(argv):
        print(TOKEN_ON_COMMAND_LINE, file=sys.stderr)
        return 2
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from tide.onboard import flow  # noqa: PLC0415  (pyinfra, htcondor2: only when used)

    def say(line: str) -> None:
        print(f"[onboard] {line}", file=sys.stderr, flush=True)

    if args.uninstall:
        return flow.uninstall(say, wait_s=args.wait_s)
    try:
        settings = settings_from(args)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"tide onboard: {problem}", file=sys.stderr)
        return 2
    if args.export is not None:
        return flow.export_bundle(settings, args.export, say)
    smoke = None
    if args.smoke_test:
        try:
            smoke = flow.Smoke(read_token(args.submit_token_file), args.schedd)
        except OSError as exc:
            print(f"tide onboard: --submit-token-file: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return flow.onboard(
        settings,
        say,
        images=args.images,
        daemon_json=args.docker_daemon_json,
        per_core_gb=args.disk_per_core_gb,
        wait_s=args.wait_s,
        smoke=smoke,
    )


__all__ = [
    "TOKEN_ON_COMMAND_LINE",
    "add_parser",
    "main",
    "read_token",
    "run",
    "settings_from",
    "token_on_command_line",
]
