"""Prometheus metrics of the controller, all named `tide_*`.

Every metric lives in the registry of its own `Metrics` instance, never in
prometheus_client's global one: tests, and several controllers in one
process, each see only their own numbers.

    tide_resources{site,state}             gauge: resources per site and lifecycle state
    tide_demand_idle_jobs{site}            gauge: idle jobs whose first matching site is `site`
    tide_demand_unmatched_idle_jobs        gauge: idle jobs no site can run
    tide_decisions_total{site,action}      counter: actions planned (a Create of n counts n)
    tide_site_failures_total{site,operation}  counter: failed calls to a site
    tide_loop_duration_seconds             histogram: one control loop, start to end
    tide_last_loop_timestamp_seconds       gauge: Unix time the last loop completed
    tide_build_info{version}               gauge: always 1
    tide_budget_core_hours{site,kind}      gauge: a site's allocation of core hours:
                                           kind = total, used, left, reserved (the rest of
                                           the walltime of the pilots alive), free
    tide_budget_cores_in_use{site}         gauge: cores its pilots hold now (the rate)
    tide_budget_exhausted_timestamp_seconds{site}  gauge: Unix time it runs out at the
                                           current rate (+Inf while nothing runs)

The loop calls `observe_resources`, `observe_demand`, `observe_budgets`,
`count_plan`, `count_failure` and `time_loop`; the daemon calls `serve` once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tide import __version__
from tide.budget import HOUR_S, BudgetState
from tide.model import (
    Create,
    Demand,
    Destroy,
    Drain,
    Evacuate,
    Plan,
    Resource,
    State,
    TellDrain,
    Undrain,
)

LOOP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: a loop on a quiet pool takes milliseconds, one waiting on a slow
site API can take tens of seconds; anything slower lands in +Inf."""

ACTIONS = ("create", "drain", "tell_drain", "undrain", "destroy", "evacuate")
"""The `action` label values of tide_decisions_total."""

UNKNOWN_SITE = "unknown"
"""The `site` label of a resource action whose resource `site_of` does not know."""

_ACTION_NAMES: Mapping[type, str] = {
    Create: "create",
    Drain: "drain",
    TellDrain: "tell_drain",
    Undrain: "undrain",
    Destroy: "destroy",
    Evacuate: "evacuate",
}


