"""Slurm backfill site: each resource is one pilot job in an HPC cluster's
backfill partition, holding one node for the pool while the cluster's owners
leave it idle, and giving it back within seconds when they need it.

Every Slurm command goes through an Executor (tide.executors): locally when
the controller runs on a host of the cluster, or over SSH to a login node -
the same code path either way. A command's arguments are argv, never a
shell line built from configuration. Every command has a deadline
(`command_timeout_s`); one that outlasts it is killed and is a
DeadlineExceeded (retryable). Output that is not what the command's
--format asked for (a garbled line, a non-numeric count) is a retryable
SiteError naming the site, the command and the line: the site cannot be
seen this cycle, rather than seen wrong.

Nothing of the controller's environment reaches a pilot: sbatch runs with
`--export=NIL` (and a local executor gives it only PATH, HOME, the user
and locale), so the job gets Slurm's SLURM_* variables and whatever the
cluster sets up for a job, not the daemon's CONDOR_CONFIG (its token
folder) or anything else. The script sets a standard PATH (and HOME) for
itself. NIL, not NONE: NONE also implies --get-user-env, which makes slurmd
run a login shell for the user first (slow on a real cluster, and fatal to
a containerized slurmd: "clone: Operation not permitted").

The pilot (templates/slurm-pilot.sh.j2, submitted on sbatch's stdin) runs
an HTCondor startd in the job, one partitionable slot of the site's shape,
advertising TideResourceId, and joins the pool with the worker token: the
nodes' native HTCondor as the submitting user (`pilot_runtime: native`), or
the tide/condor image on the node's Docker engine (`docker`), which gets
the token on its stdin and shuts down fast when that stdin ends - when the
pilot is told to go, or dies with its job.
Tokens. With `worker_signing_key_file` each pilot gets a token of its own
(tide.htcondor.tokens: identity tide-worker-<resource>, the worker's
scopes), valid for the site's boot timeout plus the walltime plus
PILOT_TOKEN_MARGIN_S - a pilot not running by the boot timeout is cancelled,
and one running ends at its walltime, so the token outlives its pilot by
minutes at most and is never renewed. It travels on the executor's stdin in
the same command that submits the pilot, is written 0600 into `work_dir`/
tokens/<resource>.token (0700 folders), removed again if sbatch fails, by
the pilot once it has read it, and by destroy (a pilot cancelled while
queued); one left longer than the boot timeout plus the margin (a pilot
cancelled behind the controller's back) is swept by the next submission. Otherwise
the site's shared worker token is staged once (`work_dir`/worker.token,
0600 in a 0700 folder). Either way a token is never on a command line and
the script itself holds no secret.

Ownership: the job's name is the resource id, and its comment carries
`tide-owner=<owner> tide-site=<site>`; list_owned lists the submitting
user's jobs (`squeue --me`) and keeps exactly those.

Signals to the pilot's batch shell (`scancel --batch`, never to the HTCondor
jobs' own processes) are the channel to its startd - no HTCondor credential
on the controller's side is needed: SIGTERM makes the pilot shut HTCondor
down fast - running jobs are vacated back to their schedds, the node is free
in seconds; SIGUSR1 drains it gracefully (SIGURG: only if idle, checked by
the startd), SIGUSR2 cancels that. Pilots ask for `--signal=B:TERM@60`, so a
cluster that preempts the backfill partition with
PreemptParameters=send_user_signal sends the same SIGTERM to the shell at
once, and GraceTime lets it vacate: Slurm's own preemption is a second,
independent line.

Owners: `owner_queue` counts the nodes the owners' pending jobs want (in
`owner_partitions`, filtered by QOS and account), naming each waiting job
so that tide.policy can time its `owner_grace_s` from when the controller
first saw it (persisted; jobs within it only block boots, so a cluster that
preempts for its owners itself gets the first chance), and the nodes free
for them: idle ones, completing ones (a pilot just
cancelled), and those of jobs in the pilots' partition with at most
ENDING_S left - which is how a job Slurm is preempting for the owners
looks during its GraceTime, so Tide does not give back a second node for
an owner job Slurm is already making room for.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import jinja2

from tide.executors import CommandTimedOut, Completed, Executor, ExecutorError
from tide.htcondor import tokens
from tide.model import Shape
from tide.sites.base import (
    OWNER_TAG,
    SITE_TAG,
    DeadlineExceeded,
    Owned,
    OwnerQueue,
    PoolEndpoint,
    SiteAdapter,
    SiteError,
    WorkerRecipe,
    worker_attributes,
    worker_site_name,
)
from tide.sites.slurm.config import SlurmBackfillSiteConfig

log = logging.getLogger(__name__)

JOB_ID = "job_id"
"""The detail create() returns: the pilot's Slurm job id."""

