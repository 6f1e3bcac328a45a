"""The FAKE OpenStack's hypervisor on a lab host (tests only): a "server" is
its cloud-config user data, run for real on tide-lab-cm (a systemd host
container with its own Docker Engine, compose plugin and the tide/condor
image), reached with `docker exec`.

Booting a server does what cloud-init would do with `write_files` and
`runcmd`, and nothing else (user data using any other module, or a
write_files key other than path/content/permissions/owner, fails the boot):

- each file is written with its owner and mode under /var/lib/fake-nova/<id>/
  (/opt/tide/x becomes /var/lib/fake-nova/<id>/opt/tide/x); its content goes
  through stdin, never a command line, so the token stays off `ps`;
- each command runs as root with the same mapping applied to its arguments
  (paths under the top-level folders write_files wrote into);
- `docker compose` commands get the project `fakeos-<id>` and one more
  compose file, an override giving each service the environment TIDE_PORT
  (one port of 29730-29739 per server), TIDE_BIND_ADDRESS=127.0.0.1 and
  TIDE_DRAIN_URL, the fake's metadata service for this server (a real
  server reads 169.254.169.254, which knows it by its address).

- `iptables` commands blocking the metadata service (`-d 169.254.169.254`)
  block the fake's instead (`-d 127.0.0.1 -p tcp --dport <its port>`), in
  the lab host's network namespace, which every server shares; each
  server's copy of the rule goes when the server does (`-D`), and cleanup
  removes every rule commented tide-metadata-guard. `ip6tables` commands
  are skipped: the fake serves no IPv6 metadata.

DEVIATIONS, because every "server" shares the lab host's network namespace
(the lab hosts use the machine's network): a cloud gives each server its own
address, here each gets its own port instead (the override); a shell-string
command mentioning compose is refused, as it could not be given its project.
Deleting a server powers it off hard, as Nova does: its containers are
killed (SIGKILL, so HTCondor withdraws nothing: the slot's ads stay in the
collector until the controller withdraws them), then the project is
removed with `docker compose down -v`.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import yaml

from tests import lab
from tests.doubles.fake_nova import BootFailed

ROOT = "/var/lib/fake-nova"
PROJECT_PREFIX = "fakeos-"
PORTS = range(29730, 29740)
BIND_ADDRESS = "127.0.0.1"
OVERRIDE = "fake-nova-override.yaml"
COMMAND_TIMEOUT_S = 300
METADATA_ADDRESS = "169.254.169.254"
GUARD_COMMENT = "tide-metadata-guard"
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
_FILE_KEYS = frozenset({"path", "content", "permissions", "owner"})
_WRITE = (
    'set -e; mkdir -p "$(dirname "$1")"; umask 077; cat > "$1"; chown "$2" "$1"; chmod "$3" "$1"'
)


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: str = field(repr=False)
    permissions: str  # octal, e.g. "0600"
    owner: str


@dataclass(frozen=True)
class CloudConfig:
    """The part of a #cloud-config document the fake runs."""

    write_files: tuple[WriteFile, ...]
    runcmd: tuple[list[str] | str, ...]


def parse_cloud_config(user_data: bytes) -> CloudConfig:
    """write_files and runcmd of a #cloud-config document. Raises BootFailed
    for anything else, or anything malformed."""
    try:
        text = user_data.decode("utf-8")
        doc = yaml.safe_load(text)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BootFailed(f"user data: not a YAML document: {type(exc).__name__}") from None
    if not text.startswith("#cloud-config\n") or not isinstance(doc, dict):
        raise BootFailed("user data: the fake runs #cloud-config documents only")
    unsupported = sorted(set(doc) - {"write_files", "runcmd"})
    if unsupported:
        raise BootFailed(f"user data: modules the fake does not run: {unsupported}")
    files = tuple(_write_file(entry) for entry in doc.get("write_files") or [])
    commands = tuple(_command(entry) for entry in doc.get("runcmd") or [])
    return CloudConfig(files, commands)


def _write_file(entry: object) -> WriteFile:
    if not isinstance(entry, dict) or not str(entry.get("path", "")).startswith("/"):
        raise BootFailed("write_files: each entry needs an absolute path")
    unknown = sorted(set(entry) - _FILE_KEYS)
    if unknown:
        raise BootFailed(f"write_files {entry['path']}: keys the fake does not handle: {unknown}")
    mode = entry.get("permissions", "0644")
    mode = f"{mode:04o}" if isinstance(mode, int) else str(mode)
    if not re.fullmatch(r"0?[0-7]{3,4}", mode):
        raise BootFailed(f"write_files {entry['path']}: bad permissions {mode!r}")
    return WriteFile(
        str(entry["path"]),
        str(entry.get("content", "")),
        mode,
        str(entry.get("owner", "root:root")),
    )


