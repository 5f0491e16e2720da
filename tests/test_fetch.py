"""Compute nodes without internet: the sbatch scripts run jobs offline, ``pipeline fetch`` fills and checks the
HF cache, and ``pipeline sweep`` refuses (one line, nothing submitted) a hub name that does not load offline.

No hub is reachable here: the network is kept out with HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 in the
environment (downloads fail at once), and a cache is filled by writing the hub's snapshot layout by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline import hub
from pipeline.cli import main
from pipeline.hosts import resolve_host
from pipeline.launch import layout as L

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network attempt: a download fails at once
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return home


def cache_host(home, repo: str, folder) -> None:
    """Put a model folder into the HF cache as hub repo ``repo`` (refs/main -> snapshots/<sha>/)."""
    d = home / "hub" / f"models--{repo.replace('/', '--')}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(SHA)
    shutil.copytree(folder, d / "snapshots" / SHA)


def test_sbatch_scripts_run_jobs_offline(tiny_spec, write_spec, capsys):
    assert main(["plan", str(write_spec(tiny_spec)), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    scripts = out.split("#!/bin/bash")[1:]
    assert len(scripts) == 2  # one per stage
    for script in scripts:
        lines = script.splitlines()
        srun = next(i for i, ln in enumerate(lines) if ln.startswith("srun "))
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            i = lines.index(f"export {var}=1")
            assert i < srun  # set before the job's Python starts
    assert L.sbatch_params(__import__("pipeline.spec", fromlist=["parse"]).parse(tiny_spec), 1)["setup"][:2] == [
        "export HF_HUB_OFFLINE=1", "export HF_DATASETS_OFFLINE=1"]


def test_which_names_are_hub_names(tmp_path):
    (tmp_path / "host").mkdir()
    (tmp_path / "d.csv").write_text("text,label\n")
    assert hub.is_hub_host("google/flan-t5-base") and not hub.is_hub_host("embedded:tiny-bert-a")
    assert not hub.is_hub_host(str(tmp_path / "host"))
    assert hub.is_hub_dataset("stanfordnlp/sst2") and hub.is_hub_dataset("sst2")
    assert not hub.is_hub_dataset("embedded:rotten_tomatoes") and not hub.is_hub_dataset(str(tmp_path / "d.csv"))
    assert not hub.is_hub_dataset("data/missing.parquet")  # a local file name, not a repo id


def test_nothing_to_fetch_for_embedded_hosts_and_data(tiny_spec, write_spec, hf_home, capsys):
    assert main(["fetch", str(write_spec(tiny_spec))]) == 0
    assert "nothing to fetch" in capsys.readouterr().out


@pytest.fixture
def hub_spec(tiny_spec, write_spec, models_dir):
    resolve_host("embedded:tiny-bert-a", models_dir)  # the folder the fake hub repo is made of

    def make(host="fake-org/tiny-bert", dataset=None):
        d = dict(tiny_spec, techniques=["lora"])
        d["hosts"] = [{"name": "hub-a", "model": host}, {"name": "tiny-b", "model": "embedded:tiny-bert-b"}]
        d["host_pairs"] = [["hub-a", "tiny-b"]]
        if dataset:
            d["datasets"] = [{"name": "hubdata", "source": dataset, "train_size": 16, "eval_size": 8}]
        return write_spec(d)

    return make


def test_uncached_hub_host_fails_fetch_and_sweep_with_one_line(hub_spec, hf_home, capsys, monkeypatch):
    spec = hub_spec("fake-org/not-cached")
    assert main(["fetch", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {spec}: host 'hub-a' (fake-org/not-cached) does not load "
                                                    "offline from the HF cache"), err
    assert str(hf_home / "hub") in err and "the hub is off here (HF_HUB_OFFLINE=1)" in err
    assert "run `pipeline fetch" not in err and "set HF_HOME to a cache that has it" in err  # fetch's own advice

    # sweep: the same check before anything is written or submitted
    from pipeline.launch import queue, slurm

    submitted = []
    monkeypatch.setattr(queue, "have_slurm", lambda: True)
    monkeypatch.setattr(slurm, "submit_pending", lambda *a, **k: submitted.append(a) or 1)
    assert main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # (above it: progress of building the embedded host tiny-b)
    assert err.startswith("error: ") and "host 'hub-a' (fake-org/not-cached) does not load offline" in err
    assert not (spec.parent / "sweep" / "plan.parquet").exists()
    assert not submitted


def test_uncached_hub_dataset_fails_with_one_line(hub_spec, hf_home, capsys, models_dir):
    cache_host(hf_home, "fake-org/tiny-bert", models_dir / "tiny-bert-a")
    spec = hub_spec(dataset="fake-org/no-such-data")
    assert main(["fetch", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset 'hubdata' (fake-org/no-such-data) does not load offline" in err, err


def test_a_cache_filled_from_a_local_folder_loads_offline(hub_spec, hf_home, capsys, monkeypatch, models_dir):
    cache_host(hf_home, "fake-org/tiny-bert", models_dir / "tiny-bert-a")
    spec = hub_spec("fake-org/tiny-bert")
    assert main(["fetch", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "host hub-a: in the HF cache, loads offline" in out and "fetching" not in out  # nothing downloaded

    from pipeline.launch import queue, slurm

    submitted = []
    monkeypatch.setattr(queue, "have_slurm", lambda: True)
    monkeypatch.setattr(slurm, "submit_pending", lambda *a, **k: submitted.append(a) or 1)
    assert main(["sweep", str(spec)]) == 0
    assert len(submitted) == 1  # the check passed, the sweep went on to submit


def test_a_cached_snapshot_without_weights_is_refused(hub_spec, hf_home, capsys, models_dir, tmp_path):
    folder = tmp_path / "noweights"
    shutil.copytree(models_dir / "tiny-bert-a", folder)
    (folder / "model.safetensors").unlink()
    cache_host(hf_home, "fake-org/tiny-bert", folder)
    assert main(["fetch", str(hub_spec("fake-org/tiny-bert"))]) == 2
    assert "no weights" in capsys.readouterr().err


def test_resume_runs_the_same_offline_check_before_it_submits(hub_spec, hf_home, capsys, monkeypatch, models_dir):
    cache_host(hf_home, "fake-org/tiny-bert", models_dir / "tiny-bert-a")
    spec = hub_spec("fake-org/tiny-bert")
    from pipeline.launch import queue, slurm

    submitted = []
    monkeypatch.setattr(queue, "have_slurm", lambda: True)
    monkeypatch.setattr(slurm, "submit_pending", lambda *a, **k: submitted.append(a) or 1)
    assert main(["sweep", str(spec)]) == 0
    folder = spec.parent / "sweep"
    shutil.rmtree(hf_home / "hub")  # the cache is gone (another HF_HOME, a purge, ...)
    capsys.readouterr()
    assert main(["resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "host 'hub-a' (fake-org/tiny-bert) does not load offline" in err, err
    assert len(submitted) == 1  # resume submitted nothing


FILL_DATASET_CACHE = r"""
import shutil, sys
from pathlib import Path
import datasets, pyarrow as pa, pyarrow.parquet as pq
home, repo, sha = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
src = home.parent / "local-data"
src.mkdir()
texts = [f"{w} film number {i}" for i in range(60) for w in (["great"] if i % 2 else ["dull"])]
pq.write_table(pa.table({"text": texts, "label": [i % 2 for i in range(60)]}), src / "train.parquet")
datasets.load_dataset("parquet", data_files={"train": str(src / "train.parquet")})  # prepared as a download would be
prepared = next(p for p in (home / "datasets" / "parquet").glob("*/0.0.0/*") if p.is_dir())
org, name = repo.split("/")
dst = home / "datasets" / f"{org}___{name}" / "default" / "0.0.0" / sha
dst.mkdir(parents=True)
for f in prepared.iterdir():
    shutil.copy(f, dst / f.name.replace("parquet-", f"{name}-"))
