"""sweeps/paper.yaml: the study's 160 + 1,440 runs, its offline dry run with a GPU-hour estimate,
the cost model's parameter counts, and the multi-GPU launch command."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline import cost
from pipeline import plan as P
from pipeline import spec as S

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "sweeps" / "paper.yaml"


@pytest.fixture(scope="module")
def paper():
    spec = S.load(PAPER)
    return spec, P.build(spec)


def test_paper_plans_to_160_plus_1440_runs_with_unique_ids(paper):
    spec, plan = paper
    assert len(plan.stage1) == 160 and len(plan.stage2) == 1440
    ids = [r.run_id for r in plan.runs]
    assert len(set(ids)) == len(ids) == 1600
    # the axes: 4 techniques x 4 directed pairs x 2 datasets x 5 seeds (x 3 conditions x 3 regimes)
    assert spec.techniques == ["bottleneck", "prefix", "compacter", "lora"]
    assert sorted(spec.directed_pairs()) == sorted([("t5-base", "flan-t5-base"), ("flan-t5-base", "t5-base"),
                                                    ("t5-large", "flan-t5-large"), ("flan-t5-large", "t5-large")])
    assert {h.model for h in spec.hosts} == {"google/t5-v1_1-base", "google/flan-t5-base", "google/t5-v1_1-large",
                                             "google/flan-t5-large"}
    assert all(h.task == "text-to-text" for h in spec.hosts)
    assert {d.source for d in spec.datasets} == {"stanfordnlp/sst2", "cornell-movie-review-data/rotten_tomatoes"}
    assert all(d.eval_split == "validation" for d in spec.datasets)
    assert spec.conditions == ["ported", "scratch", "sampled"] and len(spec.seeds) == 5
    assert spec.regimes[0] == 0 and len(spec.regimes) == 3 and all(r > 0 for r in spec.regimes[1:])
    cells = Counter((r.key["technique"], r.labels["host_pair"], r.labels["dataset"], r.key["condition"],
                     r.key["regime"]) for r in plan.stage2)
    assert len(cells) == 4 * 4 * 2 * 3 * 3 and set(cells.values()) == {5}
    s1 = {r.run_id for r in plan.stage1}
    assert all((r.needs in s1) == (r.key["condition"] != "scratch") for r in plan.stage2)
    # resources sized for a GPU cluster
    for res in (spec.resources.stage1, spec.resources.stage2):
        assert res.gpus >= 1 and res.mem_gb >= 16 and res.pack_size and res.time_min >= 60
    assert spec.origin_training.precision == "bf16" and spec.further_training.precision == "bf16"


def test_paper_dry_run_prints_gpu_hours_without_network(monkeypatch, capsys):
    from pipeline import cli

    def no_network(*a, **k):
        raise AssertionError("the dry run tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["plan", str(PAPER), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert "160 stage-1 runs" in out and "1440 stage-2 runs" in out
    assert "cost estimate" in out and "GPU-h total" in out and "TFLOP/s" in out
    assert "google/t5-v1_1-large: 783.2 M parameters" in out


def test_cost_estimate_follows_the_documented_model(paper):
    spec, plan = paper
    t0 = time.perf_counter()
    est = cost.estimate(spec, plan)
    assert time.perf_counter() - t0 < 2.0
    assert est.stages[1].runs == 160 and est.stages[2].runs == 1440
    assert est.stages[1].skipped == est.stages[2].skipped == 0
    assert 1 < est.gpu_h < 1000
    # one stage-1 run by hand: T5-large, 2,000 steps x 32 x 128 tokens, encoder/decoder halves
    n = cost.KNOWN_PARAMS["google/t5-v1_1-large"]
    tr = spec.origin_training
    tokens = tr.max_length * tr.batch_size * tr.steps
    train = 6 * (n / 2 * tokens + n / 2 * cost.TARGET_TOKENS * tr.batch_size * tr.steps)
    ev = 2 * (n / 2 * tr.max_length * 1066 * 2 + n / 2 * cost.TARGET_TOKENS * 1066 * 2)
    got = cost.run_flops(n, "text-to-text", tr.model_dump(), tr.steps, 1066, 2)
    assert got[0] == pytest.approx(train) and got[1] == pytest.approx(ev)
    # stage-1 FLOPs add up over its runs (half base, half large hosts)
    by_size = {m: cost.KNOWN_PARAMS[m] for m in {r.key["host"]["model"] for r in plan.stage1}}
    total = sum(sum(cost.run_flops(by_size[r.key["host"]["model"]], "text-to-text", r.key["training"], r.key["training"]["steps"],
                                   r.key["dataset"]["eval_size"], 2)[:2]) for r in plan.stage1)
    assert est.stages[1].flops == pytest.approx(total)


@pytest.mark.parametrize("name, d, ff, heads, layers", [("base", 768, 2048, 12, 12), ("large", 1024, 2816, 16, 24)])
def test_built_in_parameter_counts_match_the_t5_v1_1_configs(name, d, ff, heads, layers):
    cfg = {"d_model": d, "d_ff": ff, "num_heads": heads, "d_kv": 64, "num_layers": layers, "vocab_size": 32128,
           "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
    assert cost.params_from_config(cfg) == cost.KNOWN_PARAMS[f"google/t5-v1_1-{name}"]
    assert cost.KNOWN_PARAMS[f"google/flan-t5-{name}"] == cost.KNOWN_PARAMS[f"google/t5-v1_1-{name}"]


@pytest.mark.parametrize("host", ["tiny-t5-a", "tiny-bert-b"])
def test_local_hosts_are_counted_offline_and_exactly(models_dir, host):
    from pipeline.hosts import resolve_host

    path = Path(resolve_host(f"embedded:{host}", models_dir))
    n, src = cost.host_params(f"embedded:{host}", models_dir)
    assert "safetensors" in src
    from transformers import AutoModel, AutoModelForSeq2SeqLM

    model = (AutoModelForSeq2SeqLM if "t5" in host else AutoModel).from_pretrained(path)
    assert n == sum(p.numel() for p in model.parameters())
    assert cost.params_from_config(json.loads((path / "config.json").read_text())) == n
    n2, src2 = cost.host_params(str(path))  # a local folder named by path
    assert n2 == n


def test_cost_never_builds_a_host(tmp_path):
    n, src = cost.host_params("embedded:tiny-t5-a", tmp_path)
    assert n == cost.KNOWN_PARAMS["embedded:tiny-t5-a"] and src == "built-in table"
    assert not any(tmp_path.iterdir())
    assert cost.host_params("someone/unknown-model", tmp_path) == (None, cost.host_params("x/y", tmp_path)[1])
