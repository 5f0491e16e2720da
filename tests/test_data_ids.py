"""Run ids see the data and the tokenizer (pipeline.dataid, pipeline.plan): a data file edited in place, a hub
dataset that resolves to another commit, or changed tokenizer files plan new runs -- exactly the affected ones --
while `status` and `resume` treat the old shards as the other runs they are, and nothing is deleted."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline import dataid
from pipeline import plan as P
from pipeline import spec as S
from pipeline.errors import DataError
from pipeline.launch import status as st
from pipeline.sweep import Sweep

CSV = "text,label\n" + "".join(f"review number {i} was {'great' if i % 2 else 'dull'},{i % 2}\n" for i in range(40))
SHA1, SHA2 = "1" * 40, "2" * 40


@pytest.fixture(autouse=True)
def fresh_hash_cache(tmp_path, monkeypatch):
    """Each test its own hash cache, on disk and in this process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(dataid, "_memo", {})
    monkeypatch.setattr(dataid, "_disk", None)


def two_datasets(tmp_path, tiny_spec) -> tuple[dict, Path, Path]:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(CSV)
    b.write_text(CSV.replace("review", "film"))
    d = copy.deepcopy(tiny_spec)
    d["datasets"] = [{"name": "a", "source": str(a), "train_size": 16, "eval_size": 8},
                     {"name": "b", "source": str(b), "train_size": 16, "eval_size": 8}]
    d["techniques"] = ["lora", "bottleneck"]
    return d, a, b


def ids(d: dict) -> dict[str, str]:
    """run id -> its dataset, for the plan of spec dict ``d`` as this machine sees it."""
    return {r.run_id: r.labels["dataset"] for r in P.build(S.parse(d)).runs}


def edit_in_place(path: Path, old: str, new: str) -> None:
    """Rewrite the file's bytes where it is (same inode), as an editor or a regenerating script would."""
    text = path.read_text()
    assert old in text
    with open(path, "r+") as f:
        f.write(text.replace(old, new, 1))
        f.truncate()


def test_editing_a_local_csv_in_place_changes_every_affected_run_id_and_no_other(tmp_path, tiny_spec):
    d, a, _ = two_datasets(tmp_path, tiny_spec)
    before = ids(d)
    assert sorted(set(before.values())) == ["a", "b"] and len(before) > 20
    edit_in_place(a, "review number 3 was great,1", "review number 3 was great,0")  # one label, same size
    st_a = os.stat(a)
    os.utime(a, ns=(st_a.st_atime_ns, st_a.st_mtime_ns + 1_000_000))  # an edit lands at a later time
    after = ids(d)
    assert len(after) == len(before)
    moved = {rid for rid, ds in before.items() if rid not in after}
    assert moved == {rid for rid, ds in before.items() if ds == "a"}  # every run on a, stage 1 and 2 ...
    assert {rid for rid, ds in after.items() if ds == "b"} == {rid for rid, ds in before.items() if ds == "b"}  # ... no other
    edit_in_place(a, "review number 3 was great,0", "review number 3 was great,1")  # back as it was: the old ids
    assert ids(d) == before


