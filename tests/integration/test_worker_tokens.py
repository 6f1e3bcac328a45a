"""The pool's collector honours a worker's own token for that worker alone:
tokens minted by tide.htcondor.tokens from the lab's workers' signing key,
sent by real HTCondor clients to the lab's real collector.

Each attempt runs in a fresh process (tests/bin is not needed: the venv's
python with a private CONDOR_CONFIG holding exactly one token), so no
security session of an earlier attempt is reused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from tests import lab
from tests.pool import client
from tide.htcondor import tokens
from tide.htcondor.tokens import SigningKey

KEY_FILE = lab.STATE / "secrets" / "workers_signing_key"

_ADVERTISE = textwrap.dedent(
    """\
    import json, os, sys
    folder = sys.argv[1]
    os.environ["CONDOR_CONFIG"] = os.path.join(folder, "condor_config")
    import classad2, htcondor2
    ads = []
    for spec in json.loads(sys.argv[2]):
        ad = classad2.ClassAd()
        for k, v in spec.items():
            ad[k] = v
        ads.append(ad)
    command = sys.argv[3]
    try:
        htcondor2.Collector(sys.argv[4]).advertise(ads, command)
        print("sent")
    except Exception as exc:
        print("refused:", exc)
    """
)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.read(KEY_FILE, key_id="tide-workers")


def _send(tmp: Path, token: str, ads: list[dict[str, object]], command: str) -> str:
    folder = tmp / uuid4().hex[:8]
    (folder / "tokens.d").mkdir(parents=True, mode=0o700)
    tokens.write_private(folder / "tokens.d" / "token", token)
    (folder / "condor_config").write_text(
        f"COLLECTOR_HOST = {lab.COLLECTOR}\n"
        f"SEC_TOKEN_DIRECTORY = {folder / 'tokens.d'}\n"
        "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS\n"
        "SEC_DEFAULT_ENCRYPTION = REQUIRED\n"
        "SEC_DEFAULT_INTEGRITY = REQUIRED\n"
        f"TRUST_DOMAIN = {lab.POOL_DOMAIN}\n"
    )
    script = folder / "advertise.py"
    script.write_text(_ADVERTISE)
    done = subprocess.run(
        [sys.executable, str(script), str(folder), json.dumps(ads), command, lab.COLLECTOR],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


def _own_token(key: SigningKey, resource: str) -> str:
    return tokens.mint_worker(
        key, resource_id=resource, domain=lab.POOL_DOMAIN, lifetime_s=600, now=time.time()
    )


def _slot(name: str, resource: str) -> dict[str, object]:
    return {
        "MyType": "Machine",
        "TargetType": "Job",
        "Name": name,
        "Machine": name.rsplit("@", maxsplit=1)[-1],
        "TideResourceId": resource,
        "SlotType": "Partitionable",
        "State": "Unclaimed",
        "Activity": "Idle",
        "Requirements": False,  # a stand-in: it must never match a job
        "MyAddress": "<127.0.0.1:9>",
    }


def _names(constraint: str) -> list[str]:
    htcondor2 = client()
    ads = htcondor2.Collector(lab.COLLECTOR).query(
        htcondor2.AdTypes.Startd, constraint=constraint, projection=["Name"]
    )
    return sorted(str(ad["Name"]) for ad in ads)


def _present(name: str, *, timeout: float = 10) -> bool:
    """Whether an ad named `name` appears within `timeout` (an update is
    asynchronous: the collector answers nothing to a refused one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _names(f'Name == "{name}"'):
            return True
        time.sleep(0.5)
    return False


@pytest.fixture
def resources() -> Iterator[tuple[str, str]]:
    a, b = f"tide-tok-{uuid4().hex[:8]}", f"tide-tok-{uuid4().hex[:8]}"
    yield a, b
    # Whatever a test got in, out again.
    for rid in (a, b):
        _withdraw(f'TideResourceId == "{rid}"')


def assert_advertises_only_its_own(tmp: Path, token: str, resource: str) -> None:
    """What a stolen copy of `resource`'s token can do: advertise a slot of
    that resource (so the refusals are the collector's rule), and nothing
    with another name or TideResourceId."""
    fake = f"tide-fake-{uuid4().hex[:8]}"
    refused = [_slot(f"slot1@{fake}", fake), _slot(f"slot2@{fake}", resource)]
    outputs = [_send(tmp, token, [slot], "UPDATE_STARTD_AD") for slot in refused]
    _send(tmp, token, [_slot(f"slot9@{resource}", resource)], "UPDATE_STARTD_AD")
    try:
        assert _present(f"slot9@{resource}"), outputs
        assert _names(f'TideResourceId == "{fake}" || regexp("@{fake}$", Name)') == []
    finally:
        _withdraw(f'Name == "slot9@{resource}"')


def _withdraw(constraint: str) -> None:
    """Startd ads out of the collector, with the controller's token."""
    htcondor2 = client(lab.STATE / "secrets" / "controller.token")
    import classad2  # noqa: PLC0415

    query = classad2.ClassAd()
    query["MyType"] = "Query"
    query["TargetType"] = "Machine"
    query["Requirements"] = classad2.ExprTree(constraint)
    htcondor2.Collector(lab.COLLECTOR).advertise([query], "INVALIDATE_STARTD_ADS")


def test_a_token_made_by_condor_token_create_verifies_with_the_same_key(key: SigningKey) -> None:
    """tide.htcondor.tokens derives the signing key as HTCondor does."""
    made = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "condor_token_create", "-key", "tide-workers",
        "-identity", f"tide-worker-x@{lab.POOL_DOMAIN}", "-authz", "ADVERTISE_STARTD",
        "-authz", "ADVERTISE_MASTER", "-lifetime", "60",
    ).stdout.strip()  # fmt: skip
    payload = tokens.verify(key, made)
    assert payload["sub"] == f"tide-worker-x@{lab.POOL_DOMAIN}"
    assert payload["scope"] == " ".join(tokens.WORKER_SCOPES)