"""


def test_a_dataset_cache_filled_from_a_local_folder_loads_offline(hub_spec, hf_home, capsys, models_dir, tmp_path):
    """A hub dataset prepared in the datasets cache (here from a local Parquet folder, as `fetch` on a login node
    with internet would leave it) passes fetch's offline check and feeds a real run with the hub offline."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    subprocess.run([sys.executable, "-c", FILL_DATASET_CACHE, str(hf_home), "fake-org/reviews", SHA], env=env,
                   check=True, capture_output=True)
    cache_host(hf_home, "fake-org/tiny-bert", models_dir / "tiny-bert-a")
    spec = hub_spec(dataset="fake-org/reviews")
    assert main(["fetch", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "dataset hubdata" in out and "fetching" not in out, out
    p = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec), "--set", "conditions=[ported]",
                        "--set", "regimes=[zero-shot]", "--set", "both_directions=false"],
                       capture_output=True, text=True)  # HF_*_OFFLINE=1 from the fixture: no hub at all
    assert p.returncode == 0, p.stdout + p.stderr
    import pyarrow.parquet as pq

    rows = pq.read_table(spec.parent / "sweep" / "results.parquet").to_pylist()
    assert len(rows) == 2 and {r["dataset"] for r in rows} == {"hubdata"} and all(r["eval_examples"] == 8 for r in rows)


