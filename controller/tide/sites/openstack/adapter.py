"""OpenStack site: each resource is a Nova server whose cloud-init user data
starts the worker container (the compose project the condor_worker role
writes, rendered from the role's own templates: tide.sites.base.WorkerRecipe),
through openstacksdk's proxy layer (conn.compute, conn.image, conn.network).

The daemon makes the connection (`openstack.connect(cloud=config.cloud,
api_timeout=API_TIMEOUT_S)`) and hands it in, so tests pass a double and
nothing here reads clouds.yaml. Calls do not wait for a server to become
ACTIVE: the controller's loop sees the progress in list_owned and in the
pool's collector.

Deadlines: openstacksdk has no timeout of its own; `api_timeout` becomes
the keystoneauth session's, which bounds every request (authentication,
discovery, each Nova, Glance and Neutron call; a call may make a few).
A request that runs out is a DeadlineExceeded (retryable), so a hung Nova
stalls one cycle's call, not the daemon. An answer the SDK or this module
cannot read (a listing that is not one, a server without an id, metadata
that is not a map) is a retryable SiteError naming the call; a server
without metadata carries no tags and is simply not ours.

Tokens. With `worker_signing_key_file` each server gets tokens of its own
(tide.htcondor.tokens: identity tide-worker-<resource>, the worker's
scopes), two at its create call:
- a boot token in the user data, valid the site's boot timeout plus
  BOOT_TOKEN_MARGIN_S only: the cloud keeps user data for the server's
  whole life, so what it holds must expire while the server boots;
- its working token, valid `worker_token_lifetime_s`, in the server's
  metadata (TOKEN_KEY0..3, Nova takes 255 characters a value), which the
  worker's tide-token-watch (images/condor) reads from the metadata service
  before HTCondor starts and every few seconds after, and installs in place
  of the boot token.
  The controller renews it there once half its lifetime has passed
  (tokens_due / renew_tokens): one metadata call per server.
Jobs reach neither: the user data's first command rejects every packet
from HTCondor's slot users (uids 62001-65534) to the metadata service, and
the worker refuses to start if a slot user can still read it. Without a
key, the site's shared worker token goes into the user data instead.
Tokens are never logged, and error messages are scrubbed of them (and of
anything looking like the encoded user data) before they leave this module.

Draining: a server's startd cannot be reached from the controller with any
right to drain it (execute nodes hold no signing key, so they grant no
remote caller more than READ), and the cloud is the site's only channel to
its servers. The controller sets the server's metadata key `tide-drain`
("<request> graceful" or "<request> idle"; "" cancels), and the worker's
startd reads it from the metadata service itself (the image's
tide-drain-watch, a startd cron job; images/condor/README.md) and drains
with condor_drain, authenticated locally. An idle drain is refused by the
startd itself while a slot holds a claim; the controller sees the drain (or
not) in the slot ads, and tells it again if it does not show.

A create call that fails on an outage (5xx, connection lost) may still have
made the server: it carries the ownership metadata and name, so list_owned
reports it and the controller reconciles it.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
import requests
from keystoneauth1 import exceptions as ksa_exceptions
from openstack import exceptions as os_exceptions
from openstack.connection import Connection

from tide.htcondor import tokens
from tide.model import Shape
from tide.sites.base import (
    OWNER_TAG,
    RESOURCE_ID_TAG,
    SITE_TAG,
    DeadlineExceeded,
    Owned,
    PoolEndpoint,
    QuotaExceeded,
    SiteAdapter,
    SiteError,
    TokenAges,
    WorkerRecipe,
    worker_attributes,
    worker_site_name,
)
from tide.sites.docker.config import DockerSiteConfig
from tide.sites.openstack.config import OpenStackSiteConfig

log = logging.getLogger(__name__)
# keystoneauth logs every request and response body at DEBUG (user data,
# server metadata: tokens). Whatever a process's logging is set up to show,
# those records are never made.
logging.getLogger("keystoneauth").setLevel(logging.INFO)

WORKER_IMAGE = str(DockerSiteConfig.model_fields["image"].default)
"""The worker container image: the one this release of Tide builds."""

USER_DATA_MAX = 65535
"""Nova's limit on a server's user data, base64-encoded, in bytes."""

BUILTIN_TEMPLATE = "openstack-user-data.yaml.j2"

API_TIMEOUT_S = 30.0
"""Seconds one request to the cloud may take by default (openstack.connect's
api_timeout; a site's api_timeout_s): a Nova listing or a boot request takes
a second or two on a healthy cloud."""

METADATA_URL = "http://169.254.169.254/openstack/latest/meta_data.json"
"""Where a server reads its metadata (the worker's TIDE_DRAIN_URL): the
metadata service every OpenStack cloud offers its servers."""

DRAIN_KEY = "tide-drain"
"""The server metadata key carrying a drain request to the server."""

TOKEN_KEY = "tide-token-"  # noqa: S105  (a metadata key, not a secret)
"""Server metadata keys TOKEN_KEY0 .. TOKEN_KEY3 carry the server's working token."""

TOKEN_CHUNKS = 4
METADATA_VALUE_MAX = 255
"""Nova's limit on a metadata value, in characters."""

BOOT_TOKEN_MARGIN_S = 600
"""The boot token outlives the boot timeout by this much: a server not
registered by its boot timeout is deleted, and one that registered has
installed its working token before its HTCondor started."""

SLOT_UIDS = "62001-65534"
"""The uids HTCondor's slot users have on a worker (slot1_<n> is 62000+n;
65534 is nobody): the user data keeps them off the metadata service."""

_RETRYABLE_STATUS = frozenset({408, 409, 429})
# Long runs of base64 (encoded user data the cloud might echo back) are scrubbed
# from error messages; UUIDs and request ids (hyphenated) stay readable.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]*)?")
_REDACTED = "<redacted>"
_MESSAGE_MAX = 500
_CONFIG_ERRORS = (
    os_exceptions.EndpointNotFound,
    os_exceptions.ConfigException,
    os_exceptions.NotSupported,
    os_exceptions.InvalidRequest,
)


def _to_json(value: object) -> str:
    """A value as a JSON scalar, which is also a quoted YAML scalar on one line."""
    return json.dumps(value, ensure_ascii=False)


def token_metadata(token: str) -> dict[str, str]:
    """A token as server metadata: TOKEN_CHUNKS keys of at most
    METADATA_VALUE_MAX characters, the unused ones empty, so that a new
    token replaces an old one whole in one (merging) metadata call."""
    parts = [token[i : i + METADATA_VALUE_MAX] for i in range(0, len(token), METADATA_VALUE_MAX)]
    if len(parts) > TOKEN_CHUNKS:
        raise ValueError(f"a token of {len(token)} characters does not fit the server metadata")
    parts += [""] * (TOKEN_CHUNKS - len(parts))
    return {f"{TOKEN_KEY}{i}": part for i, part in enumerate(parts)}


def _status(exc: os_exceptions.HttpException) -> int | None:
    """The HTTP status of an SDK error; the SDK raises some without a response
    (find_* raises NotFoundException("No Flavor found for ...")), so the
    class tells then."""
    if exc.status_code is not None:
        return exc.status_code
    for cls, status in (
        (os_exceptions.NotFoundException, 404),
        (os_exceptions.BadRequestException, 400),
        (os_exceptions.ForbiddenException, 403),
        (os_exceptions.ConflictException, 409),
    ):
        if isinstance(exc, cls):
            return status
    return None


class OpenStackSite(SiteAdapter):
    """A SiteAdapter booting Nova servers that join the pool as workers.

    `owner` names this controller instance (the tide-owner metadata); `pool` is
    where the workers register; `signing_key` mints each server tokens of its
    own (the working one valid `token_lifetime_s`, the boot one
    `boot_timeout_s` plus BOOT_TOKEN_MARGIN_S), or else `worker_token` is the
    text of the site's shared worker IDTOKEN (the caller reads it from its
    0600 file). Raises SiteError (not retryable) for a bad user data
    template or site attribute, or no credential."""

    capabilities = OpenStackSiteConfig.capabilities

    def __init__(
        self,
        name: str,
        config: OpenStackSiteConfig,
        *,
        conn: Connection,
        owner: str,
        pool: PoolEndpoint,
        worker_token: str | None = None,
        signing_key: tokens.SigningKey | None = None,
        token_lifetime_s: int = 86400,
        boot_timeout_s: float = 600.0,
        worker_image: str = WORKER_IMAGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not owner:
            raise ValueError("owner must name the controller instance")
        token = (worker_token or "").strip()
        if signing_key is None and not token:
            raise SiteError(
                f"site {name}: the worker token is empty (set sites.{name}.worker_token_file "
                "or worker_signing_key_file)",
                retryable=False,
            )
        self.name = name
        self._config = config
        self._conn = conn
        self._owner = owner
        self._pool = pool
        self._worker_image = worker_image
        self._token = token
        self._key = signing_key
        self._ages = TokenAges(token_lifetime_s)
        self._boot_token_s = int(boot_timeout_s) + BOOT_TOKEN_MARGIN_S
        self._clock = clock
        # The shared token, and its JWT parts, are scrubbed from messages;
        # longest first (minted tokens by their shape, _JWT).
        parts = [part for part in token.split(".") if len(part) >= 8]
        self._secrets = sorted({token, *parts} - {""}, key=len, reverse=True)
        try:
            self._attributes = worker_attributes(name, config.attributes)
        except ValueError as exc:
            raise SiteError(
                f"site {name}: sites.{name}.attributes: {exc}", retryable=False
            ) from None
        self._site_name = worker_site_name(name, config.attributes)
        self._template = self._load_template()
        self._ids: tuple[str, str, str] | None = None  # image, flavor, network
        self._user_data(
            "tide-check", "tide-check"
        )  # a template naming an unknown variable fails now

    # --- SiteAdapter --------------------------------------------------------

    def create(self, resource_id: str) -> Mapping[str, str]:
        image_id, flavor_id, network_id = self._resolve()
        config = self._config
        now = self._clock()
        boot_token, token_meta = self._token, {}
        if self._key is not None:
            boot_token = self._mint(resource_id, self._boot_token_s, now)
            token_meta = token_metadata(self._mint(resource_id, self._ages.lifetime_s, now))
        attrs: dict[str, Any] = {
            "name": resource_id,
            "image_id": image_id,
            "flavor_id": flavor_id,
            "networks": [{"uuid": network_id}],
            "user_data": self._user_data(resource_id, boot_token),
            "metadata": {
                **config.metadata,
                **token_meta,
                OWNER_TAG: self._owner,
                SITE_TAG: self.name,
                RESOURCE_ID_TAG: resource_id,
            },
        }
        if config.key_name is not None:
            attrs["key_name"] = config.key_name
        if config.security_groups:
            attrs["security_groups"] = [{"name": group} for group in config.security_groups]
        log.info(
            "site %s: creating server %s (image %s, flavor %s, network %s)",
            self.name,
            resource_id,
            config.image,
            config.flavor,
            config.network,
        )
        try:
            # chain=False: the SDK's exception could hold what the cloud echoed
            # of the request; the scrubbed message keeps what matters.
            with self._calling(f"creating server {resource_id}", chain=False):
                server = self._conn.compute.create_server(**attrs)
        except SiteError as exc:
            if not exc.retryable:
                self._ids = None  # an image or network may have been replaced: look again
            raise
        if not server.id:
            raise SiteError(
                f"site {self.name}: creating server {resource_id}: the cloud returned no id",
                retryable=True,
            )
        if self._key is not None:
            self._ages.minted(resource_id, now)
        log.info("site %s: server %s is %s", self.name, resource_id, server.id)
        return {"server_id": str(server.id)}

    def list_owned(self) -> list[Owned]:
        return [
            Owned(
                resource_id=server.resource_id,
                status=server.status,
                details={"server_id": server.id},
                failed=server.status == "ERROR",
            )
            for server in self._owned_servers()
        ]

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        self._ages.forget(resource_id)
        server_id = details.get("server_id")
        if server_id:
            ids = [server_id]
        else:  # created but not recorded (e.g. the daemon stopped): find it by its tags
            ids = [
                server.id
                for server in self._owned_servers(name=resource_id)
                if server.tagged_id == resource_id
            ]
        for sid in ids:
            log.info("site %s: deleting server %s (%s)", self.name, resource_id, sid)
            with self._calling(f"deleting server {resource_id}"):
                self._conn.compute.delete_server(sid, ignore_missing=True)

    # --- servers' own tokens -------------------------------------------------

    def tokens_due(self, resource_ids: Sequence[str], now: float) -> list[str]:
        return [] if self._key is None else self._ages.due(resource_ids, now)

    def renew_tokens(self, resource_ids: Sequence[str]) -> None:
        """A new working token into the metadata of each of these servers (one
        a restarted controller does not know the age of gets one too); the
        server's tide-token-watch installs it within its period. A server
        that is gone is passed over: the loop sees it in list_owned."""
        if self._key is None:
            return
        wanted = set(resource_ids)
        servers = [s for s in self._owned_servers() if s.resource_id in wanted]
        found = {s.resource_id for s in servers}
        for rid in wanted - found:
            self._ages.forget(rid)
        for server in servers:
            rid = server.resource_id
            now = self._clock()
            meta = token_metadata(self._mint(rid, self._ages.lifetime_s, now))
            with self._calling(f"renewing the token of server {rid}", chain=False):
                self._conn.compute.set_server_metadata(server.id, **meta)
            self._ages.minted(rid, now)
            log.info("site %s: renewed the token of server %s (%s)", self.name, rid, server.id)

    def _mint(self, resource_id: str, lifetime_s: int, now: float) -> str:
        if self._key is None:  # callers check; kept for the type checker
            raise SiteError(f"site {self.name}: no signing key", retryable=False)
        return tokens.mint_worker(
            self._key,
            resource_id=resource_id,
            domain=self._pool.pool_domain,
            lifetime_s=lifetime_s,
            now=now,
        )

    # --- drain (Capability.DRAIN) ------------------------------------

    def drain_startd(self, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        """Ask the server's startd to drain (gracefully; `only_idle`: only if
        no slot holds a claim, checked by the startd) through its metadata.
        Returns the request id; the startd acts on it within its period."""
        request = uuid.uuid4().hex[:12]
        mode = "idle" if only_idle else "graceful"
        self._set_drain(resource_id, f"{request} {mode}", f"draining ({reason})")
        return request

    def cancel_startd_drain(self, resource_id: str, request_id: str) -> None:
        self._set_drain(resource_id, "", "cancelling the drain of")

    def _set_drain(self, resource_id: str, value: str, doing: str) -> None:
        servers = [s for s in self._owned_servers(name=resource_id) if s.resource_id == resource_id]
        if not servers:
            raise SiteError(
                f"site {self.name}: {doing} server {resource_id}: it is not listed", retryable=True
            )
        for server in servers:
            log.info("site %s: %s server %s (%s)", self.name, doing, resource_id, server.id)
            with self._calling(f"{doing} server {resource_id}"):
                self._conn.compute.set_server_metadata(server.id, **{DRAIN_KEY: value})

    # --- helpers ------------------------------------------------------------

    def _owned_servers(self, name: str | None = None) -> list[_Server]:
        """This site's servers carrying our ownership metadata. Nova cannot
        filter on metadata, so the filter is here; `name` (which Nova takes
        as a regular expression) only narrows the listing."""
        action = "listing servers"
        owned: list[_Server] = []
        # The compute proxy authenticates when first made, and the SDK reads a
        # server's fields when they are first used: all in here, so that an
        # outage or a malformed answer is a SiteError (_calling).
        with self._calling(action):
            compute = self._conn.compute
            if name is None:
                servers = list(compute.servers(details=True))
            else:
                servers = list(compute.servers(details=True, name=name))
            for server in servers:
                meta = server.metadata
                if meta is None:
                    continue  # no tags: not ours
                if not isinstance(meta, Mapping):
                    raise self._malformed(
                        action, f"server {server.id!r}: metadata is a {type(meta).__name__}"
                    )
                if meta.get(OWNER_TAG) == self._owner and meta.get(SITE_TAG) == self.name:
                    owned.append(self._server(action, server, meta))
        return owned

    def _server(self, action: str, server: Any, meta: Mapping[str, object]) -> _Server:
        """One of our servers, checked: an id, and a name or a resource id tag."""
        sid, sname = server.id, server.name
        if not isinstance(sid, str) or not sid:
            raise self._malformed(action, f"server {sname!r} (ours) has no id: {sid!r}")
        tagged = meta.get(RESOURCE_ID_TAG)
        if tagged is not None and not isinstance(tagged, str):
            raise self._malformed(action, f"server {sid}: {RESOURCE_ID_TAG} is not a string")
        resource_id = tagged or sname
        if not isinstance(resource_id, str) or not resource_id:
            raise self._malformed(action, f"server {sid} has neither a name nor a resource id")
        status = server.status
        return _Server(
            id=sid,
            resource_id=resource_id,
            tagged_id=tagged,
            status=status if isinstance(status, str) and status else "UNKNOWN",
        )

    def _malformed(self, action: str, problem: str) -> SiteError:
        return SiteError(
            f"site {self.name}: {action}: malformed answer from the cloud: {self._redact(problem)}",
            retryable=True,
        )

    def _resolve(self) -> tuple[str, str, str]:
        """Image, flavor and network ids, looked up by name or id once."""
        if self._ids is None:
            config, conn = self._config, self._conn
            with self._calling("looking up the image", setting=("image", config.image)):
                image = conn.image.find_image(config.image, ignore_missing=False)
            with self._calling("looking up the flavor", setting=("flavor", config.flavor)):
                flavor = conn.compute.find_flavor(config.flavor, ignore_missing=False)
            with self._calling("looking up the network", setting=("network", config.network)):
                network = conn.network.find_network(config.network, ignore_missing=False)
            ids = (image.id, flavor.id, network.id)
            for what, found in zip(("image", "flavor", "network"), ids, strict=True):
                if not isinstance(found, str) or not found:
                    raise self._malformed(f"looking up the {what}", f"it has no id: {found!r}")
            self._ids = (str(ids[0]), str(ids[1]), str(ids[2]))
        return self._ids

    def _load_template(self) -> jinja2.Template:
        path = self._config.user_data_template
        where = f"site {self.name}: sites.{self.name}.user_data_template"
        try:
            if path is None:
                source = (
                    resources.files("tide.sites.openstack")
                    .joinpath("templates")
                    .joinpath(BUILTIN_TEMPLATE)
                    .read_text(encoding="utf-8")
                )
            else:
                source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SiteError(f"{where}: cannot read {path}: {exc}", retryable=False) from None
        # User data is YAML or a script, not HTML: autoescaping would corrupt it.
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701
            trim_blocks=True,
            keep_trailing_newline=True,
        )
        env.filters["to_json"] = _to_json
        try:
            return env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise SiteError(f"{where}: line {exc.lineno}: {exc.message}", retryable=False) from None

    def _user_data(self, resource_id: str, token: str) -> str:
        """The rendered template, base64-encoded: the proxy layer sends
        Server.user_data as given, and Nova requires base64."""
        shape = self._config.shape
        recipe = WorkerRecipe(
            pool=self._pool,
            resource_id=resource_id,
            site=self.name,
            site_name=self._site_name,
            shape=Shape(shape.cpus, shape.memory_mb, shape.disk_mb),
            attributes=self._config.attributes,
            drain_url=METADATA_URL,
        )
        try:
            text = self._template.render(
                resource_id=resource_id,
                tide_site=self.name,
                site_name=self._site_name,
                collector=self._pool.collector,
                pool_domain=self._pool.pool_domain,
                image=self._worker_image,
                cpus=shape.cpus,
                memory_mb=shape.memory_mb,
                disk_mb=shape.disk_mb,
                attributes=self._attributes,
                environment=recipe.environment(),
                compose=recipe.compose(self._worker_image),
                site_conf=recipe.site_conf(),
                token=token,
                slot_uids=SLOT_UIDS,
            )
        except jinja2.TemplateError as exc:
            raise SiteError(
                f"site {self.name}: sites.{self.name}.user_data_template: {self._redact(str(exc))}",
                retryable=False,
            ) from None
        encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
        if len(encoded) > USER_DATA_MAX:
            raise SiteError(
                f"site {self.name}: the user data is {len(encoded)} bytes base64-encoded, "
                f"over Nova's {USER_DATA_MAX}: shorten sites.{self.name}.user_data_template",
                retryable=False,
            )
        return encoded

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        text = _JWT.sub(_REDACTED, text)
        text = _BASE64_RUN.sub(_REDACTED, text)
        return text if len(text) <= _MESSAGE_MAX else text[:_MESSAGE_MAX] + "..."

    @contextmanager
    def _calling(
        self, action: str, *, setting: tuple[str, str] | None = None, chain: bool = True
    ) -> Iterator[None]:
        """Turn the SDK's (and keystoneauth's) errors into SiteError."""
        try:
            yield
        except (
            os_exceptions.SDKException,
            ksa_exceptions.ClientException,
            requests.RequestException,
        ) as exc:
            error = self._translate(exc, action, setting)
            if chain:
                raise error from exc
            raise error from None
        except (LookupError, TypeError, ValueError, AttributeError) as exc:
            # The SDK reading an answer not shaped as the API promises (a
            # listing that is no list, a field of the wrong type).
            error = self._malformed(action, f"{type(exc).__name__}: {exc}")
            if chain:
                raise error from exc
            raise error from None

    def _translate(self, exc: Exception, action: str, setting: tuple[str, str] | None) -> SiteError:
        """The SiteError for an SDK or keystoneauth error, scrubbed of secrets."""
        where = f"site {self.name}: {action}"
        text = self._redact(str(exc))
        if setting is not None:
            key, value = setting
            check = f"{key} {value!r} (sites.{self.name}.{key})"
        else:
            check = f"check sites.{self.name}: image, flavor, network, key_name, security_groups"
        if isinstance(exc, os_exceptions.HttpException):
            return self._http_error(_status(exc), where, text, check, setting is not None)
        if isinstance(exc, os_exceptions.DuplicateResource) and setting is not None:
            message, retryable = f"{where}: {check} matches more than one: {text}", False
        elif isinstance(exc, _CONFIG_ERRORS):
            message, retryable = f"{where}: {text}", False
        elif isinstance(exc, ksa_exceptions.ConnectTimeout | requests.Timeout):
            # keystoneauth raises ConnectTimeout for any request that outlasts
            # api_timeout, connecting or waiting for the answer.
            return DeadlineExceeded(f"{where}: no answer within the deadline: {text}")
        elif isinstance(exc, ksa_exceptions.ConnectionError | requests.RequestException):
            message, retryable = f"{where}: cannot reach the cloud: {text}", True
        elif isinstance(exc, ksa_exceptions.HttpError):
            status = exc.http_status  # e.g. 401 from the identity service: bad credentials
            retryable = status >= 500 or status in _RETRYABLE_STATUS
            hint = "" if retryable else f" (check cloud {self._config.cloud!r})"
            message = f"{where}: {text}{hint}"
        elif isinstance(exc, ksa_exceptions.ClientException):  # authentication, discovery
            message, retryable = f"{where}: {text} (check cloud {self._config.cloud!r})", False
        else:
            message, retryable = f"{where}: {text}", True
        return SiteError(message, retryable=retryable)

    @staticmethod
    def _http_error(
        status: int | None, where: str, text: str, check: str, named: bool
    ) -> SiteError:
        """An HTTP error: quota is retryable, a refused request or a missing
        image/flavor/network (`named`: the setting `check` names) is not, an outage is."""
        if status in (403, 413) and "quota" in text.lower():
            return QuotaExceeded(f"{where}: quota exceeded: {text}")
        if status in (400, 404) and named:
            what = "not found" if status == 404 else "refused"
            return SiteError(f"{where}: {check} {what}: {text}", retryable=False)
        if status in (400, 404):
            return SiteError(f"{where}: refused (HTTP {status}; {check}): {text}", retryable=False)
        if status is None or status >= 500 or status in _RETRYABLE_STATUS:
            return SiteError(f"{where}: cloud error (HTTP {status}): {text}", retryable=True)
        return SiteError(f"{where}: refused (HTTP {status}): {text}", retryable=False)


@dataclass(frozen=True)
class _Server:
    """One of this site's servers, as listed."""

    id: str
    resource_id: str  # its tide-resource-id tag, else its name
    tagged_id: str | None  # its tide-resource-id tag
    status: str  # Nova's: BUILD, ACTIVE, ERROR ...


__all__ = [
    "API_TIMEOUT_S",
    "BOOT_TOKEN_MARGIN_S",
    "BUILTIN_TEMPLATE",
    "DRAIN_KEY",
    "METADATA_URL",
    "SLOT_UIDS",
    "TOKEN_CHUNKS",
    "TOKEN_KEY",
    "USER_DATA_MAX",
    "WORKER_IMAGE",
    "OpenStackSite",
    "token_metadata",
]
