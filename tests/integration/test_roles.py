"""The roles converge once and then change nothing; bad input stops the
play before anything changes, naming the variable; the image refuses a
bad environment, naming the setting."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import lab
from tide.htcondor import tokens


def _fingerprint() -> dict[str, object]:
    return {
        "key": lab.on_host(
            lab.CM_HOST, "sha256sum", "/opt/tide/central_manager/secrets/pool_signing_key"
        ).stdout,
        "cm": lab.container_state(lab.CM_HOST, lab.CM_CONTAINER),
        "worker": lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER),
        "compose": lab.on_host(
            lab.WORKER_HOST, "sha256sum", "/opt/tide/condor_worker/compose.yaml"
        ).stdout,
        "cvmfs": lab.container_state(lab.WORKER_HOST, lab.CVMFS_CONTAINER),
        "default.local": lab.on_host(
            lab.CVMFSEXEC_WORKER_HOST,
            "sha256sum",
            "/opt/tide/cvmfsexec/dist/etc/cvmfs/default.local",
        ).stdout,
        "squid": lab.container_state(lab.SQUID_HOST, lab.SQUID_CONTAINER),
        "squid_compose": lab.on_host(
            lab.SQUID_HOST, "sha256sum", "/opt/tide/squid/compose.yaml"
        ).stdout,
    }


def test_second_run_changes_nothing_and_keeps_the_signing_key() -> None:
    if lab.idempotence_checked():
        pytest.skip("Molecule's idempotence step ran site.yml again and nothing changed")
    before = _fingerprint()
    for name, hosts in [
        ("central_manager", [lab.CM_HOST]),
        ("provider", [lab.SQUID_HOST, lab.WORKER_HOST, lab.CVMFSEXEC_WORKER_HOST]),
    ]:
        result = lab.playbook(name)
        assert result.returncode == 0, result.output[-4000:]
        assert result.changed == dict.fromkeys(hosts, 0), result.output[-4000:]
    assert _fingerprint() == before


@pytest.mark.parametrize(
    ("playbook", "extra", "named"),
    [
        ("worker", "condor_worker_cpus=-1", "condor_worker_cpus must be a positive integer"),
        ("worker", "condor_worker_cpus=lots", "condor_worker_cpus"),
        ("worker", "condor_worker_collector=", "condor_worker_collector must be"),
        (
            "worker",
            "condor_worker_token_file=/nonexistent/worker.token",
            "condor_worker_token_file",
        ),
        (
            "worker",
            "condor_worker_memory_mb=0",
            "condor_worker_memory_mb must be a positive integer",
        ),
        ("central_manager", "central_manager_address=", "central_manager_address must be"),
        ("central_manager", "central_manager_port=70000", "central_manager_port must be"),
        (
            "squid",
            '{"squid_allowed_clients": ["0.0.0.0/0"]}',
            "would make an open proxy",
        ),
        ("squid", '{"squid_allowed_clients": []}', "squid_allowed_clients must name"),
        ("squid", '{"squid_allowed_clients": ["everyone"]}', "'everyone' must be an address"),
        ("squid", "squid_log_rotate_calendar=sometimes", "is not a systemd calendar event"),
        ("squid", '{"squid_origins": []}', "squid_origins must name"),
        (
            "central_manager",
            '{"central_manager_worker_hosts": ["a b"]}',
            "central_manager_worker_hosts: 'a b' is not a node name",
        ),
        ("squid", '{"squid_origins": ["0.0.0.0/0"]}', "squid_origins: '0.0.0.0/0'"),
        ("squid", '{"squid_origins": ["localhost"]}', "squid_origins: 'localhost'"),
        ("squid", '{"squid_origins": ["2130706433"]}', "squid_origins: '2130706433'"),
        ("worker", "cvmfs_http_proxy=", "cvmfs_http_proxy must be the site squid"),
        ("worker", "cvmfs_http_proxy=squid:3128", "cvmfs_http_proxy must be the site squid"),
        ("worker", '{"cvmfs_repositories": ["../etc"]}', "cvmfs_repositories must list"),
        ("worker", "cvmfs_mode=magic", "cvmfs_mode"),
        ("worker", "cvmfs_quota_limit_mb=0", "cvmfs_quota_limit_mb must be a positive"),
        ("worker", '{"cvmfs_config": {"CVMFS_HTTP_PROXY": "x"}}', "cvmfs_config: CVMFS_HTTP_PROXY"),
        ("worker", "cvmfs_cvmfsexec_dist=/nonexistent", "must hold an executable cvmfsexec"),
    ],
)
def test_bad_input_stops_before_any_change(playbook: str, extra: str, named: str) -> None:
    before = _fingerprint()
    result = lab.playbook(playbook, "-e", extra)
    assert result.returncode != 0
    assert named in result.output, result.output[-3000:]
    assert "changed=0" in result.output
    assert _fingerprint() == before


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("garbage", "holds no IDTOKEN"),
        ("expired", "not be expired"),
        ("another pool", "it names tide-worker-x@elsewhere.example"),
        ("wider", "it grants condor:/READ condor:/DAEMON"),
    ],
)
def test_a_token_no_worker_may_hold_stops_before_any_change(
    tmp_path: Path, case: str, named: str
) -> None:
    """condor_worker_token_file: what the token says is checked before anything
    changes (its signature is the collector's to check)."""
    key = tokens.SigningKey("tide-workers", os.urandom(32))
    now = time.time()
    worker = f"tide-worker-x@{lab.POOL_DOMAIN}"
    text = {
        "garbage": "not a token at all",
        "expired": tokens.mint_worker(
            key, resource_id="x", domain=lab.POOL_DOMAIN, lifetime_s=600, now=now - 3600
        ),
        "another pool": tokens.mint_worker(
            key, resource_id="x", domain="elsewhere.example", lifetime_s=600, now=now
        ),
        "wider": tokens.mint(
            key,
            issuer=lab.POOL_DOMAIN,
            subject=worker,
            scopes=("condor:/READ", "condor:/DAEMON"),
            lifetime_s=600,
            now=now,
        ),
    }[case]
    token_file = tmp_path / "worker.token"
    tokens.write_private(token_file, text + "\n")
    before = _fingerprint()
    result = lab.playbook(
        "worker", "-e", f"condor_worker_token_file={token_file}", "--limit", lab.WORKER_HOST
    )
    assert result.returncode != 0
    assert named in result.output.replace("\n        ", " "), result.output[-3000:]
    assert text not in result.output  # only the problem is named, never the token
    assert "changed=0" in result.output
    assert _fingerprint() == before


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "TIDE_CONDOR_ROLES is required"),
        ({"TIDE_CONDOR_ROLES": "execute"}, "TIDE_POOL_DOMAIN is required"),
        ({"TIDE_CONDOR_ROLES": "wizard", "TIDE_POOL_DOMAIN": "x.y"}, "unknown role 'wizard'"),
        ({"TIDE_CONDOR_ROLES": "execute", "TIDE_POOL_DOMAIN": "x.y"}, "TIDE_COLLECTOR is required"),
        (
            {
                "TIDE_CONDOR_ROLES": "execute",
                "TIDE_POOL_DOMAIN": "x.y",
                "TIDE_COLLECTOR": "127.0.0.1:1",
            },
            "secret /run/secrets/token is required",
        ),
        ({"TIDE_CONDOR_ROLES": "central-manager", "TIDE_POOL_DOMAIN": "x.y"}, "pool_signing_key"),
        (
            {
                "TIDE_CONDOR_ROLES": "submit",
                "TIDE_POOL_DOMAIN": "x.y",
                "TIDE_COLLECTOR": "a:1",
                "TIDE_PORT": "-5",
            },
            "TIDE_PORT='-5' must be a positive integer",
        ),
    ],
)
def test_image_refuses_bad_environment(env: dict[str, str], named: str) -> None:
    args = [f"-e{key}={value}" for key, value in env.items()]
    proc = lab.run(
        ["docker", "run", "--rm", "--network", "none", *args, "tide/condor:0.1.0"], check=False
    )
    assert proc.returncode == 64, proc.stdout + proc.stderr
    assert named in proc.stderr


