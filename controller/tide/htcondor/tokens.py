"""Per-resource worker tokens: HTCondor IDTOKENs the controller mints itself,
one per resource it creates, from the workers' signing key.

An IDTOKEN is a JWT signed with HS256. Its key is derived from a signing key
file the pool's collector also holds (SEC_PASSWORD_DIRECTORY/<key id>):
the file's bytes, unscrambled (XOR with DE AD BE EF), through HKDF-SHA256
(salt "htcondor", info "master jwt", 32 bytes); see HTCondor's
condor_auth_passwd.cpp and store_cred.cpp. A named key (not POOL) is used
as is.

What such a token may do is fixed by the pool, not by who minted it: the
pool's SEC_TOKEN_REVOCATION_EXPR accepts an IDTOKEN only for a worker
identity `tide-worker-<resource>@<pool domain>` with exactly the worker's
scopes and a bounded lifetime, or for the controller's own identity with
its scopes; its COLLECTOR_REQUIREMENTS accepts a worker's ads only for the
resource its identity names (images/condor/config.d/10-tide-security.conf).
So this key can mint no daemon, negotiator or administrator identity.

Pure functions and one file read; no HTCondor binding is needed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKER_SCOPES: tuple[str, ...] = ("condor:/ADVERTISE_STARTD", "condor:/ADVERTISE_MASTER")
"""All a worker's token may do: advertise its startd and its master (READ is
implied). Claims, matches and job transfers use the claim's own session."""
WORKER_PREFIX = "tide-worker-"
WORKERS_KEY_ID = "tide-workers"
"""The workers' key's name on the central manager (passwords.d/tide-workers)."""
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_SCRAMBLE = bytes((0xDE, 0xAD, 0xBE, 0xEF))


