"""The OpenStack site for real against a FAKE cloud: `tide run` with an
`openstack` site talks through real openstacksdk to tests/doubles/fake_openstack
(Keystone, Nova, Glance and Neutron on 127.0.0.1:29740, named in a clouds.yaml),
whose "servers" are their cloud-init user data run on the lab host tide-lab-cm
(tests/doubles/fake_openstack_hypervisor: the rendered compose project of a
tide/condor worker, up under its own project name and port).

So everything after the cloud's API is real: idle jobs -> a server created
(with the ownership metadata and the user data the site renders) -> its
worker's slot registers in the lab pool -> the jobs complete on it -> idle
-> the server is deleted (powered off hard, as Nova does), its worker
container is gone and the controller withdraws its slot's ads from the
collector. What the fake cannot prove (a real Nova's scheduling and
networking) is listed in controller/README.md.
"""

from __future__ import annotations

import base64
import http.server
import os
import re
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
import requests
import yaml

from tests import lab
from tests.doubles.fake_openstack import FakeOpenStack, Recorded
from tests.doubles.fake_openstack_hypervisor import (
    NO_VALID_HOST,
    PROJECT_PREFIX,
    ROOT,
    LabHostHypervisor,
)
from tests.integration.test_worker_tokens import assert_advertises_only_its_own
from tests.pool import client
from tests.probes import (
    CREDENTIAL_SEARCH,
    JWT,
    assert_no_token_found,
    assert_no_token_in_state,
)
from tests.sampler import SecretSampler
from tide.htcondor import tokens
from tide.sites.base import PoolEndpoint
from tide.sites.openstack.adapter import BOOT_TOKEN_MARGIN_S, TOKEN_CHUNKS, TOKEN_KEY
from tide.sites.openstack.config import OpenStackSiteConfig

SITE = "fakeos"
CLOUD = "fake"
IDLE_TIMEOUT_S = 15
CREATE = "POST /compute/v2.1/servers"
DELETE = "DELETE /compute/v2.1/servers/{id}"
METADATA = "POST /compute/v2.1/servers/{id}/metadata"


@pytest.fixture
def hypervisor() -> Iterator[LabHostHypervisor]:
    """The lab host's fake servers; none before the test (a killed earlier run
    may have left some), none after it, whatever happened."""
    hv = LabHostHypervisor()
    hv.cleanup()
    try:
        yield hv
    finally:
        hv.cleanup()


@pytest.fixture
def cloud(hypervisor: LabHostHypervisor) -> Iterator[FakeOpenStack]:
    with FakeOpenStack(hypervisor) as fake:
        yield fake


def _write_secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def _config(
    tmp: Path,
    cloud: FakeOpenStack,
    owner: str,
    limits: str,
    *,
    keyed: bool = False,
    api_timeout_s: float = 30.0,
) -> Path:
    """The daemon's configuration: the site hands out the shared worker
    token, or (`keyed`) mints each server tokens with the workers' key."""
    token = _write_secret(tmp / "token", (lab.STATE / "secrets" / "worker.token").read_text())
    key = tmp / "workers_signing_key"
    key.write_bytes((lab.STATE / "secrets" / "workers_signing_key").read_bytes())
    key.chmod(0o600)
    credential = f"worker_signing_key_file: {key}" if keyed else f"worker_token_file: {token}"
    p = cloud.project
    return lab.controller_config(
        tmp,
        token=token,
        owner=owner,
        sites=f"""\
              {SITE}:
                kind: openstack
                cloud: {CLOUD}
                image: {p.images[0].name}
                flavor: {p.flavors[0].name}
                network: {p.networks[0].name}
                key_name: {p.keypairs[0].name}
                security_groups: [{p.security_groups[1].name}]
                metadata: {{purpose: tide-test}}
                {credential}
                shape: {{cpus: 2, memory_mb: 1024, disk_mb: 2048}}
                attributes: {{SiteName: FAKE-CLOUD}}
                limits: {limits}
                api_timeout_s: {api_timeout_s}
            """,
    )


