"""What a job does to look for a worker's secrets, and what it must find:
the same probe on every kind of worker (run it with tests.lab.run_job)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.lab import JobResult

JWT = r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\."
"""A JWT's start (an IDTOKEN's header and payload); the pattern's own text
does not match it, so the job's script is not found for itself."""

CREDENTIAL_SEARCH = (
    "echo user $(id -un); "
    f"echo environ $(env | grep -cE '{JWT}'); "
    f"grep -rlsIE '{JWT}' /etc /run /var /opt /tmp /root /home /srv /mnt 2>/dev/null | head -5; "
    "for f in /etc/condor/tokens.d /etc/condor/tokens.d/tide /run/secrets/token "
    "/etc/condor/passwords.d /etc/condor/passwords.d/POOL; do "
    'if [ -d "$f" ]; then ls "$f" >/dev/null 2>&1; else cat "$f" >/dev/null 2>&1; fi '
    '&& echo "READ $f" || echo "denied $f"; '
    "done; echo done"
)
"""A job's search for a token (an IDTOKEN is a JWT: it starts with eyJ) in
its environment and the worker's file system, and its tries at the token's
known places."""


def assert_no_token_found(job: JobResult) -> None:
    """The probe ran to its end as a slot user and found nothing readable."""
    out = job.output
    assert out.rstrip().endswith("done"), out
    assert re.search(r"^user slot1_\d+$", out, re.M), out  # never root, never shared nobody
    assert "\nenviron 0\n" in f"\n{out}", out  # no JWT in the job's environment
    assert "READ " not in out, out
    # Where a worker keeps its token: unreadable, the folders not even listable.
    for path in ("/etc/condor/tokens.d", "/etc/condor/tokens.d/tide", "/etc/condor/passwords.d"):
        assert f"denied {path}\n" in out, out
    assert [line for line in out.splitlines() if line.startswith("/")] == [], out


def assert_no_token_in_state(folder: Path) -> None:
    """The controller's state file in folder/state (and its journal) holds
    no token: a worker's own is minted, handed over and forgotten."""
    files = sorted((folder / "state").glob("state.sqlite3*"))
    assert files, f"no state file in {folder / 'state'}"
    for path in files:
        assert not re.search(JWT.encode(), path.read_bytes()), f"a token in {path}"
