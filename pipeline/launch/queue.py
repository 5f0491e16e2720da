"""Asking Slurm: cluster facts (``scontrol``), the queue (``squeue``), accounting (``sacct``) and the
user's submit limits (``sacctmgr``).

Everything that runs a Slurm command is here, and so is the parsing of what it
prints (pure functions, tested on recorded output).  ``status`` asks once per
poll: ONE ``squeue`` and ONE ``sacct`` over the recorded array jobs.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize, and most sites'


class SlurmQueryError(RuntimeError):
    """squeue/sacct/scontrol failed (a bug-free, transient condition: callers turn it into a warning)."""


def have_slurm() -> bool:
    return shutil.which("squeue") is not None and shutil.which("sbatch") is not None


# ---------------------------------------------------------------- cluster facts
def _config() -> str:
    """``scontrol show config``; empty without Slurm."""
    try:
        return subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _conf_file() -> str | None:
    """The text of slurm.conf (``SLURM_CONF`` or /etc/slurm/slurm.conf); None where there is none."""
    try:
        return Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text(errors="replace")
    except OSError:
        return None


@lru_cache(maxsize=1)
def max_array_size() -> int:
    """MaxArraySize (read once): from slurm.conf where this machine has one -- no daemon asked, so a plan is
    instant even where slurmctld is down or slow -- else from ``scontrol show config``; 1001 without Slurm."""
    conf = _conf_file()
    return parse_max_array_size(conf if conf is not None else _config())


def parse_max_array_size(text: str) -> int:
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", text, re.M | re.I)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else DEFAULT_MAX_ARRAY_SIZE


# ---------------------------------------------------------------- job states
# Slurm job states (sacct/squeue, long form) -> our categories
_SLURM = {
    "PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
    "RESV_DEL_HOLD": "pending", "CONFIGURING": "running", "RESIZING": "running",
    "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "running", "STOPPED": "running",
    "SIGNALING": "running", "STAGE_OUT": "running",
    "COMPLETED": "completed",
    "FAILED": "failed", "NODE_FAIL": "failed", "BOOT_FAIL": "failed", "OUT_OF_MEMORY": "failed",
    "SPECIAL_EXIT": "failed",
    "TIMEOUT": "timeout", "DEADLINE": "timeout",
    "CANCELLED": "cancelled", "PREEMPTED": "cancelled", "REVOKED": "cancelled",
}


def slurm_category(state: str) -> str:
    """'CANCELLED by 0' -> 'cancelled'; unknown states count as running (never resubmitted blindly)."""
    word = state.strip().split(" ")[0].rstrip("+").upper()
    return _SLURM.get(word, "running" if word else "missing")


# ---------------------------------------------------------------- sacct / squeue parsing
_RANGE = re.compile(r"^(\d+)_\[([0-9,\-]+)(?:%\d+)?\]$")


def expand_job_id(job_id: str) -> list[str]:
    """'12_[2-5%2]' -> ['12_2', ..., '12_5'];  '12_3' and '12' stay as they are."""
    m = _RANGE.match(job_id.strip())
    if not m:
        return [job_id.strip()]
    base, out = m.group(1), []
    for part in m.group(2).split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """Lines 'JOBID|STATE|NAME[|REASON]' (sacct -P / squeue -o) -> {task key: {state, name, reason}}.

    Later lines win (sacct lists the latest record of a requeued task last).
    """
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0] or "." in parts[0]:  # skip job steps (12_3.batch)
            continue
        info = {"state": parts[1], "name": parts[2] if len(parts) > 2 else "",
                "reason": parts[3] if len(parts) > 3 else ""}
        for key in expand_job_id(parts[0]):
            out[key] = info
    return out


def _run(cmd: list[str], timeout: float = 60) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        raise SlurmQueryError(f"{cmd[0]}: {e}") from None
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise SlurmQueryError(f"{cmd[0]} exited {p.returncode}: {msg[-1] if msg else ''}")
    return p.stdout


def query_squeue(job_ids: set[str]) -> dict[str, dict[str, str]]:
    """Live queue entries (one per array task, -r) of our jobs; raises SlurmQueryError."""
    if not job_ids:
        return {}
    try:
        text = _run(["squeue", "-h", "-r", "-o", "%i|%T|%j|%r", "-j", ",".join(sorted(job_ids, key=int))])
    except SlurmQueryError as e:
        if "Invalid job id" in str(e):  # older Slurm: every id gone from the queue
            return {}
        raise
    return {k: v for k, v in parse_table(text).items() if k.split("_")[0] in job_ids}


def query_sacct(job_ids: set[str]) -> dict[str, dict[str, str]]:
    """Accounting records of our array jobs in ONE sacct call; raises SlurmQueryError."""
    if not job_ids:
        return {}
    text = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,JobName", "-j", ",".join(sorted(job_ids, key=int))])
    return parse_table(text)


# ---------------------------------------------------------------- submit limits
@dataclass(frozen=True)
class SubmitLimit:
    """The most jobs this user may have in the queue (pending or running; each array task counts as one
    job), where that number comes from, and how many of the user's jobs are in the queue now."""

    max_jobs: int
    source: str  # e.g. 'MaxSubmitJobs of association mycluster/myaccount/alice'
    in_queue: int = 0
    counted: str = "of your jobs"  # whose jobs in_queue counts: 'of the jobs of account proj', ...

    @property
    def free(self) -> int:
        return max(0, self.max_jobs - self.in_queue)

    def reason(self, submitted: int = 0) -> str:
        """Why runs wait: the limit, and how full the queue was (``submitted``: jobs this submission added)."""
        return (f"{self.source} is {self.max_jobs}; {self.in_queue} {self.counted} were in the queue"
                + (f", {submitted} more submitted now" if submitted else ""))