def test_site_condor_config_reconfigures_the_worker_without_a_restart() -> None:
    def knob() -> str:
        return lab.in_container(
            lab.WORKER_HOST,
            lab.WORKER_CONTAINER,
            "condor_config_val",
            "TIDE_TEST_KNOB",
            check=False,
        ).stdout.strip()

    assert knob() != "42"
    started = lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)["started"]
    setting = (
        '{"condor_worker_condor_config": {"TIDE_TEST_KNOB": 42, "STARTD.TIDE_TEST_FLAG": true}}'
    )
    try:
        # One role run alone, as an operator changes one setting (its input
        # checked all the same: the check plays run with any --tags).
        result = lab.playbook(
            "worker", "-e", setting, "--limit", lab.WORKER_HOST, "--tags", "condor_worker"
        )
        assert result.returncode == 0, result.output[-4000:]
        assert "RUNNING HANDLER [tide.pool.condor_worker : Reconfigure the worker]" in result.output
        assert knob() == "42"
        flag = lab.in_container(
            lab.WORKER_HOST, lab.WORKER_CONTAINER, "condor_config_val", "STARTD.TIDE_TEST_FLAG"
        )
        assert flag.stdout.strip() == "true"
        # The running startd read it too: condor_reconfig, not a restart.
        assert lab.container_state(lab.WORKER_HOST, lab.WORKER_CONTAINER)["started"] == started

        def startd_has_it() -> bool:
            live = lab.in_container(
                lab.WORKER_HOST,
                lab.WORKER_CONTAINER,
                "condor_config_val",
                "-startd",
                "TIDE_TEST_KNOB",
                check=False,
            )
            return live.stdout.strip() == "42"

        lab.wait_for("the running startd to read the new setting", startd_has_it, timeout=30)
    finally:
        result = lab.playbook("worker", "--limit", lab.WORKER_HOST, "--tags", "condor_worker")
        assert result.returncode == 0, result.output[-4000:]
    assert knob() != "42"


