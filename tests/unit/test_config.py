"""The controller's config: a full file loads, and every mistake is reported
with the key's dotted path and its line, so an operator can fix it at once."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from tide.config import (
    Config,
    ConfigError,
    DockerSiteConfig,
    OpenStackSiteConfig,
    check_secret_file,
    load_config,
    site_model,
)
from tide.model import Shape, Site, SiteLimits

FULL = """\
pool:
  collector: cm.example.org:9618
  domain: pool.example.org
  token_file: /etc/tide/pool.token
  schedds: [submit1.example.org]
loop:
  interval_s: 1
  state_file: /srv/tide/state.sqlite3
metrics:
  port: 0
  address: 192.0.2.10
sites:
  local:
    kind: docker
    shape: {cpus: 2, memory_mb: 4096, disk_mb: 20000}
    worker_token_file: /etc/tide/worker.token
    attributes:
      TideSite: local
      HasDocker: true
      Speed: 1.5
      Cores: 2
  cloud:
    kind: openstack
    cloud: mycloud
    image: condor-worker
    flavor: m1.large
    network: private
    key_name: ops
    security_groups: [condor]
    worker_token_file: /etc/tide/worker.token
    metadata: {owner: physics}
    shape:
      cpus: 8
      memory_mb: 16384
      disk_mb: 40000
    limits:
      max_resources: 20
      max_booting: 10
      boot_timeout_s: 900
      idle_timeout_s: 120.5
      backoff_base_s: 10
      backoff_max_s: 600
"""

MINIMAL = """\
pool:
  collector: cm:9618
  token_file: /t
  domain: pool.example.org
sites:
  local:
    kind: docker
    shape: {cpus: 1, memory_mb: 1024, disk_mb: 1024}
    worker_token_file: /w
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tide.yml"
    path.write_text(textwrap.dedent(text))
    return path


def _line_of(text: str, needle: str) -> int:
    """The 1-based line where `needle` first occurs, so tests need no counted lines."""
    return text[: text.index(needle)].count("\n") + 1


def _errors(tmp_path: Path, text: str) -> tuple[str, ...]:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    prefix = f"{path}:"
    assert all(e.startswith(prefix) for e in caught.value.errors), caught.value.errors
    return tuple(e.removeprefix(prefix) for e in caught.value.errors)


def test_a_full_config_loads(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, FULL))
    assert isinstance(config, Config)
    assert config.pool.collector == "cm.example.org:9618"
    assert config.pool.token_file == Path("/etc/tide/pool.token")
    assert config.pool.schedds == ["submit1.example.org"]
    assert config.loop.interval_s == 1.0  # an int is fine where a float belongs
    assert config.loop.state_file == Path("/srv/tide/state.sqlite3")
    assert (config.metrics.port, config.metrics.address) == (0, "192.0.2.10")
    local, cloud = config.sites["local"], config.sites["cloud"]
    assert isinstance(local, DockerSiteConfig)
    assert local.attributes == {"TideSite": "local", "HasDocker": True, "Speed": 1.5, "Cores": 2}
    assert local.image == "tide/condor:0.1.0"
    assert isinstance(cloud, OpenStackSiteConfig)
    assert (cloud.cloud, cloud.key_name, cloud.security_groups) == ("mycloud", "ops", ["condor"])
    assert cloud.user_data_template is None
    assert cloud.metadata == {"owner": "physics"}
    assert site_model("cloud", cloud) == Site(
        name="cloud",
        shape=Shape(cpus=8, memory_mb=16384, disk_mb=40000),
        limits=SiteLimits(
            max_resources=20,
            max_booting=10,
            boot_timeout_s=900,
            idle_timeout_s=120.5,
            backoff_base_s=10,
            backoff_max_s=600,
        ),
    )


def test_defaults_fill_what_is_left_out(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL))
    assert config.pool.schedds == []
    assert config.loop.interval_s == 2.0
    assert config.loop.state_file == Path("/var/lib/tide/state.sqlite3")
    assert (config.metrics.port, config.metrics.address) == (9800, "127.0.0.1")
    site = config.sites["local"]
    assert isinstance(site, DockerSiteConfig)
    assert site.engine_url == "unix:///var/run/docker.sock"
    assert site.network_mode == "host"
    assert site_model("local", site).limits == SiteLimits(10, 5, 600, 300, 30, 900)


def test_every_field_says_why() -> None:
    models: list[type[BaseModel]] = [Config, DockerSiteConfig, OpenStackSiteConfig]
    seen: set[type[BaseModel]] = set()
    while models:
        model = models.pop()
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            nested = field.annotation
            if isinstance(nested, type) and issubclass(nested, BaseModel) and nested not in seen:
                models.append(nested)
    assert len(seen) == 8