def user_name() -> str:
    """The Slurm user: the name of this process's uid (not $USER, which sudo and su keep)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "")


@lru_cache(maxsize=1)
def cluster_name() -> str:
    """ClusterName from ``scontrol show config`` (read once); empty without Slurm."""
    m = re.search(r"^\s*ClusterName\s*=\s*(\S+)", _config(), re.M)
    return m.group(1) if m else ""


def _limit(cell: str) -> int | None:
    """A sacctmgr limit cell: '' or a negative number means none."""
    cell = cell.strip()
    return int(cell) if cell.lstrip("-").isdigit() and int(cell) >= 0 else None


ASSOC_FORMAT = "cluster,account,user,partition,maxsubmit,qos,defaultqos,grpsubmitjobs"
QOS_FORMAT = "name,maxsubmitjobsperuser,maxsubmitjobsperaccount,grpsubmitjobs"
# Whose jobs a limit counts: the user's own (MaxSubmitJobs, MaxSubmitJobsPerUser, a user association's
# GrpSubmitJobs -- all the user's jobs are counted, to be safe), an account's (an account association's
# GrpSubmitJobs), a QOS's (its GrpSubmitJobs) or an account's within a QOS (MaxSubmitJobsPerAccount).
Scope = tuple[str, ...]  # ("user",) | ("account", A) | ("qos", Q) | ("qos-account", Q, A)


def _assoc_name(c: str, acc: str, user: str, part: str) -> str:
    return f"association {c}/{acc}" + (f"/{user}" if user else "") + (f"/{part}" if part else "")


def parse_assoc_limits(text: str, user: str, cluster: str = "", account: str | None = None,
                       partition: str | None = None) -> tuple[list[tuple[int, str]], set[str]]:
    """``sacctmgr -n -P show assoc user=U format=ASSOC_FORMAT`` -> (MaxSubmitJobs and GrpSubmitJobs limits of
    the user's associations that jobs of ``account`` in ``partition`` fall under, the QOS those jobs may run
    under).

    sacctmgr shows a limit inherited from a parent account on the user's own line.  Rows of another cluster,
    another account (when ``account`` is known) or another partition are left out; the QOS are the
    associations' default QOS, else every QOS they allow."""
    limits, qos = [], set()
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 7 or parts[2] != user:
            continue
        c, acc, _, part, maxsubmit, allowed, default = parts[:7]
        if (cluster and c and c != cluster) or (account and acc != account) or (part and part != partition):
            continue
        for kind, cell in (("MaxSubmitJobs", maxsubmit), ("GrpSubmitJobs", parts[7] if len(parts) > 7 else "")):
            if (n := _limit(cell)) is not None:
                limits.append((n, f"{kind} of {_assoc_name(c, acc, user, part)}"))
        qos |= {default} if default else {q for q in allowed.split(",") if q}
    return limits, qos


