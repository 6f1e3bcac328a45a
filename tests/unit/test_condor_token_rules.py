"""The pool's token rules as the image's configuration writes them
(images/condor/config.d/10-tide-security.conf: SEC_TOKEN_REVOCATION_EXPR;
roles.d/central-manager.conf: COLLECTOR_REQUIREMENTS), expanded as
HTCondor expands its macros and evaluated by the real ClassAd library
against tokens' claims and advertised ads. The lab checks the same rules in
the running collector (tests/integration/test_worker_tokens.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

classad2 = pytest.importorskip("classad2")

IMAGE = Path(__file__).resolve().parents[2] / "images" / "condor"
DOMAIN = "lab.tide"
WORKER = "condor:/ADVERTISE_STARTD condor:/ADVERTISE_MASTER"
LEGACY = "condor:/READ condor:/ADVERTISE_MASTER condor:/ADVERTISE_STARTD"


def _macros() -> dict[str, str]:
    """NAME = value lines of the two files (continuations joined), and what
    tide-entrypoint writes for a pool with two submitters."""
    macros = {
        "UID_DOMAIN": DOMAIN,
        "TIDE_SUBMITTER_LIST": f'"physicist@{DOMAIN}", "chemist@{DOMAIN}"',
    }
    for path in (
        IMAGE / "config.d" / "10-tide-security.conf",
        IMAGE / "roles.d" / "central-manager.conf",
    ):
        text = re.sub(r"\\\n", " ", path.read_text())
        for line in text.splitlines():
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)$", line)
            if m and not line.lstrip().startswith("#"):
                macros[m.group(1)] = m.group(2).strip()
    return macros


def _expand(name: str, macros: dict[str, str]) -> str:
    value = macros[name]
    for _ in range(20):
        expanded = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: macros[m.group(1)], value)
        if expanded == value:
            return expanded
        value = expanded
    raise AssertionError(f"{name} does not expand")


MACROS = _macros()
REVOKED = _expand("SEC_TOKEN_REVOCATION_EXPR", MACROS)
ACCEPTED = _expand("COLLECTOR_REQUIREMENTS", MACROS).replace("TARGET.", "")


def test_the_rules_hold_no_backslash() -> None:
    """HTCondor parses configured expressions as old ClassAds, whose strings
    keep backslashes, while classad2 here parses new ones: a backslash would
    mean one thing here and another in the collector."""
    assert "\\" not in REVOKED
    assert "\\" not in ACCEPTED


def _eval(expr: str, attrs: dict[str, Any]) -> Any:
    ad = classad2.ClassAd()
    for key, value in attrs.items():
        ad[key] = value
    ad["Tide_Rule"] = classad2.ExprTree(expr)
    return ad.eval("Tide_Rule")


def _token(
    sub: str, scope: str | None, *, iat: int = 1000, exp: int | None = 1600
) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": sub, "iat": iat, "jti": "x", "iss": DOMAIN}
    if scope is not None:
        claims["scope"] = scope
    if exp is not None:
        claims["exp"] = exp
    return claims


@pytest.mark.parametrize(
    ("claims", "honoured"),
    [
        (_token(f"tide-worker-r1@{DOMAIN}", WORKER), True),
        (_token(f"tide-worker-r1.x_y-2@{DOMAIN}", WORKER), True),
        (_token(f"tide-worker-r1@{DOMAIN}", WORKER, exp=None), False),  # never expires
        (_token(f"tide-worker-r1@{DOMAIN}", WORKER, exp=1000 + 34560001), False),  # too long
        (_token(f"tide-worker-r1@{DOMAIN}", WORKER + " condor:/DAEMON"), False),
        (_token(f"tide-worker-r1@{DOMAIN}", None), False),  # unlimited scope
        (_token("tide-worker-r1@elsewhere.example", WORKER), False),
        (_token(f"tide-worker-@{DOMAIN}", WORKER), False),
        (_token(f"condor@{DOMAIN}", WORKER), False),
        (_token(f"condor@{DOMAIN}", None), False),
        (_token(f"root@{DOMAIN}", "condor:/ADMINISTRATOR"), False),
        (_token(f"tide-controller@{DOMAIN}", "condor:/READ condor:/ADVERTISE_STARTD"), True),
        (
            _token(
                f"tide-controller@{DOMAIN}",
                "condor:/READ condor:/ADVERTISE_STARTD condor:/ADMINISTRATOR",
            ),
            False,
        ),
        (_token(f"tide-controller@{DOMAIN}", None), False),
        (_token(f"worker@{DOMAIN}", LEGACY, exp=None), True),
        (_token(f"worker@{DOMAIN}", LEGACY + " condor:/NEGOTIATOR", exp=None), False),
        (_token(f"physicist@{DOMAIN}", "condor:/READ condor:/WRITE"), True),
        (_token(f"chemist@{DOMAIN}", "condor:/READ"), True),
        (_token(f"physicist@{DOMAIN}", "condor:/READ condor:/ADMINISTRATOR"), False),
        (_token(f"physicist@{DOMAIN}", None), False),
        (_token(f"eve@{DOMAIN}", "condor:/READ"), False),  # not a submitter
    ],
)
def test_the_pool_honours_a_token_only_within_its_holders_authority(
    claims: dict[str, Any], honoured: bool
) -> None:
    assert _eval(REVOKED, claims) is (not honoured), claims


def _by(identity: str, method: str = "IDTOKENS") -> dict[str, Any]:
    return {"AuthenticationMethod": method, "AuthenticatedIdentity": identity}


R1 = _by(f"tide-worker-r1@{DOMAIN}")


@pytest.mark.parametrize(
    ("ad", "accepted"),
    [
        ({**R1, "MyType": "Machine", "Name": "slot1@r1", "TideResourceId": "r1"}, True),
        ({**R1, "MyType": "Machine", "Name": "slot1_2@r1", "TideResourceId": "r1"}, True),
        ({**R1, "MyType": "DaemonMaster", "Name": "r1"}, True),
        ({**R1, "MyType": "StartD", "Name": "r1"}, True),
        ({**R1, "MyType": "Machine", "Name": "slot1@r1", "TideResourceId": "r2"}, False),
        ({**R1, "MyType": "Machine", "Name": "slot1@r1"}, False),  # no resource id
        ({**R1, "MyType": "Machine", "Name": "slot1@r2", "TideResourceId": "r1"}, False),
        ({**R1, "MyType": "Machine", "Name": "slot1@xr1", "TideResourceId": "r1"}, False),
        ({**R1, "MyType": "DaemonMaster", "Name": "r2"}, False),
        (
            {
                **_by(f"tide-controller@{DOMAIN}"),
                "MyType": "Machine",
                "Name": "s@a",
                "TideResourceId": "a",
            },
            False,
        ),
        ({**_by(f"condor@{DOMAIN}", "FS"), "MyType": "Collector", "Name": "cm"}, True),
        ({"MyType": "Collector", "Name": "cm"}, True),  # the collector's own ad
        (
            {
                **_by(f"worker@{DOMAIN}"),
                "MyType": "Machine",
                "Name": "slot1@a",
                "TideResourceId": "b",
            },
            True,
        ),
    ],
)
def test_the_collector_takes_a_workers_ads_only_for_its_own_resource(
    ad: dict[str, Any], accepted: bool
) -> None:
    assert _eval(ACCEPTED, ad) is accepted, ad
