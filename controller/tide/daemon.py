"""`tide run`: the daemon's whole life, from a validated Config to SIGTERM.

It checks the secret files, sets up logging and the pool client's private
configuration, opens the state file (one daemon per file), builds every
site's adapter, serves the metrics, and runs the loop until SIGTERM or
SIGINT. `adapters` lets a measurement harness put its own sites in place of
the configured ones and still run exactly this path.

SIGHUP, which by default kills a process (and which operators send to
daemons to reload them), only logs that the configuration is read at start:
a restart applies a changed file (`tide check` it first). There is no
reload: the sites' adapters, the state file and the metrics are built once.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from types import FrameType

from tide import assemble, logs
from tide.config import Config, check_secrets
from tide.htcondor import client as htcondor_client
from tide.loop import run_forever
from tide.metrics import Metrics
from tide.runner import ThreadRunner
from tide.sites.base import PoolEndpoint, SiteAdapter, SiteError
from tide.store import Store

log = logging.getLogger(__name__)

AdapterFactory = Callable[[Config, str, PoolEndpoint], Mapping[str, SiteAdapter]]
"""(config, owner, pool) -> an adapter for every configured site."""


def configured_adapters(config: Config, owner: str, pool: PoolEndpoint) -> dict[str, SiteAdapter]:
    """The adapters of the configured sites. Raises SiteError for a bad site."""
    return {
        name: assemble.build_adapter(name, site, owner=owner, pool=pool)
        for name, site in config.sites.items()
    }


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`; SIGHUP is logged and otherwise ignored.
    Call from the main thread (Python delivers signals there only)."""

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        logs.event(
            log,
            "SIGHUP ignored: the configuration is read at start only; restart to apply changes",
            level=logging.WARNING,
        )

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hangup)


def run_daemon(
    config: Config, log_level: str, adapters: AdapterFactory = configured_adapters
) -> int:
    """Run until SIGTERM or SIGINT; 0 then, 2 if a site cannot be set up."""
    check_secrets(config)
    logs.setup(log_level)
    folder = htcondor_client.configure(config.pool.collector, config.pool.token_file)
    try:
        with Store.open(config.loop.state_file, exclusive=True) as store:
            pool = PoolEndpoint(config.pool.collector, config.pool.domain)
            owner = config.loop.owner or socket.gethostname()
            try:
                config, retiring = assemble.with_retiring_sites(config, store)
                sites = adapters(config, owner, pool)
            except SiteError as exc:
                print(f"tide run: {exc}", file=sys.stderr)
                return 2
            assemble.remember_site_configs(config, store, retiring)
            metrics = Metrics(config.sites)
            server = metrics.serve(config.metrics.address, config.metrics.port)
            runner = ThreadRunner()
            controller = assemble.build_controller(
                config, store, adapters=sites, metrics=metrics, runner=runner, retiring=retiring
            )
            stop = threading.Event()
            install_signal_handlers(stop)
            try:
                run_forever(controller, config.loop.interval_s, stop)
            finally:
                runner.close()
                if server is not None:
                    server.shutdown()
                    server.server_close()
    finally:
        htcondor_client.unconfigure(folder)
    return 0