def parse_account_limits(text: str, cluster: str, account: str, partition: str | None = None) -> list[tuple[int, str]]:
    """``sacctmgr -n -P show assoc account=A format=ASSOC_FORMAT`` -> the GrpSubmitJobs of the account's own
    associations (the rows without a user): a limit on the jobs of everyone in the account."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 8 or parts[2] or parts[1] != account or (cluster and parts[0] and parts[0] != cluster):
            continue
        if parts[3] and parts[3] != partition:
            continue
        if (n := _limit(parts[7])) is not None:
            out.append((n, f"GrpSubmitJobs of {_assoc_name(parts[0], account, '', parts[3])}"))
    return out


def parse_qos_table(text: str) -> dict[str, dict[str, int]]:
    """``sacctmgr -n -P show qos format=QOS_FORMAT`` -> {QOS: {"per_user" | "per_account" | "group": limit}}
    (set limits only: MaxSubmitJobsPerUser, MaxSubmitJobsPerAccount, GrpSubmitJobs)."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        found = {k: n for k, cell in zip(("per_user", "per_account", "group"), parts[1:4]) if (n := _limit(cell)) is not None}
        if found:
            out[parts[0]] = found
    return out


def parse_qos_limits(text: str) -> dict[str, int]:
    """``sacctmgr -n -P show qos format=QOS_FORMAT`` -> {QOS: MaxSubmitJobsPerUser} (set ones only)."""
    return {q: v["per_user"] for q, v in parse_qos_table(text).items() if "per_user" in v}


_QOS_KINDS = {"per_user": "MaxSubmitJobsPerUser", "per_account": "MaxSubmitJobsPerAccount", "group": "GrpSubmitJobs"}


def submit_limits(assoc: str, qos: str, user: str, cluster: str, default_account: str | None,
                  targets: list[tuple[str | None, str | None, str | None]],
                  accounts: str = "") -> list[tuple[int, str, Scope]]:
    """Every submit limit over the (account, qos, partition) the stages submit to: ``(limit, source, whose jobs
    it counts)``.  ``accounts``: ``sacctmgr show assoc account=...`` of those accounts (their GrpSubmitJobs)."""
    table = parse_qos_table(qos)
    found: list[tuple[int, str, Scope]] = []
    for account, q, partition in targets:
        acc = account or default_account
        limits, allowed = parse_assoc_limits(assoc, user, cluster, acc, partition)
        found += [(n, src, ("user",)) for n, src in limits]
        if acc:
            found += [(n, src, ("account", acc)) for n, src in parse_account_limits(accounts, cluster, acc, partition)]
        for name in sorted({q} if q else allowed):
            for kind, n in sorted(table.get(name, {}).items()):
                if kind == "per_account" and not acc:
                    continue
                scope = {"per_user": ("user",), "per_account": ("qos-account", name, acc or ""), "group": ("qos", name)}
                found.append((n, f"{_QOS_KINDS[kind]} of QOS {name}", scope[kind]))
    return sorted(set(found))


def tightest_limit(assoc: str, qos: str, user: str, cluster: str, default_account: str | None,
                   targets: list[tuple[str | None, str | None, str | None]]) -> tuple[int, str] | None:
    """The smallest submit limit over the (account, qos, partition) the stages submit to; None: no limit set."""
    found = submit_limits(assoc, qos, user, cluster, default_account, targets)
    return min((n, src) for n, src, _ in found) if found else None


def count_user_jobs(user: str) -> int:
    """The user's jobs in the queue, each array task one job (``squeue -r``), pending or running."""
    return count_jobs(("user",), user)


def count_jobs(scope: Scope, user: str) -> int:
    """The jobs in the queue that a limit of ``scope`` counts, each array task one job, pending or running."""
    kind, *names = scope
    flags = {"user": ["-u"], "account": ["-A"], "qos": ["-q"], "qos-account": ["-q", "-A"]}[kind]
    args = [x for flag, name in zip(flags, names or [user]) for x in (flag, name)]
    text = _run(["squeue", "-h", "-r", *args, "-o", "%i|%T"])
    return sum(1 for v in parse_table(text).values() if slurm_category(v["state"]) in ("pending", "running"))