def test_unknown_keys_are_named_with_their_line(tmp_path: Path) -> None:
    text = MINIMAL + "colector: cm:9618\n"
    assert _errors(tmp_path, text) == ("10: colector: unknown key",)
    nested = MINIMAL + "    imag: x\n"
    assert _errors(tmp_path, nested) == ("10: sites.local.imag: unknown key",)


def test_a_wrong_type_names_path_line_and_value(tmp_path: Path) -> None:
    text = FULL.replace("max_booting: 10", "max_booting: ten")
    line = _line_of(text, "max_booting: ten")
    assert _errors(tmp_path, text) == (
        f"{line}: sites.cloud.limits.max_booting: Input should be a valid integer (got 'ten')",
    )
    quoted = MINIMAL + "metrics:\n  port: '9800'\n"
    assert _errors(tmp_path, quoted) == (
        "11: metrics.port: Input should be a valid integer (got '9800')",
    )


def test_a_missing_key_names_the_line_of_its_parent(tmp_path: Path) -> None:
    text = FULL.replace("      disk_mb: 40000\n", "").replace("    network: private\n", "")
    site, shape = _line_of(text, "  cloud:"), _line_of(text, "    shape:\n      cpus: 8")
    assert _errors(tmp_path, text) == (
        f"{site}: sites.cloud.network: required key is missing",
        f"{shape}: sites.cloud.shape.disk_mb: required key is missing",
    )
    assert _errors(tmp_path, "sites: {}\n") == (
        "1: pool: required key is missing",
        "1: sites: configure at least one site to scale into",
    )


def test_site_names_must_be_lowercase_words(tmp_path: Path) -> None:
    text = MINIMAL.replace("  local:", "  Local_1:")
    (error,) = _errors(tmp_path, text)
    assert error.startswith("6: sites.Local_1: site name must match ^[a-z][a-z0-9-]*$")


def test_site_names_fit_a_host_name_label(tmp_path: Path) -> None:
    longest = "s" * 40
    config = load_config(_write(tmp_path, MINIMAL.replace("  local:", f"  {longest}:")))
    assert len(f"tide-{longest}-0a1b2c3d") <= 63
    assert list(config.sites) == [longest]
    too_long = longest + "x"
    assert _errors(tmp_path, MINIMAL.replace("  local:", f"  {too_long}:")) == (
        f"6: sites.{too_long}: site name must be at most 40 characters: resource ids "
        f"tide-<site>-<8 hex> must fit a 63-character host name label (got {too_long!r})",
    )


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    (error,) = _errors(tmp_path, MINIMAL.replace("kind: docker", "kind: slurm"))
    assert error.startswith("7: sites.local.kind: Input tag 'slurm'")
    assert "'docker', 'openstack', 'slurm_backfill'" in error
    no_kind = MINIMAL.replace("    kind: docker\n", "")
    assert _errors(tmp_path, no_kind) == (
        "6: sites.local.kind: required key is missing (docker, openstack or slurm_backfill)",
    )


def test_backoff_max_is_at_least_backoff_base(tmp_path: Path) -> None:
    text = FULL.replace("backoff_max_s: 600", "backoff_max_s: 5")
    line = _line_of(text, "    limits:\n      max_resources: 20")
    assert _errors(tmp_path, text) == (
        f"{line}: sites.cloud.limits: backoff_max_s (5.0) must be >= backoff_base_s (10.0)",
    )


def test_docker_worker_ports_are_a_range_and_the_bind_address_is_ipv4(tmp_path: Path) -> None:
    site = load_config(_write(tmp_path, MINIMAL)).sites["local"]
    assert isinstance(site, DockerSiteConfig)
    assert (site.port_range_start, site.port_range_end, site.bind_address) == (29700, 29799, "")
    one_port = MINIMAL + "    port_range_start: 29650\n    port_range_end: 29650\n"
    one_port += "    bind_address: 127.0.0.1\n"
    site = load_config(_write(tmp_path, one_port)).sites["local"]
    assert isinstance(site, DockerSiteConfig)
    assert (site.port_range_start, site.port_range_end, site.bind_address) == (
        29650,
        29650,
        "127.0.0.1",
    )
    reversed_range = MINIMAL + "    port_range_start: 29800\n    port_range_end: 29700\n"
    assert _errors(tmp_path, reversed_range) == (
        "6: sites.local: port_range_end (29700) must be >= port_range_start (29800)",
    )
    bad = MINIMAL + "    port_range_start: 0\n    port_range_end: 65536\n    bind_address: cm\n"
    assert _errors(tmp_path, bad) == (
        "10: sites.local.port_range_start: Input should be greater than or equal to 1 (got 0)",
        "11: sites.local.port_range_end: Input should be less than or equal to 65535 (got 65536)",
        "12: sites.local.bind_address: must be an IPv4 address, e.g. 192.0.2.10, or empty for "
        "every interface (got 'cm')",
    )


