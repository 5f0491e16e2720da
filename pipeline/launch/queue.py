"""Asking Slurm: cluster facts (``scontrol``), the queue (``squeue``) and accounting (``sacct``).

Everything that runs a Slurm command is here, and so is the parsing of what it
prints (pure functions, tested on recorded output).  ``status`` asks once per
poll: ONE ``squeue`` and ONE ``sacct`` over the recorded array jobs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize, and most sites'


class SlurmQueryError(RuntimeError):
    """squeue/sacct/scontrol failed (a bug-free, transient condition: callers turn it into a warning)."""


def have_slurm() -> bool:
    return shutil.which("squeue") is not None and shutil.which("sbatch") is not None


# ---------------------------------------------------------------- cluster facts
@lru_cache(maxsize=1)
def max_array_size() -> int:
    """MaxArraySize from ``scontrol show config`` (read once); 1001 without Slurm."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    return parse_max_array_size(out)


def parse_max_array_size(text: str) -> int:
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", text, re.M)
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
