from __future__ import annotations

import base64
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from tide import __version__
from tide.cli import demand_table, main
from tide.model import Demand, State
from tide.store import Store


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tide {__version__}"
    assert __version__ == "0.1.0"


def test_no_arguments_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tide")
    assert "HTCondor pool" in out


def test_unknown_option_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "tide.yaml"
    path.write_text(
        "pool:\n"
        "  collector: 127.0.0.1:9\n"  # the discard port: nothing answers
        "  domain: pool.example.org\n"
        f"  token_file: {tmp_path}/pool.token\n"
        "loop:\n"
        f"  state_file: {tmp_path}/state/state.sqlite3\n"
        "sites:\n"
        "  local:\n"
        "    kind: docker\n"
        "    shape: {cpus: 2, memory_mb: 4096, disk_mb: 20000}\n"
        f"    worker_token_file: {tmp_path}/worker.token\n" + extra
    )
    return path


def test_config_errors_exit_2_with_their_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, "    bogus_key: 1\n")
    assert main(["status", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:12: sites.local.bogus_key: unknown key" in err


def test_status_on_an_empty_store_prints_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(_config(tmp_path))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "SITE",
        "REQUESTED",
        "BOOTING",
        "RUNNING",
        "DRAINING",
        "STOPPING",
        "FAILED",
    ]
    assert lines[1].split() == ["local", "0", "0", "0", "0", "0", "0"]


def test_status_lists_resources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path)
    with Store.open(tmp_path / "state" / "state.sqlite3") as store:
        store.add("tide-local-00000001", "local", 1.0, "test")
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tide-local-00000001" in out
    assert out.splitlines()[1].split() == ["local", "1", "0", "0", "0", "0", "0"]


def test_drain_unknown_resource_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drain", "--config", str(_config(tmp_path)), "tide-local-nope"]) == 1
    assert "tide-local-nope: no such resource" in capsys.readouterr().err


def test_drain_marks_a_running_resource_draining(tmp_path: Path) -> None:
    path = _config(tmp_path)
    rid = "tide-local-00000001"
    with Store.open(tmp_path / "state" / "state.sqlite3") as store:
        store.add(rid, "local", 1.0, "test")
        store.move(rid, State.BOOTING, 2.0, "test")
        store.move(rid, State.RUNNING, 3.0, "test")
    assert main(["drain", "--config", str(path), rid]) == 0
    with Store.open(tmp_path / "state" / "state.sqlite3", exclusive=False) as store:
        r = store.get(rid)
        assert r is not None
        assert r.state is State.DRAINING


def test_drain_refused_transition_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path)
    rid = "tide-local-00000001"
    with Store.open(tmp_path / "state" / "state.sqlite3") as store:
        store.add(rid, "local", 1.0, "test")
    assert main(["drain", "--config", str(path), rid]) == 1
    assert "is requested: only a running or draining resource" in capsys.readouterr().err


def test_run_refuses_a_readable_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path)
    for name in ("pool.token", "worker.token"):
        (tmp_path / name).write_text("t")
        (tmp_path / name).chmod(0o644)
    code = main(["run", "--config", str(path)])
    assert code == 2
    assert "pool.token: mode 0644" in capsys.readouterr().err


def test_configure_htcondor_writes_a_private_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tide.htcondor import client as htcondor_client  # noqa: PLC0415

    monkeypatch.delitem(sys.modules, "htcondor2", raising=False)  # no reload of a real one
    monkeypatch.setenv("CONDOR_CONFIG", "/nonexistent")
    token = tmp_path / "pool.token"
    token.write_text("secret-token")
    folder = htcondor_client.configure("cm.example.org:9618", token)
    try:
        assert folder.stat().st_mode & 0o777 == 0o700
        copy = folder / "tokens.d" / "pool.token"
        assert copy.read_text() == "secret-token"
        assert copy.stat().st_mode & 0o777 == 0o600
        config = Path(os.environ["CONDOR_CONFIG"])
        text = config.read_text()
        assert "COLLECTOR_HOST = cm.example.org:9618" in text
        assert "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS" in text
        assert f"SEC_TOKEN_DIRECTORY = {folder / 'tokens.d'}" in text
    finally:
        htcondor_client.unconfigure(folder)
    assert not folder.exists()


def _tokens(tmp_path: Path, mode: int = 0o600) -> None:
    """The controller's token (its content unread here) and a worker token
    shaped as the pool's shared one: this pool's, a worker's scopes."""
    worker = _jwt(
        {"iss": "pool.example.org", "sub": "worker@pool.example.org", "scope": WORKER_SCOPES}
    )
    for name, text in (("pool.token", "t"), ("worker.token", worker)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(mode)


WORKER_SCOPES = "condor:/READ condor:/ADVERTISE_STARTD condor:/ADVERTISE_MASTER"


def _jwt(payload: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'kid': 'POOL'})}.{part(payload)}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"iss": "pool.example.org", "scope": WORKER_SCOPES, "exp": 1}, "expired at 1970-01-01"),
        ({"iss": "other.example.org", "scope": WORKER_SCOPES}, "for pool 'other.example.org'"),
        ({"iss": "pool.example.org"}, "not limited to a worker's scopes"),
        (
            {"iss": "pool.example.org", "scope": f"{WORKER_SCOPES} condor:/ADMINISTRATOR"},
            "allows more than a worker needs (condor:/ADMINISTRATOR)",
        ),
    ],
)
def test_check_refuses_a_worker_token_no_worker_should_get(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], payload: dict[str, object], named: str
) -> None:
    _tokens(tmp_path)
    (tmp_path / "worker.token").write_text(_jwt(payload))
    path = _config(tmp_path, "")
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "sites.local.worker_token_file: the token " in err, err
    assert named in err, err
    assert "ask the pool's operators for a worker token" in err


