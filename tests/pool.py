"""Talk to the lab pool from this machine with the htcondor2 bindings, as a
client that holds one token (by default the worker token)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tests.lab import COLLECTOR, STATE

_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="tide-client-"))


def client(token_file: Path | None = None) -> Any:
    """Return htcondor2, configured to authenticate with exactly one token."""
    token = token_file or STATE / "secrets" / "worker.token"
    tokens = _CONFIG_DIR / "tokens.d"
    tokens.mkdir(mode=0o700, exist_ok=True)
    for old in tokens.iterdir():
        old.unlink()
    target = tokens / "token"
    target.write_text(token.read_text())
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
    return htcondor2