class TokenError(ValueError):
    """A signing key or token that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class SigningKey:
    """A named IDTOKEN signing key, as the collector holds it."""

    key_id: str  # the file's name in the collector's SEC_PASSWORD_DIRECTORY
    secret: bytes  # the file's bytes, unscrambled
    path: Path | None = None

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"SigningKey(key_id={self.key_id!r}, path={self.path!r})"

    @classmethod
    def read(cls, path: Path, key_id: str | None = None) -> SigningKey:
        """The key in `path` (named after the file unless `key_id` is given).
        Refuses a file that others may read or write, or that is empty."""
        name = key_id or path.name
        if not KEY_ID.match(name):
            raise TokenError(
                f"signing key {path}: '{name}' is not a key name (letters, digits, . _ -); "
                "name the file as the collector's SEC_PASSWORD_DIRECTORY names the key"
            )
        try:
            st = path.stat()
        except OSError as exc:
            raise TokenError(f"signing key {path}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"signing key {path} is not a file")
        if st.st_mode & 0o077:
            raise TokenError(
                f"signing key {path} has mode {stat.S_IMODE(st.st_mode):04o}: "
                f"others may read it; chmod 0600 {path}"
            )
        data = path.read_bytes()
        if not data:
            raise TokenError(f"signing key {path} is empty: copy the collector's key file there")
        return cls(name, unscramble(data), path)


def unscramble(data: bytes) -> bytes:
    """HTCondor's trivial scramble of key files (its own inverse)."""
    return bytes(b ^ _SCRAMBLE[i % 4] for i, b in enumerate(data))


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _jwt_key(key: SigningKey) -> bytes:
    return _hkdf_sha256(key.secret, b"htcondor", b"master jwt", 32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def worker_identity(resource_id: str, domain: str) -> str:
    """The identity a resource's token names: `tide-worker-<resource>@<domain>`."""
    if not RESOURCE_NAME.match(resource_id):
        raise TokenError(f"'{resource_id}' cannot name a worker identity (letters, digits, . _ -)")
    return f"{WORKER_PREFIX}{resource_id}@{domain}"


def mint(
    key: SigningKey,
    *,
    issuer: str,
    subject: str,
    scopes: Sequence[str],
    lifetime_s: int,
    now: float,
    token_id: str | None = None,
) -> str:
    """An IDTOKEN for `subject`, limited to `scopes`, valid from `now` for
    `lifetime_s` seconds. `issuer` is the pool's TRUST_DOMAIN (a daemon
    offers only tokens whose issuer is its collector's)."""
    if lifetime_s <= 0:
        raise TokenError(f"a token's lifetime must be positive, got {lifetime_s} s")
    iat = int(now)
    return encode(
        key,
        {
            "iss": issuer,
            "sub": subject,
            "iat": iat,
            "exp": iat + lifetime_s,
            "jti": token_id or secrets.token_hex(16),
            "scope": " ".join(scopes),
        },
    )


def encode(key: SigningKey, payload: Mapping[str, Any]) -> str:
    """A token of exactly these claims, signed with `key` (HS256)."""
    header = {"alg": "HS256", "kid": key.key_id, "typ": "JWT"}
    signing_input = (
        f"{_b64(json.dumps(header, separators=(',', ':')).encode())}."
        f"{_b64(json.dumps(dict(payload), separators=(',', ':')).encode())}"
    )
    signature = hmac.new(_jwt_key(key), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def mint_worker(
    key: SigningKey, *, resource_id: str, domain: str, lifetime_s: int, now: float
) -> str:
    """The token of one resource: its own identity, the worker's scopes."""
    return mint(
        key,
        issuer=domain,
        subject=worker_identity(resource_id, domain),
        scopes=WORKER_SCOPES,
        lifetime_s=lifetime_s,
        now=now,
    )


def claims(token: str) -> dict[str, Any]:
    """A token's header and payload, unverified (what it says, not whether
    it is true): {"header": {...}, "payload": {...}}."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise TokenError("not a token: an IDTOKEN is three base64url parts joined by dots")
    try:
        header, payload = (json.loads(_unb64(part)) for part in parts[:2])
    except (ValueError, UnicodeDecodeError):
        raise TokenError("not a token: its header or payload is not base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise TokenError("not a token: its header or payload is not a JSON object")
    return {"header": header, "payload": payload}


WORKER_TOKEN_SCOPES = frozenset({*WORKER_SCOPES, "condor:/READ"})
"""The most a worker token handed to workers may allow (the pool's shared
worker token has these three)."""


def worker_token_problem(token: str, *, now: float, domain: str | None = None) -> str | None:
    """Why `token` cannot be handed to workers, with the fix: not a token,
    expired, of another pool than `domain` (when given), or allowing more
    or less than a worker needs (no scope at all means everything its
    identity may do). None when it can be. Says nothing of its signature,
    which only the pool can check."""
    try:
        payload = claims(token)["payload"]
    except TokenError as exc:
        return f"{exc}; ask the pool's operators for a worker token"
    exp, iss, scope = payload.get("exp"), payload.get("iss"), payload.get("scope")
    scopes = set(scope.split()) if isinstance(scope, str) else set()
    wider = " ".join(sorted(scopes - WORKER_TOKEN_SCOPES))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(exp)) if _number(exp) else ""
    problems = [
        (_number(exp) and exp <= now, f"the token expired at {when}"),
        (domain is not None and iss != domain, f"the token is for pool {iss!r}, not {domain!r}"),
        (
            not scopes,
            "the token is not limited to a worker's scopes (it has none, so it may do "
            "everything its identity may)",
        ),
        (bool(wider), f"the token allows more than a worker needs ({wider})"),
        (
            "condor:/ADVERTISE_STARTD" not in scopes,
            f"the token may not advertise a startd (scopes: {' '.join(sorted(scopes))})",
        ),
    ]
    for found, problem in problems:
        if found:
            return (
                f"{problem}; ask the pool's operators for a worker token (scopes "
                f"{' '.join(sorted(WORKER_TOKEN_SCOPES))} at most)"
            )
    return None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def verify(key: SigningKey, token: str) -> Mapping[str, Any]:
    """The payload of a token this key signed; TokenError otherwise."""
    parts = token.strip().split(".")
    said = claims(token)
    if said["header"].get("kid") != key.key_id or said["header"].get("alg") != "HS256":
        raise TokenError(f"the token is not signed with key {key.key_id} (HS256)")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    expected = hmac.new(_jwt_key(key), signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _unb64(parts[2])):
        raise TokenError(f"the token's signature does not match key {key.key_id}")
    payload: Mapping[str, Any] = said["payload"]
    return payload


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from its first byte, replacing
    any file there atomically."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
