"""Docker site: each resource is one worker container of the tide/condor image
on a Docker engine (the demo's site, and fat nodes), set up the way the
condor_worker role's compose project sets up a worker: the TIDE_* settings
in its environment, the worker token as a read-only file at
/run/secrets/token, restarted unless stopped, the image's health check.

The daemon makes the client (`docker.DockerClient(base_url=config.engine_url)`)
and hands it in, so tests pass their own. Calls do not wait for a worker to
join the pool: the controller's loop sees it in list_owned and in the
collector.

The token is mounted from its file and never read here: it is in no
environment variable, command line, label, log or error message. The
engine's host must see the file at the same path (a local engine does).

On host networking (the default) every worker needs its own HTCondor shared
port: create() takes the lowest port of the site's range that no Tide worker
container on the engine holds (their `tide.port` label) - any owner's or
site's, since two of them on one host network would collide just the same.
Stopped containers keep their port until destroyed.

destroy() stops the container with a grace period (HTCondor vacates its jobs
and withdraws the slot on SIGTERM) before removing it, so it may take that
long: unlike the other calls, it waits for the worker to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import Mount

from tide.config import DockerSiteConfig
from tide.model import Shape
from tide.sites.base import (
    OWNER_TAG,
    RESOURCE_ID_TAG,
    SITE_TAG,
    Owned,
    PoolEndpoint,
    QuotaExceeded,
    SiteError,
    worker_attributes,
    worker_environment,
    worker_site_name,
)

log = logging.getLogger(__name__)

TOKEN_PATH = "/run/secrets/token"  # noqa: S105  (a path, not a secret)
"""Where the worker image reads its IDTOKEN (images/condor/README.md)."""

EXECUTE_DIR = "/var/lib/condor/execute"
"""Job sandboxes: an anonymous volume per worker, removed with it."""

PORT_LABEL = "tide.port"
"""The HTCondor shared port a worker container holds."""

STOP_GRACE_S = 30
"""Seconds between SIGTERM and SIGKILL when destroying: the compose project's
stop_grace_period, time for HTCondor to vacate jobs and withdraw the slot."""

DRAIN_REQUEST = "condor_drain"
"""condor_drain prints no request id; a cancel ends every drain of the startd."""

_RETRYABLE_STATUS = frozenset({408, 409, 429})
_MESSAGE_MAX = 500


class DockerSite:
    """A SiteAdapter running worker containers on a Docker engine.

    `owner` names this controller instance (the tide-owner label); `pool` is
    where the workers register; `worker_token_file` is the site's worker
    IDTOKEN file, mounted into every worker; `shape` defaults to the
    configured one. Raises SiteError (not retryable) for a missing token file
    or a bad site attribute."""

    def __init__(
        self,
        name: str,
        config: DockerSiteConfig,
        *,
        client: docker.DockerClient,
        owner: str,
        pool: PoolEndpoint,
        worker_token_file: Path,
        shape: Shape | None = None,
        stop_grace_s: int = STOP_GRACE_S,
    ) -> None:
        if not owner:
            raise ValueError("owner must name the controller instance")
        if stop_grace_s < 0:
            raise ValueError("stop_grace_s must be >= 0")
        self.name = name
        self._config = config
        self._client = client
        self._owner = owner
        self._pool = pool
        self._stop_grace_s = stop_grace_s
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
                f"site {name}: the worker token file {self._token_file} is not a non-empty file",
                retryable=False,
            )
        try:
            self._attributes = worker_attributes(name, config.attributes)
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
                container = self._client.containers.create(
                    config.image,
                    name=resource_id,
                    hostname=None if config.network_mode == "host" else resource_id,
                    network_mode=config.network_mode,
                    environment=self._environment(resource_id, port),
                    mounts=[
                        Mount(TOKEN_PATH, str(self._token_file), type="bind", read_only=True),
                        Mount(EXECUTE_DIR, None, type="volume"),
                    ],
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
                container.start()
            except (docker.errors.APIError, requests.RequestException):
                self._discard(container, resource_id)
                raise
        log.info("site %s: container %s is %s", self.name, resource_id, container.short_id)
        return {"container_id": str(container.id), "port": str(port)}

    def list_owned(self) -> list[Owned]:
        owned = []
        ours = [f"{OWNER_TAG}={self._owner}", f"{SITE_TAG}={self.name}"]
        for container in self._containers(ours):
            labels = _labels(container)
            owned.append(
                Owned(
                    resource_id=labels.get(RESOURCE_ID_TAG) or _name(container),
                    status=str(container.status or "unknown"),
                    details={
                        "container_id": str(container.id),
                        "port": labels.get(PORT_LABEL, ""),
                    },
                )
            )
        return owned

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        ref = details.get("container_id") or resource_id
        with self._calling(f"destroying container {resource_id}"):
            try:
                container = self._client.containers.get(ref)
            except docker.errors.NotFound:
                log.info("site %s: container %s is already gone", self.name, resource_id)
                return
            if not self._ours(container.labels, resource_id):
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

    # --- drain (tide.startds.DrainingSite) ------------------------------------

    def drain_startd(self, resource_id: str, reason: str) -> str:
        """`condor_drain -graceful` run as root inside the worker container
        (FS authentication to its own startd; no pool credential needed): no
        new job starts there, running ones finish within their retirement time."""
        self._condor_drain(resource_id, ["-graceful", "-reason", reason], "draining")
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
                container = self._client.containers.get(resource_id)
            except docker.errors.NotFound:
                raise SiteError(
                    f"site {self.name}: {doing} the startd of {resource_id}: no such container",
                    retryable=True,
                ) from None
            if not self._ours(container.labels, resource_id):
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
            raise SiteError(
                f"site {self.name}: {doing} the startd of {resource_id}: condor_drain "
                f"exited {code}: {text}",
                retryable=True,
            )

    # --- helpers ------------------------------------------------------------

    def _environment(self, resource_id: str, port: int) -> dict[str, str]:
        return worker_environment(
            pool=self._pool,
            resource_id=resource_id,
            site_name=self._site_name,
            shape=self._shape,
            attributes=self._attributes,
            port=port,
            bind_address=self._config.bind_address,
        )

    def _free_port(self) -> int:
        """The lowest port of the range no Tide worker container on the engine holds."""
        used: set[int] = set()
        for container in self._containers([PORT_LABEL]):
            value = _labels(container).get(PORT_LABEL, "")
            if value.isdigit():
                used.add(int(value))
        start, end = self._config.port_range_start, self._config.port_range_end
        for port in range(start, end + 1):
            if port not in used:
                return port
        raise QuotaExceeded(
            f"site {self.name}: every port of {start}-{end} (sites.{self.name}.port_range_start "
            "and port_range_end) is held by a worker container: destroy one or widen the range"
        )

    def _containers(self, label_filters: list[str]) -> list[Container]:
        """Containers, whatever their state, carrying every label filter. Sparse:
        one call, attributes from the engine's listing (Labels, State, Names)."""
        with self._calling("listing containers"):
            return self._client.containers.list(
                all=True, sparse=True, filters={"label": label_filters}
            )

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
            container = self._client.containers.get(resource_id)
        except docker.errors.NotFound:
            raise SiteError(
                f"site {self.name}: creating container {resource_id}: the name is taken by "
                "a container being removed",
                retryable=True,
            ) from None
        labels = container.labels
        if not self._ours(labels, resource_id):
            raise SiteError(
                f"site {self.name}: creating container {resource_id}: a container of that "
                f"name ({container.short_id}) exists without this site's labels: remove or "
                "rename it",
                retryable=False,
            )
        if container.status == "created":
            log.info("site %s: starting container %s, created earlier", self.name, resource_id)
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


def _labels(container: Container) -> dict[str, str]:
    """A container's labels, from a sparse listing (top-level Labels) or an
    inspection (Config.Labels)."""
    attrs: dict[str, Any] = container.attrs
    labels = attrs.get("Labels")
    if labels is None:
        labels = (attrs.get("Config") or {}).get("Labels")
    return dict(labels or {})


def _name(container: Container) -> str:
    """A container's name, from a sparse listing (Names) or an inspection (Name)."""
    attrs: dict[str, Any] = container.attrs
    names = attrs.get("Names") or [attrs.get("Name") or ""]
    return str(names[0]).lstrip("/")


def _shorten(text: str) -> str:
    return text if len(text) <= _MESSAGE_MAX else text[:_MESSAGE_MAX] + "..."


__all__ = ["EXECUTE_DIR", "PORT_LABEL", "STOP_GRACE_S", "TOKEN_PATH", "DockerSite"]
