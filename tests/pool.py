"""Talk to the lab pool from this machine with the htcondor2 bindings, as a
client that holds one token (by default the worker token)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tests.lab import COLLECTOR, STATE, WORKER_HOST

_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="tide-client-"))
_configured_token: str | None = None


def client(token_file: Path | None = None) -> Any:
    """Return htcondor2, configured to authenticate with exactly one token.

    The configuration is written and reloaded only when the token changes,
    so polling loops can call this freely."""
    global _configured_token  # noqa: PLW0603  (one process-wide client configuration)
    token = (token_file or STATE / "secrets" / "worker.token").read_text()
    if token == _configured_token:
        import htcondor2  # noqa: PLC0415

        return htcondor2
    tokens = _CONFIG_DIR / "tokens.d"
    tokens.mkdir(mode=0o700, exist_ok=True)
    for old in tokens.iterdir():
        old.unlink()
    target = tokens / "token"
    target.write_text(token)
    target.chmod(0o600)
    config = _CONFIG_DIR / "condor_config"
    config.write_text(
        f"COLLECTOR_HOST = {COLLECTOR}\n"
        "ENABLE_IPV6 = False\n"
        f"SEC_TOKEN_DIRECTORY = {tokens}\n"
        "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS\n"
        "SEC_DEFAULT_ENCRYPTION = REQUIRED\n"
        "SEC_DEFAULT_INTEGRITY = REQUIRED\n"
    )
    os.environ["CONDOR_CONFIG"] = str(config)
    import htcondor2  # noqa: PLC0415  (reads CONDOR_CONFIG when first imported)

    htcondor2.reload_config()
    _configured_token = token
    return htcondor2


def slot_advertised(resource_id: str = WORKER_HOST) -> bool:
    """Whether a startd with this TideResourceId is in the pool's collector."""
    htcondor2 = client()
    ads = htcondor2.Collector().query(
        htcondor2.AdTypes.Startd,
        constraint=f'TideResourceId == "{resource_id}"',
        projection=["Name"],
    )
    return len(ads) > 0
