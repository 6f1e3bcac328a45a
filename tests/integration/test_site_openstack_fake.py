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
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import yaml

from tests import lab
from tests.doubles.fake_openstack import FakeOpenStack, Recorded
from tests.doubles.fake_openstack_hypervisor import (
    NO_VALID_HOST,
    PROJECT_PREFIX,
    ROOT,
    LabHostHypervisor,
)

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


def _config(tmp: Path, cloud: FakeOpenStack, owner: str, limits: str) -> Path:
    token = _write_secret(tmp / "token", (lab.STATE / "secrets" / "worker.token").read_text())
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
                worker_token_file: {token}
                shape: {{cpus: 2, memory_mb: 1024, disk_mb: 2048}}
                attributes: {{SiteName: FAKE-CLOUD}}
                limits: {limits}
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


def _check_create_request(create: Recorded, cloud: FakeOpenStack, owner: str) -> str:
    """The create request as the site must make it; returns the resource id."""
    server = create.body["server"]
    meta = server["metadata"]
    rid = meta["tide-resource-id"]
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
    token = (lab.STATE / "secrets" / "worker.token").read_text().strip()
    assert token in user_data  # the user data is where the token goes, and nowhere else
    return str(rid)


def test_daemon_boots_a_fake_cloud_server_whose_worker_runs_jobs_then_deletes_it(
    tmp_path: Path, cloud: FakeOpenStack, hypervisor: LabHostHypervisor
) -> None:
    owner = f"test-{uuid.uuid4().hex[:8]}"
    limits = (
        f"{{max_resources: 2, max_booting: 2, idle_timeout_s: {IDLE_TIMEOUT_S}, "
        "boot_timeout_s: 180}"
    )
    config = _config(tmp_path, cloud, owner, limits)
    daemon, log = _start(tmp_path, cloud, config)
    cluster = ""
    try:
        cluster = _submit(2)
        lab.wait_for("a server created", lambda: bool(cloud.recorded(CREATE)), 60, 0.5)
        create = cloud.recorded(CREATE)[0]
        assert create.status == 202
        rid = _check_create_request(create, cloud, owner)
        (server,) = [s for s in cloud.servers() if s.name == rid]

        lab.wait_for(f"the slot of {rid} to register", lambda: bool(_slots(rid)), 180)
        assert server.id in hypervisor.ports
        env = lab.on_host(
            lab.CM_HOST, "docker", "inspect", "-f", "{{json .Config.Env}}", *_containers(server.id)
        ).stdout
        assert f"TIDE_PORT={hypervisor.ports[server.id]}" in env
        assert f"TIDE_RESOURCE_ID={rid}" in env

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


HUNG_DELETE_S = 90.0  # longer than the SDK's API_TIMEOUT_S (30 s): the daemon gives up first


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
    config = _config(tmp_path, cloud, owner, limits)
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
    """The tide-drain values the controller set on servers, in order."""
    return [r.body["metadata"]["tide-drain"] for r in cloud.recorded(METADATA)]


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


def _check_secrets_not_in(text: str, cloud: FakeOpenStack) -> None:
    token = (lab.STATE / "secrets" / "worker.token").read_text().strip()
    assert token not in text, "the worker token reached the daemon's log"
    for part in (part for part in token.split(".") if len(part) >= 8):
        assert part not in text, "a part of the worker token reached the daemon's log"
    assert cloud.project.password not in text, "the cloud password reached the daemon's log"