def test_a_worker_token_advertises_its_own_resource(
    key: SigningKey, resources: tuple[str, str], tmp_path: Path
) -> None:
    a, _ = resources
    out = _send(tmp_path, _own_token(key, a), [_slot(f"slot1@{a}", a)], "UPDATE_STARTD_AD")
    assert _present(f"slot1@{a}"), out


def test_a_worker_token_cannot_advertise_another_resource(
    key: SigningKey, resources: tuple[str, str], tmp_path: Path
) -> None:
    a, b = resources
    token = _own_token(key, a)
    attempts = [
        _slot(f"slot1@{b}", b),  # another resource altogether
        _slot(f"slot2@{b}", a),  # its own id, another machine's name
        _slot(f"slot3@{a}", b),  # its own name, another id
    ]
    outputs = [_send(tmp_path, token, [ad], "UPDATE_STARTD_AD") for ad in attempts]
    # Its own ad still gets in (so the refusals above are the collector's rule).
    _send(tmp_path, token, [_slot(f"slot9@{a}", a)], "UPDATE_STARTD_AD")
    assert _present(f"slot9@{a}"), outputs
    assert _names(f'TideResourceId == "{b}" || Name == "slot1@{b}" || Name == "slot2@{b}"') == []
    assert _names(f'Name == "slot3@{a}"') == []


@pytest.mark.parametrize(
    "case",
    [
        "daemon scope",
        "administrator identity",
        "condor identity",
        "expired",
        "no expiry",
        "too long",
        "another pool",
        "another key",
    ],
)
def test_a_token_beyond_a_workers_authority_is_refused(
    key: SigningKey, resources: tuple[str, str], tmp_path: Path, case: str
) -> None:
    a, _ = resources
    now = time.time()
    sub = f"tide-worker-{a}@{lab.POOL_DOMAIN}"
    scopes: tuple[str, ...] = tokens.WORKER_SCOPES
    issuer, lifetime, minted_at, use_key = lab.POOL_DOMAIN, 600, now, key
    if case == "daemon scope":
        scopes = (*scopes, "condor:/DAEMON")
    elif case == "administrator identity":
        sub, scopes = f"root@{lab.POOL_DOMAIN}", (*scopes, "condor:/ADMINISTRATOR")
    elif case == "condor identity":
        sub = f"condor@{lab.POOL_DOMAIN}"
    elif case == "expired":
        minted_at = now - 3600
    elif case == "too long":
        lifetime = 10 * 365 * 86400
    elif case == "another pool":
        sub, issuer = f"tide-worker-{a}@elsewhere.example", "elsewhere.example"
    elif case == "another key":
        use_key = SigningKey("tide-workers", b"not the pool's key at all, 48 bytes of it....")
    token = tokens.mint(
        use_key,
        issuer=issuer,
        subject=sub,
        scopes=scopes,
        lifetime_s=lifetime,
        now=minted_at,
    )
    if case == "no expiry":
        token = _without_expiry(key, token)
    out = _send(tmp_path, token, [_slot(f"slot1@{a}", a)], "UPDATE_STARTD_AD")
    assert not _present(f"slot1@{a}", timeout=3), (case, out)


def _without_expiry(key: SigningKey, token: str) -> str:
    """The same claims, no `exp`, signed again with the key."""
    payload = tokens.claims(token)["payload"]
    return tokens.encode(key, {k: v for k, v in payload.items() if k != "exp"})
