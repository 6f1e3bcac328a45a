"""Per-resource worker tokens: minted, verified and refused without HTCondor
(tests/integration/test_worker_tokens.py checks them against the real
collector, and against condor_token_create's own tokens)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tide.htcondor import tokens
from tide.htcondor.tokens import SigningKey, TokenError


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    path = tmp_path / "tide-workers"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(48))
    os.close(fd)
    return SigningKey.read(path)


def test_a_worker_token_names_its_resource_and_only_the_workers_scopes(key: SigningKey) -> None:
    token = tokens.mint_worker(key, resource_id="r1", domain="pool.test", lifetime_s=600, now=1000)
    said = tokens.claims(token)
    assert said["header"] == {"alg": "HS256", "kid": "tide-workers", "typ": "JWT"}
    payload = tokens.verify(key, token)
    assert payload["sub"] == "tide-worker-r1@pool.test"
    assert payload["iss"] == "pool.test"
    assert payload["scope"] == "condor:/ADVERTISE_STARTD condor:/ADVERTISE_MASTER"
    assert (payload["iat"], payload["exp"]) == (1000, 1600)
    assert len(payload["jti"]) == 32


def test_every_token_has_its_own_id(key: SigningKey) -> None:
    minted = {
        tokens.claims(tokens.mint_worker(key, resource_id="r1", domain="d", lifetime_s=60, now=0))[
            "payload"
        ]["jti"]
        for _ in range(20)
    }
    assert len(minted) == 20


def test_another_key_or_a_changed_token_does_not_verify(key: SigningKey, tmp_path: Path) -> None:
    token = tokens.mint_worker(key, resource_id="r1", domain="d", lifetime_s=60, now=0)
    other = SigningKey("tide-workers", os.urandom(48))
    with pytest.raises(TokenError, match="signature does not match"):
        tokens.verify(other, token)
    head, _, signature = token.split(".")
    forged = tokens.mint_worker(key, resource_id="r2", domain="d", lifetime_s=60, now=0)
    with pytest.raises(TokenError, match="signature does not match"):
        tokens.verify(key, ".".join([head, forged.split(".")[1], signature]))


def test_the_key_file_must_be_private_and_not_empty(tmp_path: Path) -> None:
    loose = tmp_path / "tide-workers"
    loose.write_bytes(b"x" * 48)
    loose.chmod(0o644)
    with pytest.raises(TokenError, match="mode 0644: others may read it; chmod 0600"):
        SigningKey.read(loose)
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    empty.chmod(0o600)
    with pytest.raises(TokenError, match="is empty"):
        SigningKey.read(empty)
    with pytest.raises(TokenError, match="No such file"):
        SigningKey.read(tmp_path / "absent")
    with pytest.raises(TokenError, match="is not a key name"):
        SigningKey.read(loose, key_id="../POOL")


def test_the_secret_is_never_in_a_repr(key: SigningKey) -> None:
    assert key.secret.hex() not in repr(key)
    assert "secret=" not in repr(key)


def test_unscramble_is_htcondors_xor_and_its_own_inverse() -> None:
    assert tokens.unscramble(b"\x00\x00\x00\x00\x00") == b"\xde\xad\xbe\xef\xde"
    data = os.urandom(33)
    assert tokens.unscramble(tokens.unscramble(data)) == data


def test_a_resource_name_that_cannot_be_an_identity_is_refused(key: SigningKey) -> None:
    for bad in ("", "a b", "x@y", "-r"):
        with pytest.raises(TokenError, match="cannot name a worker identity"):
            tokens.mint_worker(key, resource_id=bad, domain="d", lifetime_s=60, now=0)
    with pytest.raises(TokenError, match="lifetime must be positive"):
        tokens.mint_worker(key, resource_id="r", domain="d", lifetime_s=0, now=0)


def test_claims_refuses_what_is_not_a_token() -> None:
    for bad in ("", "abc", "a.b", "!!.??.x"):
        with pytest.raises(TokenError, match="not a token"):
            tokens.claims(bad)


def test_write_private_makes_a_0600_file(tmp_path: Path) -> None:
    target = tmp_path / "token"
    target.write_text("old")
    target.chmod(0o644)
    tokens.write_private(target, "new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token"]
