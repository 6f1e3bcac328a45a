"""The site squid caches CVMFS-like objects, serves only its clients and
forwards only to its origins: real traffic through the squid the role runs,
from an HTTP origin on a host in a network namespace the test makes (the
lab's squid_origins names it), and never to services on the squid host's
own loopback."""

from __future__ import annotations

import http.client
import http.server
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import lab, netns

ORIGIN = "198.51.100.2"  # in the lab's squid_origins
NOT_AN_ORIGIN = "198.51.100.3"  # the same namespace, not in squid_origins


@dataclass(frozen=True)
class Origin:
    """A CVMFS stratum-1 stand-in: static files served from the namespace."""

    url: str
    body: bytes
    log: Path

    def requests(self) -> list[str]:
        """The objects the origin was asked for (http.server's request log;
        the fixture's own readiness probe asks for "/")."""
        paths = [
            line.split('"')[1].split()[1]
            for line in self.log.read_text().splitlines()
            if line.count('"') >= 2 and len(line.split('"')[1].split()) == 3
        ]
        return [path for path in paths if path != "/"]


@pytest.fixture(scope="module")
def origin_host() -> Iterator[netns.Namespace]:
    with netns.namespace_host("tide-origin", [ORIGIN, NOT_AN_ORIGIN]) as ns:
        yield ns


@pytest.fixture
def origin(origin_host: netns.Namespace, tmp_path: Path) -> Iterator[Origin]:
    digest = secrets.token_hex(20)
    path = f"/cvmfs/lab.tide/data/{digest[:2]}/{digest[2:]}"
    obj = tmp_path / "www" / path.lstrip("/")
    obj.parent.mkdir(parents=True)
    body = secrets.token_bytes(200_000)
    obj.write_bytes(body)
    log = tmp_path / "origin.log"
    with log.open("wb") as sink:
        server = origin_host.popen(
            [sys.executable, "-m", "http.server", str(lab.HTTP_ORIGIN_PORT),
             "--bind", ORIGIN, "--directory", str(tmp_path / "www")],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_serving(ORIGIN, lab.HTTP_ORIGIN_PORT)
        yield Origin(f"http://{ORIGIN}:{lab.HTTP_ORIGIN_PORT}{path}", body, log)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_serving(address: str, port: int) -> None:
    def serving() -> bool:
        try:
            conn = http.client.HTTPConnection(address, port, timeout=2)
            conn.request("HEAD", "/")
            conn.getresponse()
            conn.close()
            return True
        except OSError:
            time.sleep(0.1)
            return False

    lab.wait_for(f"the origin on {address}:{port}", serving, timeout=30)


class _Local(http.server.BaseHTTPRequestHandler):
    """A service that listens only on the squid host's loopback."""

    requests: list[str] = []  # noqa: RUF012  (shared by the handler instances)

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"loopback secret")

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def loopback_services() -> Iterator[type[_Local]]:
    """The same port as the origin's (an origin port squid allows), on
    127.0.0.1 and 127.0.0.2."""
    _Local.requests = []
    servers = [
        http.server.ThreadingHTTPServer((address, lab.HTTP_ORIGIN_PORT), _Local)
        for address in ("127.0.0.1", "127.0.0.2")
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield _Local
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _fetch(url: str, source: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(
        "127.0.0.1", lab.SQUID_PORT, timeout=30, source_address=(source, 0)
    )
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _access_log(url: str) -> list[list[str]]:
    log = lab.in_container(
        lab.SQUID_HOST, lab.SQUID_CONTAINER, "cat", "/var/log/squid/access.log"
    ).stdout
    return [line.split() for line in log.splitlines() if url in line]


def test_squid_is_healthy() -> None:
    assert lab.container_state(lab.SQUID_HOST, lab.SQUID_CONTAINER)["health"] == "healthy"


def test_second_fetch_is_a_cache_hit(origin: Origin) -> None:
    url, body = origin.url, origin.body
    assert _fetch(url, "127.0.0.1") == (200, body)
    assert _fetch(url, "127.0.0.1") == (200, body)
    # The origin saw one request: the second answer came from the cache.
    assert len(origin.requests()) == 1, origin.requests()
    results = [fields[3] for fields in _access_log(url)]
    assert results[0] == "TCP_MISS/200", results
    assert results[1] in ("TCP_MEM_HIT/200", "TCP_HIT/200"), results


def test_client_outside_the_allowed_range_is_denied(origin: Origin) -> None:
    url = origin.url
    status, _ = _fetch(url, "127.0.0.2")
    assert status == 403
    assert origin.requests() == []
    entries = _access_log(url)
    assert [(fields[2], fields[3]) for fields in entries] == [("127.0.0.2", "TCP_DENIED/403")]


def test_ports_other_than_the_origin_ports_are_denied() -> None:
    status, _ = _fetch(f"http://{ORIGIN}:22/", "127.0.0.1")
    assert status == 403


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.2",
        "2130706433",  # 127.0.0.1 as one integer
        "0x7f000001",
        "0177.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::1]",
        "localhost",
        "0.0.0.0",  # noqa: S104  (a destination: connecting to it reaches this host)
    ],
)
def test_the_squid_hosts_own_loopback_is_never_reached(
    loopback_services: type[_Local], host: str
) -> None:
    """A service listening only on the squid host's loopback, on a port
    squid forwards to: an allowed client gets nothing from it, however the
    URL spells the address."""
    status, body = _fetch(f"http://{host}:{lab.HTTP_ORIGIN_PORT}/secret", "127.0.0.1")
    assert status != 200, body
    assert b"loopback secret" not in body
    assert loopback_services.requests == []


