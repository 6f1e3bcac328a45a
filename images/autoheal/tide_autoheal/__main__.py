"""`python3 -m tide_autoheal`: read the settings, reach Docker, run until stopped."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import asdict
from types import FrameType

import docker
from docker.errors import DockerException

from tide_autoheal.config import ConfigError, from_env
from tide_autoheal.engine import Engine
from tide_autoheal.log import log


def _stop(signum: int, _frame: FrameType | None) -> None:
    log("stop", why=f"signal {signal.Signals(signum).name}")
    sys.exit(0)


def main() -> int:
    # PID 1 in a container: without a handler SIGTERM would be ignored.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        config = from_env(os.environ)
    except ConfigError as err:
        log("config-error", why=str(err), level="error")
        return 64
    try:
        client = docker.from_env()
        client.ping()
    except (DockerException, OSError) as err:
        why = f"cannot reach the Docker engine (is /var/run/docker.sock mounted?): {err}"
        log("no-docker", why=why, level="error")
        return 69
    settings = {k: v for k, v in asdict(config).items() if k != "policy"}
    log("start", why="watching container health", **settings, **asdict(config.policy))
    Engine(config, client).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
