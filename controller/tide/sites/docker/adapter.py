"""Docker site: each resource is one worker container of the tide/condor image
on a Docker engine (the demo's site, and fat nodes), set up the way the
condor_worker role's compose project sets up a worker: the TIDE_* settings
in its environment (rendered from the role's own compose template:
tide.sites.base.WorkerRecipe), the worker token as a read-only file at
/run/secrets/token, restarted unless stopped, the image's health check.

The daemon hands in how to make the client (`engine_client`: the engine's
URL, checked at once, and API_TIMEOUT_S), and the site makes it at its
first call: `docker.DockerClient` asks the engine for its API version as it
is made, and an engine that is down at the daemon's start must not stop
the daemon - the site is simply unreachable (a retryable SiteError naming
the engine's URL) until the engine answers. Tests may hand in a client of
their own. Calls do not wait for a worker to join the pool: the
controller's loop sees it in list_owned and in the collector.

Deadlines: every call to the engine has the client's timeout
(API_TIMEOUT_S, 30 s); one that runs out is a DeadlineExceeded (retryable).
An answer that is not what the engine's API promises (a listing without
ids, labels that are not strings) is a retryable SiteError naming the call.

Tokens. With `worker_signing_key_file` each worker gets a token of its
own (tide.htcondor.tokens: identity tide-worker-<resource>, the worker's
scopes, `worker_token_lifetime_s`), copied into the created container's
/etc/condor/tokens.d/tide (root, 0600) through the engine's archive API
before it starts, and renewed the same way once half its lifetime has
passed (tokens_due / renew_tokens, which the loop calls): no bind mount,
nothing on the host's disk. Otherwise the site's shared worker token is
mounted read-only from its file and never read here. Either way a token is
in no environment variable, command line, label, log or error message
(`docker inspect` shows none); the engine's host must see a mounted file
at the same path (a local engine does).

On host networking (the default) every worker needs its own HTCondor shared
port: create() takes the lowest port of the site's range that no Tide worker
container on the engine holds (their `tide.port` label) - any owner's or
site's, since two of them on one host network would collide just the same.
Stopped containers keep their port until destroyed. A container whose
`tide.port` label is not a port (someone else's, or edited by hand) holds
none: it is logged and passed over, and creates go on.

destroy() stops the container with a grace period (STOP_GRACE_S, at most
STOP_GRACE_MAX_S: HTCondor vacates its jobs and withdraws the slot on
SIGTERM, and the engine sends SIGKILL when it runs out) before removing it,
so it may take that long: unlike the other calls, it waits for the worker
to stop. Its stop call's deadline is the grace period plus API_TIMEOUT_S
(the Docker SDK adds them), so a destroy takes at most the grace period
plus three API timeouts (inspect, stop, remove).
"""

from __future__ import annotations

import io
import logging
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import docker.utils
import requests
from docker.models.containers import Container
from docker.types import Mount

from tide.htcondor import tokens
from tide.model import Shape
from tide.sites.base import (
    OWNER_TAG,
    RESOURCE_ID_TAG,
    SITE_TAG,
    DeadlineExceeded,
    DrainRefused,
    Owned,
    PoolEndpoint,
    QuotaExceeded,
    SiteAdapter,
    SiteError,
    TokenAges,
    WorkerRecipe,
    worker_attribute_values,
    worker_site_name,
)
from tide.sites.docker.config import DockerSiteConfig

log = logging.getLogger(__name__)

IDLE_CHECK = 'State =!= "Claimed"'
"""condor_drain -check: every slot unclaimed (no job running or starting)."""
TOKEN_PATH = "/run/secrets/token"  # noqa: S105  (a path, not a secret)
"""Where the worker image reads a mounted IDTOKEN (images/condor/README.md)."""
TOKEN_DIR = "/etc/condor/tokens.d"  # noqa: S105  (a path, not a secret)
TOKEN_NAME = "tide"  # noqa: S105  (a file name, not a secret)
"""Where a worker's own token is put: the file the image installs a mounted one as."""

EXECUTE_DIR = "/var/lib/condor/execute"
"""Job sandboxes: an anonymous volume per worker, removed with it."""

