"""The controller's Prometheus metrics: values in an own registry, zeros for
emptied states, counters that add up, and the HTTP endpoint on loopback."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import REGISTRY

from tide.metrics import LOOP_BUCKETS, UNKNOWN_SITE, Metrics
from tide.model import Create, Demand, Destroy, Drain, Plan, Resource, State, Undrain


def resource(rid: str, site: str, state: State) -> Resource:
    return Resource(id=rid, site=site, state=state, state_since=0.0, created_at=0.0)


def demand(key: str, idle: int, *sites: str) -> Demand:
    return Demand(key=key, idle_jobs=idle, cpus=1, memory_mb=1024, disk_mb=1024, sites=sites)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_instance_has_its_own_registry_and_leaves_the_global_one_alone() -> None:
    first, second = Metrics(["a"]), Metrics(["a"])
    first.count_failure("a", "create")
    assert value(first, "tide_site_failures_total", site="a", operation="create") == 1
    assert value(second, "tide_site_failures_total", site="a", operation="create") is None
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("tide_")]


def test_build_info_is_one_with_the_version() -> None:
    metrics = Metrics(version="1.2.3")
    assert value(metrics, "tide_build_info", version="1.2.3") == 1


def test_known_sites_start_at_zero_in_every_state() -> None:
    metrics = Metrics(["a", "b"])
    for site in ("a", "b"):
        for state in State:
            assert value(metrics, "tide_resources", site=site, state=state.value) == 0
        assert value(metrics, "tide_demand_idle_jobs", site=site) == 0
        for action in ("create", "drain", "undrain", "destroy"):
            assert value(metrics, "tide_decisions_total", site=site, action=action) == 0


def test_resources_are_counted_per_site_and_state_and_an_emptied_state_drops_to_zero() -> None:
    metrics = Metrics(["a"])
    metrics.observe_resources(
        [
            resource("r1", "a", State.RUNNING),
            resource("r2", "a", State.RUNNING),
            resource("r3", "a", State.BOOTING),
            resource("r4", "b", State.DRAINING),
        ]
    )
    assert value(metrics, "tide_resources", site="a", state="running") == 2
    assert value(metrics, "tide_resources", site="a", state="booting") == 1
    assert value(metrics, "tide_resources", site="a", state="failed") == 0
    assert value(metrics, "tide_resources", site="b", state="draining") == 1
    assert value(metrics, "tide_resources", site="b", state="running") == 0
    assert metrics.sites == ("a", "b")

    metrics.observe_resources([resource("r1", "a", State.DRAINING)])
    assert value(metrics, "tide_resources", site="a", state="running") == 0
    assert value(metrics, "tide_resources", site="a", state="booting") == 0
    assert value(metrics, "tide_resources", site="a", state="draining") == 1
    assert value(metrics, "tide_resources", site="b", state="draining") == 0

    metrics.observe_resources([])
    for site in ("a", "b"):
        for state in State:
            assert value(metrics, "tide_resources", site=site, state=state.value) == 0


def test_demand_counts_under_the_first_matching_site_once_and_unmatched_apart() -> None:
    metrics = Metrics(["a", "b", "c"])
    metrics.observe_demand(
        [
            demand("s#1", 10, "a", "b"),
            demand("s#2", 5, "b", "a"),
            demand("s#3", 7, "a"),
            demand("s#4", 3),
            demand("s#5", 4),
        ]
    )
    assert value(metrics, "tide_demand_idle_jobs", site="a") == 17
    assert value(metrics, "tide_demand_idle_jobs", site="b") == 5
    assert value(metrics, "tide_demand_idle_jobs", site="c") == 0
    assert value(metrics, "tide_demand_unmatched_idle_jobs") == 7

    metrics.observe_demand([demand("s#2", 2, "b")])
    assert value(metrics, "tide_demand_idle_jobs", site="a") == 0
    assert value(metrics, "tide_demand_idle_jobs", site="b") == 2
    assert value(metrics, "tide_demand_unmatched_idle_jobs") == 0


def test_decisions_add_up_with_a_create_of_n_counting_n() -> None:
    metrics = Metrics(["a", "b"])
    site_of = {"r1": "a", "r2": "b", "r3": "b"}
    plan = Plan(
        actions=(
            Create(site="a", count=3, reason="demand"),
            Drain(resource="r1", reason="idle"),
            Undrain(resource="r2", reason="demand returned"),
            Destroy(resource="r3", reason="drained"),
            Destroy(resource="r9", reason="stray"),
        )
    )
    metrics.count_plan(plan, site_of)
    assert value(metrics, "tide_decisions_total", site="a", action="create") == 3
    assert value(metrics, "tide_decisions_total", site="a", action="drain") == 1
    assert value(metrics, "tide_decisions_total", site="b", action="undrain") == 1
    assert value(metrics, "tide_decisions_total", site="b", action="destroy") == 1
    assert value(metrics, "tide_decisions_total", site=UNKNOWN_SITE, action="destroy") == 1

    metrics.count_plan(plan, site_of)
    metrics.count_plan(Plan(actions=()), site_of)
    assert value(metrics, "tide_decisions_total", site="a", action="create") == 6
    assert value(metrics, "tide_decisions_total", site="b", action="destroy") == 2
    assert value(metrics, "tide_decisions_total", site="b", action="create") == 0


def test_site_failures_increase_per_site_and_operation() -> None:
    metrics = Metrics()
    metrics.count_failure("a", "create")
    metrics.count_failure("a", "create")
    metrics.count_failure("a", "destroy")
    assert value(metrics, "tide_site_failures_total", site="a", operation="create") == 2
    assert value(metrics, "tide_site_failures_total", site="a", operation="destroy") == 1
    assert value(metrics, "tide_resources", site="a", state="running") == 0


def test_observe_loop_fills_the_histogram_and_the_timestamp() -> None:
    metrics = Metrics()
    assert LOOP_BUCKETS[0] == 0.005
    assert LOOP_BUCKETS[-1] == 30.0
    metrics.observe_loop(0.02, now=1_700_000_000.0)
    metrics.observe_loop(12.0, now=1_700_000_010.0)
    assert value(metrics, "tide_loop_duration_seconds_count") == 2
    assert value(metrics, "tide_loop_duration_seconds_sum") == pytest.approx(12.02)
    assert value(metrics, "tide_loop_duration_seconds_bucket", le="0.025") == 1
    assert value(metrics, "tide_loop_duration_seconds_bucket", le="10.0") == 1
    assert value(metrics, "tide_loop_duration_seconds_bucket", le="30.0") == 2
    assert value(metrics, "tide_last_loop_timestamp_seconds") == 1_700_000_010.0


def test_time_loop_records_a_completed_loop_and_only_the_duration_of_a_failed_one() -> None:
    metrics = Metrics()
    with metrics.time_loop():
        pass
    assert value(metrics, "tide_loop_duration_seconds_count") == 1
    stamp = value(metrics, "tide_last_loop_timestamp_seconds")
    assert stamp is not None
    assert stamp > 0

    metrics.last_loop_timestamp.set(1.0)
    with pytest.raises(RuntimeError, match="site down"), metrics.time_loop():
        raise RuntimeError("site down")
    assert value(metrics, "tide_loop_duration_seconds_count") == 2
    assert value(metrics, "tide_last_loop_timestamp_seconds") == 1.0


def test_serve_on_port_zero_is_disabled() -> None:
    assert Metrics().serve("127.0.0.1", 0) is None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_serve_answers_get_metrics_with_tide_names_on_loopback() -> None:
    metrics = Metrics(["a"], version="9.9.9")
    metrics.observe_resources([resource("r1", "a", State.RUNNING)])
    port = free_port()
    server = metrics.serve("127.0.0.1", port)
    assert server is not None
    try:
        assert server.server_address[:2] == ("127.0.0.1", port)
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'tide_resources{site="a",state="running"} 1.0' in body
    assert 'tide_build_info{version="9.9.9"} 1.0' in body
    assert "tide_loop_duration_seconds_bucket" in body
    assert "tide_decisions_total" in body
    assert "python_gc" not in body  # the global registry's collectors are not in it
