"""Run a site's commands (Slurm's sbatch, squeue, scancel ...) here or on a login node.

A site sees one interface, `Executor.run(argv, stdin=..., timeout_s=...)`,
which returns a `Completed` (argv, returncode, stdout, stderr) or raises
`ExecutorError`; `LocalExecutor` runs the command as a local subprocess and
`SshExecutor` on a remote host over SSH, so the site's code path is the same
for both. Commands are always argv, never a shell line: `LocalExecutor`
executes argv directly, and `SshExecutor` sends `shlex.join(argv)`, which the
remote login shell (a POSIX shell; csh-family shells quote differently) splits
back into exactly argv, so an argument holding spaces, `;` or `$(...)` arrives
as one argument and is never executed.

`ExecutorError.retryable` tells the caller what to do: True for trouble on
the way (connection refused or lost, a timeout, backing off), where the same
call may succeed later; False for what needs an operator or a code change (a
missing binary, a refused host key or client key, a command that ran and
failed). A command that timed out or lost its connection may nonetheless have
taken effect (an sbatch may have submitted its job); the site must reconcile
by listing what exists, as it does after any failure.

Why one connection: `SshExecutor` opens ONE SSH connection and multiplexes
every command over it as a session (an SSH channel). A login node is shared
with its users; a connection per command would cost a TCP and SSH handshake
and a key exchange each time, fill sshd's log and may trip its
MaxStartups/fail2ban limits, whereas a session on an open connection costs one
round trip.

Why bounded sessions: sshd limits the sessions open on one connection
(OpenSSH's MaxSessions, 10 by default) and refuses the excess, and every
session is a process on a node other people work on. At most
`SshTarget.max_sessions` commands (8 by default) run at once; further `run`
calls wait for a free session, within their timeout.

Why backoff: when the connection is lost (sshd restarted, the node rebooted,
the network dropped) the next `run` reconnects at once; when a connect
attempt fails, the next one waits `reconnect_base_s`, then twice that after
each further failure, up to `reconnect_max_s`, and a successful connect
resets it. Meanwhile `run` fails fast with `ExecutorError.retry_in_s` set,
instead of every cycle of the controller hammering a node that is down.

Timeouts and lost connections: `timeout_s` bounds the whole `run`, and a
run that outlasts it raises `CommandTimedOut` (a retryable ExecutorError),
so a site can tell a hung command from a failed one. Locally,
the command runs in its own process group, which is SIGKILLed on timeout.
Over SSH, the session is sent a KILL signal request and closed (a server
that ignores signal requests leaves the command to finish or to die writing
to the closed channel). asyncssh reports a connection that drops under a
running command as a session ending without an exit status, not as an
exception: that is a retryable "connection lost" error here. A connection
found dead before the command's session opened (it dropped while idle) is
replaced and the command tried once more, since it cannot have run.
Keepalives (every 15 s, 3 unanswered drop the connection) find a silently
dead connection.

Environment: a local command sees only `LOCAL_ENVIRONMENT` of the daemon's
environment (PATH, HOME, the user and locale, TMPDIR, SLURM_CONF), never
the rest of it: the daemon's CONDOR_CONFIG names its private token folder,
and a variable such as SBATCH_EXPORT or SQUEUE_FORMAT would change what a
Slurm command does. Over SSH the remote login's own environment applies
(nothing of the daemon's is sent).

Threads: the SSH side runs on an asyncio event loop in one daemon thread
owned by the executor; `run` hands its coroutine to that loop
(`asyncio.run_coroutine_threadsafe`) and waits, so it may be called from any
number of threads at once. All connection state lives on the loop's thread.

Credentials: key authentication only, with the one key file configured
(no agent, no password, no keyboard-interactive, no ~/.ssh/config), and the
server's host key is always checked against the configured known_hosts file.
The key file must not be readable or writable by group or others (as OpenSSH
demands), and its content is never logged nor put in an error message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import shlex
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Collection, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import asyncssh

from tide.logs import event

log = logging.getLogger(__name__)

LOCAL_ENVIRONMENT = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SLURM_CONF",
)
"""The variables of the daemon's environment a `LocalExecutor` command gets
(those set); everything else stays with the daemon."""

KILL_GRACE_S = 5.0
"""How long a timed-out local command's killed process group gets to go away."""