class Metrics:
    """The controller's metrics, in a registry of their own (`self.registry`).

    A site is known once it is passed to the constructor or seen in
    resources, demand, a plan or a failure; known sites get every label
    combination of tide_resources, tide_demand_idle_jobs and
    tide_decisions_total, at zero when there is nothing to count, so a
    series drops to 0 rather than keeping its last value or vanishing.
    """

    def __init__(self, sites: Iterable[str] = (), version: str = __version__) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sites: list[str] = []
        self.resources = Gauge(
            "tide_resources",
            "Resources the controller owns, per site and lifecycle state.",
            ["site", "state"],
            registry=self.registry,
        )
        self.demand_idle_jobs = Gauge(
            "tide_demand_idle_jobs",
            "Idle jobs whose first matching site is this site.",
            ["site"],
            registry=self.registry,
        )
        self.demand_unmatched_idle_jobs = Gauge(
            "tide_demand_unmatched_idle_jobs",
            "Idle jobs that no site can run.",
            registry=self.registry,
        )
        self.decisions = Counter(
            "tide_decisions_total",
            "Actions the policy planned, per site; a create of n resources counts n.",
            ["site", "action"],
            registry=self.registry,
        )
        self.site_failures = Counter(
            "tide_site_failures_total",
            "Failed calls to a site, per operation.",
            ["site", "operation"],
            registry=self.registry,
        )
        self.loop_duration = Histogram(
            "tide_loop_duration_seconds",
            "Duration of one control loop.",
            buckets=LOOP_BUCKETS,
            registry=self.registry,
        )
        self.last_loop_timestamp = Gauge(
            "tide_last_loop_timestamp_seconds",
            "Unix time at which the last control loop completed.",
            registry=self.registry,
        )
        self.build_info = Gauge(
            "tide_build_info",
            "Always 1; the label says which Tide runs.",
            ["version"],
            registry=self.registry,
        )
        self.build_info.labels(version=version).set(1)
        self.budget_core_hours = Gauge(
            "tide_budget_core_hours",
            "A site's allocation of core hours: total, used, left, reserved (the rest of the "
            "walltime of its pilots alive) and free (what new pilots may use).",
            ["site", "kind"],
            registry=self.registry,
        )
        self.budget_cores_in_use = Gauge(
            "tide_budget_cores_in_use",
            "Cores a site's pilots hold now: the rate its allocation is spent at.",
            ["site"],
            registry=self.registry,
        )
        self.budget_exhausted = Gauge(
            "tide_budget_exhausted_timestamp_seconds",
            "Unix time a site's allocation runs out at the current rate (+Inf: nothing runs).",
            ["site"],
            registry=self.registry,
        )
        for site in sites:
            self._know(site)

    @property
    def sites(self) -> tuple[str, ...]:
        """The known sites, in the order they became known."""
        return tuple(self._sites)

    def _know(self, site: str) -> None:
        if site in self._sites:
            return
        self._sites.append(site)
        for state in State:
            self.resources.labels(site=site, state=state.value).set(0)
        self.demand_idle_jobs.labels(site=site).set(0)
        for action in ACTIONS:
            self.decisions.labels(site=site, action=action)

    def observe_resources(self, resources: Iterable[Resource]) -> None:
        """Set tide_resources to this census: every state of every known site,
        zeros included."""
        counts: dict[tuple[str, str], int] = {}
        for resource in resources:
            self._know(resource.site)
            key = (resource.site, resource.state.value)
            counts[key] = counts.get(key, 0) + 1
        for site in self._sites:
            for state in State:
                value = counts.get((site, state.value), 0)
                self.resources.labels(site=site, state=state.value).set(value)

    def observe_demand(self, demand: Iterable[Demand]) -> None:
        """Set the demand gauges: each autocluster's idle jobs count once,
        under the first site it lists, or as unmatched if it lists none."""
        per_site: dict[str, int] = {}
        unmatched = 0
        for item in demand:
            if not item.sites:
                unmatched += item.idle_jobs
                continue
            site = item.sites[0]
            self._know(site)
            per_site[site] = per_site.get(site, 0) + item.idle_jobs
        for site in self._sites:
            self.demand_idle_jobs.labels(site=site).set(per_site.get(site, 0))
        self.demand_unmatched_idle_jobs.set(unmatched)

    def observe_budgets(self, budgets: Mapping[str, BudgetState], now: float) -> None:
        """Set the budget gauges of each site with an allocation."""
        for site, state in budgets.items():
            kinds = {
                "total": state.rule.total_core_s,
                "used": state.used_core_s,
                "left": state.left_core_s,
                "reserved": state.reserved_core_s,
                "free": state.free_core_s,
            }
            for kind, core_s in kinds.items():
                self.budget_core_hours.labels(site=site, kind=kind).set(core_s / HOUR_S)
            self.budget_cores_in_use.labels(site=site).set(state.cores_in_use)
            ends = state.runs_out_at(now)
            self.budget_exhausted.labels(site=site).set(math.inf if ends is None else ends)

    def count_plan(self, plan: Plan, site_of: Mapping[str, str]) -> None:
        """Add the plan's actions to tide_decisions_total. `site_of` maps a
        resource id to its site, for drain, undrain and destroy; an id it
        lacks is counted under site="unknown" rather than failing the loop."""
        for action in plan.actions:
            name = _ACTION_NAMES[type(action)]
            if isinstance(action, Create):
                site, amount = action.site, action.count
            else:
                site, amount = site_of.get(action.resource, UNKNOWN_SITE), 1
            self._know(site)
            self.decisions.labels(site=site, action=name).inc(amount)

    def count_failure(self, site: str, operation: str) -> None:
        """Count one failed call (`operation`: create, destroy, list, ...) to `site`."""
        self._know(site)
        self.site_failures.labels(site=site, operation=operation).inc()

    def observe_loop(self, seconds: float, now: float | None = None) -> None:
        """Record one completed loop that took `seconds` and ended at `now`
        (Unix time; the current time if None)."""
        self.loop_duration.observe(seconds)
        self.last_loop_timestamp.set(time.time() if now is None else now)

    @contextmanager
    def time_loop(self) -> Iterator[None]:
        """Time the block as one loop. Its duration is recorded even if it
        raises, but tide_last_loop_timestamp_seconds moves only when it
        completes: a loop that keeps failing shows as a stale timestamp."""
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.loop_duration.observe(time.perf_counter() - start)
            raise
        self.observe_loop(time.perf_counter() - start)

    def serve(self, address: str, port: int) -> WSGIServer | None:
        """Serve this registry over HTTP (any path, /metrics included) on
        address:port from a daemon thread; port 0 disables it and returns
        None. Stop it with `server.shutdown(); server.server_close()`."""
        if port == 0:
            return None
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server
