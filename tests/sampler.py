"""Watch every process on this machine for a secret in its command line or
environment while something runs: `with SecretSampler(known) as seen: ...`,
then `seen.found` lists each sighting. This machine's /proc shows every
process, the lab hosts' and their containers' included (one kernel).

It reads each process's argv and environment every `period_s` (0.2 s), and
looks for the `known` secrets (a token's text, its signature, a key) and for
anything shaped like a JWT (an IDTOKEN's header and payload), so a token
minted inside a process and passed on is caught too.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")


class SecretSampler:
    def __init__(self, known: Sequence[str] = (), period_s: float = 0.2) -> None:
        self._known = [k.encode() for k in known if k]
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="secret-sampler", daemon=True)
        self.found: list[str] = []
        self.samples = 0

    def __enter__(self) -> SecretSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self.samples += 1
            self._stop.wait(self._period_s)

    def _sample(self) -> None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            for part in ("cmdline", "environ"):
                try:
                    data = (proc / part).read_bytes()
                except OSError:
                    continue  # gone, or a kernel thread
                if JWT.search(data) or any(k in data for k in self._known):
                    try:
                        comm = (proc / "comm").read_text().strip()
                    except OSError:
                        comm = "?"
                    sighting = f"pid {proc.name} ({comm}): its {part}"
                    if sighting not in self.found:
                        self.found.append(sighting)