KEEPALIVE_INTERVAL_S = 15.0
KEEPALIVE_COUNT_MAX = 3
"""An SSH connection whose server answers no keepalive for 3 x 15 s is dropped."""

_RESULT_GRACE_S = 5.0
# The loop enforces timeout_s itself; the calling thread waits this much longer
# before it gives up on the loop (which only happens if the loop is wedged).
_CLOSE_WAIT_S = 10.0
_STDERR_TAIL_LINES = 5
_LINE_MAX = 300
_COMMAND_MAX = 200
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


class ExecutorError(Exception):
    """A command could not be run, or (from `Completed.check`) ran and failed.

    `retryable`: the same call may succeed later (connection trouble, timeouts).
    `retry_in_s`: set while an `SshExecutor` backs off: when it connects again.
    `completed`: set by `Completed.check`: the failed command's result.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_in_s: float | None = None,
        completed: Completed | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_in_s = retry_in_s
        self.completed = completed


class CommandTimedOut(ExecutorError):
    """A command did not finish within its `timeout_s` (it was killed, or its
    session closed): retryable. It may nonetheless have taken effect."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


def _display(argv: Sequence[str]) -> str:
    """A command for a message: shell-quoted, cut to a readable length."""
    text = shlex.join(argv)
    return text if len(text) <= _COMMAND_MAX else text[: _COMMAND_MAX - 3] + "..."


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end. `returncode` is negative (-N) if signal N killed it."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Self:
        """Return self if the command succeeded, else raise a non-retryable ExecutorError
        naming the command and quoting the last lines of its stderr."""
        if self.returncode == 0:
            return self
        if self.returncode < 0:
            status = f"was killed by signal {-self.returncode}"
        else:
            status = f"exited with status {self.returncode}"
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        tail = [
            line if len(line) <= _LINE_MAX else line[: _LINE_MAX - 3] + "..."
            for line in lines[-_STDERR_TAIL_LINES:]
        ]
        said = " | ".join(tail) if tail else "(no stderr)"
        raise ExecutorError(
            f"{_display(self.argv)} {status}: {said}", retryable=False, completed=self
        )


class Executor(Protocol):
    """Runs commands for a site; thread-safe."""

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
    ) -> Completed:
        """Run argv (no shell) with `stdin` as its input (none: empty input) and
        return its result, whatever its exit status; raise ExecutorError if it
        could not be run or did not finish within `timeout_s`."""
        ...

    def close(self) -> None:
        """Release what the executor holds; idempotent."""
        ...


def _checked_argv(argv: Sequence[str], timeout_s: float) -> tuple[str, ...]:
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not a string")
    args = tuple(argv)
    if not args:
        raise ValueError("argv is empty")
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"argv holds a {type(arg).__name__}, not a str: {arg!r}")
        if "\0" in arg:
            raise ValueError("an argument holds a NUL character")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, not {timeout_s}")
    return args


