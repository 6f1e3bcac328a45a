"""Autoheal's settings from the environment: one list of variables, whose
defaults are the policy's and the README's, and errors that name the variable."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import pytest

from tide_autoheal.config import PREFIX, VARIABLES, ConfigError, from_env
from tide_autoheal.policy import Settings

README = Path(__file__).resolve().parents[2] / "images" / "autoheal" / "README.md"


def test_the_defaults_are_the_policys_defaults() -> None:
    config = from_env({})
    assert config.policy == Settings()
    assert (config.label, config.depends_on_label) == ("tide.autoheal", "tide.autoheal.depends-on")
    assert (config.sweep_interval, config.stop_timeout) == (30, 10)


def test_every_variable_is_documented_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(TIDE_AUTOHEAL_\w+)` \| `([^`]*)` \|", README.read_text(), re.M))
    assert rows == {PREFIX + name: default for name, default in VARIABLES.items()}


def test_settings_are_read_and_empty_means_default() -> None:
    env = {
        "TIDE_AUTOHEAL_SWEEP_INTERVAL": "2.5",
        "TIDE_AUTOHEAL_STOP_TIMEOUT": "0",
        "TIDE_AUTOHEAL_BACKOFF_BASE": "1",
        "TIDE_AUTOHEAL_BACKOFF_FACTOR": "3",
        "TIDE_AUTOHEAL_BACKOFF_MAX": "9",
        "TIDE_AUTOHEAL_MAX_RESTARTS": "4",
        "TIDE_AUTOHEAL_RESTART_WINDOW": "60",
        "TIDE_AUTOHEAL_HEALTHY_RESET": "0",
        "TIDE_AUTOHEAL_LABEL": "site.heal",
        "TIDE_AUTOHEAL_DEPENDS_ON_LABEL": " ",
    }
    config = from_env(env)
    assert (config.sweep_interval, config.stop_timeout, config.label) == (2.5, 0, "site.heal")
    assert config.depends_on_label == VARIABLES["DEPENDS_ON_LABEL"]
    assert asdict(config.policy) == {
        "backoff_base": 1,
        "backoff_factor": 3,
        "backoff_max": 9,
        "max_restarts": 4,
        "window": 60,
        "healthy_reset": 0,
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SWEEP_INTERVAL", "soon"),
        ("SWEEP_INTERVAL", "0"),
        ("SWEEP_INTERVAL", "inf"),
        ("STOP_TIMEOUT", "-1"),
        ("STOP_TIMEOUT", "1.5"),
        ("BACKOFF_BASE", "nan"),
        ("BACKOFF_FACTOR", "0.5"),
        ("BACKOFF_MAX", "5"),  # below the base of 10
        ("MAX_RESTARTS", "0"),
        ("RESTART_WINDOW", "0"),
        ("HEALTHY_RESET", "-5"),
        ("LABEL", "tide.autoheal=true"),
        ("DEPENDS_ON_LABEL", "depends on"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{PREFIX}{name} "):
        from_env({PREFIX + name: value})