DRAIN_REQUEST = "SIGUSR1"
"""A drain is a signal to the pilot; its cancel (SIGUSR2) ends it whatever its id."""
IDLE_DRAIN_REQUEST = "SIGURG"
"""A drain only if idle, checked by the startd (SIGURG: ignored by default, so
a pilot of an older Tide that has no trap for it is not harmed)."""

PLACED_STATES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED"})
"""Job states in which a pilot holds its node."""

WAITING_REASONS = frozenset({"Resources", "Priority", "ReqNodeNotAvail"})
"""Pending reasons of owner jobs that wait for nodes (not for a limit or a hold)."""

NEW_REASON = "None"
"""The pending reason of a job the scheduler has not looked at yet: it may
still preempt backfill for it by itself."""

FREE_NODE_STATES = ("idle", "completing")
"""sinfo node states (long form, flags stripped) free for a waiting owner job."""

VACATE_TIMEOUT_S = 20
"""A pilot told to go whose HTCondor has not stopped after this long is
killed: the node goes back to its owners whatever happens."""

ENDING_S = 30
"""A job in the pilots' partition with this little time left is ending (Slurm
is preempting it, or its walltime is up): its node counts as on its way back."""

PILOT_TOKEN_MARGIN_S = 600
"""A pilot's own token lasts this long beyond the latest a pilot can end
(its boot timeout plus its walltime): Slurm's kill at the walltime comes a
little late, and clocks differ a little."""

TOKENS_DIR = "tokens"
"""The folder in `work_dir` of the pilots' own tokens, one file each."""

# The pilot's own token is the first line of stdin (never an argument), the
# batch script the rest, which sbatch reads: one round trip, and no token
# left behind by a submission that failed. $1: the token's file; $2: the
# age in minutes past which a staged token is an orphan (its pilot started
# and took it, or was cancelled), swept on the way.
_STAGE_AND_SUBMIT = (
    'umask 077; f=$1; m=$2; shift 2; mkdir -p -- "${f%/*}" || exit 2; '
    'find "${f%/*}" -type f -name "*.token" -mmin "+$m" -delete; '
    'IFS= read -r t || exit 2; printf "%s\\n" "$t" >"$f" || exit 2; '
    'unset t; "$@"; rc=$?; [ "$rc" -eq 0 ] || rm -f -- "$f"; exit "$rc"'
)

FAILED_DIR = "failed"
"""The folder in `work_dir` where a pilot whose boot failed leaves the reason
(`<owner>/<site>/<resource>.reason`, one line, no secret), for the
controller that owns it to log."""

LOG_TAIL_LINES = 30
"""Of each of HTCondor's logs, a pilot whose boot failed prints this many
last lines into its Slurm output."""

FAILURE_KEPT_S = 600.0
"""A failed boot is reported this long after it was read (the controller
acts on it within a cycle; a report is kept should that cycle fail)."""

