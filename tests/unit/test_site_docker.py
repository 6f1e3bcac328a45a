"""The Docker site (controller/tide/sites/docker/adapter.py) at its edge, without a
Docker engine: the real Docker SDK talks to stand-ins on 127.0.0.1 - an
engine that is not there, a socket that accepts and never answers, and
`FakeEngine`, a few routes of the engine's API (version, list, create,
inspect, start, stop, remove) whose answers a test may garble. What a real
engine does with the site's calls is tested on this machine's engine
(tests/integration/test_site_docker_engine.py)."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.unit.deadline import Silent, within
from tide.config import DockerSiteConfig
from tide.sites.base import DeadlineExceeded, PoolEndpoint, SiteAdapter, SiteError
from tide.sites.docker import adapter as docker_site
from tide.sites.docker.adapter import PORT_LABEL, STOP_GRACE_MAX_S, DockerSite, engine_client

OWNER = "tide-unit"
POOL = PoolEndpoint(collector="127.0.0.1:29618", pool_domain="pool.example.org")
DEADLINE_S = 60.0
"""How long a test waits for a call that must time out: far over its timeout."""
API = "1.41"


# --- stand-ins for an engine -----------------------------------------------------


class FakeEngine:
    """`with FakeEngine() as engine:` a few routes of the Docker engine's API
    on 127.0.0.1. `containers` are as the engine lists them (Id, Names, State,
    Labels); `listing`, if set, is sent instead of them; a route named in
    `hang` ("stop") never answers until the engine stops."""

    def __init__(self) -> None:
        self.containers: list[dict[str, Any]] = []
        self.listing: object = None
        self.hang: set[str] = set()
        self.released = threading.Event()
        self.lock = threading.Lock()
        self._http = _EngineServer(("127.0.0.1", 0), _EngineHandler)
        self._http.engine = self
        self.url = f"tcp://127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self) -> FakeEngine:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._http.shutdown()
        self._http.server_close()

    def add(self, name: str, labels: object, state: str = "running") -> None:
        self.containers.append(
            {"Id": uuid.uuid4().hex * 2, "Names": [f"/{name}"], "State": state, "Labels": labels}
        )

    def find(self, ref: str) -> dict[str, Any] | None:
        for c in self.containers:
            if ref in (c["Id"], c["Names"][0].lstrip("/")):
                return c
        return None

    def serve(  # noqa: PLR0911  (a router: one return per route)
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> Any:
        """(status, JSON body or None); None: no answer at all."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts == ["version"]:
            return 200, {"ApiVersion": API, "Version": "20.10.0"}
        if parts[:1] == [f"v{API}"]:
            parts = parts[1:]
        with self.lock:
            if method == "GET" and parts == ["containers", "json"]:
                if self.listing is not None:
                    return 200, self.listing
                wanted = json.loads(query.get("filters", ["{}"])[0]).get("label", [])
                return 200, [c for c in self.containers if _labelled(c["Labels"], wanted)]
            if method == "POST" and parts == ["containers", "create"]:
                name = query["name"][0]
                if self.find(name):
                    return 409, {"message": f"Conflict. The name {name} is already in use"}
                self.add(name, body.get("Labels") or {}, state="created")
                return 201, {"Id": self.containers[-1]["Id"], "Warnings": []}
            if len(parts) < 2 or parts[0] != "containers" or not (c := self.find(parts[1])):
                return 404, {"message": "No such container"}
            action = parts[2] if len(parts) > 2 else ""
            if action in self.hang:
                return None
            if method == "GET" and action == "json":
                state = {"Status": c["State"]}
                name = c["Names"][0]
                return 200, {
                    "Id": c["Id"],
                    "Name": name,
                    "State": state,
                    "Config": {"Labels": c["Labels"]},
                }
            if method == "POST" and action in ("start", "stop"):
                c["State"] = "running" if action == "start" else "exited"
                return 204, None
            if method == "DELETE" and action == "":
                self.containers.remove(c)
                return 204, None
        return 404, {"message": f"page not found: {method} {path}"}


def _labelled(labels: object, wanted: list[str]) -> bool:
    if not isinstance(labels, dict):
        return True  # a garbled container shows in every listing
    for item in wanted:
        key, eq, value = item.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


class _EngineServer(ThreadingHTTPServer):
    daemon_threads = True
    engine: FakeEngine


class _EngineHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _serve(self) -> None:
        engine = self.server.engine  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        reply = engine.serve(self.command, url.path, parse_qs(url.query), body)
        if reply is None:  # hung: wait for the end of the test, then drop the connection
            engine.released.wait()
            self.close_connection = True
            return
        status, payload = reply
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# --- helpers ------------------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "worker.token"
    path.write_text("fake-token\n")
    path.chmod(0o600)
    return path


def _config(engine_url: str, token_file: Path) -> DockerSiteConfig:
    return DockerSiteConfig.model_validate(
        {
            "kind": "docker",
            "engine_url": engine_url,
            "shape": {"cpus": 1, "memory_mb": 512, "disk_mb": 1024},
            "worker_token_file": str(token_file),
            "port_range_start": 29900,
            "port_range_end": 29909,
        }
    )


def _built(engine_url: str, token_file: Path) -> SiteAdapter:
    """The site as the daemon builds it. (tide.assemble is imported here: it
    imports the controller's loop, which the adapters' tests need not.)"""
    from tide.assemble import build_adapter  # noqa: PLC0415

    return build_adapter("fat", _config(engine_url, token_file), owner=OWNER, pool=POOL)


