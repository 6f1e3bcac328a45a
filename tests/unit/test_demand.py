"""Where demand comes from (controller/tide/htcondor/demand.py): machine prototypes and
matching with the real classad2 bindings, and the pool reader against a fake
htcondor2 (no pool here)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import classad2
import pytest

from tide.htcondor import demand
from tide.htcondor.demand import (
    GROUP_BY,
    IDLE_JOBS,
    AutoCluster,
    PoolDemandReader,
    autocluster_from_ad,
    demand_from,
    matches,
    prototype,
)
from tide.model import Demand, Shape

# What condor_submit generates for a plain vanilla job with file transfer.
DEFAULT_REQUIREMENTS = (
    '(TARGET.Arch == "X86_64") && (TARGET.OpSys == "LINUX") && (TARGET.Disk >= RequestDisk)'
    " && (TARGET.Memory >= RequestMemory) && (TARGET.Cpus >= RequestCpus)"
    " && (TARGET.HasFileTransfer)"
)
SHAPE = Shape(cpus=8, memory_mb=16_000, disk_mb=100_000)
SMALL = Shape(cpus=2, memory_mb=4_000, disk_mb=20_000)


def cluster(
    requirements: str = DEFAULT_REQUIREMENTS,
    *,
    schedd: str = "schedd.example.org",
    id: int = 1,
    idle_jobs: int = 10,
    cpus: int = 1,
    memory_mb: int = 2_000,
    disk_kb: int = 1_000_000,
) -> AutoCluster:
    return AutoCluster(
        schedd=schedd,
        id=id,
        idle_jobs=idle_jobs,
        request_cpus=cpus,
        request_memory_mb=memory_mb,
        request_disk_kb=disk_kb,
        requirements=requirements,
    )


def sites(
    specs: Mapping[str, tuple[Shape, Mapping[str, str | int | float | bool]]],
) -> dict[str, tuple[Shape, classad2.ClassAd]]:
    return {name: (shape, prototype(name, shape, attrs)) for name, (shape, attrs) in specs.items()}


THREE_SITES = sites(
    {
        "desy": (SHAPE, {"SiteName": "DESY"}),
        "kit": (SHAPE, {"SiteName": "KIT", "HasDocker": True}),
        "lab": (SMALL, {}),
    }
)


# --- prototype --------------------------------------------------------------


def test_prototype_is_an_empty_partitionable_slot_of_the_shape() -> None:
    ad = prototype("lab", SHAPE, {})
    assert ad["MyType"] == "Machine"
    assert ad["Cpus"] == ad["TotalCpus"] == 8
    assert ad["Memory"] == ad["TotalMemory"] == 16_000
    # HTCondor's Disk is KiB: 100,000 MiB of disk is 102,400,000 KiB.
    assert ad["Disk"] == ad["TotalDisk"] == 100_000 * 1024
    assert ad["OpSys"] == "LINUX"
    assert ad["Arch"] == "X86_64"
    assert ad["PartitionableSlot"] is True
    assert ad["HasFileTransfer"] is True
    assert ad["SiteName"] == "lab"  # no SiteName attribute: the site's name
    assert ad["TideSite"] == "lab"


def test_prototype_carries_the_site_attributes_typed() -> None:
    ad = prototype(
        "desy",
        SHAPE,
        {"SiteName": "DESY", "HasDocker": True, "Speed": 1.5, "Cores": 2, "Kind": "cloud"},
    )
    assert ad["SiteName"] == "DESY"  # what the site's workers advertise
    assert ad["TideSite"] == "desy"
    assert ad["HasDocker"] is True
    assert ad["Speed"] == 1.5
    assert ad["Cores"] == 2
    assert isinstance(ad["Cores"], int)
    assert ad["Kind"] == "cloud"
    # Typed in the ClassAd language too, not strings.
    assert ad.eval("Cores") + 1 == 3
    assert classad2.ExprTree("HasDocker && Speed > 1").eval(scope=ad) is True


def test_attributes_override_defaults_but_not_the_shape_or_tide_site() -> None:
    ad = prototype(
        "arm",
        SMALL,
        {"Arch": "aarch64", "sitename": "ARM", "Cpus": 99, "TideSite": "other"},
    )
    assert ad["Arch"] == "aarch64"
    assert ad["SiteName"] == "ARM"  # ClassAd names are case-insensitive
    assert ad["Cpus"] == 2
    assert ad["TideSite"] == "arm"


# --- matches ----------------------------------------------------------------


def test_a_default_job_matches_every_site() -> None:
    for name, (_, machine) in THREE_SITES.items():
        assert matches(cluster(), machine), name


def test_a_site_name_requirement_matches_only_that_site() -> None:
    desy_only = cluster(DEFAULT_REQUIREMENTS + ' && (TARGET.SiteName == "DESY")')
    assert [name for name, (_, m) in THREE_SITES.items() if matches(desy_only, m)] == ["desy"]


def test_an_unscoped_name_the_job_lacks_is_looked_up_in_the_machine() -> None:
    # As the negotiator does: users write SiteName, not TARGET.SiteName.
    desy_only = cluster(DEFAULT_REQUIREMENTS + ' && SiteName == "DESY" && HasDocker =!= true')
    assert [name for name, (_, m) in THREE_SITES.items() if matches(desy_only, m)] == ["desy"]
    with_docker = cluster("HasDocker")
    assert [name for name, (_, m) in THREE_SITES.items() if matches(with_docker, m)] == ["kit"]


def test_the_job_side_resolves_in_the_job() -> None:
    kit = THREE_SITES["kit"][1]
    assert matches(cluster("MY.RequestCpus == 3 && RequestCpus == 3", cpus=3), kit)
    assert not matches(cluster("RequestCpus == 3", cpus=2), kit)


@pytest.mark.parametrize(
    ("cpus", "memory_mb", "disk_kb"),
    [
        (9, 1_000, 1_000),  # more CPUs than any shape
        (1, 16_001, 1_000),  # more memory
        (1, 1_000, 100_000 * 1024 + 1),  # more disk (KiB)
    ],
)
def test_a_request_bigger_than_every_shape_matches_no_site(
    cpus: int, memory_mb: int, disk_kb: int
) -> None:
    big = cluster(cpus=cpus, memory_mb=memory_mb, disk_kb=disk_kb)
    assert not any(matches(big, m) for _, m in THREE_SITES.values())
    # Also when the Requirements does not check the resources itself.
    assert not any(
        matches(cluster("true", cpus=cpus, memory_mb=memory_mb, disk_kb=disk_kb), m)
        for _, m in THREE_SITES.values()
    )
    (d,) = demand_from([big], THREE_SITES)
    assert d.sites == ()


def test_a_request_that_fits_only_the_big_shape_skips_the_small_site() -> None:
    (d,) = demand_from([cluster(cpus=4)], THREE_SITES)
    assert d.sites == ("desy", "kit")


def test_a_request_filling_the_shape_exactly_matches() -> None:
    exact = cluster(cpus=8, memory_mb=16_000, disk_kb=100_000 * 1024)
    assert matches(exact, THREE_SITES["desy"][1])


@pytest.mark.parametrize(
    "requirements",
    [
        "TARGET.HasGPU",  # undefined
        DEFAULT_REQUIREMENTS + " && (TARGET.CUDACapability >= 7.0)",  # undefined >= 7.0
        "MY.DesiredSite == TARGET.SiteName",  # a job attribute we do not have
        'TARGET.Cpus + "x" > 1',  # error
        "(((",  # does not parse
        "",
    ],
)
def test_undefined_error_or_unparseable_requirements_match_nothing(requirements: str) -> None:
    job = cluster(requirements)
    assert not any(matches(job, m) for _, m in THREE_SITES.values())
    (d,) = demand_from([job], THREE_SITES)
    assert d.sites == ()


def test_a_number_counts_as_its_truth_value() -> None:
    # As ClassAd.matches converts them: 8 CPUs is true, 0 false.
    assert all(matches(cluster("TARGET.Cpus"), m) for _, m in THREE_SITES.values())
    assert not any(matches(cluster("TARGET.Cpus * 0"), m) for _, m in THREE_SITES.values())


def test_undefined_is_only_false_where_the_expression_leaves_it() -> None:
    job = cluster(DEFAULT_REQUIREMENTS + " && (TARGET.HasGPU =!= true)")
    assert all(matches(job, m) for _, m in THREE_SITES.values())


def test_a_machine_without_resources_matches_nothing() -> None:
    machine = classad2.ClassAd({"Arch": "X86_64", "OpSys": "LINUX"})
    assert not matches(cluster("true"), machine)


# --- demand_from ------------------------------------------------------------


def test_demand_from_makes_one_demand_per_autocluster_in_order() -> None:
    clusters = [
        cluster(schedd="b.example.org", id=7, idle_jobs=3, cpus=2, memory_mb=3_000, disk_kb=1025),
        cluster(
            DEFAULT_REQUIREMENTS + ' && (TARGET.SiteName == "KIT")',
            schedd="a.example.org",
            id=12,
            idle_jobs=40,
            disk_kb=2048,
        ),
        cluster("TARGET.HasGPU", schedd="a.example.org", id=13, idle_jobs=1),
    ]
    assert demand_from(clusters, THREE_SITES) == (
        Demand(
            key="b.example.org#7",
            idle_jobs=3,
            cpus=2,
            memory_mb=3_000,
            disk_mb=2,  # 1025 KiB round up to 2 MiB
            sites=("desy", "kit", "lab"),
        ),
        Demand(
            key="a.example.org#12",
            idle_jobs=40,
            cpus=1,
            memory_mb=2_000,
            disk_mb=2,
            sites=("kit",),
        ),
        Demand(
            key="a.example.org#13",
            idle_jobs=1,
            cpus=1,
            memory_mb=2_000,
            disk_mb=977,  # 1,000,000 KiB
            sites=(),
        ),
    )


def test_demand_lists_sites_in_name_order_whatever_the_mapping_order() -> None:
    shuffled = {name: THREE_SITES[name] for name in ("lab", "kit", "desy")}
    (d,) = demand_from([cluster()], shuffled)
    assert d.sites == ("desy", "kit", "lab")


def test_demand_from_no_sites_or_no_clusters() -> None:
    assert demand_from([], THREE_SITES) == ()
    (d,) = demand_from([cluster()], {})
    assert d.sites == ()


def test_each_distinct_requirements_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real_parse = demand._parse

    def counting_parse(text: str) -> Any:
        parsed.append(text)
        return real_parse(text)

    monkeypatch.setattr(demand, "_parse", counting_parse)
    desy = DEFAULT_REQUIREMENTS + ' && SiteName == "DESY"'
    clusters = [
        cluster(DEFAULT_REQUIREMENTS if i % 2 else desy, id=i, cpus=1 + i % 4, memory_mb=1_000 + i)
        for i in range(200)
    ]
    result = demand_from(clusters, THREE_SITES)
    assert sorted(parsed) == sorted([DEFAULT_REQUIREMENTS, desy])
    assert len(result) == 200
    assert result[0].sites == ("desy",)
    assert result[1].sites == ("desy", "kit", "lab")
    assert result[3].sites == ("desy", "kit")  # 4 CPUs: not the small site


def test_a_thousand_autoclusters_against_ten_sites() -> None:
    ten = sites(
        {
            f"site-{i}": (
                Shape(cpus=4 + i, memory_mb=8_000 * (1 + i % 3), disk_mb=50_000),
                {"SiteName": f"S{i}", "Tier": i % 3},
            )
            for i in range(10)
        }
    )
    clusters = [
        cluster(
            DEFAULT_REQUIREMENTS + f' && (TARGET.Tier >= {i % 3}) && SiteName =!= "S{i % 10}"',
            id=i,
            cpus=1 + i % 12,
            memory_mb=1_000 * (1 + i % 20),
            disk_kb=1024 * (1 + i),
        )
        for i in range(1000)
    ]
    result = demand_from(clusters, ten)
    assert len(result) == 1000
    assert [d.key for d in result] == [f"schedd.example.org#{i}" for i in range(1000)]
    for c, d in zip(clusters[:50], result[:50], strict=True):
        assert d.sites == tuple(name for name, (_, m) in sorted(ten.items()) if matches(c, m))
    assert any(d.sites for d in result)
    assert any(not d.sites for d in result)


# --- converting the schedd's answers --------------------------------------


def test_a_group_by_ad_becomes_an_autocluster() -> None:
    # What a GroupBy query returns: the keys, the job attributes they refer
    # to (DiskUsage, DESIRED_Sites), the group's Id and JobCount.
    ad = classad2.ClassAd(
        "[ JobStatus = 1; JobUniverse = 5; RequestCpus = 2;"
        " RequestMemory = ifthenelse(MemoryUsage isnt undefined, MemoryUsage, 1536);"
        " RequestDisk = DiskUsage; DiskUsage = 2049;"
        ' DESIRED_Sites = "DESY";'
        " Requirements = (TARGET.Disk >= RequestDisk) && (TARGET.Memory >= RequestMemory)"
        " && stringListMember(TARGET.SiteName, DESIRED_Sites);"
        " Id = 4; JobCount = 17 ]"
    )
    got = autocluster_from_ad("s1", ad)
    assert got is not None
    assert (got.schedd, got.id, got.idle_jobs) == ("s1", 4, 17)
    assert (got.request_cpus, got.request_memory_mb, got.request_disk_kb) == (2, 1536, 2049)
    # The job's own attributes are filled in, so matching needs no job ad.
    assert "DESIRED_Sites" not in got.requirements
    (d,) = demand_from([got], THREE_SITES)
    assert d.sites == ("desy",)
    assert d.disk_mb == 3


def test_an_autocluster_ad_uses_its_autocluster_id() -> None:
    ad = classad2.ClassAd(
        "[ AutoClusterId = 9; JobCount = 2; RequestCpus = 1; RequestMemory = 128.5;"
        " RequestDisk = 10; Requirements = TARGET.HasFileTransfer ]"
    )
    got = autocluster_from_ad("s1", ad)
    assert got == AutoCluster("s1", 9, 2, 1, 129, 10, "TARGET.HasFileTransfer")


@pytest.mark.parametrize(
    "ad_text",
    [
        "[ Id = 1; JobCount = 2; RequestCpus = 1; RequestDisk = 10; Requirements = true ]",
        '[ Id = 1; JobCount = 2; RequestCpus = 1; RequestMemory = "x"; RequestDisk = 10;'
        " Requirements = true ]",
        "[ Id = 1; JobCount = 2; RequestCpus = 1; RequestMemory = 1; RequestDisk = 10 ]",
        "[ JobCount = 2; RequestCpus = 1; RequestMemory = 1; RequestDisk = 10;"
        " Requirements = true ]",
    ],
)
def test_an_ad_without_usable_requests_is_skipped(
    ad_text: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tide.htcondor.demand"):
        assert autocluster_from_ad("s1", classad2.ClassAd(ad_text)) is None
    assert "s1" in caplog.text


# --- the reader, against a fake htcondor2 ----------------------------------


class FakeSchedd:
    answers: dict[str, list[classad2.ClassAd] | Exception] = {}  # noqa: RUF012
    queries: list[tuple[str, dict[str, Any]]] = []  # noqa: RUF012

    def __init__(self, location: classad2.ClassAd) -> None:
        self.name = str(location["Name"])

    def query(self, **kwargs: Any) -> list[classad2.ClassAd]:
        FakeSchedd.queries.append((self.name, kwargs))
        answer = FakeSchedd.answers[self.name]
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeCollector:
    def __init__(self, pool: str) -> None:
        self.pool = pool

    def locateAll(self, daemon_type: object) -> list[classad2.ClassAd]:
        assert daemon_type == "schedd-type"
        return [
            classad2.ClassAd({"Name": name, "MyAddress": f"<{name}>", "CondorVersion": "25"})
            for name in ("b", "a", "c")
        ]


class FakeHTCondorException(Exception):
    pass


def group(ident: int, count: int) -> classad2.ClassAd:
    return classad2.ClassAd(
        f"[ Id = {ident}; JobCount = {count}; RequestCpus = 1; RequestMemory = 100;"
        " RequestDisk = 100; Requirements = TARGET.HasFileTransfer ]"
    )


@pytest.fixture
def fake_htcondor(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace(
        Collector=FakeCollector,
        Schedd=FakeSchedd,
        DaemonType=SimpleNamespace(Schedd="schedd-type"),
        QueryOpt=SimpleNamespace(GroupBy="group-by-opt"),
        HTCondorException=FakeHTCondorException,
    )
    monkeypatch.setattr(demand, "htcondor2", fake)
    FakeSchedd.queries = []
    FakeSchedd.answers = {
        "a": [group(1, 5), group(2, 1)],
        "b": FakeHTCondorException("Failed to fetch ads from schedd"),
        "c": [group(1, 3)],
    }


@pytest.mark.usefixtures("fake_htcondor")
def test_the_reader_asks_every_schedd_and_skips_one_that_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = PoolDemandReader("cm.example.org:9618")
    with caplog.at_level(logging.WARNING, logger="tide.htcondor.demand"):
        got = reader.autoclusters()
    assert [(c.schedd, c.id, c.idle_jobs) for c in got] == [("a", 1, 5), ("a", 2, 1), ("c", 1, 3)]
    assert reader.failed_schedds == ("b",)
    assert "schedd b" in caplog.text
    assert [name for name, _ in FakeSchedd.queries] == ["a", "b", "c"]
    for _, kwargs in FakeSchedd.queries:
        assert kwargs == {
            "constraint": IDLE_JOBS,
            "projection": list(GROUP_BY),
            "opts": "group-by-opt",
        }


@pytest.mark.usefixtures("fake_htcondor")
def test_the_reader_asks_only_the_named_schedds() -> None:
    reader = PoolDemandReader("cm.example.org:9618", schedds=["c", "gone"])
    got = reader.autoclusters()
    assert [(c.schedd, c.id) for c in got] == [("c", 1)]
    assert reader.failed_schedds == ("gone",)
    FakeSchedd.answers["b"] = [group(3, 1)]
    reader = PoolDemandReader("cm.example.org:9618")
    assert len(reader.autoclusters()) == 4
    assert reader.failed_schedds == ()


def test_the_group_by_keys_cover_the_constraint() -> None:
    # The schedd re-applies the constraint to each group's ad: every
    # attribute it names must be a key, or no group comes back.
    refs = classad2.ClassAd().externalRefs(classad2.ExprTree(IDLE_JOBS))
    assert set(refs) <= set(GROUP_BY)


# --- workers that end: a job's declared runtime --------------------------------


def test_a_job_declared_longer_than_a_sites_workers_take_jobs_matches_no_worker_there() -> None:
    # hpc's pilots take a job only if it declares at most 2 h (a walltime less its margin).
    prototypes = {
        **THREE_SITES,
        "hpc": (SHAPE, prototype("hpc", SHAPE, {}, max_job_duration_s=7200)),
    }
    short = replace(cluster(id=1), allowed_job_duration_s=7200)
    long = replace(cluster(id=2), allowed_job_duration_s=7201)
    undeclared = cluster(id=3)
    got = {d.key: d.sites for d in demand_from([short, long, undeclared], prototypes)}
    everywhere = ("desy", "hpc", "kit", "lab")
    assert got == {
        "schedd.example.org#1": everywhere,
        "schedd.example.org#2": ("desy", "kit", "lab"),  # sites with no end take it
        "schedd.example.org#3": everywhere,
    }
    assert not matches(long, prototypes["hpc"][1])
    assert matches(short, prototypes["hpc"][1])


def test_a_group_by_ad_carries_its_declared_runtime() -> None:
    ad = classad2.ClassAd(
        "[ JobStatus = 1; JobUniverse = 5; RequestCpus = 1; RequestMemory = 100;"
        " RequestDisk = 10; Requirements = true; AllowedJobDuration = 600;"
        " Id = 1; JobCount = 3 ]"
    )
    got = autocluster_from_ad("s1", ad)
    assert got is not None
    assert got.allowed_job_duration_s == 600
    assert "AllowedJobDuration" in GROUP_BY