def test_docker_engine_runs_with_compose_v2_and_applies_daemon_options() -> None:
    for host in (lab.CM_HOST, lab.WORKER_HOST, lab.SQUID_HOST):
        assert lab.on_host(host, "systemctl", "is-active", "docker").stdout.strip() == "active"
        assert lab.on_host(host, "docker", "compose", "version", "--short").stdout.startswith("2.")
        assert lab.on_host(host, "docker", "info", "-f", "{{.LoggingDriver}}").stdout.strip() == (
            "json-file"
        )
    labelled = (
        '{"docker_engine_daemon_options": {"iptables": false, "ip6tables": false,'
        ' "ip-forward": false, "ip-masq": false, "storage-driver": "overlay2",'
        ' "log-driver": "json-file", "labels": ["tide-test=1"]}}'
    )
    try:
        result = lab.playbook("squid", "-e", labelled, "--tags", "docker_engine")
        assert result.returncode == 0, result.output[-4000:]
        assert "RUNNING HANDLER [tide.pool.docker_engine : Restart Docker]" in result.output
        labels = lab.on_host(lab.SQUID_HOST, "docker", "info", "-f", "{{.Labels}}").stdout
        assert "tide-test=1" in labels
        # The restarted engine brought squid back, healthy.
        lab.wait_for(
            "squid to be healthy after the engine restart",
            lambda: lab.container_state(lab.SQUID_HOST, lab.SQUID_CONTAINER)["health"] == "healthy",
            timeout=120,
        )
    finally:
        result = lab.playbook("squid", "--tags", "docker_engine")
        assert result.returncode == 0, result.output[-4000:]
    assert (
        "tide-test=1"
        not in lab.on_host(lab.SQUID_HOST, "docker", "info", "-f", "{{.Labels}}").stdout
    )