# A failed boot's reason, of the pilots named in $4... (none named: of every
# pilot that left one in the folder $2 of work_dir $1): `<resource>|<reason>`
# lines; reasons older than $3 minutes are swept on the way (their pilots'
# records are long gone).
_READ_FAILURES = (
    'cd && cd -- "$1" 2>/dev/null && cd -- "$2" 2>/dev/null || exit 0; m=$3; shift 3; '
    'find . -maxdepth 1 -type f -name "*.reason" -mmin "+$m" -delete; '
    '[ "$#" -gt 0 ] || for f in *.reason; do [ -f "$f" ] && set -- "$@" "${f%.reason}"; done; '
    'for r; do [ -f "$r.reason" ] || continue; printf "%s|" "$r"; '
    'head -n 1 -- "$r.reason" | cut -c 1-400; done; exit 0'
)

_TEMPLATE = "slurm-pilot.sh.j2"
_LINE_SHOWN = 120  # of a malformed output line, in an error message
_GONE_JOB = ("Invalid job id", "already completing or completed", "Job has already finished")


class SlurmBackfillSite(SiteAdapter):
    """A SiteAdapter (draining, with owners) running pilots in a Slurm cluster."""

    capabilities = SlurmBackfillSiteConfig.capabilities

    def __init__(
        self,
        name: str,
        config: SlurmBackfillSiteConfig,
        *,
        executor: Executor,
        owner: str,
        pool: PoolEndpoint,
        worker_token_file: Path | None = None,
        signing_key: tokens.SigningKey | None = None,
        boot_timeout_s: float = 600.0,
        shape: Shape,
    ) -> None:
        self.name = name
        self._config = config
        self._executor = executor
        self._owner = owner
        self._pool = pool
        if (worker_token_file is None) == (signing_key is None):
            raise SiteError(
                f"site {name}: a worker token file or a signing key, one of them", retryable=False
            )
        self._token_file = worker_token_file
        self._signing_key = signing_key
        self._token_lifetime_s = int(
            boot_timeout_s + walltime_s(config.walltime) + PILOT_TOKEN_MARGIN_S
        )
        # A staged token not taken by then is an orphan: its pilot would have
        # started by its boot timeout, or been cancelled.
        self._orphan_minutes = int(boot_timeout_s + PILOT_TOKEN_MARGIN_S) // 60 + 1
        self._shape = shape
        self._tags = f"{OWNER_TAG}={owner} {SITE_TAG}={name}"
        self._failed_dir = f"{FAILED_DIR}/{owner}/{name}"  # this controller's pilots' reasons
        self._work_dir: str | None = None  # absolute, on the cluster, once staged
        # The pilots the last listing had, and those submitted since: id -> job
        # id (None: nothing listed yet since the start).
        self._listed: dict[str, str] | None = None
        self._failed: dict[str, tuple[Owned, float]] = {}  # failed boots read, and when
        try:
            self._attributes = worker_attributes(name, config.attributes)
        except ValueError as exc:
            raise SiteError(f"site {name}: {exc}", retryable=False) from None
        self._site_name = worker_site_name(name, config.attributes)
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            autoescape=False,  # noqa: S701  (a shell script, not HTML)
        )
        env.filters["shell_quote"] = shlex.quote
        templates = resources.files("tide.sites.slurm").joinpath("templates")
        text = templates.joinpath(_TEMPLATE).read_text("utf-8")
        self._template = env.from_string(text)

    # --- the SiteAdapter interface ---------------------------------------

    def create(self, resource_id: str) -> Mapping[str, str]:
        work_dir = self._staged()
        cfg = self._config
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={resource_id}",
            f"--comment={self._tags}",
            f"--partition={cfg.partition}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={self._shape.cpus}",
            f"--mem={self._shape.memory_mb}M",
            f"--time={cfg.walltime}",
            f"--chdir={work_dir}",
            "--output=%x-%j.out",
            "--export=NIL",  # nothing of the controller's environment reaches the pilot
            "--signal=B:TERM@60",  # the walltime's end: vacate a minute before the kill
            "--no-requeue",  # a pilot taken back by the owners is gone, not queued again
        ]
        if cfg.whole_node:
            argv.append("--exclusive")
        if cfg.qos:
            argv.append(f"--qos={cfg.qos}")
        if cfg.account:
            argv.append(f"--account={cfg.account}")
        stdin = self.script(resource_id)
        if self._signing_key is not None:
            token = tokens.mint_worker(
                self._signing_key,
                resource_id=resource_id,
                domain=self._pool.pool_domain,
                lifetime_s=self._token_lifetime_s,
                now=time.time(),
            )
            argv = [
                "sh",
                "-c",
                _STAGE_AND_SUBMIT,
                "tide-submit",
                self._own_token(resource_id),
                str(self._orphan_minutes),
                *argv,
            ]
            stdin = f"{token}\n{stdin}"
        done = self._run(argv, f"submitting pilot {resource_id}", stdin=stdin)
        job_id = done.stdout.strip().split(";")[0]  # --parsable: id[;cluster]
        if not _is_number(job_id):
            raise SiteError(
                f"site {self.name}: submitting pilot {resource_id}: sbatch printed no job id: "
                f"{done.stdout[:_LINE_SHOWN]!r}",
                retryable=True,
            )
        log.info("site %s: pilot %s submitted as job %s", self.name, resource_id, job_id)
        if self._listed is not None:  # may have ended before the next listing: asked then
            self._listed[resource_id] = job_id
        return {JOB_ID: job_id}

    def list_owned(self) -> list[Owned]:
        """The site's pilots in the queue; and a pilot that has left it since
        the last listing (or was submitted since, and has already ended)
        whose boot failed - it left a reason behind - as ended and failed,
        for FAILURE_KEPT_S. Reading the reasons is a second call, made only
        when pilots have left the queue, and at the first listing after a
        start (every reason left, the pilots of the records it inherits)."""
        owned = self._queued()
        listed = {o.resource_id: o.details.get(JOB_ID, "") for o in owned}
        now = time.monotonic()
        if self._listed is None:
            failures = self._failed_boots(None)
        else:
            left = {rid: job for rid, job in self._listed.items() if rid not in listed}
            failures = self._failed_boots(left) if left else []
        for failed in failures:
            self._failed[failed.resource_id] = (failed, now)
        self._listed = listed
        self._failed = {
            rid: (o, seen)
            for rid, (o, seen) in self._failed.items()
            if now - seen < FAILURE_KEPT_S and rid not in listed
        }
        return [*owned, *(o for o, _ in self._failed.values())]

    def _failed_boots(self, left: Mapping[str, str] | None) -> list[Owned]:
        """Of the pilots that `left` the queue (None: of all), those whose
        boot failed, with the reason each left (logged here, once)."""
        done = self._run(
            [
                "sh",
                "-c",
                _READ_FAILURES,
                "tide-failures",
                self._config.work_dir,
                self._failed_dir,
                str(self._orphan_minutes),
                *sorted(left or ()),
            ],
            "reading the reasons of pilots that failed",
        )
        failed: list[Owned] = []
        for _, line in _lines(done.stdout):
            rid, _, reason = line.partition("|")
            if (left is not None and rid not in left) or rid in self._failed:
                continue  # not asked for, or told already
            job = "" if left is None else left[rid]
            log.warning(
                "site %s: pilot %s (job %s) failed to boot: %s",
                self.name,
                rid,
                job or "?",
                reason.strip() or "no reason given",
            )
            failed.append(
                Owned(
                    resource_id=rid,
                    status="FAILED",
                    details={JOB_ID: job} if job else {},
                    failed=True,
                    placed=False,
                    ended=True,
                )
            )
        return failed

    def _queued(self) -> list[Owned]:
        doing = "listing pilots"
        asked = time.time()  # before Slurm counted: a start from it is never too late
        done = self._run(["squeue", "--me", "--noheader", "--format=%i|%j|%T|%M|%k"], doing)
        owned: list[Owned] = []
        for number, line in _lines(done.stdout):
            fields = line.split("|", 4)
            if len(fields) != 5:
                raise self._malformed(
                    doing, "squeue", number, line, "JOBID|NAME|STATE|TIME|COMMENT"
                )
            job_id, job_name, state, used, comment = fields
            if comment.split() != self._tags.split():
                continue  # not this site's pilot: its fields are none of our business
            try:
                used_s = _time_left_s(used)
            except ValueError:
                used_s = -1
            if not (_is_number(job_id) and job_name and state.isalpha()) or used_s == -1:
                raise self._malformed(
                    doing, "squeue", number, line, "a pilot's numeric id, name, state and time used"
                )
            placed = state in PLACED_STATES
            owned.append(
                Owned(
                    resource_id=job_name,
                    status=state,
                    details={JOB_ID: job_id},
                    placed=placed,
                    # Slurm's own count of its time on the node, in whole seconds
                    # (tide.budget: charged from no later than it started)
                    started_at=asked - used_s - 1 if placed and used_s is not None else None,
                )
            )
        return owned

    def destroy(self, resource_id: str, details: Mapping[str, str]) -> None:
        """A queued pilot is cancelled; a running one gets SIGTERM in its batch
        shell only, and vacates its jobs and exits by itself (a plain scancel
        would SIGTERM the HTCondor jobs' own processes too, and a job killed
        that way counts as finished, not vacated)."""
        job_id = details.get(JOB_ID)
        self._scancel(resource_id, job_id, ["--state=PENDING"], "cancelling queued pilot")
        self._scancel(
            resource_id,
            job_id,
            ["--state=RUNNING", "--batch", "--signal=TERM"],
            "evacuating pilot",
        )
        if self._signing_key is not None:  # a pilot cancelled while queued never read it
            self._staged()
            self._run(["rm", "-f", "--", self._own_token(resource_id)], "removing its token")

    # --- Capability.DRAIN -------------------------------------------------

    def drain_startd(self, resource_id: str, reason: str, *, only_idle: bool = False) -> str:
        # SIGURG: the pilot drains only if no slot holds a claim, checked by
        # the startd itself; a refusal shows as no drain, told again later.
        if only_idle:
            self._signal(resource_id, "URG", "draining (if idle)")
            return IDLE_DRAIN_REQUEST
        self._signal(resource_id, "USR1", "draining")
        return DRAIN_REQUEST

    def cancel_startd_drain(self, resource_id: str, request_id: str) -> None:
        self._signal(resource_id, "USR2", "cancelling the drain of")

    # --- Capability.OWNERS ------------------------------------------------

    def owner_queue(self) -> OwnerQueue:
        cfg = self._config
        argv = ["squeue", "--noheader", "--states=PENDING", "--format=%i|%D|%r|%P"]
        if cfg.owner_partitions:
            argv.append(f"--partition={','.join(cfg.owner_partitions)}")
        if cfg.owner_qos:
            argv.append(f"--qos={','.join(cfg.owner_qos)}")
        if cfg.owner_accounts:
            argv.append(f"--account={','.join(cfg.owner_accounts)}")
        doing = "reading the owners' queue"
        pending = self._run(argv, doing)
        nodes_argv = ["sinfo", "--noheader", "--Node", "--format=%N|%T"]
        if cfg.owner_partitions:
            nodes_argv.append(f"--partition={','.join(cfg.owner_partitions)}")
        nodes = self._run(nodes_argv, "reading the nodes' states")
        ending = self._run(
            [
                "squeue",
                "--noheader",
                "--states=RUNNING",
                f"--partition={cfg.partition}",
                "--format=%D|%L",
            ],
            "reading the backfill jobs' time left",
        )
        try:
            queue = owner_queue_from(pending.stdout, nodes.stdout, pilots_partition=cfg.partition)
            ending_soon = ending_nodes(ending.stdout)
        except ValueError as exc:
            raise SiteError(f"site {self.name}: {doing}: {exc}", retryable=True) from None
        return replace(queue, free_nodes=queue.free_nodes + ending_soon)

    # --- the pilot ---------------------------------------------------------

    def script(self, resource_id: str) -> str:
        """The pilot's batch script for `resource_id` (holds no secret)."""
        host = self._pool.collector.rsplit(":", 1)[0]
        return self._template.render(
            resource_id=resource_id,
            site=self.name,
            collector=self._pool.collector,
            collector_host=host,
            pool_domain=self._pool.pool_domain,
            token_file=(
                f"{self._work_dir or self._config.work_dir}/worker.token"
                if self._signing_key is None
                else self._own_token(resource_id)
            ),
            own_token=self._signing_key is not None,
            idle_exit_s=self._config.idle_exit_s,
            vacate_timeout_s=VACATE_TIMEOUT_S,
            max_job_retirement_s=self._config.max_job_retirement_s,
            log_tail_lines=LOG_TAIL_LINES,
            walltime_s=walltime_s(self._config.walltime),
            drain_before_end_s=self._config.drain_before_end_s,
            failed_dir=self._failed_dir,
            worker_config=self._native_config(resource_id),
            site_conf=_ending_newline(
                self._recipe(resource_id).site_conf(self._config.condor_config)
            ),
            cvmfsexec_dir=self._config.cvmfsexec_dir,
            cvmfs_repositories=self._config.cvmfs_repositories,
            runtime=self._config.pilot_runtime,
            image=self._config.pilot_image,
            environment=self._container_environment(resource_id),
        )

    def _recipe(self, resource_id: str) -> WorkerRecipe:
        return WorkerRecipe(
            pool=self._pool,
            resource_id=resource_id,
            site=self.name,
            site_name=self._site_name,
            shape=self._shape,
            attributes=self._config.attributes,
        )

    def _native_config(self, resource_id: str) -> str:
        """A native pilot's worker configuration: the image's, from the
        worker recipe (the pilot script adds what differs for a user)."""
        if self._config.pilot_runtime != "native":
            return ""
        return self._recipe(resource_id).condor_config()

    def _container_environment(self, resource_id: str) -> dict[str, str]:
        """A docker pilot's container environment: the tide/condor image's
        contract (as the docker site's workers), plus the pilot's own
        settings as HTCondor `_CONDOR_` overrides. No shared port: every
        pilot on a node (or on one engine) picks its own ports, and CCB
        reaches them through the collector."""
        env = self._recipe(resource_id).environment()
        env["_CONDOR_USE_SHARED_PORT"] = "False"
        # As in the native pilot: without a shared port, the collector
        # rejects the session the master and the startd would share.
        env["_CONDOR_SEC_USE_FAMILY_SESSION"] = "False"
        env["_CONDOR_STARTD_NOCLAIM_SHUTDOWN"] = str(self._config.idle_exit_s)
        env["_CONDOR_MAXJOBRETIREMENTTIME"] = str(self._config.max_job_retirement_s)
        for name, value in self._config.condor_config.items():
            env[f"_CONDOR_{name}"] = value
        return env

    def _own_token(self, resource_id: str) -> str:
        """Where a pilot's own token waits for it on the cluster."""
        return f"{self._work_dir or self._config.work_dir}/{TOKENS_DIR}/{resource_id}.token"

    def _staged(self) -> str:
        """The cluster-side work folder (0700), made once per controller
        start (and again after a failure): with the shared worker token in
        it, or with the folder of the pilots' own tokens, swept of orphans
        (and of a shared token)."""
        if self._work_dir is not None:
            return self._work_dir
        stdin = None
        # $1: the folder (relative to the home), read as an argument; a
        # token arrives on stdin and is written 0600 under umask 077.
        script = 'umask 077 && cd && mkdir -p -- "$1" && chmod 700 -- "$1" && cd -- "$1" && '
        if self._token_file is not None:
            try:
                stdin = self._token_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise SiteError(
                    f"site {self.name}: staging the worker token: cannot read "
                    f"{self._token_file}: {reason}",
                    retryable=False,
                ) from None
            script += "cat > worker.token.new && mv -f worker.token.new worker.token && pwd"
        else:
            # A shared token staged before the site had the signing key goes.
            script += (
                f"rm -f worker.token && mkdir -p {TOKENS_DIR} && chmod 700 {TOKENS_DIR} && "
                f"find {TOKENS_DIR} -type f -name '*.token' -mmin +{self._orphan_minutes} "
                "-delete && pwd"
            )
        done = self._run(
            ["sh", "-c", script, "tide-stage", self._config.work_dir],
            "staging the worker token" if stdin is not None else "making the work folder",
            stdin=stdin,
        )
        work_dir = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if not work_dir.startswith("/"):
            raise SiteError(f"site {self.name}: staging printed no folder", retryable=True)
        self._work_dir = work_dir
        return work_dir

    # --- calls --------------------------------------------------------------

    def _scancel(
        self, resource_id: str, job_id: str | None, options: Sequence[str], doing: str
    ) -> None:
        target = [job_id] if job_id else ["--me", f"--name={resource_id}"]
        try:
            self._run(["scancel", *options, *target], f"{doing} {resource_id}")
        except SiteError as exc:
            if any(gone in str(exc) for gone in _GONE_JOB):
                return  # already gone: destroy is idempotent
            raise

    def _signal(self, resource_id: str, signal: str, doing: str) -> None:
        job_id = self._job_id(resource_id)
        if job_id is None:
            raise SiteError(
                f"site {self.name}: {doing} {resource_id}: no such pilot in the queue",
                retryable=True,
            )
        self._scancel(
            resource_id, job_id, [f"--signal={signal}", "--batch"], f"{doing} the startd of"
        )

    def _job_id(self, resource_id: str) -> str | None:
        for o in self.list_owned():
            if o.resource_id == resource_id:
                return o.details.get(JOB_ID)
        return None

    def _run(self, argv: Sequence[str], doing: str, *, stdin: str | None = None) -> Completed:
        with self._calling(doing):
            done = self._executor.run(argv, stdin=stdin, timeout_s=self._config.command_timeout_s)
        if done.returncode != 0:
            tail = " ".join(done.stderr.strip().splitlines()[-3:])[:500]
            raise SiteError(
                f"site {self.name}: {doing}: {argv[0]} exited {done.returncode}: {tail}",
                retryable=True,
            )
        return done

    @contextmanager
    def _calling(self, doing: str) -> Iterator[None]:
        try:
            yield
        except CommandTimedOut as exc:
            raise DeadlineExceeded(f"site {self.name}: {doing}: {exc}") from exc
        except ExecutorError as exc:
            raise SiteError(f"site {self.name}: {doing}: {exc}", retryable=exc.retryable) from exc

    def _malformed(
        self, doing: str, command: str, number: int, line: str, expected: str
    ) -> SiteError:
        what = _malformed_line(number, line, expected)
        return SiteError(f"site {self.name}: {doing}: {command} printed {what}", retryable=True)


