"""Least authority: the worker token can only read and advertise a startd
and master; a worker with a wrong token never joins and says why; no
wildcard authorisation anywhere but the workers' own identities
(tide-worker-*), confined by the pool's token and collector rules."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid

import classad2
import pytest

from tests import lab
from tests.pool import client

BAD_WORKER = "tide-test-bad-token"
BAD_WORKER_PORT = lab.TEST_PORTS["bad_token_worker"]


def _token_claims(token: str) -> dict[str, str]:
    payload = token.strip().split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_worker_token_holds_only_read_and_advertise_startd_master() -> None:
    claims = _token_claims((lab.STATE / "secrets" / "worker.token").read_text())
    assert claims["sub"] == f"worker@{lab.POOL_DOMAIN}"
    assert claims["iss"] == lab.POOL_DOMAIN
    assert sorted(claims["scope"].split()) == [
        "condor:/ADVERTISE_MASTER",
        "condor:/ADVERTISE_STARTD",
        "condor:/READ",
    ]


def test_worker_token_cannot_submit_a_job() -> None:
    htcondor2 = client()
    schedd_ad = htcondor2.Collector().locate(htcondor2.DaemonTypes.Schedd, lab.CM_HOST)
    schedd = htcondor2.Schedd(schedd_ad)
    with pytest.raises(htcondor2.HTCondorException, match="DENIED"):
        schedd.submit(htcondor2.Submit({"executable": "/bin/true"}))


def test_worker_token_cannot_advertise_a_schedd() -> None:
    htcondor2 = client()
    collector = htcondor2.Collector()
    tag = uuid.uuid4().hex[:8]
    rogue = classad2.ClassAd(
        {
            "MyType": "Scheduler",
            "Name": f"rogue-{tag}",
            "Machine": "rogue",
            "MyAddress": "<127.0.0.1:1>",
        }
    )
    # Control: the same token and path do advertise what the token allows.
    probe = classad2.ClassAd(
        {
            "MyType": "Machine",
            "Name": f"probe-{tag}",
            "Machine": "probe",
            "MyAddress": "<127.0.0.1:1>",
            "Requirements": False,
            "START": False,
        }
    )
    with pytest.raises(htcondor2.HTCondorException):
        collector.advertise([rogue], "UPDATE_SCHEDD_AD")
    collector.advertise([probe], "UPDATE_STARTD_AD")
    try:
        time.sleep(2)
        schedds = [
            ad["Name"] for ad in collector.query(htcondor2.AdTypes.Schedd, projection=["Name"])
        ]
        startds = [
            ad["Name"] for ad in collector.query(htcondor2.AdTypes.Startd, projection=["Name"])
        ]
        assert f"probe-{tag}" in startds
        assert f"rogue-{tag}" not in schedds
    finally:
        gone = classad2.ClassAd({"MyType": "Query", "TargetType": "Machine"})
        gone["Requirements"] = classad2.ExprTree(f'Name == "probe-{tag}"')
        collector.advertise([gone], "INVALIDATE_STARTD_ADS")


def test_worker_with_wrong_token_never_joins_and_logs_why() -> None:
    real = (lab.STATE / "secrets" / "worker.token").read_text().strip()
    head, payload, signature = real.split(".")
    forged = ".".join([head, payload, ("A" if signature[0] != "A" else "B") + signature[1:]])
    lab.on_host(lab.WORKER_HOST, "docker", "rm", "-f", BAD_WORKER, check=False)
    lab.run(
        [
            "docker",
            "exec",
            "-i",
            lab.WORKER_HOST,
            "sh",
            "-c",
            "umask 077; cat > /root/forged.token",
        ],
        input_text=forged + "\n",
    )
    lab.on_host(
        lab.WORKER_HOST, "docker", "run", "-d", "--name", BAD_WORKER, "--network", "host",
        "-e", "TIDE_CONDOR_ROLES=execute", "-e", f"TIDE_POOL_DOMAIN={lab.POOL_DOMAIN}",
        "-e", f"TIDE_COLLECTOR={lab.COLLECTOR}", "-e", f"TIDE_PORT={BAD_WORKER_PORT}",
        "-e", "TIDE_BIND_ADDRESS=127.0.0.1", "-e", f"TIDE_NODE_NAME={BAD_WORKER}",
        "-e", "TIDE_SITE_NAME=LAB", "-v", "/root/forged.token:/run/secrets/token:ro",
        "tide/condor:0.1.0",
    )  # fmt: skip
    try:
        text = ""

        def refused_in_log() -> bool:
            nonlocal text
            logs = lab.on_host(lab.WORKER_HOST, "docker", "logs", BAD_WORKER)
            text = logs.stdout + logs.stderr
            # The master's or the startd's update refused, for authentication.
            refused = "Failed to authenticate" in text or "DENIED" in text
            return refused and ("UPDATE_STARTD_AD" in text or "UPDATE_MASTER_AD" in text)

        try:
            lab.wait_for("the forged-token worker to log its refusal", refused_in_log, timeout=120)
        except AssertionError as exc:
            state = lab.on_host(
                lab.WORKER_HOST, "docker", "inspect", "-f", "{{.State.Status}}", BAD_WORKER,
                check=False,
            )  # fmt: skip
            raise AssertionError(
                f"{exc}; container {state.stdout.strip()}, its log ends:\n{text[-3000:]}"
            ) from None
        # The good worker registered in seconds; give the bad one as long again.
        time.sleep(20)
        htcondor2 = client()
        names = [
            ad["Name"]
            for ad in htcondor2.Collector().query(htcondor2.AdTypes.Any, projection=["Name"])
        ]
        assert not [name for name in names if BAD_WORKER in name], names
    finally:
        lab.on_host(lab.WORKER_HOST, "docker", "rm", "-f", BAD_WORKER, check=False)
        lab.on_host(lab.WORKER_HOST, "rm", "-f", "/root/forged.token", check=False)


GUARDED = [
    "ALLOW_WRITE",
    "ALLOW_DAEMON",
    "ALLOW_ADVERTISE_MASTER",
    "ALLOW_ADVERTISE_STARTD",
    "ALLOW_ADVERTISE_SCHEDD",
    "ALLOW_NEGOTIATOR",
    "ALLOW_ADMINISTRATOR",
    "ALLOW_CONFIG",
    "ALLOW_OWNER",
]


ONE_WORKER = re.compile(r"tide-worker-\*@(\$\(UID_DOMAIN\)|" + re.escape(lab.POOL_DOMAIN) + r")")
"""The one pattern allowed, in ALLOW_ADVERTISE_MASTER and _STARTD only: the
workers' own identities (tide-worker-<resource>), whose tokens the pool
honours only with the worker's two scopes and whose ads its collector takes
only for their own resource (images/condor/README.md). Each identity is
made per resource, so no list could name them one by one."""
ONE_WORKER_KNOBS = ("ALLOW_ADVERTISE_MASTER", "ALLOW_ADVERTISE_STARTD")


def _unguarded(knob: str, value: str) -> str:
    """The value without the workers' own identities where they belong."""
    return ONE_WORKER.sub("", value) if knob.endswith(ONE_WORKER_KNOBS) else value


@pytest.mark.parametrize(
    ("host", "container"),
    [(lab.CM_HOST, lab.CM_CONTAINER), (lab.WORKER_HOST, lab.WORKER_CONTAINER)],
)
def test_no_wildcard_authorisation(host: str, container: str) -> None:
    for knob in GUARDED:
        for prefix in ("", "COLLECTOR.", "NEGOTIATOR.", "SCHEDD.", "STARTD.", "MASTER."):
            value = lab.in_container(
                host, container, "condor_config_val", f"{prefix}{knob}", check=False
            ).stdout
            assert "*" not in _unguarded(knob, value), f"{prefix}{knob} = {value.strip()} on {host}"
    dump = lab.in_container(host, container, "condor_config_val", "-dump", "ALLOW_").stdout
    for line in dump.splitlines():
        name = line.split("=", 1)[0].strip()
        if name in GUARDED:
            assert "*" not in _unguarded(name, line), line