def test_values_are_checked_beyond_their_type(tmp_path: Path) -> None:
    text = (
        MINIMAL.replace("cm:9618", "cm").replace("cpus: 1", "cpus: 0")
        + "    attributes: {A: [1]}\n"
        + "loop: {interval_s: 0}\n"
    )
    assert _errors(tmp_path, text) == (
        "2: pool.collector: must be host:port, e.g. cm.example.org:9618 (got 'cm')",
        "8: sites.local.shape.cpus: Input should be greater than 0 (got 0)",
        "10: sites.local.attributes.A: must be a string, number or boolean",
        "11: loop.interval_s: Input should be greater than 0 (got 0)",
    )


def test_a_duplicate_key_is_an_error(tmp_path: Path) -> None:
    text = MINIMAL.replace("  token_file: /t\n", "  token_file: /t\n  collector: cm:9619\n")
    assert _errors(tmp_path, text) == ("4: pool.collector: duplicate key",)


@pytest.mark.parametrize(
    ("text", "line"),
    [("pool:\n  collector: [\n", 3), ("pool: a\n  b: c\n", 2), ("a: 1\n---\nb: 2\n", 2)],
)
def test_a_yaml_syntax_error_has_a_line(tmp_path: Path, text: str, line: int) -> None:
    (error,) = _errors(tmp_path, text)
    assert error.startswith(f"{line}: YAML syntax error: ")


def test_the_file_must_be_a_mapping(tmp_path: Path) -> None:
    assert _errors(tmp_path, "- a\n") == ("1: (top level): must be a mapping of keys",)
    assert _errors(tmp_path, "") == (
        "1: pool: required key is missing",
        "1: sites: required key is missing",
    )


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yml")


def test_check_secret_file_wants_owner_only_access(tmp_path: Path) -> None:
    token = tmp_path / "pool.token"
    token.write_text("eyJhbGciOi...")
    os.chmod(token, 0o600)
    check_secret_file(token)
    os.chmod(token, 0o400)
    check_secret_file(token)
    os.chmod(token, 0o644)
    with pytest.raises(ConfigError, match=r"mode 0644 lets group or others read"):
        check_secret_file(token)
    with pytest.raises(ConfigError, match="unreadable"):
        check_secret_file(tmp_path / "missing.token")
    with pytest.raises(ConfigError, match="not a regular file"):
        check_secret_file(tmp_path)


def test_the_documented_example_is_a_valid_configuration(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "controller" / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config(_write(tmp_path, example))
    assert sorted(config.sites) == ["cloud", "fatnode", "maxwell"]


def test_a_docker_site_may_mint_each_worker_a_token_instead(tmp_path: Path) -> None:
    text = MINIMAL.replace("    worker_token_file: /w\n", "    worker_signing_key_file: /k\n")
    config = load_config(_write(tmp_path, text))
    site = config.sites["local"]
    assert (site.worker_token_file, site.worker_signing_key_file) == (None, Path("/k"))
    assert site.worker_token_lifetime_s == 86400
    assert site.secret_files() == [Path("/k")]


@pytest.mark.parametrize(
    ("replacement", "named"),
    [
        ("", "worker_token_file is required: the IDTOKEN the site's workers join the pool with "
         "(or worker_signing_key_file, to give each worker a token of its own)"),
        ("    worker_token_file: /w\n    worker_signing_key_file: /k\n",
         "set worker_token_file or worker_signing_key_file, not both"),
        ("    worker_signing_key_file: /k\n    worker_token_lifetime_s: 60\n",
         "worker_token_lifetime_s: Input should be greater than or equal to 600"),
    ],
)  # fmt: skip
def test_a_docker_sites_worker_credential_is_one_of_two(
    tmp_path: Path, replacement: str, named: str
) -> None:
    errors = _errors(tmp_path, MINIMAL.replace("    worker_token_file: /w\n", replacement))
    assert any(named in e for e in errors), errors


def test_every_kind_may_mint_each_worker_a_token_instead(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        pool:
          collector: cm:9618
          token_file: /t
          domain: pool.example.org
        sites:
          cloud:
            kind: openstack
            shape: {cpus: 1, memory_mb: 1024, disk_mb: 1024}
            worker_signing_key_file: /k
            cloud: lab
            image: tide-worker
            flavor: m1.small
            network: tide
        """
    )
    site = load_config(_write(tmp_path, text)).sites["cloud"]
    assert (site.worker_token_file, site.worker_signing_key_file) == (None, Path("/k"))
    assert site.secret_files() == [Path("/k")]