def test_check_accepts_a_good_config_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tokens(tmp_path)
    path = _config(tmp_path, "    attributes: {SiteName: EXAMPLE, Tier: 2}\n")
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{path}: ok: pool pool.example.org at 127.0.0.1:9, "
        f"owner {socket.gethostname()}, 1 site: local (docker)"
    ]


def test_check_contacts_nothing_and_writes_no_state(tmp_path: Path) -> None:
    # Nothing answers at 127.0.0.1:9, and no state file appears.
    _tokens(tmp_path)
    assert main(["check", "--config", str(_config(tmp_path))]) == 0
    assert not (tmp_path / "state").exists()


def test_check_names_an_unknown_key_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tokens(tmp_path)
    path = _config(tmp_path, "    bogus_key: 1\n")
    assert main(["check", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"{path}:12: sites.local.bogus_key: unknown key"]


def test_check_refuses_a_readable_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tokens(tmp_path, 0o644)
    assert main(["check", "--config", str(_config(tmp_path))]) == 2
    assert "pool.token: mode 0644 lets group or others read a secret" in capsys.readouterr().err


def test_check_refuses_a_missing_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(_config(tmp_path))]) == 2
    assert "pool.token: secret file unreadable" in capsys.readouterr().err


def test_check_names_a_bad_attribute_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tokens(tmp_path)
    path = _config(tmp_path, "    attributes:\n      Good: 1\n      bad-name: x\n")
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:14: sites.local.attributes.bad-name: attribute 'bad-name'")


def test_status_says_why_demand_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(_config(tmp_path))]) == 0  # still a status
    out = capsys.readouterr().out
    assert "demand: unknown" in out
    assert "pool.token" in out  # the token file is missing: said so


def test_status_without_demand_asks_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--no-demand", "--config", str(_config(tmp_path))]) == 0
    assert "demand" not in capsys.readouterr().out


def test_demand_table_shows_matched_and_unmatched_jobs() -> None:
    demand = [
        Demand("cm#2", 5, 3, 900, 10, ("fat",)),
        Demand("cm#1", 2, 1, 100, 10, ()),
        Demand("cm#3", 1, 1, 100, 10, ("fat", "small")),
    ]
    lines = demand_table(demand, complete=False).splitlines()
    assert lines[0].split() == ["DEMAND", "IDLE", "JOBS", "CPUS", "MEMORY_MB", "DISK_MB", "SITES"]
    assert lines[1].split() == ["cm#1", "2", "1", "100", "10", "-", "(unmatched)"]
    assert lines[2].split() == ["cm#2", "5", "3", "900", "10", "fat"]
    assert lines[3].split() == ["cm#3", "1", "1", "100", "10", "fat,small"]
    assert lines[4] == "6 idle jobs matched to a site, 2 unmatched (no site can run them)"
    assert lines[5].startswith("incomplete: a schedd did not answer")


HPC = (
    "  hpc:\n"
    "    kind: slurm_backfill\n"
    "    shape: {cpus: 2, memory_mb: 4096, disk_mb: 20000}\n"
    "    partition: backfill\n"
)


def _hpc_config(tmp_path: Path) -> Path:
    return _config(tmp_path, HPC + f"    worker_token_file: {tmp_path}/worker.token\n")


def test_evacuate_asks_the_daemon_and_pauses_the_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _hpc_config(tmp_path)
    argv = ["evacuate", "--config", str(path), "--site", "hpc", "--nodes", "2", "--wait-s", "0"]
    assert main(argv) == 0
    assert "hpc: paused" in capsys.readouterr().out
    with Store.open(tmp_path / "state" / "state.sqlite3", exclusive=False) as store:
        assert store.site_detail("hpc") == {"evacuate": 2, "paused": True}
    assert main(["resume", "--config", str(path), "--site", "hpc"]) == 0
    with Store.open(tmp_path / "state" / "state.sqlite3", exclusive=False) as store:
        assert store.site_detail("hpc") == {"evacuate": None, "paused": False}


def test_evacuate_says_when_the_daemon_gives_nothing_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _hpc_config(tmp_path)
    with Store.open(tmp_path / "state" / "state.sqlite3") as store:
        store.add("tide-hpc-00000001", "hpc", 1.0, "test")
    argv = ["evacuate", "--config", str(path), "--site", "hpc", "--wait-s", "0.3"]
    assert main(argv) == 1
    assert "1 not given back after 0s: is the daemon running?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("site", "nodes", "message"),
    [
        ("nope", "1", "no site 'nope' in the configuration (sites: hpc, local)"),
        ("local", "1", "site 'local' is not a backfill site"),
        ("hpc", "0", "--nodes 0: give at least 1"),
    ],
)
def test_evacuate_refuses_what_it_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], site: str, nodes: str, message: str
) -> None:
    argv = ["evacuate", "--config", str(_hpc_config(tmp_path)), "--site", site, "--nodes", nodes]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # nothing written