def test_destinations_that_are_not_origins_are_denied(origin: Origin) -> None:
    status, _ = _fetch(f"http://{NOT_AN_ORIGIN}:{lab.HTTP_ORIGIN_PORT}/", "127.0.0.1")
    assert status == 403
    status, _ = _fetch(f"http://169.254.169.254:{lab.HTTP_ORIGIN_PORT}/", "127.0.0.1")
    assert status == 403  # link-local: a cloud's metadata service


def test_only_http_is_forwarded(origin: Origin) -> None:
    status, _ = _fetch(f"ftp://{ORIGIN}:{lab.HTTP_ORIGIN_PORT}/", "127.0.0.1")
    assert status == 403
    assert origin.requests() == []


@pytest.mark.parametrize("report", ["menu", "info", "client_list"])
def test_the_cache_manager_answers_no_client(report: str) -> None:
    for url in (
        f"http://127.0.0.1:{lab.SQUID_PORT}/squid-internal-mgr/{report}",
        f"cache_object://127.0.0.1/{report}",
    ):
        status, body = _fetch(url, "127.0.0.1")
        assert status == 403, (url, body[:200])


def test_logs_are_rotated_by_the_hosts_timer() -> None:
    """The timer is scheduled; its service makes squid rotate: access.log
    moves to access.log.0 on the logs volume and a new one is written."""
    enabled = lab.on_host(lab.SQUID_HOST, "systemctl", "is-enabled", "tide-squid-logrotate.timer")
    assert enabled.stdout.strip() == "enabled"
    next_run = lab.on_host(
        lab.SQUID_HOST,
        "systemctl",
        "show",
        "-P",
        "NextElapseUSecRealtime",
        "tide-squid-logrotate.timer",
    ).stdout.strip()
    assert next_run, "the rotation timer has no next run"
    lab.on_host(lab.SQUID_HOST, "systemctl", "start", "tide-squid-logrotate.service")

    def rotated() -> bool:
        listing = lab.in_container(
            lab.SQUID_HOST, lab.SQUID_CONTAINER, "ls", "/var/log/squid"
        ).stdout.split()
        return "access.log.0" in listing and "access.log" in listing

    lab.wait_for("squid to rotate its access log", rotated, timeout=30)
