"""tide onboard's pure parts: its settings and their errors, the plan of
files it deploys, the compose bundle --export writes, and the host checks
(each with its fix). Onboarding a real host: tests/integration/test_onboard.py."""

from __future__ import annotations

import base64
import io
import json
import stat
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tide.cli import build_parser, main
from tide.onboard import checks
from tide.onboard.bundle import plan
from tide.onboard.cli import settings_from
from tide.onboard.export import MARKER, ExportError, export
from tide.onboard.settings import Settings, SettingsError, problems


def _token(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'kid': 'POOL'})}.{part(claims)}.c2lnbmF0dXJl"


TOKEN = _token(
    {
        "iss": "pool.example.org",
        "sub": "worker@pool.example.org",
        "scope": "condor:/READ condor:/ADVERTISE_MASTER condor:/ADVERTISE_STARTD",
    }
)
SETTINGS = Settings(
    collector="cm.example.org:9618", token=TOKEN, site_name="DESY-HH", node_name="wn-1"
)


def test_good_settings_have_no_problem_and_the_pool_is_the_tokens_issuer() -> None:
    assert problems(SETTINGS) == []
    own = _token(
        {
            "iss": "pool.example.org",
            "sub": "tide-worker-wn-1@pool.example.org",
            "scope": "condor:/ADVERTISE_STARTD condor:/ADVERTISE_MASTER",
            "exp": 4_000_000_000,
        }
    )
    assert problems(replace(SETTINGS, token=own)) == []  # this host's own token
    assert SETTINGS.pool_domain == "pool.example.org"
    assert TOKEN not in repr(SETTINGS)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"collector": "cm.example.org"}, "--collector 'cm.example.org' is not HOST:PORT"),
        ({"token": "not-a-token"}, "the token is not an IDTOKEN"),
        ({"token": _token({"iss": "p", "scope": "condor:/READ"})}, "may not advertise a startd"),
        ({"token": _token({"iss": "p"})}, "not limited to a worker's scopes"),
        (
            {"token": _token({"iss": "p", "scope": "condor:/ADVERTISE_STARTD condor:/WRITE"})},
            "allows more than a worker needs (condor:/WRITE)",
        ),
        (
            {"token": _token({"iss": "p", "scope": "condor:/ADVERTISE_STARTD", "exp": 1})},
            "the token expired at 1970-01-01 00:00:01 UTC",
        ),
        (
            {
                "token": _token(
                    {"iss": "p", "sub": "tide-worker-wn-2@p", "scope": "condor:/ADVERTISE_STARTD"}
                )
            },
            "the token is worker 'wn-2''s own, but this host would join as 'wn-1': run with "
            "--name wn-2",
        ),
        ({"site_name": "bad site"}, "--site 'bad site'"),
        ({"cpus": 0}, "--cpus 0: give a positive number"),
        ({"cvmfs_repositories": ("sft.cern.ch",)}, "CVMFS needs a proxy"),
        ({"cvmfs_repositories": ("x",), "squid": True}, "'x' is not a repository name"),
        ({"cvmfs_proxy": "squid:3128"}, "not in CVMFS_HTTP_PROXY syntax"),
        ({"port": 70000}, "--port 70000"),
        ({"bind_address": "300.1.1.1"}, "--bind-address '300.1.1.1'"),
    ],
)
def test_bad_settings_are_named_with_their_fix(change: dict[str, object], expected: str) -> None:
    found = problems(replace(SETTINGS, **change))  # type: ignore[arg-type]
    assert any(expected in p for p in found), found


def test_the_plan_is_the_worker_and_autoheal_with_the_token_0600() -> None:
    projects = plan(SETTINGS)
    assert [p.role for p in projects] == ["condor_worker", "autoheal"]
    worker = projects[0]
    assert str(worker.folder) == "/opt/tide/condor_worker"
    files = {str(f.path): f for f in worker.files}
    token = files["/opt/tide/condor_worker/secrets/token"]
    assert (token.mode, token.secret, token.content) == (0o600, True, TOKEN + "\n")
    assert TOKEN not in repr(token)
    compose = yaml.safe_load(files["/opt/tide/condor_worker/compose.yaml"].content)
    env = compose["services"]["condor"]["environment"]
    assert env["TIDE_COLLECTOR"] == "cm.example.org:9618"
    assert env["TIDE_POOL_DOMAIN"] == "pool.example.org"
    assert (env["TIDE_RESOURCE_ID"], env["TIDE_SITE_NAME"]) == ("wn-1", "DESY-HH")
    assert "TIDE_CPUS" not in env  # the whole node
    assert TOKEN not in files["/opt/tide/condor_worker/compose.yaml"].content


def test_cvmfs_and_squid_join_the_plan_in_start_order() -> None:
    s = replace(SETTINGS, cvmfs_repositories=("sft.cern.ch",), squid=True, cpus=4)
    projects = plan(s)
    assert [p.role for p in projects] == ["squid", "cvmfs", "condor_worker", "autoheal"]
    cvmfs = yaml.safe_load(projects[1].files[0].content)["services"]["cvmfs"]
    assert cvmfs["environment"]["CVMFS_HTTP_PROXY"] == "http://127.0.0.1:3128"
    assert [u.path.name for u in projects[1].units] == ["tide-cvmfs-propagation.service"]
    worker = yaml.safe_load(projects[2].files[0].content)["services"]["condor"]
    assert worker["environment"]["TIDE_CPUS"] == "4"
    assert "/cvmfs:/cvmfs:rslave" in worker["volumes"]
    assert worker["labels"]["tide.autoheal.depends-on"] == "tide-cvmfs"