PORT_LABEL = "tide.port"
"""The HTCondor shared port a worker container holds."""

STOP_GRACE_S = 30
"""Seconds between SIGTERM and SIGKILL when destroying: the compose project's
stop_grace_period, time for HTCondor to vacate jobs and withdraw the slot."""

STOP_GRACE_MAX_S = 300
"""The longest grace period a site takes: a destroy must end, and the
controller's loop waits for it."""

API_TIMEOUT_S = 30
"""Seconds any call to the engine may take (the client's socket timeout;
a stop gets its grace period on top). Listing, creating and inspecting
containers take well under a second on a healthy engine."""

ClientFactory = Callable[[], docker.DockerClient]
"""Makes the site's client at its first call (`engine_client`)."""

DRAIN_REQUEST = "condor_drain"
"""condor_drain prints no request id; a cancel ends every drain of the startd."""

_RETRYABLE_STATUS = frozenset({408, 409, 429})
_MESSAGE_MAX = 500


class DockerSite(SiteAdapter):
    """A SiteAdapter running worker containers on a Docker engine.

    `owner` names this controller instance (the tide-owner label); `pool` is
    where the workers register; `worker_token_file` is the site's worker
    IDTOKEN file, mounted into every worker, or `signing_key` mints each
    worker a token of its own, valid `token_lifetime_s`; `shape` defaults to
    the configured one. Raises SiteError (not retryable) for a missing token
    file or a bad site attribute."""

    capabilities = DockerSiteConfig.capabilities

    def __init__(
        self,
        name: str,
        config: DockerSiteConfig,
        *,
        client: docker.DockerClient | ClientFactory,
        owner: str,
        pool: PoolEndpoint,
        worker_token_file: Path | None = None,
        signing_key: tokens.SigningKey | None = None,
        token_lifetime_s: int = 86400,
        shape: Shape | None = None,
        stop_grace_s: int = STOP_GRACE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not owner:
            raise ValueError("owner must name the controller instance")
        if not 0 <= stop_grace_s <= STOP_GRACE_MAX_S:
            raise ValueError(f"stop_grace_s must be within 0-{STOP_GRACE_MAX_S}: {stop_grace_s}")
        self.name = name
        self._config = config
        self._client: docker.DockerClient | None = None
        self._make_client: ClientFactory | None = None
        if isinstance(client, docker.DockerClient):
            self._client = client
        else:
            self._make_client = client
        self._owner = owner
        self._pool = pool
        self._stop_grace_s = stop_grace_s
        self._signing_key = signing_key
        self._token_lifetime_s = token_lifetime_s
        self._clock = clock
        self._token_ages = TokenAges(token_lifetime_s)
        self._token_file: Path | None = None
        if signing_key is None:
            if worker_token_file is None:
                raise SiteError(
                    f"site {name}: neither a worker token file nor a signing key", retryable=False
                )
            # The engine takes absolute paths only; the file itself is never read.
            self._token_file = worker_token_file.absolute()
            try:
                st = self._token_file.stat()
            except OSError as exc:
                raise SiteError(
                    f"site {name}: the worker token file {self._token_file}: {exc.strerror}",
                    retryable=False,
                ) from None
            if not self._token_file.is_file() or st.st_size == 0:
                raise SiteError(
                    f"site {name}: the worker token file {self._token_file} is not a non-empty "
                    "file",
                    retryable=False,
                )
        try:
            worker_attribute_values(name, config.attributes)  # a bad one fails now
        except ValueError as exc:
            raise SiteError(
                f"site {name}: sites.{name}.attributes: {exc}", retryable=False
            ) from None
        self._site_name = worker_site_name(name, config.attributes)
        s = config.shape
        self._shape = shape or Shape(cpus=s.cpus, memory_mb=s.memory_mb, disk_mb=s.disk_mb)

    # --- SiteAdapter --------------------------------------------------------

    def create(self, resource_id: str) -> Mapping[str, str]:
        config = self._config
        port = self._free_port()
        log.info(
            "site %s: creating container %s (image %s, port %d)",
            self.name,
            resource_id,
            config.image,
            port,
        )
        with self._calling(f"creating container {resource_id}"):
            try:
                # create + start rather than containers.run: run pulls a missing
                # image from a registry, and workers' images are loaded, not pulled.
                container = self._engine().containers.create(
                    config.image,
                    name=resource_id,
                    hostname=None if config.network_mode == "host" else resource_id,
                    network_mode=config.network_mode,
                    environment=self._environment(resource_id, port),
                    mounts=self._mounts(),
                    labels={
                        OWNER_TAG: self._owner,
                        SITE_TAG: self.name,
                        RESOURCE_ID_TAG: resource_id,
                        PORT_LABEL: str(port),
                        "tide.autoheal": "true",
                        "tide.role": "condor_worker",
                    },
                    # The stubs know only "always" and "on-failure"; the engine takes this too.
                    restart_policy=cast(Any, {"Name": "unless-stopped"}),
                    stop_signal="SIGTERM",
                )
            except docker.errors.ImageNotFound:
                raise SiteError(
                    f"site {self.name}: image {config.image!r} is not on the Docker engine at "
                    f"{config.engine_url}: load it there (images/build.sh condor saves "
                    f".lab/images/condor.tar for `docker load -i`) or set sites.{self.name}.image",
                    retryable=False,
                ) from None
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                # The name is taken: a previous create of this resource got this far.
                return self._existing(resource_id)
        with self._calling(f"starting container {resource_id}"):
            try:
                self._hand_token(container, resource_id)
                container.start()
            except (docker.errors.APIError, requests.RequestException):
                self._discard(container, resource_id)
                raise
        log.info("site %s: container %s is %s", self.name, resource_id, container.short_id)
        return {"container_id": str(container.id), "port": str(port)}

    def list_owned(self) -> list[Owned]:
        ours = [f"{OWNER_TAG}={self._owner}", f"{SITE_TAG}={self.name}"]
        return [
            Owned(
                resource_id=container.labels.get(RESOURCE_ID_TAG) or container.name,
                status=container.status,
                details={
                    "container_id": container.id,
                    "port": container.labels.get(PORT_LABEL, ""),
                },
            )
            for container in self._containers(ours)
        ]

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        self._token_ages.forget(resource_id)
        ref = details.get("container_id") or resource_id
        with self._calling(f"destroying container {resource_id}"):
            try:
                container = self._engine().containers.get(ref)
            except docker.errors.NotFound:
                log.info("site %s: container %s is already gone", self.name, resource_id)
                return
            if not self._ours(_inspected_labels(container), resource_id):
                log.warning(
                    "site %s: container %s (%s) does not carry this site's labels: left alone",
                    self.name,
                    resource_id,
                    container.short_id,
                )
                return
            log.info(
                "site %s: stopping container %s (%s; grace %d s)",
                self.name,
                resource_id,
                container.short_id,
                self._stop_grace_s,
            )
            try:
                container.stop(timeout=self._stop_grace_s)
                container.remove(v=True)
            except docker.errors.NotFound:
                pass  # removed meanwhile
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "already in progress" in str(exc.explanation):
                    return  # someone else is removing it
                raise
        log.info("site %s: container %s removed", self.name, resource_id)

    # --- drain (Capability.DRAIN) ------------------------------------

    def drain_startd(self, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        """`condor_drain -graceful` run as root inside the worker container
        (FS authentication to its own startd; no pool credential needed): no
        new job starts there, running ones finish within their retirement time.
        `only_idle` adds `-check`: the startd refuses if any slot is claimed
        (checked by the startd itself, so a claim the collector does not show
        yet counts), raised as DrainRefused."""
        options = ["-graceful", "-reason", reason]
        if only_idle:
            options += ["-check", IDLE_CHECK]
        self._condor_drain(resource_id, options, "draining")
        return DRAIN_REQUEST

    def cancel_startd_drain(self, resource_id: str, request_id: str) -> None:
        self._condor_drain(resource_id, ["-cancel"], "cancelling the drain of")

    def _condor_drain(self, resource_id: str, options: list[str], doing: str) -> None:
        # The startd's own address file names it exactly, without the collector.
        script = (
            'addr=$(head -n 1 "$(condor_config_val STARTD_ADDRESS_FILE)") '
            '&& exec condor_drain "$@" "$addr"'
        )
        with self._calling(f"{doing} the startd of {resource_id}"):
            try:
                container = self._engine().containers.get(resource_id)
            except docker.errors.NotFound:
                raise SiteError(
                    f"site {self.name}: {doing} the startd of {resource_id}: no such container",
                    retryable=True,
                ) from None
            if not self._ours(_inspected_labels(container), resource_id):
                raise SiteError(
                    f"site {self.name}: container {resource_id} does not carry this site's "
                    "labels: not drained",
                    retryable=False,
                )
            code, output = container.exec_run(
                ["sh", "-c", script, "condor_drain", *options], user="root"
            )
        if code != 0:
            text = cast(bytes, output).decode("utf-8", "replace").strip()[-300:]
            if "check expression is false" in text:
                raise DrainRefused(
                    f"site {self.name}: the startd of {resource_id} holds a claim: drain refused"
                )
            raise SiteError(
                f"site {self.name}: {doing} the startd of {resource_id}: condor_drain "
                f"exited {code}: {text}",
                retryable=True,
            )

    # --- workers' own tokens -------------------------------------------------

    def tokens_due(self, resource_ids: Sequence[str], now: float) -> list[str]:
        if self._signing_key is None:
            return []
        return self._token_ages.due(resource_ids, now)

    def renew_tokens(self, resource_ids: Sequence[str]) -> None:
        """A new token into each running container of these (one a crash or
        a restarted controller left unknown gets one too). A container that
        is gone or stopped is passed over: the loop sees it in list_owned."""
        if self._signing_key is None:
            return
        for rid in resource_ids:
            with self._calling(f"renewing the token of {rid}"):
                try:
                    container = self._engine().containers.get(rid)
                except docker.errors.NotFound:
                    self._token_ages.forget(rid)
                    continue
                if not self._ours(_inspected_labels(container), rid):
                    continue
                if container.status != "running":
                    continue
                self._hand_token(container, rid)
            log.info("site %s: renewed the token of %s", self.name, rid)

    def _mounts(self) -> list[Mount]:
        mounts = [Mount(EXECUTE_DIR, None, type="volume")]
        if self._token_file is not None:
            mounts.insert(0, Mount(TOKEN_PATH, str(self._token_file), type="bind", read_only=True))
        return mounts

    def _hand_token(self, container: Container, resource_id: str) -> None:
        """Put a fresh token of the resource's own into the container (root,
        0600), through the engine's archive API: nothing on the host's disk."""
        if self._signing_key is None:
            return
        now = self._clock()
        token = tokens.mint_worker(
            self._signing_key,
            resource_id=resource_id,
            domain=self._pool.pool_domain,
            lifetime_s=self._token_lifetime_s,
            now=now,
        )
        data = token.encode("ascii")
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(TOKEN_NAME)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o600, 0, 0, int(now)
            tar.addfile(info, io.BytesIO(data))
        if not container.put_archive(TOKEN_DIR, archive.getvalue()):
            raise SiteError(
                f"site {self.name}: the engine did not take the token of {resource_id}",
                retryable=True,
            )
        self._token_ages.minted(resource_id, now)

    # --- helpers ------------------------------------------------------------

    def _environment(self, resource_id: str, port: int) -> dict[str, str]:
        return WorkerRecipe(
            pool=self._pool,
            resource_id=resource_id,
            site=self.name,
            site_name=self._site_name,
            shape=self._shape,
            attributes=self._config.attributes,
            port=port,
            bind_address=self._config.bind_address,
        ).environment()

    def _free_port(self) -> int:
        """The lowest port of the range no Tide worker container on the engine holds."""
        used: set[int] = set()
        for container in self._containers([PORT_LABEL]):
            value = container.labels.get(PORT_LABEL, "")
            port = _port(value)
            if port is None:
                log.warning(
                    "site %s: container %s has %s=%r, not a port: it holds none",
                    self.name,
                    container.name or container.id[:12],
                    PORT_LABEL,
                    value[:40],
                )
                continue
            used.add(port)
        start, end = self._config.port_range_start, self._config.port_range_end
        for port in range(start, end + 1):
            if port not in used:
                return port
        raise QuotaExceeded(
            f"site {self.name}: every port of {start}-{end} (sites.{self.name}.port_range_start "
            "and port_range_end) is held by a worker container: destroy one or widen the range"
        )

    def _containers(self, label_filters: list[str]) -> list[_Listed]:
        """Containers, whatever their state, carrying every label filter: one
        call, the engine's listing (Id, Names, State, Labels) checked."""
        action = "listing containers"
        with self._calling(action):
            listing: object = self._engine().api.containers(
                all=True, filters={"label": label_filters}
            )
        if not isinstance(listing, list):
            raise self._malformed(action, f"a {type(listing).__name__}, not a list")
        try:
            return [_listed(entry) for entry in listing]
        except ValueError as exc:
            raise self._malformed(action, str(exc)) from None

    def _malformed(self, action: str, problem: str) -> SiteError:
        return SiteError(
            f"site {self.name}: {action}: malformed answer from the Docker engine at "
            f"{self._config.engine_url}: {_shorten(problem)}",
            retryable=True,
        )

    def _engine(self) -> docker.DockerClient:
        """The client; made now if not yet (the engine may be down: then retryable)."""
        if self._client is not None:
            return self._client
        assert self._make_client is not None
        url = self._config.engine_url
        try:
            self._client = self._make_client()
        except docker.errors.DockerException as exc:
            cause = exc.__cause__
            text = _shorten(str(exc))
            if isinstance(cause, requests.Timeout):
                raise DeadlineExceeded(
                    f"site {self.name}: the Docker engine at {url} did not answer within "
                    f"its deadline: {text}"
                ) from exc
            if isinstance(cause, requests.RequestException | OSError):
                raise SiteError(
                    f"site {self.name}: cannot reach the Docker engine at {url}: {text}",
                    retryable=True,
                ) from exc
            if cause is not None:  # it answered, but not with an API version
                raise self._malformed("asking for its API version", text) from exc
            raise SiteError(
                f"site {self.name}: the Docker engine at {url} "
                f"(sites.{self.name}.engine_url): {text}",
                retryable=False,
            ) from exc
        return self._client

    def _ours(self, labels: Mapping[str, str], resource_id: str) -> bool:
        return (
            labels.get(OWNER_TAG) == self._owner
            and labels.get(SITE_TAG) == self.name
            and labels.get(RESOURCE_ID_TAG) == resource_id
        )

    def _existing(self, resource_id: str) -> Mapping[str, str]:
        """The details of this site's container named resource_id, which an
        earlier create made; started if that create stopped short of it."""
        try:
            container = self._engine().containers.get(resource_id)
        except docker.errors.NotFound:
            raise SiteError(
                f"site {self.name}: creating container {resource_id}: the name is taken by "
                "a container being removed",
                retryable=True,
            ) from None
        labels = _inspected_labels(container)
        if not self._ours(labels, resource_id):
            raise SiteError(
                f"site {self.name}: creating container {resource_id}: a container of that "
                f"name ({container.short_id}) exists without this site's labels: remove or "
                "rename it",
                retryable=False,
            )
        if container.status == "created":
            log.info("site %s: starting container %s, created earlier", self.name, resource_id)
            self._hand_token(container, resource_id)
            container.start()
        log.info(
            "site %s: container %s exists already (%s)", self.name, resource_id, container.short_id
        )
        return {"container_id": str(container.id), "port": labels.get(PORT_LABEL, "")}

    def _discard(self, container: Container, resource_id: str) -> None:
        """Remove a container that failed to start, if the engine lets us; if
        not, list_owned still reports it and the controller destroys it."""
        try:
            container.remove(v=True, force=True)
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.warning(
                "site %s: cannot remove container %s after its failed start: %s",
                self.name,
                resource_id,
                _shorten(str(exc)),
            )

    @contextmanager
    def _calling(self, action: str) -> Iterator[None]:
        """Turn the Docker SDK's (and requests') errors into SiteError."""
        try:
            yield
        except docker.errors.APIError as exc:
            status = exc.status_code
            retryable = status is None or status >= 500 or status in _RETRYABLE_STATUS
            text = _shorten(str(exc.explanation or exc))
            raise SiteError(
                f"site {self.name}: {action}: Docker engine error (HTTP {status}): {text}",
                retryable=retryable,
            ) from exc
        except requests.Timeout as exc:
            raise DeadlineExceeded(
                f"site {self.name}: {action}: the Docker engine at {self._config.engine_url} "
                f"did not answer within its deadline: {_shorten(str(exc))}"
            ) from exc
        except requests.RequestException as exc:
            raise SiteError(
                f"site {self.name}: {action}: cannot reach the Docker engine at "
                f"{self._config.engine_url}: {_shorten(str(exc))}",
                retryable=True,
            ) from exc
        except docker.errors.DockerException as exc:  # the client refused the call itself
            raise SiteError(
                f"site {self.name}: {action}: {_shorten(str(exc))}", retryable=False
            ) from exc
        except (LookupError, TypeError, ValueError, AttributeError) as exc:
            # The SDK reading an answer not shaped as the API promises (a
            # missing key, null where a map belongs).
            raise self._malformed(action, f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class _Listed:
    """One container of the engine's listing."""

    id: str
    name: str  # without the leading slash; "" if it has none
    status: str  # the engine's State: created, running, exited ...
    labels: Mapping[str, str]


def _listed(entry: object) -> _Listed:
    """One entry of GET /containers/json. Raises ValueError saying what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError(f"a listed container is a {type(entry).__name__}, not a map")
    cid = entry.get("Id")
    if not isinstance(cid, str) or not cid:
        raise ValueError(f"a listed container has no Id: {cid!r}")
    names = entry.get("Names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"container {cid[:12]}: Names is not a list of strings")
    state = entry.get("State") or "unknown"
    if not isinstance(state, str):
        raise ValueError(f"container {cid[:12]}: State is a {type(state).__name__}")
    labels = _label_map(entry.get("Labels"), cid)
    return _Listed(cid, names[0].lstrip("/") if names else "", state, labels)


def _label_map(labels: object, cid: str) -> dict[str, str]:
    """A container's labels, checked to be strings by strings (None: none)."""
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError(f"container {cid[:12]}: Labels is not a map of strings")
    return dict(labels)


def _inspected_labels(container: Container) -> dict[str, str]:
    """The labels of an inspected container (Config.Labels). Raises ValueError
    (turned into a SiteError by DockerSite._calling) if they are malformed."""
    attrs: object = container.attrs
    config = attrs.get("Config") if isinstance(attrs, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"container {container.id!r}: inspection without Config")
    return _label_map(config.get("Labels"), str(container.id))


def _port(value: str) -> int | None:
    """A `tide.port` label's port; None if it is not one."""
    if not (value.isascii() and value.isdigit() and len(value) <= 5):
        return None
    port = int(value)
    return port if 0 < port < 65536 else None


def engine_client(site: str, engine_url: str, *, timeout_s: int = API_TIMEOUT_S) -> ClientFactory:
    """How to make the client of the engine at `engine_url`, every call's
    deadline `timeout_s`: checked now (a URL the SDK cannot take is a
    SiteError, not retryable), made at the site's first call, since making
    it contacts the engine."""
    try:
        docker.utils.parse_host(engine_url)
    except docker.errors.DockerException as exc:
        raise SiteError(
            f"site {site}: sites.{site}.engine_url {engine_url!r}: {exc}", retryable=False
        ) from None

    def make() -> docker.DockerClient:
        return docker.DockerClient(base_url=engine_url, timeout=timeout_s)

    return make


def _shorten(text: str) -> str:
    return text if len(text) <= _MESSAGE_MAX else text[:_MESSAGE_MAX] + "..."


__all__ = [
    "API_TIMEOUT_S",
    "EXECUTE_DIR",
    "PORT_LABEL",
    "STOP_GRACE_MAX_S",
    "STOP_GRACE_S",
    "TOKEN_PATH",
    "ClientFactory",
    "DockerSite",
    "engine_client",
]