def test_file_hashes_are_cached_by_path_size_and_mtime(tmp_path, tiny_spec, monkeypatch):
    d, a, b = two_datasets(tmp_path, tiny_spec)
    hashed = []
    real = dataid.sha256_file
    monkeypatch.setattr(dataid, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    first = ids(d)
    assert sorted(n for n in hashed if n.endswith(".csv")) == ["a.csv", "b.csv"]
    hashed.clear()
    assert ids(d) == first and hashed == []  # this process: from memory
    monkeypatch.setattr(dataid, "_memo", {})
    monkeypatch.setattr(dataid, "_disk", None)
    assert ids(d) == first and hashed == []  # a new process: from the cache file
    assert str(a.resolve()) in json.loads(dataid.hash_cache_file().read_text())
    with open(a, "a") as f:
        f.write("one more review,1\n")
    assert ids(d) != first and hashed == ["a.csv"]  # size changed: a is read again, b is not


def test_a_local_data_folder_is_identified_by_its_files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text(CSV)
    (tmp_path / "data" / ".cache").mkdir()  # hidden: not data
    (tmp_path / "data" / ".cache" / "x").write_text("anything")
    one = dataid.dataset_identity(str(tmp_path / "data"))
    assert one["files"] == 1
    (tmp_path / "data" / ".cache" / "x").write_text("something else")
    assert dataid.dataset_identity(str(tmp_path / "data")) == one
    (tmp_path / "data" / "test.csv").write_text(CSV)
    assert dataid.dataset_identity(str(tmp_path / "data"))["sha256"] != one["sha256"]


def test_an_embedded_corpus_is_identified_by_its_packaged_file():
    from pipeline.files import sha256_file
    from pipeline.hosts import ROTTEN_TOMATOES, _package_dir

    got = dataid.dataset_identity("embedded:rotten_tomatoes")
    assert got == {"sha256": sha256_file(_package_dir(ROTTEN_TOMATOES[0]) / ROTTEN_TOMATOES[1])}
    assert dataid.dataset_identity("embedded:tweets") != got


def test_a_hub_dataset_is_identified_by_the_commit_it_resolves_to(tmp_path, monkeypatch, tiny_spec):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    d = copy.deepcopy(tiny_spec)
    d["datasets"] = [{"name": "hubdata", "source": "fake-org/reviews", "train_size": 16, "eval_size": 8}]
    plan = P.build(S.parse(d))
    assert plan.data == {"hubdata": {"revision": "unresolved"}} and plan.unresolved_data == ["hubdata"]
    prepared = tmp_path / "hf" / "datasets" / "fake-org___reviews" / "default" / "0.0.0" / SHA1
    prepared.mkdir(parents=True)  # a copy prepared by `datasets` (what it loads offline)
    assert dataid.dataset_identity("fake-org/reviews") == {"revision": SHA1}
    refs = tmp_path / "hf" / "hub" / "datasets--fake-org--reviews" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(SHA1)
    one = {r.run_id for r in P.build(S.parse(d)).runs}
    (refs / "main").write_text(SHA2)  # the hub moved on and `fetch` brought the new commit
    two = P.build(S.parse(d))
    assert two.data == {"hubdata": {"revision": SHA2}} and not two.unresolved_data
    assert not one & {r.run_id for r in two.runs}
    d["datasets"][0]["revision"] = SHA1  # pinned: that commit, whatever main is
    pinned = P.build(S.parse(d))
    assert pinned.data == {"hubdata": {"revision": SHA1}}
    assert all(r.key["dataset"]["revision"] == SHA1 for r in pinned.runs)


def test_changed_tokenizer_files_change_the_ids_of_the_runs_on_that_host(tmp_path, tiny_spec, models_dir):
    from pipeline.hosts import HostError, resolve_host
    from pipeline.run.runner import HostCache

    host = tmp_path / "host-a"
    shutil.copytree(resolve_host("embedded:tiny-bert-a", models_dir), host)
    d = copy.deepcopy(tiny_spec)
    d["hosts"][0]["model"] = str(host)
    d["techniques"] = ["lora"]
    before = P.build(S.parse(d))
    assert before.hosts["tiny-a"]["tokenizer"] and before.hosts["tiny-b"]["tokenizer"]
    cfg = json.loads((host / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 7
    (host / "tokenizer_config.json").write_text(json.dumps(cfg))
    after = P.build(S.parse(d))
    assert after.hosts["tiny-a"]["fingerprint"] == before.hosts["tiny-a"]["fingerprint"]  # weights as they were
    s1 = lambda p, h: {r.run_id for r in p.stage1 if r.labels["origin_host"] == h}  # noqa: E731
    assert s1(after, "tiny-b") == s1(before, "tiny-b")  # runs that never touch host a keep their ids
    assert not s1(after, "tiny-a") & s1(before, "tiny-a")
    touches_a = {r.run_id for r in before.stage2}  # every stage-2 run has host a as origin or as receiver
    assert not touches_a & {r.run_id for r in after.stage2}
    # a run planned before the edit refuses to start on the edited host
    planned = next(r for r in before.stage1 if r.labels["origin_host"] == "tiny-a")
    with pytest.raises(HostError, match="tokenizer files changed"):
        HostCache(models_dir).check(planned.key["host"])
    assert HostCache(models_dir).check(next(r for r in after.stage1 if r.labels["origin_host"] == "tiny-a")
                                       .key["host"]) == str(host)


def test_a_run_refuses_data_that_changed_since_planning(tmp_path, tiny_spec):
    from pipeline.run.runner import check_data, dataset_of

    d, a, _ = two_datasets(tmp_path, tiny_spec)
    run = next(r for r in P.build(S.parse(d)).stage1 if r.labels["dataset"] == "a")
    row = run.row()
    cfg = json.loads(row["config_json"])
    check_data(dataset_of(row, cfg), cfg)  # as planned: runs
    with open(a, "a") as f:
        f.write("a review added later,1\n")
    with pytest.raises(DataError, match="not the data this run was planned with"):
        check_data(dataset_of(row, cfg), cfg)


def _all_done(sweep: Sweep, plan) -> None:
    for r in plan.runs:
        sweep.shards.mkdir(parents=True, exist_ok=True)
        sweep.shard(r.run_id).write_bytes(b"")
        if r.stage == 1:
            sweep.module(r.run_id).mkdir(parents=True, exist_ok=True)
            (sweep.module(r.run_id) / "module.safetensors").write_bytes(b"x")
            (sweep.module(r.run_id) / "module.json").write_text("{}")


def test_status_and_resume_after_the_data_changed(tmp_path, tiny_spec, monkeypatch, capsys):
    """The recorded plan names the old data: status says so, resume refuses (one line, nothing submitted);
    planned again, the runs on the changed data are new ids to do, the rest stay done, and every old shard is
    still there."""
    from pipeline import cli
    from pipeline.launch import queue

    d, a, _ = two_datasets(tmp_path, tiny_spec)
    spec = S.parse(d)
    plan = P.build(spec)
    sweep = Sweep.for_spec(spec)
    sweep.write(spec, plan)
    _all_done(sweep, plan)
    old_shards = sorted(p.name for p in sweep.shards.iterdir())
    assert set(st.snapshot(sweep, slurm=False).state.values()) == {"done"}
    assert sweep.changed_data() == []
    with open(a, "a") as f:
        f.write("a review added later,1\n")
    assert sweep.changed_data() == [f"a ({a})"]

    assert cli.main(["status", str(sweep.root)]) == 0
    assert f"the data of a ({a}) changed since this sweep was planned" in capsys.readouterr().out
    monkeypatch.setattr(queue, "have_slurm", lambda: True)
    monkeypatch.setattr(cli, "_fetch", lambda *a, **k: {"hosts": [], "datasets": []})
    submitted = []
    monkeypatch.setattr(cli, "_submit", lambda *a, **k: submitted.append(a) or 0)
    assert cli.main(["resume", str(sweep.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed since this sweep was planned" in err and not submitted

    fresh = P.build(S.parse(d))  # what `pipeline run` / `pipeline sweep` do: plan again, record it
    Sweep.for_spec(spec).write(spec, fresh)
    sweep = Sweep.for_spec(spec)
    state = st.snapshot(sweep, slurm=False).state
    by_ds = {r.run_id: r.labels["dataset"] for r in fresh.runs}
    assert {rid for rid, s in state.items() if s == "done"} == {rid for rid, ds in by_ds.items() if ds == "b"}
    assert {rid for rid, s in state.items() if s == "missing"} == {rid for rid, ds in by_ds.items() if ds == "a"}
    assert sorted(p.name for p in sweep.shards.iterdir()) == old_shards  # nothing lost: old ids, other runs
    assert sweep.changed_data() == []
    assert cli.main(["resume", str(sweep.root)]) == 0 and len(submitted) == 1


def test_a_hub_host_is_identified_by_the_commit_its_name_resolves_to(tmp_path, monkeypatch, tiny_spec, models_dir):
    from pipeline.hosts import HostError
    from pipeline.run.runner import HostCache

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    d = copy.deepcopy(tiny_spec)
    d["hosts"][1]["model"] = "fake-org/tiny-bert"
    d["techniques"] = ["lora"]
    plan = P.build(S.parse(d))
    assert plan.hosts["tiny-b"]["revision"] is None and plan.unresolved == ["tiny-b"]  # not in the cache: provisional
    refs = tmp_path / "hf" / "hub" / "models--fake-org--tiny-bert" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(SHA1)
    one = P.build(S.parse(d))
    assert one.hosts["tiny-b"]["revision"] == SHA1 and one.unresolved == []
    (refs / "main").write_text(SHA2)
    two = P.build(S.parse(d))
    on_b = lambda p: {r.run_id for r in p.stage1 if r.labels["origin_host"] == "tiny-b"}  # noqa: E731
    on_a = lambda p: {r.run_id for r in p.stage1 if r.labels["origin_host"] == "tiny-a"}  # noqa: E731
    assert not on_b(one) & on_b(two) and on_a(one) == on_a(two)
    planned = next(r for r in one.stage1 if r.labels["origin_host"] == "tiny-b")
    with pytest.raises(HostError, match=f"now resolves to commit {SHA2}"):
        HostCache(models_dir).check(planned.key["host"])


def test_fetch_and_the_runs_load_the_pinned_revision(tiny_spec, monkeypatch):
    """A spec's `revision` reaches every load of the hub dataset: fetch's download and offline check, and the
    run's own load (pipeline.run.data)."""
    import datasets

    from pipeline import hub
    from pipeline.run import data, fetch

    d = copy.deepcopy(tiny_spec)
    d["datasets"] = [{"name": "hubdata", "source": "fake-org/reviews", "revision": "v2", "eval_split": "test"}]
    spec = S.parse(d)
    assert hub.hub_datasets(spec) == {"hubdata": ("fake-org/reviews", ["train", "test"], "v2")}
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or (_ for _ in ()).throw(
        OSError("offline")))
    assert fetch._load_datasets({"hubdata": ["fake-org/reviews", ["train", "test"], "v2"]}) == {
        "dataset hubdata": "OSError: offline"}
    assert calls == [(("fake-org/reviews",), {"split": "train", "revision": "v2"})]
    calls.clear()
    with pytest.raises(DataError):
        data._load_raw("fake-org/reviews", "train", "v2")
    assert calls == [(("fake-org/reviews",), {"split": "train", "revision": "v2"})]
