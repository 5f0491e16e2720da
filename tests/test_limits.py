"""Slurm etiquette without Slurm: reading submit limits (sacctmgr), what fits under them, runs held back as
waiting and submitted later, sbatch --test-only's answer, and --follow's loop."""

import hashlib
import json
from pathlib import Path

import pytest
from rich.console import Console

from pipeline import spec as S
from pipeline.errors import SlurmError
from pipeline.launch import follow as F
from pipeline.launch import layout as L
from pipeline.launch import queue, slurm
from pipeline.launch import status as st
from pipeline.sweep import Sweep
from tests.test_status import _fake_sweep as _sweep

# sacctmgr -n -P show assoc user=alice format=cluster,account,user,partition,maxsubmit,qos,defaultqos
ASSOC = """\
hpc|proj|alice||100|normal,long|normal
hpc|proj|alice|gpu|20|normal,long|
hpc|other|alice||5|normal|
hpc|proj|bob||1|normal|
lab|proj|alice||2|normal|
"""
QOS = "normal||\nlong|50|\nhigh|3|\n"  # name|MaxSubmitJobsPerUser (sacctmgr prints nothing for no limit)


# ---------------------------------------------------------------- reading the limits
def test_parse_assoc_limits_picks_the_users_rows_of_this_cluster_account_and_partition():
    limits, qos = queue.parse_assoc_limits(ASSOC, "alice", "hpc", "proj", None)
    assert limits == [(100, "MaxSubmitJobs of association hpc/proj/alice")] and qos == {"normal"}
    limits, qos = queue.parse_assoc_limits(ASSOC, "alice", "hpc", "proj", "gpu")  # a partition's own association
    assert sorted(n for n, _ in limits) == [20, 100] and qos == {"normal", "long"}  # no default QOS: any allowed
    limits, _ = queue.parse_assoc_limits(ASSOC, "alice", "hpc", None, None)  # account unknown: every account
    assert sorted(n for n, _ in limits) == [5, 100]
    assert queue.parse_assoc_limits(ASSOC, "carol", "hpc", "proj", None) == ([], set())
    assert queue.parse_assoc_limits("", "alice") == ([], set())


def test_unset_and_negative_limits_are_no_limit():
    limits, _ = queue.parse_assoc_limits("hpc|proj|alice|||normal|\nhpc|proj|alice||-1|normal|\n", "alice", "hpc")
    assert limits == []
    assert queue.parse_qos_limits(QOS) == {"long": 50, "high": 3}
    assert queue.parse_qos_limits("normal|-1\n\ngarbage\n") == {}


def test_tightest_limit_over_association_and_qos():
    t = queue.tightest_limit
    assert t(ASSOC, QOS, "alice", "hpc", "proj", [(None, None, None)]) == (
        100, "MaxSubmitJobs of association hpc/proj/alice")
    assert t(ASSOC, QOS, "alice", "hpc", "proj", [(None, "high", None)]) == (3, "MaxSubmitJobsPerUser of QOS high")
    assert t(ASSOC, QOS, "alice", "hpc", "proj", [(None, None, "gpu")])[0] == 20  # via the QOS 'long' too: 50
    assert t(ASSOC, QOS, "alice", "hpc", "proj", [("other", None, None), (None, None, None)])[0] == 5  # two stages
    assert t(ASSOC, "", "alice", "lab", "proj", [(None, None, None)])[0] == 2
    assert t("hpc|proj|alice|||normal|normal\n", QOS, "alice", "hpc", "proj", [(None, None, None)]) is None


def test_submit_limit_free_slots_and_reason():
    lim = queue.SubmitLimit(5, "MaxSubmitJobs of association c/a/u", in_queue=3)
    assert lim.free == 2 and queue.SubmitLimit(5, "x", in_queue=9).free == 0
    assert lim.reason(2) == "MaxSubmitJobs of association c/a/u is 5; 3 of your jobs were in the queue, 2 more submitted now"


