"""Onboarding's conversation with the pool, with the worker token only:
is the collector reachable, does the pool accept the token (it may read
and advertise a startd - what the worker will do), is the slot there,
has it gone. htcondor2 is configured for exactly that token
(tide.htcondor.client.configure_token) before it is imported.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tide.htcondor.client import configure_token, unconfigure
from tide.onboard.settings import Settings


class PoolError(RuntimeError):
    """The pool cannot be reached, or refuses the token."""


def reachable(host: str, port: int, timeout_s: float = 5.0) -> str | None:
    """None when a TCP connection to host:port opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return str(exc.strerror or exc)


@contextmanager
def pool_client(s: Settings, token: str | None = None) -> Iterator[Any]:
    """htcondor2, speaking to the pool's collector with the worker token
    (or with `token`)."""
    folder = configure_token(s.collector, token or s.token)
    try:
        import htcondor2  # noqa: PLC0415  (after its configuration)

        yield htcondor2
    finally:
        unconfigure(folder)


def check_token(s: Settings) -> None:
    """Raise PoolError unless the collector answers and accepts the token
    for what a worker does: reading, and advertising a startd (a probe ad
    that matches no job, withdrawn at once)."""
    why = reachable(s.collector_host, s.collector_port)
    if why is not None:
        raise PoolError(
            f"the pool's collector {s.collector} cannot be reached ({why}): check the "
            "address and that this host may connect to that port (firewall)"
        )
    with pool_client(s) as htcondor2:
        collector = htcondor2.Collector(s.collector)
        try:
            collector.query(htcondor2.AdTypes.Collector, projection=["Name"])
        except htcondor2.HTCondorException as exc:
            raise PoolError(
                f"the pool {s.pool_domain} refused the token ({_first_line(exc)}): it is not "
                "a token of this pool, or it was revoked; ask the pool's operators for a "
                "worker token"
            ) from None
        import classad2  # noqa: PLC0415

        name = f"tide-onboard-probe-{uuid.uuid4().hex[:8]}@{s.node_name}"
        probe = classad2.ClassAd(
            {
                "MyType": "Machine",
                "Name": name,
                "Machine": s.node_name,
                "MyAddress": "<127.0.0.1:1>",
                "Requirements": False,
                "START": False,
            }
        )
        try:
            collector.advertise([probe], "UPDATE_STARTD_AD")
        except htcondor2.HTCondorException as exc:
            raise PoolError(
                f"the pool {s.pool_domain} accepts the token but not a worker's ads with it "
                f"({_first_line(exc)}): ask the pool's operators for a worker token"
            ) from None
        gone = classad2.ClassAd({"MyType": "Query", "TargetType": "Machine"})
        gone["Requirements"] = classad2.ExprTree(f'Name == "{name}"')
        # Should this fail, the probe expires by itself; it matches no job meanwhile.
        with contextlib.suppress(htcondor2.HTCondorException):
            collector.advertise([gone], "INVALIDATE_STARTD_ADS")


def slots(s: Settings, since: float | None = None) -> list[str]:
    """Names of the startd ads of this host's worker (TideResourceId); with
    `since` (a Unix time), only those of a startd started since then."""
    constraint = f'TideResourceId == "{s.node_name}"'
    if since is not None:
        constraint += f" && DaemonStartTime >= {int(since)}"
    with pool_client(s) as htcondor2:
        ads = htcondor2.Collector(s.collector).query(
            htcondor2.AdTypes.Startd,
            constraint=constraint,
            projection=["Name"],
        )
        return sorted(str(ad["Name"]) for ad in ads)


@dataclass(frozen=True)
class SmokeTest:
    job: str
    slot: str
    seconds: float


def smoke_test(
    s: Settings,
    submit_token: str,
    schedd_name: str | None,
    timeout_s: float,
    say: Callable[[str], None],
) -> SmokeTest:
    """Submit one tiny job that only this host's slot may run, as the pool
    user of `submit_token`, to `schedd_name` (default: the first schedd
    the collector lists); wait until it has run and exited 0."""
    start = time.monotonic()
    with pool_client(s, submit_token) as htcondor2:
        collector = htcondor2.Collector(s.collector)
        try:
            if schedd_name:
                ad = collector.locate(htcondor2.DaemonTypes.Schedd, schedd_name)
            else:
                ads = collector.query(htcondor2.AdTypes.Schedd)
                if not ads:
                    raise PoolError("the pool lists no schedd to submit the smoke test to")
                ad = ads[0]
            schedd = htcondor2.Schedd(ad)
            job = htcondor2.Submit(
                {
                    "executable": "/bin/echo",
                    "arguments": "tide onboard smoke test",
                    "transfer_executable": "false",
                    "should_transfer_files": "NO",
                    "output": "/dev/null",
                    "error": "/dev/null",
                    "initialdir": "/",
                    "request_cpus": "1",
                    "request_memory": "64MB",
                    "request_disk": "10MB",
                    "requirements": f'TARGET.TideResourceId == "{s.node_name}"',
                    "+TideOnboardSmokeTest": "true",
                }
            )
            cluster = schedd.submit(job).cluster()
        except htcondor2.HTCondorException as exc:
            raise PoolError(
                f"submitting the smoke test failed ({_first_line(exc)}): the submit token must "
                "belong to a pool user who may submit to the schedd"
            ) from None
        name = f"{cluster}.0"
        say(f"smoke test: job {name} submitted to {ad['Name']}")

        def done() -> bool:
            return bool(schedd.history(f"ClusterId == {cluster}", ["ExitCode"], 1))

        if not wait_for(f"smoke test job {name}", done, timeout_s, say):
            schedd.act(htcondor2.JobAction.Remove, f"ClusterId == {cluster}")
            raise PoolError(f"the smoke test job {name} did not run within {timeout_s:.0f} s")
        (ad_done,) = schedd.history(f"ClusterId == {cluster}", ["ExitCode", "LastRemoteHost"], 1)
        code = ad_done.get("ExitCode")
        slot = str(ad_done.get("LastRemoteHost", "?"))
        if code != 0:
            raise PoolError(f"the smoke test job {name} exited {code} on {slot}")
    return SmokeTest(name, slot, time.monotonic() - start)


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout_s: float,
    progress: Callable[[str], None],
    interval_s: float = 1.0,
) -> bool:
    """Poll `check` until it holds (True) or timeout_s passes (False),
    telling `progress` every ten seconds."""
    start = time.monotonic()
    told = start
    while True:
        try:
            if check():
                return True
        except Exception as exc:  # the pool may be briefly away
            progress(f"still waiting for {what}: {_first_line(exc)}")
        now = time.monotonic()
        if now - start >= timeout_s:
            return False
        if now - told >= 10:
            progress(f"waiting for {what} ({now - start:.0f} s of {timeout_s:.0f} s)")
            told = now
        time.sleep(interval_s)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


__all__ = [
    "PoolError",
    "SmokeTest",
    "check_token",
    "reachable",
    "slots",
    "smoke_test",
    "wait_for",
]
