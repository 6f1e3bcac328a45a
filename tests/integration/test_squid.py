"""The site squid caches CVMFS-like objects and serves only its clients:
real traffic from a local HTTP origin, through the squid the role runs."""

from __future__ import annotations

import http.client
import http.server
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import lab


class _Origin(http.server.SimpleHTTPRequestHandler):
    """A CVMFS stratum-1 stand-in: static files, and a count of requests."""

    requests: list[str] = []  # noqa: RUF012  (shared by the handler instances)

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    digest = secrets.token_hex(20)
    obj = tmp_path / "cvmfs" / "lab.tide" / "data" / digest[:2] / digest[2:]
    obj.parent.mkdir(parents=True)
    body = secrets.token_bytes(200_000)
    obj.write_bytes(body)
    _Origin.requests = []

    def handler(*args: object, **kwargs: object) -> _Origin:
        return _Origin(*args, directory=str(tmp_path), **kwargs)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", lab.HTTP_ORIGIN_PORT), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = (
            f"http://127.0.0.1:{lab.HTTP_ORIGIN_PORT}/cvmfs/lab.tide/data/{digest[:2]}/{digest[2:]}"
        )
        yield url, body
    finally:
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


def test_second_fetch_is_a_cache_hit(origin: tuple[str, bytes]) -> None:
    url, body = origin
    assert _fetch(url, "127.0.0.1") == (200, body)
    assert _fetch(url, "127.0.0.1") == (200, body)
    # The origin saw one request: the second answer came from the cache.
    assert len(_Origin.requests) == 1, _Origin.requests
    results = [fields[3] for fields in _access_log(url)]
    assert results[0] == "TCP_MISS/200", results
    assert results[1] in ("TCP_MEM_HIT/200", "TCP_HIT/200"), results


def test_client_outside_the_allowed_range_is_denied(origin: tuple[str, bytes]) -> None:
    url, _ = origin
    status, _ = _fetch(url, "127.0.0.2")
    assert status == 403
    assert _Origin.requests == []
    entries = _access_log(url)
    assert [(fields[2], fields[3]) for fields in entries] == [("127.0.0.2", "TCP_DENIED/403")]


def test_ports_other_than_the_origin_ports_are_denied() -> None:
    status, _ = _fetch("http://127.0.0.1:22/", "127.0.0.1")
    assert status == 403


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