# ---------------------------------------------------------------- one offline check, one line (issue 18)
OFFLINE_REASON = ("OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
                  "in the cached files.")  # what the check child says of a host not in the cache, the hub off
def _one_line(capsys) -> tuple[str, str]:
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "fetching" not in out, out  # nothing is fetched with the hub off
    return out, err


@pytest.mark.parametrize("command", [["fetch"], ["sweep"], ["sweep", "--dry-run"], ["run"]])
def test_with_the_hub_off_every_command_refuses_in_one_line(hub_spec, hf_home, capsys, monkeypatch, command):
    from pipeline.launch import queue, slurm

    monkeypatch.setattr(queue, "have_slurm", lambda: True)
    monkeypatch.setattr(slurm, "submit_pending", lambda *a, **k: pytest.fail("submitted"))
    from pipeline.run import fetch as F

    calls = []  # the check child's own answer (test_uncached_hub_host_fails_fetch_and_sweep_with_one_line runs it)
    monkeypatch.setattr(F, "_child", lambda mode, h, d, **k: calls.append(mode) or {f"host {n}": OFFLINE_REASON for n in h})
    spec = hub_spec("fake-org/not-cached")
    assert main([command[0], str(spec), *command[1:]]) == 2
    _, err = _one_line(capsys)
    assert "host 'hub-a' (fake-org/not-cached) does not load offline" in err
    assert "the hub is off here (HF_HUB_OFFLINE=1): OSError: We couldn't connect" in err
    if command == ["fetch"]:
        assert "run `pipeline fetch" not in err and "on a machine that reaches the hub" in err
    else:
        assert f"run `pipeline fetch {spec}` on a machine that reaches the hub" in err
    assert not (spec.parent / "sweep").exists() and calls == ["check"]  # nothing written, no download tried


def test_the_reason_is_whole(hub_spec, hf_home, capsys, monkeypatch):
    from pipeline.run import fetch as F

    reason = "OSError: " + "a long reason, " * 30 + "'quoted to the end'"
    monkeypatch.setattr(F, "_child", lambda mode, h, d, **k: {f"host {n}": reason for n in h})
    assert main(["fetch", str(hub_spec("fake-org/not-cached"))]) == 2
    _, err = _one_line(capsys)
    assert reason in err and len(reason) > 400


