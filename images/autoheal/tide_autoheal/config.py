"""Settings from the environment. VARIABLES is the one list of them: the
README documents each with this default (a unit test holds them together).
A bad value stops autoheal at start with a message that names the variable."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from tide_autoheal.policy import Settings

PREFIX = "TIDE_AUTOHEAL_"

# name (after PREFIX) -> default
VARIABLES: dict[str, str] = {
    "LABEL": "tide.autoheal",
    "DEPENDS_ON_LABEL": "tide.autoheal.depends-on",
    "SWEEP_INTERVAL": "30",
    "STOP_TIMEOUT": "10",
    "BACKOFF_BASE": "10",
    "BACKOFF_FACTOR": "2",
    "BACKOFF_MAX": "600",
    "MAX_RESTARTS": "10",
    "RESTART_WINDOW": "3600",
    "HEALTHY_RESET": "300",
}


class ConfigError(ValueError):
    """A setting is wrong; the message names it."""


@dataclass(frozen=True)
class Config:
    label: str
    """Containers with this label set to `true` are restarted when unhealthy."""
    depends_on_label: str
    """Label naming the containers (comma-separated) whose recovery restarts this one."""
    sweep_interval: float
    """Seconds between sweeps for unhealthy containers whose event was missed."""
    stop_timeout: int
    """Seconds a restart lets the container stop gracefully before it is killed."""
    policy: Settings


def from_env(env: Mapping[str, str]) -> Config:
    def get(name: str) -> str:
        return env.get(PREFIX + name, "").strip() or VARIABLES[name]

    def number(name: str, minimum: float, *, above: bool = False) -> float:
        raw = get(name)
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or not (value > minimum if above else value >= minimum):
            bound = f"greater than {minimum:g}" if above else f"at least {minimum:g}"
            raise ConfigError(f"{PREFIX}{name} must be a number {bound}, not {raw!r}")
        return value

    def whole(name: str, minimum: int) -> int:
        value = number(name, minimum)
        if value != int(value):
            raise ConfigError(f"{PREFIX}{name} must be a whole number, not {get(name)!r}")
        return int(value)

    def label(name: str) -> str:
        value = get(name)
        if "=" in value or any(c.isspace() for c in value):
            raise ConfigError(f"{PREFIX}{name} must be a label key (no '=', no space): {value!r}")
        return value

    base = number("BACKOFF_BASE", 0, above=True)
    most = number("BACKOFF_MAX", 0, above=True)
    if most < base:
        raise ConfigError(
            f"{PREFIX}BACKOFF_MAX ({most:g}) must be at least {PREFIX}BACKOFF_BASE ({base:g})"
        )
    policy = Settings(
        backoff_base=base,
        backoff_factor=number("BACKOFF_FACTOR", 1),
        backoff_max=most,
        max_restarts=whole("MAX_RESTARTS", 1),
        window=number("RESTART_WINDOW", 0, above=True),
        healthy_reset=number("HEALTHY_RESET", 0),
    )
    return Config(
        label=label("LABEL"),
        depends_on_label=label("DEPENDS_ON_LABEL"),
        sweep_interval=number("SWEEP_INTERVAL", 0, above=True),
        stop_timeout=whole("STOP_TIMEOUT", 0),
        policy=policy,
    )