_COUNTED = {"user": "of your jobs", "account": "jobs of account {1}", "qos": "jobs under QOS {1}",
            "qos-account": "jobs of account {2} under QOS {1}"}


def _show(what: list[str], fmt: str) -> str:
    """``sacctmgr -n -P show WHAT format=FMT``; an older sacctmgr that does not know the last fields
    (grpsubmitjobs, maxsubmitjobsperaccount) is asked again without them -- the limits it knows still count."""
    fields, keep = fmt.split(","), 2 if what[0] == "qos" else 7  # what was asked before those were read
    while True:
        try:
            return _run(["sacctmgr", "-n", "-P", "show", *what, "format=" + ",".join(fields)], timeout=30)
        except SlurmQueryError:
            if len(fields) <= keep:
                raise
            fields.pop()


def submit_limit(targets: list[tuple[str | None, str | None, str | None]]) -> SubmitLimit | None:
    """The tightest limit on how many more jobs this user may queue, for jobs submitted with these
    (account, qos, partition): the associations' MaxSubmitJobs and GrpSubmitJobs (the user's and the
    account's own) and the QOS's MaxSubmitJobsPerUser, MaxSubmitJobsPerAccount and GrpSubmitJobs
    (``sacctmgr``), each against the jobs it counts in the queue now (``squeue``: the user's -- all of
    them, to be safe --, the account's, the QOS's).  The one with the fewest free slots wins, so a
    submission is cut to what fits rather than refused whole.  (A parent account's GrpSubmitJobs is not
    read: sbatch's refusal is the judge there.)

    None when no limit is set, or there is no accounting (no sacctmgr, or it fails): then sbatch
    itself is the only judge.  Raises SlurmQueryError when squeue fails."""
    if shutil.which("sacctmgr") is None:
        return None
    user = user_name()
    try:
        assoc = _show(["assoc", f"user={user}"], ASSOC_FORMAT)
        qos = _show(["qos"], QOS_FORMAT)
        default = None
        if any(not account for account, _, _ in targets):
            default = _run(["sacctmgr", "-n", "-P", "show", "user", user, "format=defaultaccount"],
                           timeout=30).strip() or None
        names = sorted({a or default for a, _, _ in targets} - {None})
        accounts = _show(["assoc", f"account={','.join(names)}"], ASSOC_FORMAT) if names else ""
    except SlurmQueryError:
        return None
    found = submit_limits(assoc, qos, user, cluster_name(), default, targets, accounts)
    if not found:
        return None
    counts: dict[Scope, int] = {}
    best: SubmitLimit | None = None
    for n, src, scope in found:
        if scope not in counts:
            counts[scope] = count_jobs(scope, user)
        lim = SubmitLimit(n, src, counts[scope], _COUNTED[scope[0]].format(*scope))
        if best is None or lim.free < best.free:
            best = lim
    return best


# ---------------------------------------------------------------- sbatch --test-only
_START = re.compile(r"to start at (\S+)(?: using (\d+) processors)?(?: on nodes (\S+))?(?: in partition (\S+))?")


def parse_test_only(text: str) -> str:
    """sbatch --test-only's stderr -> 'to start at 2026-11-26T17:33:05 on localhost in partition debug', or
    its error line."""
    m = _START.search(text)
    if m:
        return f"to start at {m.group(1)}" + (f" on {m.group(3)}" if m.group(3) else "") + (
            f" in partition {m.group(4)}" if m.group(4) else "")
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return "refused: " + (lines[-1].removeprefix("sbatch: error: ") if lines else "no answer")


def sbatch_test_only(script: str) -> str:
    """``sbatch --test-only SCRIPT`` (nothing is submitted) -> its answer, see :func:`parse_test_only`."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="test-only-") as f:
        f.write(script)
        f.flush()
        try:
            p = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            return f"refused: {e}"
    return parse_test_only(p.stderr + p.stdout)