def test_no_sacctmgr_means_no_limit(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert queue.submit_limit([(None, None, None)]) is None


def test_parse_test_only():
    ok = "sbatch: Job 87 to start at 2026-11-26T17:33:05 using 1 processors on nodes localhost in partition debug\n"
    assert queue.parse_test_only(ok) == "to start at 2026-11-26T17:33:05 on localhost in partition debug"
    bad = ("sbatch: error: QOSMaxSubmitJobPerUserLimit\nallocation failure: Job violates accounting/QOS policy "
           "(job submit limit, user's size and/or time limits)\n")
    assert queue.parse_test_only(bad).startswith("refused: allocation failure: Job violates")


# ---------------------------------------------------------------- what fits
def _arrays():
    return [L.ArrayPlan(1, [["a0"], ["a1"], ["a2"]], throttle=3),
            L.ArrayPlan(2, [["b0", "b1"], ["b2"]], throttle=2),
            L.ArrayPlan(2, [["b3"]], depends=["7"], throttle=1)]


def test_fit_cuts_arrays_at_the_free_slots_in_order():
    todo, held = L.fit(_arrays(), None)  # no limit: everything, unchanged
    assert [a.tasks for a in todo] == [a.tasks for a in _arrays()] and held == []
    todo, held = L.fit(_arrays(), 4)  # each task is one job
    assert [a.tasks for a in todo] == [[["a0"], ["a1"], ["a2"]], [["b0", "b1"]]]
    assert todo[1].throttle == 1 and held == ["b2", "b3"]
    todo, held = L.fit(_arrays(), 2)
    assert [a.tasks for a in todo] == [[["a0"], ["a1"]]] and todo[0].throttle == 2
    assert held == ["a2", "b0", "b1", "b2", "b3"]
    assert L.fit(_arrays(), 0) == ([], ["a0", "a1", "a2", "b0", "b1", "b2", "b3"])
    assert L.fit(_arrays(), 6)[0][-1].depends == ["7"]


def test_stage2_runs_of_a_held_stage1_run_are_held_not_given_a_dangling_dependency():
    runs = [("b0", "h", None), ("b1", "h", "a0"), ("b2", "h", "a1"), ("b3", "h", "a2"), ("b4", "h", "a3")]
    jobs = {"a0": "11", "a2": "9"}  # a0 submitted now (job 11), a2 still queued from before (job 9), a3 done
    groups, held = L.stage2_groups(runs, {"a1"}, jobs.get)
    assert held == ["b2"]
    assert groups == {"": [("b0", "h", None), ("b4", "h", "a3")], "11": [("b1", "h", "a0")],
                      "9": [("b3", "h", "a2")]}


# ---------------------------------------------------------------- submit_pending under a limit (no Slurm)
def _spec(**kw):
    d = {"name": "t", "output_dir": "/tmp/nowhere", "hosts": [{"name": "a", "model": "m1"}, {"name": "b", "model": "m2"}],
         "host_pairs": [["a", "b"]], "datasets": [{"name": "d", "source": "x.csv", "eval_size": 100}],
         "techniques": ["lora"], "conditions": ["ported"], "regimes": ["zero-shot"], "seeds": [0],
         "resources": {"stage1": {"pack_size": 1}, "stage2": {"pack_size": 1}}}
    d.update(kw)
    return S.parse(d)


class FakeSlurm:
    """sbatch, squeue and sacct as far as submit_pending and snapshot use them: every submitted task stays
    pending until finish() marks it done (its shard, and its module for stage 1)."""

    def __init__(self, monkeypatch, sweep: Sweep, limit: int | None, refuse_after: int | None = None):
        self.sweep, self.limit, self.refuse_after = sweep, limit, refuse_after
        self.next_id, self.queued, self.calls = 100, {}, []  # task key -> run ids
        monkeypatch.setattr(queue, "have_slurm", lambda: True)
        monkeypatch.setattr(queue, "max_array_size", lambda: 1001)
        monkeypatch.setattr(slurm, "ensure_hosts", lambda spec: None)
        monkeypatch.setattr(queue, "query_squeue", lambda ids: {k: {"state": "PENDING", "name": "t.s1", "reason": ""}
                                                                 for k in self.queued})
        monkeypatch.setattr(queue, "query_sacct", lambda ids: {})
        monkeypatch.setattr(queue, "submit_limit", lambda targets: None if self.limit is None else
                            queue.SubmitLimit(self.limit, "MaxSubmitJobs of association c/a/u", len(self.queued)))
        monkeypatch.setattr(slurm, "_submit", self.submit)

    def submit(self, sweep, spec, a):
        if self.refuse_after is not None and len(self.calls) >= self.refuse_after:
            raise slurm.LimitRefused("sbatch refused the stage-2 array: Job violates accounting/QOS policy")
        if self.limit is not None:
            assert len(self.queued) + len(a.tasks) <= self.limit, "submitted past the limit"
        for dep in a.depends:  # never a dependency on a job that does not exist
            assert any(k.split("_")[0] == dep for k in self.queued), (dep, self.queued)
        job = str(self.next_id)
        self.next_id += 1
        self.calls.append(a)
        for i, t in enumerate(a.tasks):
            self.queued[f"{job}_{i}"] = t
        rec = {"stage": a.stage, "job_id": job, "array": True, "name": "t.s1", "tasks": a.tasks, "depends": a.depends}
        with open(sweep.root / st.JOBS_FILE, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    def finish(self, n: int) -> None:
        """The n oldest queued tasks end, their runs done."""
        for key in list(self.queued)[:n]:
            for rid in self.queued.pop(key):
                self.sweep.shards.mkdir(exist_ok=True)
                self.sweep.shard(rid).write_bytes(b"")
                if rid.startswith("a"):
                    m = self.sweep.module(rid)
                    m.mkdir(parents=True, exist_ok=True)
                    (m / "module.safetensors").write_bytes(b"x")
                    (m / "module.json").write_text(json.dumps({"sha256": hashlib.sha256(b"x").hexdigest()}))

    def submitted(self) -> list[str]:
        return [rid for a in self.calls for t in a.tasks for rid in t]


def _states(sweep):
    snap = st.snapshot(sweep, slurm=True)
    return {s: len(snap.ids(s)) for s in st.STATES if snap.ids(s)}, snap


def test_submits_what_fits_holds_the_rest_and_resume_submits_it_later(tmp_path, monkeypatch, capsys):
    sweep = _sweep(tmp_path / "s", 3, 6)
    fake = FakeSlurm(monkeypatch, sweep, limit=4)
    con = Console(width=200)
    res = slurm.submit_pending(sweep, con, "T", _spec())
    assert res.arrays == 2 and res.waiting == 5 and len(fake.queued) == 4
    assert fake.calls[0].stage == 1 and len(fake.calls[0].tasks) == 3
    assert fake.calls[1].stage == 2 and len(fake.calls[1].tasks) == 1 and fake.calls[1].depends == ["100"]
    counts, snap = _states(sweep)
    assert counts == {"waiting": 5, "pending": 4}
    assert "MaxSubmitJobs of association c/a/u is 4" in snap.waiting["reason"]
    st.print_status(con, snap, target="T")
    out = capsys.readouterr().out
    assert "5 run(s) waiting, not submitted: MaxSubmitJobs of association c/a/u is 4" in out
    assert "pipeline resume T" in out

    res = slurm.submit_pending(sweep, con, "T", _spec())  # the queue is full: nothing more
    assert res.arrays == 0 and res.waiting == 5 and len(fake.calls) == 2
    fake.finish(3)  # the stage-1 tasks end
    res = slurm.submit_pending(sweep, con, "T", _spec(), only_waiting=True)
    assert res.arrays == 1 and res.waiting == 2 and not fake.calls[-1].depends  # their modules are done now
    fake.finish(4)
    res = slurm.submit_pending(sweep, con, "T", _spec(), only_waiting=True)
    assert res.waiting == 0 and not (sweep.root / st.WAITING_FILE).exists()
    fake.finish(4)
    assert _states(sweep)[0] == {"done": 9}
    assert sorted(fake.submitted()) == sorted(st.read_plan(sweep)["run_id"])  # every run once: none lost, none doubled


def test_stage2_waits_while_its_stage1_run_waits(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path / "s", 3, 3)
    fake = FakeSlurm(monkeypatch, sweep, limit=2)
    res = slurm.submit_pending(sweep, Console(width=200), "T", _spec())
    assert [len(a.tasks) for a in fake.calls] == [2] and res.waiting == 4  # a2 and the three stage-2 runs
    waiting = set(json.loads((sweep.root / st.WAITING_FILE).read_text())["runs"])
    assert waiting == {"a00000000002", "b00000000000", "b00000000001", "b00000000002"}
    fake.finish(1)  # a0 done: b0 may start, a2 and b2 need slots
    slurm.submit_pending(sweep, Console(width=200), "T", _spec(), only_waiting=True)
    fake.finish(10)
    slurm.submit_pending(sweep, Console(width=200), "T", _spec(), only_waiting=True)
    fake.finish(10)
    slurm.submit_pending(sweep, Console(width=200), "T", _spec(), only_waiting=True)
    fake.finish(10)
    assert _states(sweep)[0] == {"done": 6}
    assert sorted(fake.submitted()) == sorted(st.read_plan(sweep)["run_id"])


def test_without_a_limit_everything_is_submitted_at_once(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path / "s", 3, 6)
    fake = FakeSlurm(monkeypatch, sweep, limit=None)
    res = slurm.submit_pending(sweep, Console(width=200), "T", _spec())
    assert res.waiting == 0 and res.limit is None and len(fake.queued) == 9
    assert [(a.stage, len(a.tasks), a.depends) for a in fake.calls] == [(1, 3, []), (2, 6, ["100"])]
    assert not (sweep.root / st.WAITING_FILE).exists()


def test_an_sbatch_refused_for_a_limit_holds_the_rest_back(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path / "s", 2, 2)
    fake = FakeSlurm(monkeypatch, sweep, limit=None, refuse_after=1)
    res = slurm.submit_pending(sweep, Console(width=200), "T", _spec())
    assert res.arrays == 1 and res.waiting == 2 and "Job violates accounting/QOS policy" in res.reason
    assert _states(sweep)[0] == {"waiting": 2, "pending": 2}
    fake.refuse_after = None
    slurm.submit_pending(sweep, Console(width=200), "T", _spec())
    assert _states(sweep)[0] == {"pending": 4}


def test_sbatch_limit_refusals_are_recognised():
    assert slurm._LIMIT_REFUSAL.search("sbatch: error: AssocMaxSubmitJobLimit\nsbatch: error: Batch job submission "
                                       "failed: Job violates accounting/QOS policy (job submit limit, user's size and/or "
                                       "time limits)")
    assert slurm._LIMIT_REFUSAL.search("sbatch: error: QOSMaxSubmitJobPerUserLimit")
    assert not slurm._LIMIT_REFUSAL.search("sbatch: error: Batch job submission failed: Invalid account or "
                                           "account/partition combination specified")


def test_other_sbatch_errors_still_fail(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path / "s", 1, 1)
    FakeSlurm(monkeypatch, sweep, limit=None)
    monkeypatch.setattr(slurm, "_submit", lambda *a: (_ for _ in ()).throw(SlurmError("Invalid account")))
    with pytest.raises(SlurmError, match="Invalid account"):
        slurm.submit_pending(sweep, Console(width=200), "T", _spec())


# ---------------------------------------------------------------- --follow
def test_follow_submits_as_slots_free_until_done(tmp_path, monkeypatch, capsys):
    sweep = _sweep(tmp_path / "s", 2, 4)
    fake = FakeSlurm(monkeypatch, sweep, limit=2)
    polls = []
    rc = F.follow(sweep, Console(width=200), "T", _spec(), interval=7, until_done=True,
                  sleep=lambda s: polls.append(s) or fake.finish(1))
    out = capsys.readouterr().out
    assert rc == 0 and polls and set(polls) == {7} and "all runs done" in out
    assert "next check in 7 s" in out and "waiting" in out
    assert sorted(fake.submitted()) == sorted(st.read_plan(sweep)["run_id"])
    assert max(len(fake.queued), 0) == 0


def test_follow_stops_when_all_is_submitted_and_on_ctrl_c(tmp_path, monkeypatch, capsys):
    sweep = _sweep(tmp_path / "s", 2, 2)
    fake = FakeSlurm(monkeypatch, sweep, limit=None)
    assert F.follow(sweep, Console(width=200), "T", _spec(), sleep=lambda s: pytest.fail("no need to poll")) == 0
    assert "every run is submitted" in capsys.readouterr().out and len(fake.calls) == 2

    sweep = _sweep(tmp_path / "s2", 2, 2)
    fake = FakeSlurm(monkeypatch, sweep, limit=1)

    def ctrl_c(s):
        raise KeyboardInterrupt

    assert F.follow(sweep, Console(width=200), "T", _spec(), sleep=ctrl_c) == 130
    assert "stopped following (Ctrl-C)" in capsys.readouterr().out
    assert _states(sweep)[0] == {"waiting": 3, "pending": 1}  # recorded as it stood


# ---------------------------------------------------------------- sweep --dry-run
def test_dry_run_without_slurm_says_it_skipped_the_test(tiny_spec, write_spec, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setenv("PATH", "/nonexistent")
    queue.max_array_size.cache_clear()
    try:
        assert main(["sweep", str(write_spec(dict(tiny_spec, techniques=["lora"]))), "--dry-run"]) == 0
    finally:
        queue.max_array_size.cache_clear()
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the width; a longer tmp path moves the breaks
    assert "dry run: nothing is written or submitted" in out and "Slurm layout" in out
    assert "sbatch --test-only skipped: Slurm is not reachable here" in out
    assert not Path(tiny_spec["output_dir"]).exists()


# ---------------------------------------------------------------- GrpSubmitJobs and MaxSubmitJobsPerAccount (issue 18)
def test_grpsubmit_and_qos_per_account_limits_are_read_like_maxsubmit():
    assoc = "hpc|proj|alice||100|normal|normal|30\n"  # ASSOC_FORMAT: ..., grpsubmitjobs
    accounts = "hpc|proj|||||normal|12\nhpc|proj|alice||100|normal|normal|30\nhpc|other|||||normal|1\n"
    qos = "normal|50|8|40\nlong|||\n"  # QOS_FORMAT: name, per user, per account, group
    assert queue.parse_qos_table(qos) == {"normal": {"per_user": 50, "per_account": 8, "group": 40}}
    assert queue.parse_account_limits(accounts, "hpc", "proj") == [(12, "GrpSubmitJobs of association hpc/proj")]
    found = queue.submit_limits(assoc, qos, "alice", "hpc", None, [("proj", None, None)], accounts)
    assert found == sorted([
        (100, "MaxSubmitJobs of association hpc/proj/alice", ("user",)),
        (30, "GrpSubmitJobs of association hpc/proj/alice", ("user",)),
        (12, "GrpSubmitJobs of association hpc/proj", ("account", "proj")),
        (50, "MaxSubmitJobsPerUser of QOS normal", ("user",)),
        (8, "MaxSubmitJobsPerAccount of QOS normal", ("qos-account", "normal", "proj")),
        (40, "GrpSubmitJobs of QOS normal", ("qos", "normal"))])
    assert queue.tightest_limit(assoc, qos, "alice", "hpc", None, [("proj", None, None)]) == (
        8, "MaxSubmitJobsPerAccount of QOS normal")


def _sacctmgr(monkeypatch, answers: dict, queue_of):
    """sacctmgr and squeue as submit_limit asks them: ``answers`` by sacctmgr entity, ``queue_of(args)`` the
    squeue lines for the filter args (-u / -A / -q)."""
    monkeypatch.setattr(queue.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(queue, "user_name", lambda: "alice")
    monkeypatch.setattr(queue, "cluster_name", lambda: "hpc")

    def run(cmd, timeout=60):
        if cmd[0] == "sacctmgr":
            what = cmd[4] + ("-account" if cmd[5].startswith("account=") else "")
            return answers.get(what, "")
        assert cmd[0] == "squeue"
        return queue_of(cmd[cmd.index("-r") + 1:cmd.index("-o")])

    monkeypatch.setattr(queue, "_run", run)


def test_an_accounts_grpsubmit_counts_everyone_in_the_account_and_holds_back_only_what_does_not_fit(
        tmp_path, monkeypatch):
    """The account's GrpSubmitJobs is 10 and colleagues have 6 jobs queued: the submission is cut to the 4 that
    fit (not refused whole by sbatch, which used to hold back every run of the refused array)."""
    sweep = _sweep(tmp_path / "s", 3, 6)
    real = queue.submit_limit
    fake = FakeSlurm(monkeypatch, sweep, limit=None)
    monkeypatch.setattr(queue, "submit_limit", real)
    others = [f"9{i}|PENDING" for i in range(6)]
    mine = lambda: [f"{k}|PENDING" for k in fake.queued]  # noqa: E731
    _sacctmgr(monkeypatch, {"assoc": "hpc|proj|alice||100|normal|normal|\n", "qos": "normal|||\n",
                            "user": "proj\n", "assoc-account": "hpc|proj|||||normal|10\n"},
              lambda args: "\n".join(mine() + (others if "-A" in args else [])))

    def sbatch(sweep_, spec, a):  # Slurm's own judgement: refuses what passes the account's limit
        if len(others) + len(fake.queued) + len(a.tasks) > 10:
            raise slurm.LimitRefused("sbatch refused the stage-2 array: AssocGrpSubmitJobsLimit")
        return fake.submit(sweep_, spec, a)

    monkeypatch.setattr(slurm, "_submit", sbatch)
    res = slurm.submit_pending(sweep, Console(width=200), "T", _spec())
    assert len(fake.queued) == 4 and res.waiting == 5 and res.arrays == 2
    assert res.reason.startswith("GrpSubmitJobs of association hpc/proj is 10; 6 jobs of account proj were in the queue")


def test_a_qos_per_account_limit_counts_the_accounts_jobs_under_that_qos(monkeypatch):
    seen = []
    _sacctmgr(monkeypatch, {"assoc": "hpc|proj|alice||100|normal|normal|\n", "qos": "normal||5|\n",
                            "user": "proj\n"},
              lambda args: seen.append(tuple(args)) or ("1|RUNNING\n2|PENDING\n" if "-q" in args else "1|RUNNING\n"))
    lim = queue.submit_limit([(None, None, None)])
    assert (lim.max_jobs, lim.in_queue, lim.free) == (5, 2, 3)
    assert lim.reason() == "MaxSubmitJobsPerAccount of QOS normal is 5; 2 jobs of account proj under QOS normal were in the queue"
    assert ("-q", "normal", "-A", "proj") in seen


def test_an_older_sacctmgr_without_the_new_fields_still_gives_maxsubmit(monkeypatch):
    asked = []
    _sacctmgr(monkeypatch, {}, lambda args: "1|RUNNING\n")

    def run(cmd, timeout=60):
        if cmd[0] == "squeue":
            return "1|RUNNING\n"
        asked.append(cmd[-1])
        if "grpsubmitjobs" in cmd[-1] or "maxsubmitjobsperaccount" in cmd[-1]:
            raise queue.SlurmQueryError("sacctmgr exited 1: Unknown field 'grpsubmitjobs'")
        return {"assoc": "hpc|proj|alice||4|normal|normal\n", "qos": "normal|\n", "user": "proj\n"}[cmd[4]]

    monkeypatch.setattr(queue, "_run", run)
    lim = queue.submit_limit([(None, None, None)])
    assert (lim.max_jobs, lim.in_queue, lim.source) == (4, 1, "MaxSubmitJobs of association hpc/proj/alice")
    assert f"format={queue.ASSOC_FORMAT}" in asked and "format=name,maxsubmitjobsperuser" in asked