def test_export_writes_the_bundle_and_replaces_only_an_earlier_one(tmp_path: Path) -> None:
    out = export(SETTINGS, plan(SETTINGS), tmp_path / "bundle")
    token = out / "condor_worker" / "secrets" / "token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert (out / "condor_worker" / "condor.d" / "site.conf").is_file()
    assert (out / "autoheal" / "compose.yaml").is_file()
    readme = (out / "README.md").read_text()
    assert "docker compose --project-directory /opt/tide/condor_worker up -d --wait" in readme
    assert TOKEN not in readme
    export(replace(SETTINGS, cpus=2), plan(replace(SETTINGS, cpus=2)), out)  # again: replaced
    assert 'TIDE_CPUS: "2"' in (out / "condor_worker" / "compose.yaml").read_text()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an earlier export"):
        export(SETTINGS, plan(SETTINGS), other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert (out / MARKER).is_file()


FACTS = checks.HostFacts(
    os_id="debian",
    os_version="13",
    euid=0,
    cpus=8,
    docker_cli=False,
    docker_engine=False,
    compose_v2=False,
    apt=True,
    fuse=True,
    cgroups=True,
    free_bytes=500 * checks.GB,
    free_path="/var",
)


def _checks(facts: checks.HostFacts, **kw: object) -> list[str]:
    args: dict[str, object] = {
        "cores": None,
        "cvmfs": False,
        "per_core_gb": 20.0,
        "cvmfs_cache_mb": 4000,
        **kw,
    }
    return [p.check for p in checks.problems(facts, **args)]  # type: ignore[arg-type]


def test_a_debian_13_host_without_docker_passes_docker_is_installable() -> None:
    assert _checks(FACTS) == []
    assert checks.docker_installable(FACTS)


@pytest.mark.parametrize(
    ("change", "kw", "failed"),
    [
        ({"os_id": "centos", "os_version": "7"}, {}, ["os", "docker"]),
        ({"os_version": "12"}, {}, ["docker"]),  # no Compose v2 package on Debian 12
        ({"os_version": "12", "docker_cli": True, "compose_v2": True}, {}, []),
        ({"euid": 1000}, {}, ["root"]),
        ({"fuse": False}, {"cvmfs": True}, ["fuse"]),
        ({"fuse": False}, {}, []),
        ({"cgroups": False}, {}, ["cgroups"]),
        ({"free_bytes": 150 * checks.GB}, {}, ["disk"]),  # 8 cores x 20 GB
        ({"free_bytes": 150 * checks.GB}, {"cores": 4}, []),
        ({"free_bytes": 82 * checks.GB}, {"cores": 4, "cvmfs": True}, ["disk"]),  # + 4 GB cache
    ],
)
def test_each_failed_prerequisite_is_named(
    change: dict[str, object], kw: dict[str, object], failed: list[str]
) -> None:
    assert _checks(replace(FACTS, **change), **kw) == failed  # type: ignore[arg-type]


def test_every_problem_says_how_to_fix_it() -> None:
    bad = replace(FACTS, os_id="arch", os_version="", euid=5, cgroups=False, free_bytes=0)
    found = checks.problems(bad, cores=None, cvmfs=True, per_core_gb=20, cvmfs_cache_mb=10)
    assert {p.check for p in found} == {"os", "root", "docker", "cgroups", "disk"}
    assert all(p.fix and "Fix: " in str(p) for p in found)


def _args(*argv: str) -> object:
    return build_parser().parse_args(["onboard", *argv])


def test_the_token_comes_from_a_file_or_stdin_never_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "worker.token"
    token_file.write_text(TOKEN + "\n")
    base = ("--collector", "cm:9618", "--site", "S", "--name", "wn")
    s = settings_from(_args(*base, "--token-file", str(token_file)))  # type: ignore[arg-type]
    assert s.token == TOKEN
    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN))
    s = settings_from(_args(*base, "--token-file", "-"))  # type: ignore[arg-type]
    assert s.token == TOKEN
    with pytest.raises(SystemExit):  # no abbreviation of --token-file
        build_parser().parse_args(["onboard", *base, "--token", "x"])


def test_a_token_on_the_command_line_is_refused_and_never_echoed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["--token", TOKEN], [f"--token-file={TOKEN}"], ["--site", TOKEN]):
        assert main(["onboard", "--collector", "cm:9618", *argv]) == 2
        err = capsys.readouterr().err
        assert "a token was given on the command line" in err
        assert TOKEN not in err


def test_missing_and_unreadable_settings_are_all_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_from(_args("--token-file", str(tmp_path / "nope")))  # type: ignore[arg-type]
    text = " ".join(caught.value.problems)
    assert "--collector is required" in text
    assert "--site is required" in text
    assert "No such file or directory" in text
