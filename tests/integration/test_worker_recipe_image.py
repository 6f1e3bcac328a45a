"""The one part of the worker recipe written twice: what tide-entrypoint
writes from a worker's environment, which a native Slurm pilot (no image)
takes from tide.sites.base instead. Pinned here against the real
entrypoint in the real tide/condor image: from the recipe's own
environment, the entrypoint writes every setting the pilot has, with the
same value, and nothing else but what a pilot cannot use (named below,
with why). A change to either side alone fails this test.

The container runs the entrypoint up to its last step; a stand-in for
condor_master, first in its PATH, prints the configuration written instead
of starting HTCondor (nothing here needs a pool)."""

from __future__ import annotations

import re

from tests import lab
from tide.model import Shape
from tide.sites.base import PoolEndpoint, WorkerRecipe, _environment_config

IMAGE = "tide/condor:0.1.0"

# What the entrypoint writes that a native pilot does not take, and why.
PILOT_HAS_NOT = {
    # HTCondor runs as a user there: no shared port, no interface of its own.
    "SHARED_PORT_PORT",
    "NETWORK_INTERFACE",
    # A worker runs no schedd: its submitters' list is the submit role's.
    "TIDE_SUBMITTER_IDENTITIES",
    "TIDE_SUBMITTER_LIST",
    # Slot users need root; a pilot's jobs run as its user (bubblewrap instead).
    "STARTER_ALLOW_RUNAS_OWNER",
    "DEDICATED_EXECUTE_ACCOUNT_REGEXP",
    "NOBODY_SLOT_USER",
    # The pilot's own: its site's max_job_retirement_s.
    "MAXJOBRETIREMENTTIME",
}
SLOT_USER = re.compile(r"SLOT1_\d+_USER")

# The stand-in prints the file the entrypoint wrote, then ends the container.
_RUN = (
    "set -e; mkdir -p /run/secrets /tmp/stand-in; "
    "echo not-a-token >/run/secrets/token; "  # only installed: nothing authenticates
    "printf '#!/bin/sh\\ncat /etc/condor/config.d/50-tide-env.conf\\n' "
    ">/tmp/stand-in/condor_master; "
    "chmod +x /tmp/stand-in/condor_master; "
    "PATH=/tmp/stand-in:$PATH exec /usr/local/bin/tide-entrypoint"
)


def _settings(text: str) -> tuple[dict[str, str], set[str]]:
    """NAME = value lines (the last one wins, as in HTCondor) and the
    attribute names every STARTD_ATTRS line adds."""
    settings: dict[str, str] = {}
    attrs: set[str] = set()
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if not sep or line.startswith(("#", "include")):
            continue
        if name == "STARTD_ATTRS":
            attrs.update(value.replace("$(STARTD_ATTRS)", "").split())
        else:
            settings[name] = value
    return settings, attrs


def test_the_entrypoint_writes_what_a_native_pilot_takes_from_the_recipe() -> None:
    recipe = WorkerRecipe(
        pool=PoolEndpoint("127.0.0.1:29618", "lab.tide"),
        resource_id="tide-maxwell-0000abcd",
        site="maxwell",
        site_name="DESY-HH-Maxwell",
        shape=Shape(2, 1000, 5000),
        attributes={"HasCvmfs": True, "Experiment": "belle", "MaxHours": 48},
    )
    env = recipe.environment()
    argv = ["docker", "run", "--rm", "--network", "none", "--entrypoint", "bash"]
    for name, value in env.items():
        argv += ["-e", f"{name}={value}"]
    written = lab.run([*argv, IMAGE, "-c", _RUN], timeout=120).stdout
    entrypoint, entrypoint_attrs = _settings(written)
    pilot, pilot_attrs = _settings(_environment_config(env))
    assert pilot_attrs == entrypoint_attrs, (pilot_attrs, entrypoint_attrs)
    assert {"SiteName", "TideResourceId", "HasCvmfs", "Experiment"} <= pilot_attrs
    for name, value in pilot.items():
        assert entrypoint.get(name) == value, (name, value, written)
    only_entrypoint = {
        name for name in entrypoint.keys() - pilot.keys() if not SLOT_USER.fullmatch(name)
    }
    assert only_entrypoint <= PILOT_HAS_NOT, (only_entrypoint - PILOT_HAS_NOT, written)
