"""The HTCondor bindings' configuration: the controller's own, private.

htcondor2 reads CONDOR_CONFIG when first imported, so `configure` must run
before anything imports it (tide.htcondor.demand, the CollectorSlots of
tide.htcondor.slots); a second call makes already imported bindings read
the new file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def configure(collector: str, token_file: Path) -> Path:
    """Point htcondor2 at a private configuration (a 0700 temporary folder)
    that authenticates with exactly the pool token (copied 0600) by IDTOKENS.
    Returns the folder; the caller removes it (`unconfigure`) when done."""
    return configure_token(collector, token_file.read_text(encoding="utf-8"))


def configure_token(collector: str, token: str) -> Path:
    """`configure` with the token's text."""
    folder = Path(tempfile.mkdtemp(prefix="tide-condor-"))  # mkdtemp makes it 0700
    tokens = folder / "tokens.d"
    tokens.mkdir(mode=0o700)
    copy = tokens / "pool.token"
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token)
    config = folder / "condor_config"
    config.write_text(
        f"COLLECTOR_HOST = {collector}\n"
        f"SEC_TOKEN_DIRECTORY = {tokens}\n"
        "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS\n"
        "SEC_DEFAULT_ENCRYPTION = REQUIRED\n"
        "SEC_DEFAULT_INTEGRITY = REQUIRED\n",
        encoding="utf-8",
    )
    config.chmod(0o600)
    os.environ["CONDOR_CONFIG"] = str(config)
    if "htcondor2" in sys.modules:  # imported before: make it read the new file
        sys.modules["htcondor2"].reload_config()
    return folder


def unconfigure(folder: Path) -> None:
    """Remove a folder `configure` made (its token copy with it)."""
    shutil.rmtree(folder, ignore_errors=True)


__all__ = ["configure", "configure_token", "unconfigure"]
