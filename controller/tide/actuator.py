"""Carrying out a Plan: each site's actions in order on that site's lane
(tide.runner), the sites concurrently, the store written before every
external call.

Write-ahead: a resource is recorded REQUESTED before its site's create call,
DRAINING before its startd is told, STOPPING before its destroy call; so
after a crash at any moment the store names every resource that may exist
at a site, and the next cycle's evidence (tide.observe) settles the rest.

Isolation: an exception from one action (a site call, a store write) is
logged and counted and ends that action only; the site's later actions and
every other site go on. Nothing here decides: retries, re-drains and
backoff are in the plan (tide.policy), from timers kept in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from tide.htcondor.slots import Slots
from tide.htcondor.startds import Startds
from tide.logs import event
from tide.metrics import Metrics
from tide.model import (
    Action,
    Create,
    Destroy,
    Drain,
    Evacuate,
    Plan,
    Site,
    State,
    TellDrain,
    Undrain,
)
from tide.sites.base import Capability, DeadlineExceeded, DrainRefused, SiteAdapter
from tide.store import Store, StoreError

log = logging.getLogger("tide.actuator")

VACATE_RECHECK_S = 60.0
"""A resource whose site accepted its destroy but still lists it (a pilot
vacating its jobs) is told again only after this long."""


class Actuator:
    """Carries out actions at the configured sites."""

    def __init__(
        self,
        *,
        sites: Mapping[str, tuple[Site, SiteAdapter]],
        store: Store,
        slots: Slots,
        startds: Startds | None,
        metrics: Metrics | None,
        clock: Callable[[], float],
        new_id: Callable[[str], str],
    ) -> None:
        self._sites = sites
        self._store = store
        self._slots = slots
        self._startds = startds
        self._metrics = metrics
        self._clock = clock
        self._new_id = new_id

    def batches(self, plan: Plan, site_of: Mapping[str, str]) -> dict[str, Callable[[], None]]:
        """One callable per site that carries out its actions, in plan order."""
        per_site: dict[str, list[Action]] = {}
        for action in plan.actions:
            site = action.site if isinstance(action, Create) else site_of.get(action.resource)
            if site is None or site not in self._sites:
                event(
                    log,
                    "action skipped: no configured site",
                    level=logging.WARNING,
                    action=type(action).__name__.lower(),
                    site=site or "?",
                )
                continue
            per_site.setdefault(site, []).append(action)
        return {site: self._batch(site, actions) for site, actions in per_site.items()}

    def _batch(self, site: str, actions: list[Action]) -> Callable[[], None]:
        """The site's actions in order; the slot ads of what was destroyed are
        withdrawn last, so a slow collector delays no destroy or evacuation."""

        def run() -> None:
            later: list[str] = []
            for action in actions:
                try:
                    self.act(site, action, later)
                except Exception as exc:  # one action's failure ends that action only
                    self.failed(site, "act", "action failed", _target(action), exc)
            for rid in later:
                self._withdraw(site, rid)

        return run

    def act(self, site: str, action: Action, later: list[str] | None = None) -> None:
        """Carry out one action; withdrawals of destroyed resources' ads go to
        `later` when given (done at once otherwise)."""
        withdraw = later if later is not None else []
        now = self._clock()
        if isinstance(action, Create):
            self._create(site, action)
        elif isinstance(action, Destroy):
            if action.boot_failed:
                self._store.boot_failed(site, now)
            if self._boot_closed(site, action.resource) and self._destroy(
                site, action.resource, action.reason
            ):
                withdraw.append(action.resource)
        elif isinstance(action, Evacuate):
            event(log, "evacuating", site=site, resource=action.resource, reason=action.reason)
            if self._destroy(site, action.resource, action.reason):
                withdraw.append(action.resource)
        elif isinstance(action, Drain):
            drained = self._store.drain(action.resource, now, action.reason, held=action.held)
            event(log, "draining", site=site, resource=action.resource, reason=action.reason)
            self._tell_drain(site, action.resource, action.reason, only_idle=not drained.held)
        elif isinstance(action, TellDrain):
            told = self._store.get(action.resource)
            held = told is not None and told.held
            self._tell_drain(site, action.resource, action.reason, only_idle=not held)
        elif isinstance(action, Undrain):
            self._undrain(site, action.resource, action.reason)
        if later is None:
            for rid in withdraw:
                self._withdraw(site, rid)

    # --- the actions ------------------------------------------------------

    def _create(self, site: str, action: Create) -> None:
        adapter = self._sites[site][1]
        for _ in range(action.count):
            rid = self._new_id(site)
            now = self._clock()
            self._store.add(rid, site, now, action.reason)  # before the call: never leaked
            try:
                details = adapter.create(rid)
            except Exception as exc:
                failures = self._store.site(site).failures + 1
                self._store.boot_failed(site, self._clock())
                self._count(site, "create")
                late = isinstance(exc, DeadlineExceeded)
                event(
                    log,
                    "create past its deadline: it may still come up" if late else "create failed",
                    level=logging.WARNING,
                    site=site,
                    resource=rid,
                    error=str(exc),
                    failures=failures,
                )
                if not late:  # refused: nothing there. Late: a boot like any other,
                    # settled by the evidence (listed, advertised, or its boot timeout)
                    self._move_if(rid, State.REQUESTED, State.FAILED, f"create failed: {exc}")
                return  # no more creates at this site this cycle
            self._store.created(rid, details, self._clock())
            event(log, "created", site=site, resource=rid)

    def _move_if(self, rid: str, expected: State, to: State, reason: str) -> None:
        """Move only from `expected`: the evidence may have moved it already."""
        current = self._store.get(rid)
        if current is not None and current.state is expected:
            self._store.move(rid, to, self._clock(), reason)

    def _destroy(self, site: str, rid: str, reason: str) -> bool:
        """Destroy it (STOPPING written first); whether its site took the call.
        An evacuation is one too: the site's destroy vacates running jobs (a
        Slurm pilot's SIGTERM trap), and the owners wait for no collector call."""
        adapter = self._sites[site][1]
        self._store.move(rid, State.STOPPING, self._clock(), reason)  # before the call
        try:
            adapter.destroy(rid, self._store.handle(rid))
        except Exception as exc:
            wait = self._store.destroy_failed(rid, self._clock(), self._limits(site))
            self.failed(site, "destroy", f"destroy failed: retried in {wait:.0f}s", rid, exc)
            return False
        if Capability.OWNERS in adapter.capabilities:  # gone once its site no longer lists it
            self._store.destroy_pending(rid, self._clock() + VACATE_RECHECK_S)
            event(log, "told to go", site=site, resource=rid, reason=reason)
        else:
            self._store.move(rid, State.GONE, self._clock(), "destroyed")
            event(log, "destroyed", site=site, resource=rid, reason=reason)
        return True

    def _limits(self, site: str) -> float:
        return self._sites[site][0].limits.destroy_retry_max_s

    def _withdraw(self, site: str, rid: str) -> None:
        try:
            self._slots.withdraw(rid)
        except Exception as exc:  # the ads expire on their own; a failure only delays that
            self.failed(site, "withdraw", "withdrawing its slot ads failed", rid, exc)

    def _boot_closed(self, site: str, rid: str) -> bool:
        """Before a boot is destroyed, tell its startd to drain if idle, where
        the site can: a startd that came up since the snapshot and holds a
        claim refuses (the boot is kept, and seen running next cycle), and
        one still starting takes no job once up (the OpenStack image reads
        its drain request before its first match). So neither the race with
        the startd's first match nor a destroy call that hangs and lands
        late can kill a job. False: do not destroy now."""
        r = self._store.get(rid)
        if self._startds is None or r is None or r.state not in (State.REQUESTED, State.BOOTING):
            return True
        if r.boot_failed or Capability.DRAIN not in self._sites[site][1].capabilities:
            return True  # the site says it never comes up; or no channel to its startd
        try:
            self._startds.drain(site, rid, "tide: boot given up", only_idle=True)
        except DrainRefused as exc:
            event(log, "boot kept: a job got there first", site=site, resource=rid, error=str(exc))
            return False
        except DeadlineExceeded as exc:
            self.failed(site, "drain", "boot not closed in time: destroyed later", rid, exc)
            return False
        except Exception as exc:
            event(log, "boot closed: no startd yet", site=site, resource=rid, error=str(exc))
        return True

    def _tell_drain(self, site: str, rid: str, reason: str, *, only_idle: bool = False) -> None:
        """Tell the resource's startd to drain and record that it was told (a
        failure is told again by a later plan: the record stays untold)."""
        if self._startds is None:
            return
        try:
            request = self._startds.drain(site, rid, f"tide: {reason}", only_idle=only_idle)
        except DrainRefused as exc:  # a job got there first: it is busy, not idle
            event(log, "drain refused: busy after all", site=site, resource=rid, error=str(exc))
            now = self._clock()
            try:
                self._store.move(
                    rid, State.RUNNING, now, "drain refused: a job started", unless_held=True
                )
                self._store.set_timers({rid: {"idle_since": now}})
            except StoreError as err:
                event(log, "undo refused", level=logging.WARNING, resource=rid, error=str(err))
            return
        except Exception as exc:
            self.failed(site, "drain", "startd drain failed: told again later", rid, exc)
            return
        event(log, "startd draining", site=site, resource=rid, request=request)
        self._store.drain_told(rid, request, self._clock())

    def _undrain(self, site: str, rid: str, reason: str) -> None:
        """Cancel the startd's drain, then record RUNNING (never the other way
        round: RUNNING in the store must mean the startd takes jobs). An
        operator's drain that lands meanwhile wins: the move is refused in
        the store's own transaction and the startd is told to drain again."""
        r = self._store.get(rid)
        if r is None or r.held:
            return
        # A drain we never recorded (None: a lost state file, a drain told but
        # not recorded) is cancelled too.
        if self._startds is not None:
            try:
                self._startds.cancel_drain(site, rid, r.drain_request or "")
            except Exception as exc:
                self.failed(site, "undrain", "startd undrain failed: retried later", rid, exc)
                return
        try:
            self._store.move(rid, State.RUNNING, self._clock(), reason, unless_held=True)
        except StoreError as exc:
            event(log, "undrain refused", level=logging.WARNING, resource=rid, error=str(exc))
            self._tell_drain(site, rid, "operator drain (tide drain)")
            return
        event(log, "running", site=site, resource=rid, reason=reason)

    # --- failures ---------------------------------------------------------

    def failed(self, site: str, operation: str, what: str, rid: str, exc: Exception) -> None:
        """A call failed: counted, logged, and left for a later plan."""
        self._count(site, operation)
        event(log, what, level=logging.WARNING, site=site, resource=rid, error=str(exc))

    def _count(self, site: str, operation: str) -> None:
        if self._metrics is not None:
            self._metrics.count_failure(site, operation)


def _target(action: Action) -> str:
    return action.site if isinstance(action, Create) else action.resource
