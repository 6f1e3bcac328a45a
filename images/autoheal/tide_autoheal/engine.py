"""The edge: Docker's events and listings in, restarts out.

One thread follows `docker events` (health_status, start, destroy of every
container) into a queue; the main thread takes them, sweeps now and then for
what the stream may have missed, feeds the policy and carries out what it
decides. Only the main thread touches the policy, so it needs no lock. A
Docker error is logged and the loop goes on: autoheal must outlive the
hiccups of the engine it watches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import docker
from docker.errors import DockerException, NotFound

from tide_autoheal.actions import Action, Note, Recheck, Restart, RestartDependents
from tide_autoheal.config import Config
from tide_autoheal.log import log
from tide_autoheal.policy import Policy, parse_depends_on

EVENT_FILTERS = {"type": "container", "event": ["health_status", "start", "destroy"]}
# Put in the queue when the event stream broke: events may be lost, sweep now.
RESYNC: dict[str, Any] = {"Type": "tide-autoheal", "Action": "resync"}


class Engine:
    def __init__(self, config: Config, client: docker.DockerClient) -> None:
        self.config = config
        self.client = client
        self.policy = Policy(config.policy)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()

    def run(self) -> None:
        threading.Thread(target=self._follow_events, name="docker-events", daemon=True).start()
        next_sweep = 0.0
        while True:
            now = time.monotonic()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + self.config.sweep_interval
            self._carry_out(self.policy.tick(now))
            due = self.policy.next_due()
            wake = next_sweep if due is None else min(next_sweep, due)
            try:
                event = self.events.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                continue
            if event is RESYNC:
                next_sweep = 0.0
            else:
                self._on_event(event, time.monotonic())

    def enabled(self, labels: Mapping[str, Any]) -> bool:
        return labels.get(self.config.label) == "true"

    def _on_event(self, event: Mapping[str, Any], now: float) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        name = str(attributes.get("name", "")).lstrip("/")
        if event.get("Type") != "container" or not name:
            return
        if action.startswith("health_status"):
            status = action.partition(":")[2].strip()
            self._carry_out(self.policy.health(name, status, self.enabled(attributes), now))
        elif action == "start":
            self._carry_out(self.policy.started(name, now))
        elif action == "destroy":
            self.policy.forget(name)

    def _sweep(self, now: float) -> None:
        """Every running container with the label, whatever its health: catches missed
        unhealthy events, and lets counts reset for those that stayed healthy."""
        try:
            found = self.client.containers.list(filters={"label": f"{self.config.label}=true"})
        except (DockerException, OSError) as err:
            log("sweep-failed", why=str(err), level="warning")
            return
        for container in found:
            if container.name:
                self._carry_out(self.policy.health(container.name, container.health, True, now))

    def _carry_out(self, actions: list[Action]) -> None:
        work = deque(actions)
        while work:
            action = work.popleft()
            if isinstance(action, Note):
                level = "warning" if action.what == "gave-up" else "info"
                log(action.what, action.container, action.why, level=level)
            elif isinstance(action, Restart):
                self._restart(action)
            elif isinstance(action, Recheck):
                work.extend(self._recheck(action.container))
            else:
                work.extend(self._dependents(action))

    def _restart(self, action: Restart) -> None:
        name, why, attempt = action.container, action.why, action.attempt
        started = time.monotonic()
        try:
            container = self.client.containers.get(name)
            if container.status != "running":
                # Stopped by someone on purpose since: not ours to start.
                log("skipped", name, f"{why}, but it is {container.status}")
                return
            container.restart(timeout=self.config.stop_timeout)
        except NotFound:
            log("skipped", name, f"{why}, but it no longer exists")
            self.policy.forget(name)
            return
        except (DockerException, OSError) as err:
            log("restart", name, why, level="error", attempt=attempt, result="failed", error=err)
            return
        seconds = f"{time.monotonic() - started:.1f}"
        log("restart", name, why, attempt=attempt, result="ok", seconds=seconds)

    def _recheck(self, name: str) -> list[Action]:
        """A deferred restart is due: restart only if it is still unhealthy."""
        try:
            container = self.client.containers.get(name)
        except NotFound:
            self.policy.forget(name)
            return []
        except (DockerException, OSError) as err:
            log("recheck-failed", name, str(err), level="warning")
            return []
        running = container.status == "running"
        status = container.health if running else container.status
        return self.policy.health(name, status, self.enabled(container.labels), time.monotonic())

    def _dependents(self, action: RestartDependents) -> list[Action]:
        label = self.config.depends_on_label
        try:
            found = self.client.containers.list(filters={"label": label})
        except (DockerException, OSError) as err:
            why = f"cannot list dependents of {action.dependency}: {err}"
            log("dependents-failed", action.dependency, why, level="error")
            return []
        candidates = [(c.name, parse_depends_on(c.labels.get(label, ""))) for c in found if c.name]
        return self.policy.dependency_recovered(action.dependency, candidates, time.monotonic())

    def _follow_events(self) -> None:
        """Runs in its own thread with its own client: put every event in the queue,
        reconnect when the stream breaks (asking for what was missed since)."""
        last_nano = 0
        pause = 1.0
        while True:
            client = None
            try:
                client = docker.from_env()
                since = last_nano // 1_000_000_000 or None
                stream = client.events(decode=True, since=since, filters=EVENT_FILTERS)
                log("watching", why="following docker events")
                pause = 1.0
                for event in stream:
                    nano = int(event.get("timeNano") or 0)
                    if nano and nano <= last_nano:
                        continue  # seen before the reconnect
                    last_nano = max(last_nano, nano)
                    self.events.put(event)
                why = "docker events stream ended"
            except (DockerException, OSError) as err:
                why = f"docker events stream failed: {err}"
            finally:
                if client is not None:
                    client.close()
            log("events-lost", why=f"{why}; reconnecting in {pause:g}s", level="warning")
            self.events.put(RESYNC)
            time.sleep(pause)
            pause = min(pause * 2, 30.0)
