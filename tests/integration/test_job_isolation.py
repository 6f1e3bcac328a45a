"""Jobs on a provider worker are kept from each other and from the worker's
token: real jobs of two pool users on the lab's worker, each dynamic slot
running as a slot user of its own (images/condor/tide-entrypoint)."""

from __future__ import annotations

import re
import time
import uuid

from tests import lab
from tests.probes import CREDENTIAL_SEARCH, assert_no_token_found

# What a job of the second user tries against the first user's running job:
# its sandbox files, its processes' environment, signals to them.
_PROBE = r"""
me=$(id -un)
echo "user $me"
for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    owner=$(stat -c %U "$p" 2>/dev/null) || continue
    case $owner in slot1_*) ;; *) continue ;; esac
    [ "$owner" = "$me" ] && continue
    echo "other $pid $owner"
    tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -q TIDE_TEST_SECRET && echo "READ-ENVIRON $pid"
    kill -0 "$pid" 2>/dev/null && echo "SIGNALLED $pid"
done
for f in /var/lib/condor/execute/*/secret.txt /var/lib/condor/execute/*/*/secret.txt; do
    [ -e "$f" ] || continue
    cat "$f" 2>/dev/null && echo "READ-FILE $f"
done
ls /var/lib/condor/execute/*/ 2>/dev/null | grep -q secret.txt && echo "LISTED-SANDBOX"
echo done
"""


def test_two_users_jobs_on_one_worker_cannot_see_or_signal_each_other() -> None:
    secret = uuid.uuid4().hex
    first, _ = lab.submit_job(
        f"export TIDE_TEST_SECRET={secret}; echo {secret} > secret.txt; "
        "echo user $(id -un); sleep 90",
        on=lab.WORKER_HOST,
        user="physicist",
    )
    try:
        lab.wait_for(f"job {first} to run", lambda: lab.job_status(first) == 2, timeout=120)
        time.sleep(3)  # its sleep started
        probe = lab.run_job(_PROBE, on=lab.WORKER_HOST, user="chemist")
    finally:
        lab.in_container(lab.CM_HOST, lab.CM_CONTAINER, "condor_rm", first, check=False)
    out = probe.output
    assert probe.exit_code == "0", out
    assert out.rstrip().endswith("done"), out
    me = re.search(r"^user (slot1_\d+)$", out, re.M)
    assert me, out  # the probe ran as a slot user, not as nobody
    others = re.findall(r"^other (\d+) (slot1_\d+)$", out, re.M)
    # It saw the first job's processes (ps shows every process), owned by
    # another slot user, and could do nothing with them.
    assert others, out
    assert all(owner != me.group(1) for _, owner in others), out
    for word in ("READ-ENVIRON", "SIGNALLED", "READ-FILE", "LISTED-SANDBOX"):
        assert word not in out, out
    assert secret not in out, out


def test_a_job_finds_no_token_on_the_worker() -> None:
    """A job searches the worker's file system and its own environment for
    the worker's token, and tries the token's known places: nothing readable."""
    assert_no_token_found(lab.run_job(CREDENTIAL_SEARCH, on=lab.WORKER_HOST))
