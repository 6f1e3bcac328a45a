"""A test host in a network namespace the test makes itself (the network
rule: tests talk to 127.0.0.0/8, or to such hosts, and nothing else).

The namespace is joined to this machine by a veth pair: the machine's end
gets `HOST_ADDRESS`, the namespace's end the addresses asked for, all in
198.51.100.0/24 (TEST-NET-2, documentation addresses no real host has; a
machine that routes it already is refused, naming the clash). Real
kernel networking: what reaches the namespace went through the machine's
routing table, like traffic to any other host.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

NETWORK = "198.51.100.0/24"
HOST_ADDRESS = "198.51.100.1"


@dataclass(frozen=True)
class Namespace:
    name: str
    addresses: tuple[str, ...]

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """A process inside the namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)  # type: ignore[call-overload,no-any-return]


def _ip(*argv: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *argv], check=check, capture_output=True, text=True, timeout=30)
    return done.stdout


def _clash(name: str) -> str | None:
    """A route of this machine's (not our own veth's) into NETWORK, if any."""
    ours = ipaddress.ip_network(NETWORK)
    for line in _ip("-4", "route", "show").splitlines():
        dest = line.split()[0]
        if dest == "default" or f"dev {name[:10]}-o" in line:
            continue
        try:
            if ipaddress.ip_network(dest, strict=False).overlaps(ours):
                return line
        except ValueError:
            continue
    return None


@contextmanager
def namespace_host(name: str, addresses: Sequence[str]) -> Iterator[Namespace]:
    """A network namespace `name` reachable from this machine at
    `addresses` (in NETWORK), removed afterwards with its veth pair."""
    outside, inside = f"{name[:10]}-o", f"{name[:10]}-i"
    _ip("netns", "del", name, check=False)  # a run killed before its cleanup
    _ip("link", "del", outside, check=False)
    clash = _clash(name)
    if clash:
        raise RuntimeError(
            f"this machine routes {NETWORK} already ({clash}): the test hosts' network "
            "would shadow it; change tests/netns.py NETWORK to a free documentation range"
        )
    _ip("netns", "add", name)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", name)
        _ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", outside)
        _ip("link", "set", outside, "up")
        for address in addresses:
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", name, "link", "set", inside, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield Namespace(name, tuple(addresses))
    finally:
        _ip("link", "del", outside, check=False)
        _ip("netns", "del", name, check=False)