def _start(
    tmp: Path, cloud: FakeOpenStack, config: Path
) -> tuple[subprocess.Popen[bytes], IO[str]]:
    clouds = _write_secret(tmp / "clouds.yaml", yaml.safe_dump(cloud.clouds_yaml(CLOUD)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["OS_CLIENT_CONFIG_FILE"] = str(clouds)
    log = (tmp / "tide.log").open("w")
    daemon = subprocess.Popen(
        [str(lab.VENV_BIN / "tide"), "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    return daemon, log


def _stop(daemon: subprocess.Popen[bytes], log: IO[str]) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(timeout=60)
    log.close()
    return code


def _submit(count: int, seconds: int = 3) -> str:
    """`count` jobs of `seconds` that only a worker of SITE can run; the cluster id."""
    submit = (
        "cd $(mktemp -d) && printf '%s\\n' 'executable = /bin/sleep' "
        f"'arguments = {seconds}' "
        "'request_cpus = 1' 'request_memory = 100MB' "
        f"'requirements = (TARGET.TideSite == \"{SITE}\")' 'queue {count}' > j.sub "
        "&& condor_submit -terse j.sub | cut -d. -f1"
    )
    cluster = lab.in_container(
        lab.CM_HOST, lab.CM_CONTAINER, "bash", "-c", submit, user="physicist"
    ).stdout.strip()
    assert cluster.isdigit(), cluster
    return cluster


def _remove_jobs(cluster: str) -> None:
    lab.in_container(lab.CM_HOST, lab.CM_CONTAINER, "condor_rm", cluster, check=False)


def _cm(*argv: str) -> list[str]:
    return lab.in_container(lab.CM_HOST, lab.CM_CONTAINER, *argv).stdout.split()


def _slots(resource_id: str) -> list[str]:
    return _cm("condor_status", "-const", f'TideResourceId == "{resource_id}"', "-af", "Name")


def _containers(server_id: str) -> list[str]:
    label = f"label=com.docker.compose.project={PROJECT_PREFIX}{server_id}"
    argv = ["docker", "ps", "-aq", "--filter", label]
    return lab.on_host(lab.CM_HOST, *argv).stdout.split()


def _metadata_token(meta: dict[str, str]) -> str:
    return "".join(meta.get(f"{TOKEN_KEY}{i}", "") for i in range(TOKEN_CHUNKS))


def _check_create_request(
    create: Recorded, cloud: FakeOpenStack, owner: str, *, keyed: bool = False
) -> str:
    """The create request as the site must make it; returns the resource id."""
    server = create.body["server"]
    meta = dict(server["metadata"])
    rid = meta["tide-resource-id"]
    working = _metadata_token(meta)
    for i in range(TOKEN_CHUNKS):
        meta.pop(f"{TOKEN_KEY}{i}", None)
    assert meta == {
        "purpose": "tide-test",  # the configured metadata, and the ownership tags
        "tide-owner": owner,
        "tide-site": SITE,
        "tide-resource-id": rid,
    }
    assert server["name"] == rid
    assert rid.startswith(f"tide-{SITE}-")
    p = cloud.project
    assert server["imageRef"] == p.images[0].id
    assert server["flavorRef"] == p.flavors[0].id
    assert server["networks"] == [{"uuid": p.networks[0].id}]
    assert server["key_name"] == p.keypairs[0].name
    assert server["security_groups"] == [{"name": p.security_groups[1].name}]
    user_data = base64.b64decode(server["user_data"], validate=True).decode()
    assert user_data.startswith("#cloud-config\n")
    assert f'TIDE_RESOURCE_ID: "{rid}"' in user_data
    shared = (lab.STATE / "secrets" / "worker.token").read_text().strip()
    if not keyed:
        assert shared in user_data  # the user data is where the token goes, and nowhere else
        assert working == ""
        return str(rid)
    # A boot token of the server's own in the user data, expiring with the
    # boot timeout (180 s here) plus the margin; its working token in its
    # metadata, valid a day (renewed there).
    assert shared not in user_data
    (boot,) = re.findall(JWT + r"[A-Za-z0-9_.-]*", user_data)
    for token, lifetime in ((boot, 180 + BOOT_TOKEN_MARGIN_S), (working, 86400)):
        payload = tokens.claims(token)["payload"]
        assert payload["sub"] == tokens.worker_identity(rid, lab.POOL_DOMAIN)
        assert payload["scope"] == " ".join(tokens.WORKER_SCOPES)
        assert payload["exp"] - payload["iat"] == lifetime
    return str(rid)


def test_daemon_boots_a_fake_cloud_server_whose_worker_runs_jobs_then_deletes_it(
    tmp_path: Path, cloud: FakeOpenStack, hypervisor: LabHostHypervisor
) -> None:
    owner = f"test-{uuid.uuid4().hex[:8]}"
    limits = (
        f"{{max_resources: 2, max_booting: 2, idle_timeout_s: {IDLE_TIMEOUT_S}, "
        "boot_timeout_s: 180}"
    )
    config = _config(tmp_path, cloud, owner, limits, keyed=True)
    key = (lab.STATE / "secrets" / "workers_signing_key").read_text().strip()
    cluster = ""
    # The scale-up shows no token or key in any process's argv or
    # environment (ps read every 0.2 s, all over this machine).
    daemon, log = _start(tmp_path, cloud, config)
    try:
        with SecretSampler([key]) as seen:
            cluster = _submit(2)
            lab.wait_for("a server created", lambda: bool(cloud.recorded(CREATE)), 60, 0.5)
            create = cloud.recorded(CREATE)[0]
            assert create.status == 202
            rid = _check_create_request(create, cloud, owner, keyed=True)
            (server,) = [s for s in cloud.servers() if s.name == rid]
            lab.wait_for(f"the slot of {rid} to register", lambda: bool(_slots(rid)), 180)
        assert seen.samples > 0
        assert seen.found == [], seen.found
        assert server.id in hypervisor.ports
        env = lab.on_host(
            lab.CM_HOST, "docker", "inspect", "-f", "{{json .Config.Env}}", *_containers(server.id)
        ).stdout
        assert f"TIDE_PORT={hypervisor.ports[server.id]}" in env
        assert f"TIDE_RESOURCE_ID={rid}" in env
        assert JWT[:3] not in env
        _check_server_token(tmp_path, cloud, config, server.id, rid)

        def hosts() -> list[str]:
            return _cm("condor_history", cluster, "-af", "LastRemoteHost")

        lab.wait_for("the jobs to complete", lambda: len(hosts()) == 2, 240)
        assert all(h.endswith(f"@{rid}") for h in hosts()), hosts()
        assert len(cloud.recorded(CREATE)) == 1  # one 2-CPU server for two 1-CPU jobs

        lab.wait_for(
            "the idle server to be deleted",
            lambda: server.id in cloud.nova.deleted,
            IDLE_TIMEOUT_S + 120,
        )
        assert not _containers(server.id)
        assert f"{PROJECT_PREFIX}{server.id}" not in hypervisor.projects()
        folder = lab.on_host(lab.CM_HOST, "test", "-e", f"{ROOT}/{server.id}", check=False)
        assert folder.returncode == 1, "the server's folder is still on the lab host"
        # The server was powered off hard: only the controller's withdrawal
        # takes its ads out of the collector (they would linger 15 minutes).
        lab.wait_for("the controller to withdraw the slot's ads", lambda: not _slots(rid), 60)
        # It was drained first, through its metadata (an idle drain).
        assert any(value.endswith(" idle") for value in _drains_asked(cloud)), _drains_asked(cloud)
    finally:
        code = _stop(daemon, log)
        if cluster:
            _remove_jobs(cluster)
    text = (tmp_path / "tide.log").read_text()
    assert code == 0, text[-3000:]
    _check_secrets_not_in(text, cloud)
    assert_no_token_in_state(tmp_path)
    assert not cloud.unhandled(), [(r.method, r.path) for r in cloud.unhandled()]
    assert all(r.status != 401 for r in cloud.requests)  # authenticated throughout
    deletes = cloud.recorded(DELETE)
    assert [r.path.rsplit("/", 1)[1] for r in deletes] == [server.id]
    assert not cloud.servers()
    status = lab.tide(config, "status")
    assert status.splitlines()[1].split() == [SITE, "0", "0", "0", "0", "0", "0"], status


def test_an_operator_drain_lets_a_busy_servers_job_finish(
    tmp_path: Path, cloud: FakeOpenStack
) -> None:
    """Issue 11, point 1: `tide drain` of a busy server drains its startd (the
    server reads the request from its metadata service); the server is
    deleted only once its startd says Drained, after the job completed."""
    owner = f"test-{uuid.uuid4().hex[:8]}"
    limits = "{max_resources: 1, max_booting: 1, idle_timeout_s: 600, boot_timeout_s: 180}"
    config = _config(tmp_path, cloud, owner, limits)
    daemon, log = _start(tmp_path, cloud, config)
    cluster = ""
    try:
        cluster = _submit(1, seconds=25)

        def job(*attrs: str) -> list[str]:
            return _cm("condor_q", cluster, "-af", *attrs) or _cm(
                "condor_history", cluster, "-af", *attrs
            )

        lab.wait_for("the job to run", lambda: job("JobStatus") == ["2"], 240)
        rid = _check_create_request(cloud.recorded(CREATE)[0], cloud, owner)
        (server,) = [s for s in cloud.servers() if s.name == rid]
        lab.tide(config, "drain", rid)

        def draining() -> bool:
            # The job's slot retires at once; the watcher's own report
            # (TideDrainOutcome) comes with the startd's next update.
            ads = _cm(
                "condor_status",
                "-const",
                f'TideResourceId == "{rid}"',
                "-af",
                "Activity",
                "TideDrainOutcome",
            )
            return "Retiring" in ads or '"draining"' in ads or "draining" in ads

        lab.wait_for("its startd to drain", draining, 60)

        def completed() -> bool:
            done = job("JobStatus") == ["4"]
            assert done or server.id not in cloud.nova.deleted, "deleted while its job ran"
            return done

        lab.wait_for("the job to complete", completed, 120)
        assert job("ExitCode", "NumJobStarts") == ["0", "1"]  # never killed or restarted
        lab.wait_for(
            "the drained server to be deleted", lambda: server.id in cloud.nova.deleted, 90
        )
        asked = _drains_asked(cloud)
        assert any(value.endswith(" graceful") for value in asked), asked
    finally:
        code = _stop(daemon, log)
        if cluster:
            _remove_jobs(cluster)
    assert code == 0, (tmp_path / "tide.log").read_text()[-3000:]
    assert not cloud.unhandled(), [(r.method, r.path) for r in cloud.unhandled()]


API_TIMEOUT_S = 10.0  # the site's api_timeout_s in the late-delete test
HUNG_DELETE_S = 45.0  # longer than that: the daemon gives up first; the server boots meanwhile


def test_a_server_given_up_while_it_boots_takes_no_job_however_late_its_delete(
    tmp_path: Path, cloud: FakeOpenStack
) -> None:
    """Issue 11 (the simulator's find): a boot no longer needed is told to
    drain if idle (its metadata) before its delete, and its startd takes no
    job before its drain watch has read that (START waits for
    TideDrainChecked). So when the delete hangs past the daemon's deadline
    and lands late, the server that came up meanwhile has run no job."""
    owner = f"test-{uuid.uuid4().hex[:8]}"
    limits = "{max_resources: 1, max_booting: 1, idle_timeout_s: 600, boot_timeout_s: 300}"
    config = _config(tmp_path, cloud, owner, limits, api_timeout_s=API_TIMEOUT_S)
    cloud.nova.hang_delete_s = HUNG_DELETE_S
    daemon, log = _start(tmp_path, cloud, config)
    first = second = ""
    try:
        first = _submit(1)
        lab.wait_for("a server created", lambda: bool(cloud.recorded(CREATE)), 60, 0.5)
        rid = _check_create_request(cloud.recorded(CREATE)[0], cloud, owner)
        (server,) = [s for s in cloud.servers() if s.name == rid]
        _remove_jobs(first)  # no longer needed while it boots
        lab.wait_for(
            "an idle drain asked of the boot",
            lambda: any(v.endswith(" idle") for v in _drains_asked(cloud)),
            30,
            0.5,
        )
        second = _submit(1)  # a job it could run: it must not, it is being deleted

        def ads() -> list[str]:
            return _cm(
                "condor_status",
                "-const",
                f'TideResourceId == "{rid}"',
                "-af",
                "State",
                "TideDrainChecked",
            )

        lab.wait_for("the given-up server's startd to come up", lambda: bool(ads()), 80)
        assert server.id not in cloud.nova.deleted  # still up: its delete hangs
        lab.wait_for("it to say Drained", lambda: ads() == ["Drained", "true"], 30)
        lab.wait_for("its late delete", lambda: server.id in cloud.nova.deleted, HUNG_DELETE_S + 30)

        def job(*attrs: str) -> list[str]:
            return _cm("condor_q", second, "-af", *attrs) or _cm(
                "condor_history", second, "-af", *attrs
            )

        lab.wait_for(
            "the job to run on a server of its own", lambda: job("JobStatus") == ["4"], 240
        )
        host, starts = job("LastRemoteHost", "NumJobStarts")
        assert not host.endswith(f"@{rid}"), host
        assert starts == "1"  # never started on the given-up server, never restarted
    finally:
        code = _stop(daemon, log)
        for cluster in (first, second):
            if cluster:
                _remove_jobs(cluster)
    assert code == 0, (tmp_path / "tide.log").read_text()[-3000:]
    assert not cloud.unhandled(), [(r.method, r.path) for r in cloud.unhandled()]


def _drains_asked(cloud: FakeOpenStack) -> list[str]:
    """The tide-drain values the controller set on servers, in order (other
    metadata calls renew tokens)."""
    return [
        r.body["metadata"]["tide-drain"]
        for r in cloud.recorded(METADATA)
        if "tide-drain" in r.body["metadata"]
    ]


def test_daemon_survives_a_full_quota_and_retries(tmp_path: Path, cloud: FakeOpenStack) -> None:
    cloud.project.max_servers = 0
    owner = f"test-{uuid.uuid4().hex[:8]}"
    limits = "{max_resources: 2, backoff_base_s: 1, backoff_max_s: 2}"
    daemon, log = _start(tmp_path, cloud, _config(tmp_path, cloud, owner, limits))
    cluster = ""
    try:
        cluster = _submit(1)

        def refused() -> int:
            return sum(r.status == 403 for r in cloud.recorded(CREATE))

        lab.wait_for("two creates refused for quota", lambda: refused() >= 2, 90, 0.5)
        assert daemon.poll() is None, "the daemon stopped on a full quota"
    finally:
        code = _stop(daemon, log)
        if cluster:
            _remove_jobs(cluster)
    text = (tmp_path / "tide.log").read_text()
    assert code == 0, text[-3000:]
    failures = [line for line in text.splitlines() if 'msg="create failed"' in line]
    assert failures, text[-3000:]
    assert all("quota exceeded" in line for line in failures), failures
    assert not cloud.servers()
    _check_secrets_not_in(text, cloud)


@pytest.mark.usefixtures("hypervisor")  # its cleanup, should anything be left
def test_a_server_in_error_is_destroyed_at_once_and_backed_off(tmp_path: Path) -> None:
    """A server the cloud cannot place goes to ERROR; the daemon sees it in the
    site's listing (asked while boots are in flight) and gives it back as a
    failed boot long before its boot timeout, then backs off."""
    with FakeOpenStack(LabHostHypervisor(ports=[])) as cloud:  # no port: no valid host
        owner = f"test-{uuid.uuid4().hex[:8]}"
        limits = "{max_resources: 1, boot_timeout_s: 900, backoff_base_s: 1, backoff_max_s: 2}"
        daemon, log = _start(tmp_path, cloud, _config(tmp_path, cloud, owner, limits))
        cluster = ""
        try:
            cluster = _submit(1)

            def failed() -> list[str]:
                return [s.id for s in cloud.servers() if s.status == "ERROR"]

            lab.wait_for("a server in ERROR", lambda: bool(failed()), 60, 0.5)
            (server,) = [s for s in cloud.servers() if s.id == failed()[0]]
            assert server.fault is not None
            assert NO_VALID_HOST in server.fault
            lab.wait_for("it to be deleted", lambda: server.id in cloud.nova.deleted, 60, 0.5)
            assert daemon.poll() is None
            assert "boot failed at the site" in (tmp_path / "tide.log").read_text()
        finally:
            code = _stop(daemon, log)
            if cluster:
                _remove_jobs(cluster)
    text = (tmp_path / "tide.log").read_text()
    assert code == 0, text[-3000:]
    assert not cloud.unhandled()


_METADATA_PROBE = (
    "curl -sS --max-time 5 --noproxy '*' -o /dev/null {url} 2>/dev/null; echo metadata rc $?; "
)
"""A job's try at the metadata service: curl's exit code (7: refused)."""


def _installed_token(server_id: str) -> tuple[str, str]:
    """The worker's installed token and its mode and owner, read as root."""
    (container,) = _containers(server_id)
    argv = ["docker", "exec", container, "sh", "-c"]
    path = "/etc/condor/tokens.d/tide"
    out = lab.on_host(lab.CM_HOST, *argv, f"stat -c '%a %U' {path}; cat {path}").stdout
    mode_owner, _, token = out.partition("\n")
    return mode_owner, token.strip()


def _check_server_token(
    tmp: Path, cloud: FakeOpenStack, config: Path, server_id: str, rid: str
) -> None:
    """The server's working token came through its metadata and replaced the
    boot token, no job finds it or reaches the metadata service, a renewal
    reaches the worker, and the token advertises that server alone."""

    def metadata_token() -> str:
        (server,) = [s for s in cloud.servers() if s.id == server_id]
        return _metadata_token(server.metadata)

    working = metadata_token()
    htcondor2 = client()
    ads = htcondor2.Collector(lab.COLLECTOR).query(
        htcondor2.AdTypes.Startd,
        constraint=f'TideResourceId == "{rid}"',
        projection=["AuthenticatedIdentity", "AuthenticationMethod"],
    )
    assert {(ad["AuthenticatedIdentity"], ad["AuthenticationMethod"]) for ad in ads} == {
        (tokens.worker_identity(rid, lab.POOL_DOMAIN), "IDTOKENS")
    }, [dict(ad) for ad in ads]
    mode_owner, installed = _installed_token(server_id)
    assert (mode_owner, installed == working) == ("600 root", True)
    # A job finds no token, and the metadata service refuses it, while
    # root on the same host (this test) still reads it: the guard's doing.
    url = f"{cloud.project.base}/fake-metadata/{server_id}/openstack/latest/meta_data.json"
    assert requests.get(url, timeout=10).status_code == 200
    job = lab.run_job(_METADATA_PROBE.format(url=url) + CREDENTIAL_SEARCH, on=rid)
    assert_no_token_found(job)
    assert "metadata rc 7\n" in job.output, job.output
    # A renewal (the controller's own call, made here at once rather than
    # after half a day) reaches the worker through the metadata service.
    settings = yaml.safe_load(config.read_text())["sites"][SITE]
    site_config = OpenStackSiteConfig.model_validate(settings)
    pool = PoolEndpoint(collector=lab.COLLECTOR, pool_domain=lab.POOL_DOMAIN)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OS_CLIENT_CONFIG_FILE", str(tmp / "clouds.yaml"))
        site = site_config.build(SITE, owner=_owner_of(config), pool=pool)
        site.renew_tokens([rid])
    renewed = metadata_token()
    assert renewed != working
    lab.wait_for(
        "the worker to install its renewed token",
        lambda: _installed_token(server_id) == ("600 root", renewed),
        30,
    )
    # What a stolen copy could do: advertise this server, nothing else.
    assert_advertises_only_its_own(tmp, renewed, rid)


def _owner_of(config: Path) -> str:
    owner: str = yaml.safe_load(config.read_text())["loop"]["owner"]
    return owner


def _check_secrets_not_in(text: str, cloud: FakeOpenStack) -> None:
    token = (lab.STATE / "secrets" / "worker.token").read_text().strip()
    assert token not in text, "the worker token reached the daemon's log"
    for part in (part for part in token.split(".") if len(part) >= 8):
        assert part not in text, "a part of the worker token reached the daemon's log"
    assert cloud.project.password not in text, "the cloud password reached the daemon's log"
    assert not re.search(JWT, text), "a token reached the daemon's log"


def test_a_worker_whose_jobs_could_read_its_metadata_refuses_to_start() -> None:
    """The worker's own check of the guard the user data sets up: with a
    metadata service a slot user can read (no iptables rule for this one),
    the entrypoint stops before HTCondor starts, naming the fix."""
    with _http_service() as url:
        argv = [
            "docker", "run", "--rm", "--network", "host",
            "-e", "TIDE_CONDOR_ROLES=execute", "-e", f"TIDE_POOL_DOMAIN={lab.POOL_DOMAIN}",
            "-e", f"TIDE_COLLECTOR={lab.COLLECTOR}", "-e", "TIDE_SITE_NAME=LAB",
            "-e", "TIDE_CPUS=1", "-e", f"TIDE_DRAIN_URL={url}",
            "-e", "TIDE_SECRETS_DIR=/tmp", "--entrypoint", "sh", "tide/condor:0.1.0",
            "-c", "echo x.y.z > /tmp/token && exec tide-entrypoint",
        ]  # fmt: skip
        run = lab.on_host(lab.CM_HOST, *argv, check=False)
    assert run.returncode == 64, (run.stdout + run.stderr)[-2000:]
    assert f"can read the metadata service {url}" in run.stderr, run.stderr[-2000:]
    assert "block it for them first" in run.stderr


@contextmanager
def _http_service() -> Iterator[str]:
    """A URL on 127.0.0.1 that answers anyone with 200 (a metadata service
    without the guard), for as long as the context lasts."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"meta": {}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/openstack/latest/meta_data.json"
    finally:
        server.shutdown()
        server.server_close()