def _site(engine: FakeEngine, token_file: Path, *, grace_s: int = 0) -> DockerSite:
    return DockerSite(
        "fat",
        _config(engine.url, token_file),
        client=engine_client("fat", engine.url, timeout_s=1),
        owner=OWNER,
        pool=POOL,
        worker_token_file=token_file,
        stop_grace_s=grace_s,
    )


def _ours(rid: str, port: str) -> dict[str, str]:
    return {
        "tide-owner": OWNER,
        "tide-site": "fat",
        "tide-resource-id": rid,
        PORT_LABEL: port,
    }


# --- an engine that is not there ----------------------------------------------------


def test_an_engine_down_at_start_does_not_stop_the_daemon(token_file: Path) -> None:
    site = _built("unix:///nonexistent.sock", token_file)  # contacts nothing
    for call in (site.list_owned, lambda: site.create("tide-fat-0badc0de")):
        with pytest.raises(SiteError, match=r"unix:///nonexistent\.sock") as caught:
            call()
        assert caught.value.retryable
        assert "cannot reach the Docker engine" in str(caught.value)


def test_the_engine_is_used_once_it_answers(token_file: Path) -> None:
    with FakeEngine() as engine:
        engine.add("tide-fat-00000001", _ours("tide-fat-00000001", "29900"))
        site = _built(engine.url, token_file)
        assert [o.resource_id for o in site.list_owned()] == ["tide-fat-00000001"]


def test_an_engine_url_the_sdk_cannot_take_is_refused_at_once(token_file: Path) -> None:
    with pytest.raises(SiteError, match=r"sites\.fat\.engine_url") as caught:
        _built("gopher://127.0.0.1:1", token_file)
    assert not caught.value.retryable


# --- deadlines ----------------------------------------------------------------------


def test_an_engine_that_never_answers_is_a_deadline_exceeded(
    token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = Silent()
    try:
        monkeypatch.setattr(docker_site, "API_TIMEOUT_S", 1)
        site = _built(silent.url, token_file)
        error = within(DEADLINE_S, site.list_owned)
    finally:
        silent.close()
    assert isinstance(error, DeadlineExceeded), error
    assert error.retryable
    assert silent.url in str(error)


def test_a_hung_stop_is_a_deadline_exceeded(token_file: Path) -> None:
    with FakeEngine() as engine:
        rid = "tide-fat-00000001"
        engine.add(rid, _ours(rid, "29900"))
        engine.hang.add("stop")
        site = _site(engine, token_file, grace_s=1)
        error = within(DEADLINE_S, lambda: site.destroy(rid, {}))
    assert isinstance(error, DeadlineExceeded), error
    assert "destroying container" in str(error)


def test_the_stop_grace_period_is_bounded(token_file: Path) -> None:
    with FakeEngine() as engine, pytest.raises(ValueError, match="stop_grace_s"):
        _site(engine, token_file, grace_s=STOP_GRACE_MAX_S + 1)


def test_the_client_has_the_api_timeout(token_file: Path) -> None:
    with FakeEngine() as engine:
        client = engine_client("fat", engine.url)()
        assert client.api.timeout == docker_site.API_TIMEOUT_S == 30
        client.close()


# --- malformed answers ----------------------------------------------------------------


@pytest.mark.parametrize("port", ["abc", "²", "99999", "", "-1"])
def test_a_port_label_that_is_no_port_does_not_stop_creates(token_file: Path, port: str) -> None:
    with FakeEngine() as engine:
        engine.add("tide-fat-00000001", _ours("tide-fat-00000001", "29900"))
        engine.add("someone-elses", {PORT_LABEL: port})
        details = _site(engine, token_file).create("tide-fat-00000002")
        assert details["port"] == "29901"
        created = engine.find("tide-fat-00000002")
        assert created is not None
        assert created["State"] == "running"


@pytest.mark.parametrize(
    ("listing", "problem"),
    [
        ({"message": "not a list"}, "a dict, not a list"),
        (["a string"], "a listed container is a str"),
        ([{"Names": ["/x"], "State": "running", "Labels": {}}], "has no Id"),
        ([{"Id": "c0ffee", "Names": "/x", "Labels": {}}], "Names is not a list"),
        ([{"Id": "c0ffee", "Labels": ["tide-owner=x"]}], "Labels is not a map of strings"),
        ([{"Id": "c0ffee", "Labels": {PORT_LABEL: 29900}}], "Labels is not a map of strings"),
        ([{"Id": "c0ffee", "State": {"Status": "running"}}], "State is a dict"),
    ],
)
def test_a_malformed_listing_is_a_site_error(
    token_file: Path, listing: object, problem: str
) -> None:
    with FakeEngine() as engine:
        engine.listing = listing
        site = _site(engine, token_file)
        for call in (site.list_owned, lambda: site.create("tide-fat-00000002")):
            with pytest.raises(SiteError) as caught:
                call()
            message = str(caught.value)
            assert message.startswith("site fat: listing containers: malformed answer from ")
            assert engine.url in message
            assert problem in message
            assert caught.value.retryable


def test_an_inspection_with_malformed_labels_is_a_site_error(token_file: Path) -> None:
    with FakeEngine() as engine:
        engine.add("tide-fat-00000001", "not labels")
        with pytest.raises(
            SiteError, match=r"destroying container \S+: malformed answer"
        ) as caught:
            _site(engine, token_file).destroy("tide-fat-00000001", {})
        assert caught.value.retryable
