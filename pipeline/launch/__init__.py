"""Getting runs executed: on this machine, or as Slurm job arrays; and where each run stands.

* ``local``   -- ``pipeline run``: worker processes on this machine (submitit LocalExecutor / DebugExecutor)
* ``layout``  -- how a sweep is packed into Slurm array tasks and arrays (pure; the dry run prints it)
* ``slurm``   -- ``pipeline sweep`` / ``resume``: submit the layout through submitit (as far as the user's submit
  limit allows; the rest waits), record it in jobs.jsonl; ``sweep --dry-run``'s sbatch --test-only
* ``follow``  -- ``--follow``: stay in the foreground, submitting waiting runs as slots free
* ``queue``   -- asking Slurm: scontrol, squeue, sacct, sacctmgr (limits), and parsing what they print
* ``status``  -- ``pipeline status``: every run's state from files, jobs.jsonl and one squeue + sacct

Nothing here imports torch: what runs inside a task is :class:`pipeline.run.job.RunPack`.
"""