class LocalExecutor:
    """Runs commands as local subprocesses, each in its own session (process group),
    so a timeout kills the command and whatever it started. A command's
    environment holds only the variables named in `keep` (by default
    LOCAL_ENVIRONMENT) that the daemon has; without PATH, os.defpath."""

    def __init__(self, keep: Collection[str] = LOCAL_ENVIRONMENT) -> None:
        self._keep = tuple(keep)

    def environment(self) -> dict[str, str]:
        """The environment a command gets now."""
        env = {name: os.environ[name] for name in self._keep if name in os.environ}
        env.setdefault("PATH", os.defpath)
        return env

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
    ) -> Completed:
        args = _checked_argv(argv, timeout_s)
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                encoding="utf-8",
                errors="replace",
                start_new_session=True,
                env=self.environment(),  # argv[0] is looked up in its PATH
            )
        except FileNotFoundError:
            raise ExecutorError(
                f"{args[0]}: command not found (running {_display(args)})", retryable=False
            ) from None
        except PermissionError:
            raise ExecutorError(
                f"{args[0]}: permission denied, not executable (running {_display(args)})",
                retryable=False,
            ) from None
        except OSError as exc:  # out of processes or memory: may pass
            raise ExecutorError(
                f"{_display(args)}: cannot start: {exc.strerror or exc}", retryable=True
            ) from exc
        with proc:
            try:
                stdout, stderr = proc.communicate(stdin, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise CommandTimedOut(
                    f"{_display(args)} timed out after {timeout_s:g} s and was killed"
                ) from None
            except BaseException:
                _kill_group(proc)
                raise
        return Completed(args, proc.returncode, stdout, stderr)

    def close(self) -> None:
        """Nothing to release."""


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group the command leads, then reap the command."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is gone already
        pass
    except PermissionError:  # a setuid child? kill what we can
        proc.kill()
    try:
        proc.communicate(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        # Something that left the group holds the pipes open: stop reading them.
        proc.wait()


@dataclass(frozen=True)
class SshTarget:
    """Where and how `SshExecutor` connects: `user@host:port` with the private key
    in `key_file`, trusting only the host keys listed in `known_hosts_file`."""

    host: str
    user: str
    key_file: Path
    known_hosts_file: Path
    port: int = 22
    max_sessions: int = 8
    connect_timeout_s: float = 10.0
    reconnect_base_s: float = 1.0
    reconnect_max_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.host or not self.user:
            raise ValueError("SshTarget needs a host and a user")
        if not 0 < self.port < 65536:
            raise ValueError(f"SshTarget.port out of range: {self.port}")
        if self.max_sessions < 1:
            raise ValueError(f"SshTarget.max_sessions must be at least 1: {self.max_sessions}")
        if not (self.connect_timeout_s > 0 and self.reconnect_base_s > 0):
            raise ValueError("SshTarget's connect_timeout_s and reconnect_base_s must be > 0")
        if self.reconnect_max_s < self.reconnect_base_s:
            raise ValueError("SshTarget.reconnect_max_s must be >= reconnect_base_s")

    @property
    def where(self) -> str:
        """`user@host:port`, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"


def _credentials(target: SshTarget) -> tuple[Sequence[asyncssh.SSHKeyPair], asyncssh.SSHKnownHosts]:
    """Load the client key and the known hosts, refusing a key others may read.
    Raises ExecutorError (not retryable) naming the file; never quoting the key."""
    key_file = target.key_file
    try:
        st = key_file.stat()
    except FileNotFoundError:
        raise ExecutorError(
            f"{key_file}: SSH private key file not found", retryable=False
        ) from None
    except OSError as exc:
        raise ExecutorError(
            f"{key_file}: cannot read SSH private key file: {exc.strerror}", retryable=False
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ExecutorError(f"{key_file}: SSH private key is not a regular file", retryable=False)
    if st.st_mode & 0o077:
        raise ExecutorError(
            f"{key_file}: SSH private key has mode {stat.S_IMODE(st.st_mode):04o}, open to "
            f"group or others; refusing to use it: chmod 600 {shlex.quote(str(key_file))}",
            retryable=False,
        )
    try:
        keys = asyncssh.load_keypairs([str(key_file)])
    except (asyncssh.KeyImportError, OSError, ValueError) as exc:
        # asyncssh's messages name the problem, not the data; scrub anyway.
        reason = _BASE64_RUN.sub("<redacted>", str(exc))[:_LINE_MAX]
        raise ExecutorError(
            f"{key_file}: cannot load SSH private key: {type(exc).__name__}: {reason}",
            retryable=False,
        ) from None
    if not keys:
        raise ExecutorError(f"{key_file}: no SSH private key in the file", retryable=False)
    known_hosts_file = target.known_hosts_file
    if not known_hosts_file.is_file():
        raise ExecutorError(
            f"{known_hosts_file}: SSH known_hosts file not found (it must list "
            f"{target.host}'s host key)",
            retryable=False,
        )
    try:
        known_hosts = asyncssh.read_known_hosts(str(known_hosts_file))
    except (OSError, ValueError) as exc:
        raise ExecutorError(
            f"{known_hosts_file}: cannot read SSH known_hosts: {exc}", retryable=False
        ) from None
    return keys, known_hosts


class SshExecutor:
    """Runs commands on `target` over one shared SSH connection (see the module doc)."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self._where = target.where
        self._lock = threading.Lock()  # guards _closed against run/close races
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tide-ssh-{target.host}", daemon=True
        )
        # Loop-thread state, touched only by coroutines on self._loop:
        self._sessions = asyncio.Semaphore(target.max_sessions)
        self._running: set[asyncio.Task[Any]] = set()
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connecting: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_failure: tuple[str, bool] | None = None  # reason, retryable
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float = 30.0
    ) -> Completed:
        """Run argv on the target (see `Executor.run`). `timeout_s` bounds the whole
        call: connecting, waiting for a free session and the command itself."""
        args = _checked_argv(argv, timeout_s)
        future = self._submit(self._run(args, stdin, timeout_s))
        try:
            return future.result(timeout=timeout_s + _RESULT_GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise CommandTimedOut(
                f"{_display(args)} on {self._where}: timed out after {timeout_s:g} s"
            ) from None
        except concurrent.futures.CancelledError:
            raise ExecutorError(
                f"{_display(args)} on {self._where}: the executor was closed", retryable=False
            ) from None

    def close(self) -> None:
        """Close the connection and stop the loop's thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        shutdown = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            shutdown.result(timeout=_CLOSE_WAIT_S)
        except Exception:  # closing regardless
            log.debug("ssh shutdown did not finish cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=_CLOSE_WAIT_S)
        if not self._thread.is_alive():
            self._loop.close()

    def _submit(self, coro: Coroutine[Any, Any, Completed]) -> concurrent.futures.Future[Completed]:
        with self._lock:
            if not self._closed:
                return asyncio.run_coroutine_threadsafe(coro, self._loop)
        coro.close()
        raise ExecutorError(f"ssh executor for {self._where} is closed", retryable=False)

    # Everything below runs on the loop's thread.

    async def _run(self, argv: tuple[str, ...], stdin: str | None, timeout_s: float) -> Completed:
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            async with asyncio.timeout(timeout_s):
                conn = await self._connection()
                async with self._sessions:
                    try:
                        return await self._execute(conn, argv, stdin)
                    except _NotStarted:
                        pass
                # The connection turned out closed before the command started (it went
                # down while idle): reconnect, or back off, and try once more.
                conn = await self._connection()
                async with self._sessions:
                    return await self._execute(conn, argv, stdin)
        except TimeoutError:
            raise CommandTimedOut(
                f"{_display(argv)} on {self._where}: timed out after {timeout_s:g} s"
            ) from None
        finally:
            self._running.discard(task)

    async def _connection(self) -> asyncssh.SSHClientConnection:
        """The open connection; else connect, unless backing off from a failed attempt."""
        conn = self._conn
        if conn is not None:
            if not conn.is_closed():
                return conn
            self._conn = None
            event(log, "ssh connection lost", target=self._where)
        if self._connecting is None:
            wait_s = self._retry_at - time.monotonic()
            if wait_s > 0 and self._last_failure is not None:
                reason, retryable = self._last_failure
                raise ExecutorError(
                    f"{self._where}: not connecting for {wait_s:.1f} s more, backing off "
                    f"after {self._failures} failed attempt(s); last: {reason}",
                    retryable=retryable,
                    retry_in_s=wait_s,
                )
            self._connecting = asyncio.create_task(self._connect())
            self._connecting.add_done_callback(_retrieve)
        try:
            # Shielded: a caller timing out does not abort the attempt others wait for.
            return await asyncio.shield(self._connecting)
        except ExecutorError as exc:  # one fresh exception per waiting caller
            raise ExecutorError(
                str(exc), retryable=exc.retryable, retry_in_s=exc.retry_in_s
            ) from None

    async def _connect(self) -> asyncssh.SSHClientConnection:
        target = self.target
        try:
            keys, known_hosts = _credentials(target)  # local trouble: no backoff
            try:
                conn = await asyncssh.connect(
                    target.host,
                    target.port,
                    username=target.user,
                    client_keys=keys,
                    known_hosts=known_hosts,
                    config=None,  # no ~/.ssh/config: nothing but what is configured here
                    agent_path=None,
                    agent_forwarding=False,
                    pkcs11_provider=None,
                    preferred_auth="publickey",
                    public_key_auth=True,
                    password_auth=False,
                    kbdint_auth=False,
                    host_based_auth=False,
                    gss_auth=False,
                    gss_kex=False,
                    disable_trivial_auth=True,
                    request_pty=False,
                    x11_forwarding=False,
                    connect_timeout=target.connect_timeout_s,
                    keepalive_interval=KEEPALIVE_INTERVAL_S,
                    keepalive_count_max=KEEPALIVE_COUNT_MAX,
                )
            except asyncssh.HostKeyNotVerifiable as exc:
                raise self._failed(
                    f"host key refused: {exc.reason} (not matching {target.known_hosts_file})",
                    retryable=False,
                ) from None
            except asyncssh.PermissionDenied as exc:
                raise self._failed(
                    f"authentication with {target.key_file} refused: {exc.reason}",
                    retryable=False,
                ) from None
            except asyncssh.DisconnectError as exc:
                raise self._failed(f"{type(exc).__name__}: {exc.reason}", retryable=True) from None
            except TimeoutError:
                raise self._failed(
                    f"no SSH session within {target.connect_timeout_s:g} s", retryable=True
                ) from None
            except (OSError, asyncssh.Error) as exc:
                raise self._failed(f"{type(exc).__name__}: {exc}", retryable=True) from None
        finally:
            self._connecting = None
        if self._failures:
            event(log, "ssh reconnected", target=self._where, failed_attempts=self._failures)
        else:
            event(log, "ssh connected", target=self._where)
        self._failures = 0
        self._retry_at = 0.0
        self._last_failure = None
        self._conn = conn
        return conn

    def _failed(self, reason: str, *, retryable: bool) -> ExecutorError:
        """Record a failed connect attempt and start (or lengthen) the backoff."""
        target = self.target
        self._failures += 1
        delay = min(target.reconnect_base_s * 2 ** (self._failures - 1), target.reconnect_max_s)
        self._retry_at = time.monotonic() + delay
        self._last_failure = (reason, retryable)
        event(log, "ssh connect failed", level=logging.WARNING, target=self._where, error=reason)
        return ExecutorError(
            f"{self._where}: cannot connect: {reason}; next attempt in {delay:g} s",
            retryable=retryable,
            retry_in_s=delay,
        )

    async def _execute(
        self, conn: asyncssh.SSHClientConnection, argv: tuple[str, ...], stdin: str | None
    ) -> Completed:
        what = f"{_display(argv)} on {self._where}"
        try:
            process: asyncssh.SSHClientProcess[str] = await conn.create_process(
                shlex.join(argv),
                input=stdin or None,  # written, then EOF; none: stdin is at EOF at once
                stdin=asyncssh.DEVNULL,
                encoding="utf-8",
                errors="replace",
            )
        except asyncssh.ChannelOpenError as exc:
            if conn.is_closed():
                raise _NotStarted(f"{what}: the SSH connection was lost", retryable=True) from None
            raise ExecutorError(
                f"{what}: the server refused a session: {exc.reason}", retryable=True
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise ExecutorError(f"{what}: {type(exc).__name__}: {exc}", retryable=True) from None
        try:
            result = await process.wait()
        except asyncio.CancelledError:
            # Timed out or closing: ask the server to kill the command; closing the
            # channel below is all a server that ignores signal requests sees.
            with contextlib.suppress(OSError):
                process.kill()
            raise
        except (OSError, asyncssh.Error) as exc:
            raise ExecutorError(f"{what}: {type(exc).__name__}: {exc}", retryable=True) from None
        finally:
            process.close()
        if result.returncode is None:
            # asyncssh does not raise when the connection drops under a running
            # command: the session just ends without an exit status.
            if conn.is_closed():
                raise ExecutorError(
                    f"{what}: the SSH connection was lost while the command ran "
                    "(it may or may not have taken effect)",
                    retryable=True,
                )
            raise ExecutorError(f"{what}: the session ended without an exit status", retryable=True)
        stdout = result.stdout if isinstance(result.stdout, str) else ""
        stderr = result.stderr if isinstance(result.stderr, str) else ""
        return Completed(argv, result.returncode, stdout, stderr)

    async def _shutdown(self) -> None:
        tasks = [*self._running, *([self._connecting] if self._connecting else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                async with asyncio.timeout(_CLOSE_WAIT_S / 2):
                    await conn.wait_closed()
            except TimeoutError:
                conn.abort()
            event(log, "ssh connection closed", target=self._where)


class _NotStarted(ExecutorError):
    """No session could be opened because the connection is closed: the command did
    not start, so it is safe to run it again on a new connection."""


def _retrieve(task: asyncio.Task[asyncssh.SSHClientConnection]) -> None:
    """Mark a connect attempt's exception retrieved, waited for or not."""
    if not task.cancelled():
        task.exception()