def test_a_gated_repo_names_hf_token(hub_spec, hf_home, capsys, monkeypatch):
    from pipeline.run import fetch as F

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    calls = []

    def child(mode, h, d, **k):
        calls.append(mode)
        why = ("GatedRepoError: 401 Client Error. Cannot access gated repo for url https://huggingface.co/"
               "fake-org/gated/resolve/main/config.json." if mode == "download" else "OSError: not cached")
        return {f"host {n}": why for n in h}

    monkeypatch.setattr(F, "_child", child)
    assert main(["fetch", str(hub_spec("fake-org/gated"))]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "a gated repo, which needs a token" in err and "set HF_TOKEN" in err, err
    assert calls == ["check", "download"] and "fetching host hub-a" in out


def test_dry_run_with_the_hub_reachable_downloads_nothing_and_says_what_sweep_would_fetch(
        hub_spec, hf_home, capsys, monkeypatch):
    from pipeline.run import fetch as F

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    calls = []
    monkeypatch.setattr(F, "_child", lambda mode, h, d, **k: calls.append(mode) or {f"host {n}": "OSError: x" for n in h})
    assert main(["sweep", str(hub_spec("fake-org/not-cached")), "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the width; a longer tmp path moves the breaks
    assert calls == ["check"] and "note: host hub-a is not in the HF cache" in out and "`pipeline sweep` fetches it" in out


# ---------------------------------------------------------------- fetch only what loading needs (issue 27)
T5_V11 = {"config.json": 537, "pytorch_model.bin": 990_000_000, "tf_model.h5": 990_000_000,
          "flax_model.msgpack": 990_000_000, "special_tokens_map.json": 1_786, "spiece.model": 791_656,
          "tokenizer_config.json": 1_857, "README.md": 2_000, ".gitattributes": 1_000}
LLAMA_32 = {"config.json": 877, "generation_config.json": 189, "model.safetensors": 2_471_645_608,
            "original/consolidated.00.pth": 2_471_677_246, "original/params.json": 220,
            "original/tokenizer.model": 2_183_982, "special_tokens_map.json": 296, "tokenizer.json": 9_085_657,
            "tokenizer_config.json": 54_528, "LICENSE.txt": 7_712, "USE_POLICY.md": 6_021}
SHARDED = {"config.json": 1, "model.safetensors.index.json": 1, "model-00001-of-00002.safetensors": 5,
           "model-00002-of-00002.safetensors": 5, "consolidated.safetensors": 10, "pytorch_model.bin.index.json": 1,
           "pytorch_model-00001-of-00002.bin": 5, "pytorch_model-00002-of-00002.bin": 5, "tokenizer.json": 1}


@pytest.mark.parametrize("repo,files,want", [
    ("google/t5-v1_1-base", T5_V11, ["config.json", "pytorch_model.bin", "special_tokens_map.json", "spiece.model",
                                     "tokenizer_config.json"]),
    ("meta-llama/Llama-3.2-1B", LLAMA_32, ["config.json", "generation_config.json", "model.safetensors",
                                           "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]),
    ("org/sharded", SHARDED, ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                              "model.safetensors.index.json", "tokenizer.json"]),
])
def test_fetch_downloads_only_what_loading_needs_and_prints_the_bytes(repo, files, want, monkeypatch, capsys):
    """T5 v1.1 also carries TensorFlow and Flax weights, Llama-3.2 its original/*.pth: 2-3x the bytes a load reads."""
    import types

    import huggingface_hub

    from pipeline.run import fetch as F

    asked = []

    class Api:
        def model_info(self, repo_id, files_metadata=False):
            sib = [types.SimpleNamespace(rfilename=f, size=n) for f, n in files.items()]
            return types.SimpleNamespace(siblings=sib)

    def index(repo_id, filename, **kw):  # the index names its shards (not consolidated.safetensors)
        p = Path(__import__("tempfile").mkdtemp()) / filename
        p.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                "b": "model-00002-of-00002.safetensors"}}))
        return str(p)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", index)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda r, **kw: asked.append(kw) or "/nowhere")
    assert F._download_here({"h": repo}, {}) == {}
    assert len(asked) == 1 and sorted(asked[0]["allow_patterns"]) == want
    out = capsys.readouterr().out
    got = sum(files[f] for f in want)
    assert f"host h ({repo}): {len(want)} files, {F._gb(got)} of the repo's {F._gb(sum(files.values()))}" in out


def test_a_truncated_weight_file_does_not_load_offline(hub_spec, hf_home, capsys, models_dir, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(models_dir / "tiny-bert-a", folder)
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # a download cut short, a quota hit
    cache_host(hf_home, "fake-org/tiny-bert", folder)
    assert main(["fetch", str(hub_spec("fake-org/tiny-bert"))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weight file model.safetensors does not read" in err, err


def test_a_bin_only_host_and_a_sharded_one_load_offline_and_a_missing_shard_does_not(models_dir, tmp_path):
    """T5 v1.1 ships only pytorch_model.bin; an index must find every shard it names."""
    import torch
    from transformers import AutoModel

    from pipeline.run import fetch as F

    model = AutoModel.from_pretrained(models_dir / "tiny-bert-a")
    (tmp_path / "bin").mkdir()
    model.config.save_pretrained(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # as T5 v1.1's repo has it
    assert F.check_weights(tmp_path / "bin") > 0
    model.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) >= 2 and F.check_weights(tmp_path / "sharded") == sum(
        p.stat().st_size for p in [*shards, tmp_path / "sharded" / "model.safetensors.index.json"])
    shards[-1].unlink()
    with pytest.raises(FileNotFoundError, match=f"weight file {shards[-1].name} .named by the index. is missing"):
        F.check_weights(tmp_path / "sharded")
