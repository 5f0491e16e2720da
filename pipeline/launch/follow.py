"""``pipeline sweep --follow`` / ``pipeline resume --follow``: stay in the foreground and submit the runs held
back by the user's submit limit as slots free.

The first round is an ordinary ``sweep``/``resume`` submission (:func:`pipeline.launch.slurm.submit_pending`).
Then, every ``interval`` seconds: one snapshot (one ``squeue`` + one ``sacct``), one progress line, and, while
runs are waiting, one more submission round over the waiting runs only -- a run that fails meanwhile is
left to ``pipeline resume``, so a run that fails every time is not resubmitted for ever.  It ends when
nothing waits any more (``until_done``: when nothing is pending or running either).

Ctrl-C ends it between two polls; a submission in progress completes and is recorded first, so nothing is
lost or doubled: ``pipeline resume`` (or ``status``) carries on from the sweep folder.
"""

from __future__ import annotations

import time

from ..errors import SlurmError
from ..sweep import Sweep
from . import status as st
from .slurm import submit_pending

DEFAULT_INTERVAL_S = 60.0


def progress_line(counts: dict, limit=None) -> str:
    """'17:40:01 done 4/20, running 2, pending 3, waiting 11 (MaxSubmitJobs ... is 5; 5 of your jobs ...)'."""
    tot = counts[1] + counts[2]
    total = sum(tot.values())
    parts = [f"done {tot['done']}/{total}"] + [f"{s} {tot[s]}" for s in st.STATES[1:] if tot[s]]
    return (time.strftime("%H:%M:%S ") + ", ".join(parts)
            + (f" ({limit.reason()})" if limit is not None and tot["waiting"] else ""))


def follow(sweep: Sweep, console, target: str, spec=None, interval: float = DEFAULT_INTERVAL_S,
           until_done: bool = False, sleep=time.sleep) -> int:
    """Submit, then keep submitting waiting runs as slots free (see the module docstring).  Returns the exit
    code: 0, 1 when ``until_done`` ends with runs that failed, 130 on Ctrl-C."""
    res = None
    try:
        res = submit_pending(sweep, console, target, spec)
        while True:
            snap = st.snapshot(sweep, slurm=True)
            c = snap.counts()
            tot = c[1] + c[2]
            active = tot["pending"] + tot["running"]
            if snap.slurm_ok and not tot["waiting"] and (not until_done or not active):
                break
            line = progress_line(c, res.limit if res else None)
            console.print(f"{line}; next check in {interval:g} s" + ("" if snap.slurm_ok else
                          f" [yellow](squeue failed: {'; '.join(snap.warnings)})[/yellow]"), highlight=False)
            sleep(interval)
            if tot["waiting"]:
                try:
                    res = submit_pending(sweep, console, target, spec, only_waiting=True)
                except SlurmError as e:  # transient (squeue/sacctmgr timed out, ...): try again at the next poll
                    console.print(f"[yellow]warning:[/yellow] {e}", highlight=False)
    except KeyboardInterrupt:
        console.print(f"stopped following (Ctrl-C); every submitted array is recorded: `pipeline status {target}` "
                      f"shows where the runs stand, `pipeline resume {target} --follow` goes on", highlight=False)
        return 130
    console.print(progress_line(c), highlight=False)
    bad = sum(tot[k] for k in st.REDO)
    if not until_done:
        console.print(f"every run is submitted; follow with `pipeline status {target}`", highlight=False)
        return 0
    if bad:
        console.print(f"[red]{bad} run(s) failed, timed out, were cancelled or are missing[/red]: "
                      f"`pipeline status {target}` shows why, `pipeline resume {target}` redoes them", highlight=False)
        return 1
    console.print(f"all runs done: `pipeline merge {target}`", highlight=False)
    return 0