def _command(entry: object) -> list[str] | str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, list) and entry and all(isinstance(a, str | int) for a in entry):
        return [str(a) for a in entry]
    raise BootFailed("runcmd: each entry must be a string or a list of strings")


@dataclass(frozen=True)
class PathMap:
    """A server's file system inside its folder on the lab host."""

    root: str  # /var/lib/fake-nova/<id>
    tops: tuple[str, ...]  # the top-level folders mapped, e.g. ("/opt",)

    @classmethod
    def of(cls, root: str, files: Sequence[WriteFile]) -> PathMap:
        return cls(root, tuple(sorted({"/" + f.path.split("/")[1] for f in files})))

    def path(self, path: str) -> str:
        return self.root + path

    def text(self, text: str) -> str:
        """Every path under a mapped folder in `text`, mapped."""
        for top in self.tops:
            text = re.sub(rf"(?<![\w./-]){re.escape(top)}(?=/|$|\s)", self.root + top, text)
        return text


class LabHostHypervisor:
    """Runs the fake's servers on a lab host's Docker engine (see the module doc)."""

    def __init__(self, host: str = lab.CM_HOST, ports: Sequence[int] = PORTS) -> None:
        self.host = host
        self._free = list(ports)
        self.ports: dict[str, int] = {}  # server id -> its worker port
        self._lock = threading.Lock()
        self.metadata_base = ""  # the fake's metadata service, per server below it
        self._guards: dict[str, list[list[str]]] = {}  # server id -> its iptables rules

    def use_metadata_service(self, base: str) -> None:
        self.metadata_base = base

    def boot(self, server_id: str, user_data: bytes | None) -> None:
        if user_data is None:
            return  # a server with nothing to run
        config = parse_cloud_config(user_data)
        port = self._allocate(server_id)
        paths = PathMap.of(f"{ROOT}/{server_id}", config.write_files)
        for f in config.write_files:
            self._write(paths.path(f.path), f.content, f.owner, f.permissions)
        for command in config.runcmd:
            argv = self._placed(server_id, command, paths, config, port)
            if argv:
                self._run(server_id, argv)

    def destroy(self, server_id: str) -> None:
        project = PROJECT_PREFIX + server_id
        self._on_host("docker", "compose", "-p", project, "kill", "-s", "SIGKILL")
        self._on_host("docker", "compose", "-p", project, "down", "-v", "--timeout", "0")
        self._on_host("rm", "-rf", f"{ROOT}/{server_id}")
        with self._lock:
            guards = self._guards.pop(server_id, [])
        for rule in guards:
            lab.run(["docker", "exec", self.host, *rule], check=False)
        with self._lock:
            port = self.ports.pop(server_id, None)
            if port is not None:
                self._free.append(port)

    def cleanup(self) -> None:
        """Remove every fakeos-* compose project (gracefully, so slots are
        withdrawn), anything of theirs left, and every server's folder."""
        script = f"""
            for p in $(docker compose ls -a -q | grep '^{PROJECT_PREFIX}'); do
                docker compose -p "$p" down -v --timeout 30
            done
            docker ps -a --filter label=com.docker.compose.project \\
                --format '{{{{.ID}}}} {{{{.Label "com.docker.compose.project"}}}}' \\
                | awk '$2 ~ /^{PROJECT_PREFIX}/ {{print $1}}' | xargs -r docker rm -f -v
            docker volume ls -q | grep '^{PROJECT_PREFIX}' | xargs -r docker volume rm -f
            docker network ls -q --filter name={PROJECT_PREFIX} | xargs -r docker network rm
            rm -rf {ROOT}
            if command -v iptables >/dev/null; then
                iptables -w -S OUTPUT | grep -F -- '--comment {GUARD_COMMENT}' \
                    | sed 's/^-A /-D /' | xargs -r -L1 iptables -w
            fi
        """
        self._on_host("sh", "-c", script)
        with self._lock:
            self._free.extend(self.ports.values())
            self.ports.clear()
            self._guards.clear()

    def projects(self) -> list[str]:
        """The fakeos-* compose projects on the host, running or not."""
        out = lab.run(["docker", "exec", self.host, "docker", "compose", "ls", "-a", "-q"]).stdout
        return [p for p in out.split() if p.startswith(PROJECT_PREFIX)]

    # --- helpers --------------------------------------------------------

    def _allocate(self, server_id: str) -> int:
        with self._lock:
            if not self._free:
                raise BootFailed(NO_VALID_HOST)
            port = self._free.pop(0)
            self.ports[server_id] = port
            return port

    def _placed(
        self,
        server_id: str,
        command: list[str] | str,
        paths: PathMap,
        config: CloudConfig,
        port: int,
    ) -> list[str]:
        """The command as it runs on the host: paths mapped, compose placed in
        the server's project with the override file (written now), the
        metadata guard aimed at the fake's service; [] for one to skip."""
        if isinstance(command, str):
            if "compose" in command:
                raise BootFailed("runcmd: a shell string running compose cannot be placed")
            return ["sh", "-c", paths.text(command)]
        argv = [paths.text(arg) for arg in command]
        if argv[0] in ("iptables", "ip6tables"):
            return self._guard(server_id, argv)
        if argv[:2] != ["docker", "compose"]:
            if any("compose" in arg for arg in argv):
                raise BootFailed(f"runcmd: cannot place {shlex.join(command)}")
            return argv
        files = [argv[i + 1] for i in range(2, len(argv) - 1) if argv[i] in ("-f", "--file")]
        if not files:
            raise BootFailed("runcmd: docker compose without -f cannot be placed")
        override = paths.path(f"/{OVERRIDE}")
        drain_url = (
            f"{self.metadata_base}/{server_id}/openstack/latest/meta_data.json"
            if self.metadata_base
            else ""
        )
        text = _override(files, paths, config, port, drain_url)
        self._write(override, text, "root:root", "0644")
        last = max(i for i in range(2, len(argv) - 1) if argv[i] in ("-f", "--file")) + 2
        project = PROJECT_PREFIX + server_id
        return ["docker", "compose", "-p", project, *argv[2:last], "-f", override, *argv[last:]]

    def _guard(self, server_id: str, argv: list[str]) -> list[str]:
        """An iptables rule of the server's, aimed at the fake's metadata
        service and remembered for the server's delete; [] to skip it."""
        if argv[0] == "ip6tables" or not self.metadata_base:
            return []
        if "-I" not in argv or METADATA_ADDRESS not in argv:
            raise BootFailed(f"runcmd: the fake runs only metadata guards: {shlex.join(argv)}")
        at = argv.index(METADATA_ADDRESS)
        port = urlsplit(self.metadata_base).port or 80
        placed = [*argv[:at], "127.0.0.1", "-p", "tcp", "--dport", str(port), *argv[at + 1 :]]
        remove = ["-D" if arg == "-I" else arg for arg in placed]
        with self._lock:
            self._guards.setdefault(server_id, []).append(remove)
        return placed

    def _write(self, path: str, content: str, owner: str, mode: str) -> None:
        proc = lab.run(
            ["docker", "exec", "-i", self.host, "sh", "-c", _WRITE, "sh", path, owner, mode],
            check=False,
            input_text=content,
        )
        if proc.returncode != 0:
            raise BootFailed(f"writing {path}: {proc.stderr.strip()[-500:]}")

    def _run(self, server_id: str, argv: list[str]) -> None:
        env = f"COMPOSE_PROJECT_NAME={PROJECT_PREFIX}{server_id}"
        proc = lab.run(
            ["docker", "exec", "-e", env, "-w", "/", self.host, *argv],
            check=False,
            timeout=COMMAND_TIMEOUT_S,
        )
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).strip()[-1000:]
            raise BootFailed(f"runcmd {shlex.join(argv)} exited {proc.returncode}: {output}")

    def _on_host(self, *argv: str) -> None:
        lab.run(["docker", "exec", self.host, *argv], timeout=COMMAND_TIMEOUT_S)


def _override(
    files: Sequence[str], paths: PathMap, config: CloudConfig, port: int, drain_url: str
) -> str:
    """The compose override giving each service of `files` (written by
    write_files) this server's own port, loopback address and metadata URL."""
    written = {paths.path(f.path): f.content for f in config.write_files}
    services: set[str] = set()
    for name in files:
        if name not in written:
            raise BootFailed(f"runcmd: compose file {name} is not one write_files wrote")
        doc = yaml.safe_load(written[name])
        services |= set((doc or {}).get("services") or {})
    environment = {"TIDE_PORT": str(port), "TIDE_BIND_ADDRESS": BIND_ADDRESS}
    if drain_url:
        environment["TIDE_DRAIN_URL"] = drain_url
    body = {"services": {s: {"environment": environment} for s in sorted(services)}}
    header = "# FAKE Nova: this server's own port and address on the shared lab host network.\n"
    return header + yaml.safe_dump(body, sort_keys=True)


__all__ = [
    "BIND_ADDRESS",
    "PORTS",
    "PROJECT_PREFIX",
    "ROOT",
    "CloudConfig",
    "LabHostHypervisor",
    "PathMap",
    "WriteFile",
    "parse_cloud_config",
]
