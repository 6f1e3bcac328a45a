"""The executors (controller/tide/executors.py) running real commands.

LocalExecutor runs real subprocesses. SshExecutor talks to a real SSH server
started here: asyncssh's server on 127.0.0.1 (an OS-chosen port), with host
and client keys generated in tmp_path, whose sessions run the requested
command line with `/bin/sh -c`, as sshd does, and which counts connections
and concurrently open sessions on its side. Nothing of asyncssh is mocked.

Nothing waits a fixed time for something to happen: tests poll for the state
they need, with generous deadlines, so a slow machine only makes them slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest

from tide.executors import (
    LOCAL_ENVIRONMENT,
    CommandTimedOut,
    Completed,
    Executor,
    ExecutorError,
    LocalExecutor,
    SshExecutor,
    SshTarget,
)

T = TypeVar("T")
DEADLINE_S = 30.0
"""How long a test waits for a state it polls for before it fails."""


def poll(what: str, probe: Callable[[], T | None], deadline_s: float = DEADLINE_S) -> T:
    """Call probe until it returns something other than None; fail after deadline_s."""
    end = time.monotonic() + deadline_s
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > end:
            pytest.fail(f"gave up after {deadline_s:g} s waiting for {what}")
        time.sleep(0.02)


def error_of(executor: Executor, argv: list[str], **kwargs: Any) -> ExecutorError:
    with pytest.raises(ExecutorError) as caught:
        executor.run(argv, **kwargs)
    return caught.value


# --- LocalExecutor ---------------------------------------------------------


def test_local_runs_a_command_and_reports_its_output() -> None:
    executor: Executor = LocalExecutor()
    done = executor.run(["echo", "hello", "world"])
    assert done == Completed(("echo", "hello", "world"), 0, "hello world\n", "")
    assert done.check() is done


def test_local_reports_exit_status_and_stderr() -> None:
    executor = LocalExecutor()
    assert executor.run(["false"]).returncode == 1
    done = executor.run(["sh", "-c", "echo out; echo first >&2; echo last >&2; exit 3"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "first\nlast\n")
    with pytest.raises(ExecutorError) as caught:
        done.check()
    assert not caught.value.retryable
    assert caught.value.completed is done
    message = str(caught.value)
    assert "exited with status 3" in message
    assert "first | last" in message
    assert "sh -c" in message


def test_local_reports_a_signal_as_a_negative_returncode() -> None:
    done = LocalExecutor().run(["sh", "-c", "kill -TERM $$"])
    assert done.returncode == -signal.SIGTERM
    with pytest.raises(ExecutorError, match="killed by signal 15"):
        done.check()


def test_local_feeds_stdin() -> None:
    executor = LocalExecutor()
    text = "line one\nzweite Zeile: äöü ✓\n"
    assert executor.run(["cat"], stdin=text).stdout == text
    assert executor.run(["cat"], stdin="").stdout == ""
    # No stdin: the command reads end-of-file at once (it does not hang on ours).
    assert executor.run(["cat"], timeout_s=20).stdout == ""


def test_local_passes_arguments_verbatim(tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    args = [f"a b; touch {marker}", f"$(touch {marker})", "`id`", "it's", "*", ""]
    done = LocalExecutor().run(["printf", r"%s\n", *args])
    assert done.stdout.split("\n")[:-1] == args
    assert not marker.exists()


def _gone_or_zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] == "Z"


def test_local_timeout_kills_the_command_and_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = 'sleep 300 & echo $! > "$1"; wait'
    started = time.monotonic()
    error = error_of(LocalExecutor(), ["sh", "-c", script, "sh", str(pid_file)], timeout_s=1.0)
    assert error.retryable
    assert "timed out after 1 s" in str(error)
    assert time.monotonic() - started < 250  # it did not wait for the sleep
    child = int(poll("the child's pid", lambda: pid_file.read_text().strip() or None))
    poll("the orphaned sleep to be killed", lambda: _gone_or_zombie(child) or None)


def test_local_timeout_is_a_command_timed_out() -> None:
    error = error_of(LocalExecutor(), ["sleep", "300"], timeout_s=0.5)
    assert isinstance(error, CommandTimedOut)
    assert error.retryable


def test_local_commands_do_not_see_the_daemons_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The daemon's CONDOR_CONFIG names its private token folder; SBATCH_* would
    # change what sbatch does. Neither may reach a command.
    monkeypatch.setenv("CONDOR_CONFIG", "/secret/condor_config")
    monkeypatch.setenv("SBATCH_EXPORT", "ALL")
    monkeypatch.setenv("HOME", str(tmp_path))
    done = LocalExecutor().run(["env"])
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert "CONDOR_CONFIG" not in env
    assert "SBATCH_EXPORT" not in env
    assert "/secret" not in done.stdout
    assert env["HOME"] == str(tmp_path)  # what a command needs stays
    assert env["PATH"] == os.environ["PATH"]
    assert set(env) <= {*LOCAL_ENVIRONMENT, "PWD", "SHLVL", "_"}


def test_local_commands_without_a_path_get_the_default_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATH")
    done = LocalExecutor().run(["env"])
    assert f"PATH={os.defpath}\n" in done.stdout


def test_local_missing_binary_is_a_clear_non_retryable_error() -> None:
    error = error_of(LocalExecutor(), ["tide-no-such-command", "--flag"])
    assert not error.retryable
    assert "tide-no-such-command: command not found" in str(error)


def test_local_file_that_is_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    error = error_of(LocalExecutor(), [str(script)])
    assert not error.retryable
    assert "not executable" in str(error)


def test_argv_is_checked() -> None:
    executor = LocalExecutor()
    with pytest.raises(ValueError, match="empty"):
        executor.run([])
    with pytest.raises(TypeError, match="not a string"):
        executor.run("echo hi")
    with pytest.raises(ValueError, match="timeout_s"):
        executor.run(["true"], timeout_s=0)


def test_local_runs_concurrently_from_threads() -> None:
    executor = LocalExecutor()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: executor.run(["echo", str(i)]), range(16)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(16)]


# --- a real SSH server -----------------------------------------------------


class SshServer:
    """asyncssh's SSH server on 127.0.0.1 on its own event loop in a daemon thread.

    A session runs its command line with `/bin/sh -c` in a new process group,
    pumps stdin/stdout/stderr and returns the exit status; if the client
    closes the session first, the process group is killed. The counters are
    the server's view: connections accepted, sessions open now and at most.
    """

    def __init__(self, host_key: asyncssh.SSHKey, authorized_keys: Path) -> None:
        self.host_key = host_key
        self.authorized_keys = authorized_keys
        self.port = 0
        self._lock = threading.Lock()
        self.connections = 0  # accepted, over all starts
        self.open_sessions = 0
        self.max_open_sessions = 0
        self.commands: list[str] = []
        self.killed = 0
        self._live: set[asyncssh.SSHServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(DEADLINE_S)

    def start(self) -> None:
        """Listen on self.port (0 at first: the OS chooses; then the same port again)."""
        self._acceptor = self._call(self._start())
        self.port = self._acceptor.get_port()

    async def _start(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            lambda: _ServerCallbacks(self),
            "127.0.0.1",
            self.port,
            server_host_keys=[self.host_key],
            authorized_client_keys=str(self.authorized_keys),
            process_factory=self._session,
            encoding=None,
            reuse_address=True,
        )

    def drop_connections(self) -> None:
        """Abort every open connection, as a crashing sshd would; keep listening."""
        self._call(self._drop())

    async def _drop(self) -> None:
        for conn in list(self._live):
            conn.abort()
        while self._live:
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        """Stop listening and drop the connections: the server is down."""
        self._call(self._stop())

    async def _stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        await self._drop()

    def shutdown(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(DEADLINE_S)
        self._loop.close()

    @property
    def live_connections(self) -> int:
        return len(self._live)

    def connected(self, conn: asyncssh.SSHServerConnection) -> None:
        with self._lock:
            self.connections += 1
            self._live.add(conn)

    def disconnected(self, conn: asyncssh.SSHServerConnection) -> None:
        with self._lock:
            self._live.discard(conn)

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command or ""
        with self._lock:
            self.commands.append(command)
            self.open_sessions += 1
            self.max_open_sessions = max(self.max_open_sessions, self.open_sessions)
        try:
            await self._execute(process, command)
        finally:
            with self._lock:
                self.open_sessions -= 1

    async def _execute(self, process: asyncssh.SSHServerProcess[bytes], command: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        assert stdin is not None
        assert stdout is not None
        assert stderr is not None

        async def feed(sink: asyncio.StreamWriter) -> None:
            try:
                while data := await process.stdin.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncssh.Error):
                pass
            finally:
                sink.close()

        async def pump(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()

        async def work() -> int:
            await asyncio.gather(
                feed(stdin), pump(stdout, process.stdout), pump(stderr, process.stderr)
            )
            return await proc.wait()

        worker = asyncio.ensure_future(work())
        closed = asyncio.ensure_future(process.channel.wait_closed())
        await asyncio.wait({worker, closed}, return_when=asyncio.FIRST_COMPLETED)
        if worker.done() and not worker.cancelled() and worker.exception() is None:
            closed.cancel()
            process.exit(worker.result())
            return
        # The client went away (a timeout, a lost connection): kill the command.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        worker.cancel()
        await asyncio.gather(worker, closed, return_exceptions=True)
        with self._lock:
            self.killed += 1
        process.close()


class _ServerCallbacks(asyncssh.SSHServer):
    def __init__(self, server: SshServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._server.connected(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._server.disconnected(self._conn)


@dataclass(frozen=True)
class Keys:
    host_key: asyncssh.SSHKey
    client_key: asyncssh.SSHKey
    key_file: Path
    authorized_keys: Path
    known_hosts: Path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_known_hosts(path: Path, port: int, host_key: asyncssh.SSHKey) -> None:
    public = host_key.export_public_key("openssh").decode().strip()
    path.write_text(f"[127.0.0.1]:{port} {public}\n")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id_ed25519"
    _write_private(key_file, client_key.export_private_key("openssh"))
    authorized_keys = tmp_path / "authorized_keys"
    authorized_keys.write_bytes(client_key.export_public_key("openssh"))
    return Keys(host_key, client_key, key_file, authorized_keys, tmp_path / "known_hosts")


@pytest.fixture
def server(keys: Keys) -> Iterator[SshServer]:
    srv = SshServer(keys.host_key, keys.authorized_keys)
    srv.start()
    write_known_hosts(keys.known_hosts, srv.port, keys.host_key)
    yield srv
    srv.shutdown()


def make_target(keys: Keys, port: int, **kwargs: Any) -> SshTarget:
    return SshTarget(
        host="127.0.0.1",
        user="tide",
        key_file=keys.key_file,
        known_hosts_file=keys.known_hosts,
        port=port,
        **kwargs,
    )


@pytest.fixture
def ssh(keys: Keys, server: SshServer) -> Iterator[SshExecutor]:
    with SshExecutor(make_target(keys, server.port)) as executor:
        yield executor


# --- SshExecutor -----------------------------------------------------------


def test_ssh_runs_commands_and_reports_exit_status(ssh: SshExecutor, server: SshServer) -> None:
    done = ssh.run(["echo", "hello", "world"])
    assert done == Completed(("echo", "hello", "world"), 0, "hello world\n", "")
    assert server.commands == ["echo hello world"]
    assert ssh.run(["false"]).returncode == 1
    done = ssh.run(["sh", "-c", "echo out; echo oops >&2; exit 3"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "oops\n")
    with pytest.raises(ExecutorError, match="exited with status 3: oops") as caught:
        done.check()
    assert not caught.value.retryable


def test_ssh_feeds_stdin(ssh: SshExecutor) -> None:
    text = "line one\nzweite Zeile: äöü ✓\n"
    assert ssh.run(["cat"], stdin=text).stdout == text
    assert ssh.run(["cat"], stdin="").stdout == ""
    assert ssh.run(["cat"], timeout_s=20).stdout == ""  # no stdin: end-of-file at once
    big = "x" * 999 + "\n"
    assert ssh.run(["wc", "-c"], stdin=big * 500, timeout_s=60).stdout.strip() == "500000"


def test_ssh_argument_with_shell_syntax_arrives_as_one_argument(
    ssh: SshExecutor, server: SshServer, tmp_path: Path
) -> None:
    marker = tmp_path / "injected"
    args = [f"a b; touch {marker}", f"$(touch {marker})", "`id`", "it's", "*", "", "x\ny"]
    done = ssh.run(["printf", r"%s|", *args]).check()
    assert done.stdout.split("|")[:-1] == args
    assert not marker.exists()
    # The server's shell got one quoted command line, not the arguments glued together.
    assert server.commands == [shlex.join(["printf", r"%s|", *args])]


def test_ssh_one_connection_for_many_commands(ssh: SshExecutor, server: SshServer) -> None:
    for i in range(10):
        assert ssh.run(["echo", str(i)]).stdout == f"{i}\n"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: ssh.run(["echo", str(i)], timeout_s=60), range(24)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(24)]
    assert server.connections == 1
    assert len(server.commands) == 34


def test_ssh_concurrent_sessions_are_bounded(keys: Keys, server: SshServer, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # Each command holds its session until the gate file appears.
    wait_for_gate = ["sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.02; done; echo through', "sh"]
    with (
        SshExecutor(make_target(keys, server.port, max_sessions=2)) as executor,
        ThreadPoolExecutor(6) as pool,
    ):
        futures = [
            pool.submit(executor.run, [*wait_for_gate, str(gate)], timeout_s=120) for _ in range(6)
        ]
        poll("two sessions open on the server", lambda: server.open_sessions == 2 or None)
        assert len(server.commands) == 2  # the other four wait on the client side
        gate.touch()
        results = [future.result(timeout=120) for future in futures]
    assert [r.stdout for r in results] == ["through\n"] * 6
    assert len(server.commands) == 6
    assert server.max_open_sessions == 2
    assert server.connections == 1


def test_ssh_timeout_is_retryable_and_closes_the_session(
    ssh: SshExecutor, server: SshServer
) -> None:
    error = error_of(ssh, ["sleep", "300"], timeout_s=1.0)
    assert error.retryable
    assert isinstance(error, CommandTimedOut)
    assert "sleep 300 on tide@127.0.0.1:" in str(error)
    assert "timed out after 1 s" in str(error)
    poll("the server to kill the command", lambda: server.killed == 1 or None)
    assert server.open_sessions == 0
    assert ssh.run(["echo", "still", "fine"]).stdout == "still fine\n"
    assert server.connections == 1


def test_ssh_wrong_host_key_is_refused(keys: Keys, server: SshServer) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519")
    write_known_hosts(keys.known_hosts, server.port, impostor)
    with SshExecutor(make_target(keys, server.port, reconnect_base_s=60.0)) as executor:
        error = error_of(executor, ["echo", "hi"])
        assert not error.retryable
        assert "host key" in str(error)
        assert str(keys.known_hosts) in str(error)
        # Backing off now, with the same verdict.
        again = error_of(executor, ["echo", "hi"])
        assert not again.retryable
        assert again.retry_in_s is not None
        assert "backing off" in str(again)
    assert server.commands == []


def test_ssh_unknown_client_key_is_refused(keys: Keys, server: SshServer) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    keys.authorized_keys.write_bytes(other.export_public_key("openssh"))
    with SshExecutor(make_target(keys, server.port)) as executor:
        error = error_of(executor, ["echo", "hi"])
    assert not error.retryable
    assert "authentication" in str(error)
    assert server.commands == []


def test_ssh_key_readable_by_others_is_refused(
    keys: Keys, server: SshServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    keys.key_file.chmod(0o644)
    with SshExecutor(make_target(keys, server.port)) as executor:
        error = error_of(executor, ["echo", "hi"])
    assert not error.retryable
    assert str(keys.key_file) in str(error)
    assert "chmod 600" in str(error)
    assert "0644" in str(error)
    assert server.connections == 0  # refused before connecting
    secret_lines = keys.key_file.read_text().splitlines()[1:-1]
    for line in secret_lines:
        assert line not in str(error)
        assert line not in caplog.text


def test_ssh_missing_key_or_known_hosts_is_named(keys: Keys, server: SshServer) -> None:
    missing = keys.key_file.with_name("no_such_key")
    with SshExecutor(replace(make_target(keys, server.port), key_file=missing)) as executor:
        error = error_of(executor, ["true"])
    assert not error.retryable
    assert f"{missing}: SSH private key file not found" in str(error)

    missing = keys.known_hosts.with_name("no_known_hosts")
    target = replace(make_target(keys, server.port), known_hosts_file=missing)
    with SshExecutor(target) as executor:
        error = error_of(executor, ["true"])
    assert not error.retryable
    assert f"{missing}: SSH known_hosts file not found" in str(error)
    assert server.connections == 0


def test_ssh_key_content_never_in_errors_or_logs(
    keys: Keys, server: SshServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    envelope_start, *secret_lines, envelope_end = keys.key_file.read_text().splitlines()
    messages = []
    with SshExecutor(make_target(keys, server.port)) as executor:
        executor.run(["true"]).check()
        # An unusable key file: garbage in the key's own OpenSSH envelope.
        keys.key_file.write_text(
            "\n".join([envelope_start, *secret_lines[:-1], envelope_end]) + "\n"
        )
        server.drop_connections()
        messages.append(str(poll("a key error", lambda: _key_error(executor))))
    assert "cannot load SSH private key" in messages[0]
    for line in secret_lines:
        assert line not in caplog.text
        assert all(line not in m for m in messages)


def _key_error(executor: SshExecutor) -> ExecutorError | None:
    try:
        executor.run(["true"])
    except ExecutorError as exc:
        return exc if "private key" in str(exc) else None
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_ssh_backoff_doubles_up_to_the_maximum(keys: Keys) -> None:
    port = _free_port()  # nothing listens there: every connect is refused
    write_known_hosts(keys.known_hosts, port, keys.host_key)
    target = make_target(keys, port, reconnect_base_s=0.05, reconnect_max_s=0.4)
    attempts: list[float] = []
    fast_fails = 0
    with SshExecutor(target) as executor:
        while len(attempts) < 7:
            error = error_of(executor, ["true"])
            assert error.retryable
            assert error.retry_in_s is not None
            if "cannot connect" in str(error):
                attempts.append(error.retry_in_s)
            else:
                assert "backing off" in str(error)
                assert error.retry_in_s <= (attempts[-1] if attempts else 0.0)
                fast_fails += 1
            time.sleep(0.01)
    assert attempts == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    assert fast_fails > 0


def test_ssh_reconnects_after_the_server_comes_back(keys: Keys, server: SshServer) -> None:
    target = make_target(keys, server.port, reconnect_base_s=0.2, reconnect_max_s=1.0)
    with SshExecutor(target) as executor:
        assert executor.run(["echo", "one"]).stdout == "one\n"
        server.stop()

        seen: list[ExecutorError] = []

        def backing_off() -> ExecutorError | None:
            error = error_of(executor, ["echo", "two"])
            assert error.retryable, error
            seen.append(error)
            return error if "backing off" in str(error) else None

        fast_fail = poll("a fast failure while backing off", backing_off)
        assert fast_fail.retry_in_s is not None
        assert 0 < fast_fail.retry_in_s <= 1.0
        assert "Connect call failed" in str(fast_fail) or "refused" in str(fast_fail)
        assert any("cannot connect" in str(e) for e in seen)

        server.start()  # same port, same host key

        def back() -> Completed | None:
            try:
                return executor.run(["echo", "three"])
            except ExecutorError as error:
                seen.append(error)
                return None

        assert poll("the executor to reconnect", back).stdout == "three\n"
        assert all(e.retryable for e in seen), seen
        assert server.connections == 2
        assert server.live_connections == 1

        # A successful connect reset the backoff: the next failure waits the base delay.
        server.stop()

        def failed_connect() -> ExecutorError | None:
            error = error_of(executor, ["true"])
            return error if "cannot connect" in str(error) else None

        first = poll("a failed connect", failed_connect)
        assert first.retry_in_s == 0.2


def test_ssh_connection_dropped_while_idle_is_replaced(ssh: SshExecutor, server: SshServer) -> None:
    assert ssh.run(["echo", "one"]).stdout == "one\n"
    server.drop_connections()
    # The command had not started: it runs on a new connection, no error.
    assert ssh.run(["echo", "two"]).stdout == "two\n"
    assert server.connections == 2


def test_ssh_connection_lost_under_a_running_command(ssh: SshExecutor, server: SshServer) -> None:
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(error_of, ssh, ["sleep", "300"], timeout_s=120)
        poll("the command to start", lambda: server.open_sessions == 1 or None)
        server.drop_connections()
        error = running.result(timeout=120)
    assert error.retryable
    assert "connection was lost while the command ran" in str(error)
    assert ssh.run(["echo", "again"]).stdout == "again\n"
    assert server.connections == 2


def test_ssh_close_is_idempotent_and_final(keys: Keys, server: SshServer) -> None:
    executor = SshExecutor(make_target(keys, server.port))
    assert executor.run(["true"]).returncode == 0
    assert server.live_connections == 1
    executor.close()
    executor.close()
    poll("the server to see the connection closed", lambda: server.live_connections == 0 or None)
    error = error_of(executor, ["true"])
    assert not error.retryable
    assert "closed" in str(error)
    assert not any(t.name.startswith("tide-ssh-") and t.is_alive() for t in threading.enumerate())


def test_ssh_close_while_a_command_runs(keys: Keys, server: SshServer) -> None:
    executor = SshExecutor(make_target(keys, server.port))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(error_of, executor, ["sleep", "300"], timeout_s=120)
        poll("the command to start", lambda: server.open_sessions == 1 or None)
        executor.close()
        error = running.result(timeout=120)
    assert not error.retryable
    assert "closed" in str(error)
    poll("the server to kill the command", lambda: server.killed == 1 or None)


def test_ssh_target_is_validated(keys: Keys) -> None:
    with pytest.raises(ValueError, match="max_sessions"):
        make_target(keys, 22, max_sessions=0)
    with pytest.raises(ValueError, match="port"):
        make_target(keys, 0)
    with pytest.raises(ValueError, match="reconnect_max_s"):
        make_target(keys, 22, reconnect_base_s=2.0, reconnect_max_s=1.0)