def _lines(output: str) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a command's output, stripped, numbered from 1."""
    for number, line in enumerate(output.splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def _malformed_line(number: int, line: str, expected: str) -> str:
    shown = line if len(line) <= _LINE_SHOWN else line[:_LINE_SHOWN] + "..."
    return f"line {number} {shown!r}, not {expected}"


def _ending_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def walltime_s(walltime: str) -> int:
    """Seconds of a [D-]HH:MM:SS walltime (the form the configuration takes;
    Slurm's time format, as squeue prints it). Raises ValueError for a word."""
    seconds = _time_left_s(walltime)
    if seconds is None:
        raise ValueError(f"{walltime!r} is not a time limit")
    return seconds


def _is_number(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes the likes of '²')."""
    return text.isascii() and text.isdigit()


@dataclass(frozen=True)
class _Pending:
    """One line of `squeue --states=PENDING --format=%i|%D|%r|%P`."""

    job_id: str
    nodes: int
    reason: str
    partitions: tuple[str, ...]


def _pending_jobs(pending: str) -> list[_Pending]:
    """Parse `squeue --format=%i|%D|%r|%P` output. Raises ValueError naming a bad line."""
    jobs: list[_Pending] = []
    for number, line in _lines(pending):
        fields = line.split("|")
        if len(fields) != 4 or not fields[0] or not _is_number(fields[1]):
            raise ValueError(
                "squeue printed " + _malformed_line(number, line, "JOBID|NODES|REASON|PARTITION")
            )
        job_id, count, reason, partition = fields
        jobs.append(_Pending(job_id, int(count), reason, tuple(partition.split(","))))
    return jobs


def ending_nodes(running: str) -> int:
    """Nodes of the jobs in `squeue --format=%D|%L` output with at most
    ENDING_S left. Raises ValueError naming a malformed line."""
    nodes = 0
    for number, line in _lines(running):
        count, _, left = line.partition("|")
        try:
            if not _is_number(count):
                raise ValueError
            seconds = _time_left_s(left)
        except ValueError:
            raise ValueError(
                "squeue printed " + _malformed_line(number, line, "NODES|TIME_LEFT")
            ) from None
        if seconds is not None and seconds <= ENDING_S:
            nodes += int(count)
    return nodes


def _time_left_s(text: str) -> int | None:
    """Slurm's [days-][[hours:]minutes:]seconds; None for a word (UNLIMITED,
    INVALID, NOT_SET). Raises ValueError for anything else."""
    if text and text.replace("_", "").isalpha():
        return None
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not (_is_number(days) or days == "") or not all(_is_number(p) for p in parts):
        raise ValueError(text)
    if not 1 <= len(parts) <= 3:
        raise ValueError(text)
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def owner_queue_from(pending: str, nodes: str, *, pilots_partition: str) -> OwnerQueue:
    """The owners' queue from `squeue --format=%i|%D|%r|%P` (pending jobs) and
    `sinfo --Node --format=%N|%T` output. Jobs in the pilots' own partition
    are not the owners'; jobs pending for a limit or a hold are not waiting
    for nodes; jobs not yet looked at by the scheduler are new. The waiting
    jobs are named (their grace time is the policy's, tide.policy). A node
    listed in several partitions counts once. Raises ValueError naming a
    malformed line of either output."""
    new = 0
    waiting: dict[str, int] = {}
    for job in _pending_jobs(pending):
        if pilots_partition in job.partitions:
            continue
        if job.reason == NEW_REASON:
            new += job.nodes
        elif job.reason in WAITING_REASONS:
            waiting[job.job_id] = waiting.get(job.job_id, 0) + job.nodes
    free: set[str] = set()
    for number, line in _lines(nodes):
        fields = line.split("|")
        if len(fields) != 2 or not all(fields):
            raise ValueError("sinfo printed " + _malformed_line(number, line, "NODE|STATE"))
        node, state = fields
        if state.rstrip("*~#!%$@^-+").lower() in FREE_NODE_STATES:
            free.add(node)
    return OwnerQueue(
        pending_nodes=sum(waiting.values()), free_nodes=len(free), new_nodes=new, waiting=waiting
    )


__all__ = [
    "DRAIN_REQUEST",
    "JOB_ID",
    "PILOT_TOKEN_MARGIN_S",
    "SlurmBackfillSite",
    "ending_nodes",
    "owner_queue_from",
    "walltime_s",
]
