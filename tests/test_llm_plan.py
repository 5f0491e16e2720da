"""sweeps/llm.yaml: base <-> instruct decoder pairs planned offline -- shapes declared, parameter counts,
GPU memory per run, and a spec whose runs do not fit ``gpu_mem_gb`` refused naming the host (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import checks, cost, shapes
from pipeline import plan as P
from pipeline import spec as S
from pipeline.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
LLM = ROOT / "sweeps" / "llm.yaml"


def test_llm_plans_240_plus_2160_runs_of_the_paper_design():
    spec = S.load(LLM)
    plan = P.build(spec)
    assert len(plan.stage1) == 240 and len(plan.stage2) == 2160
    assert len({r.run_id for r in plan.runs}) == 2400
    assert spec.techniques == ["bottleneck", "prefix", "compacter", "lora"] and spec.conditions == [
        "ported", "scratch", "sampled"] and len(spec.seeds) == 5
    assert all(h.task == "causal-lm" and not h.chat_template for h in spec.hosts)
    assert {d.source for d in spec.datasets} == {"stanfordnlp/sst2", "cornell-movie-review-data/rotten_tomatoes"}
    assert len(spec.directed_pairs()) == 6
    checks.check_spec(spec, str(LLM))  # shapes from the declared configs, memory under gpu_mem_gb


def test_declared_decoder_configs_give_the_published_parameter_counts(models_dir):
    published = {"Qwen/Qwen2.5-0.5B": 494_032_768, "HuggingFaceTB/SmolLM2-360M": 361_821_120,
                 "meta-llama/Llama-3.2-1B": 1_235_814_400}
    for model, n in published.items():
        assert cost.host_params(model)[0] == n == cost.host_params(model + "-Instruct")[0]
    for arch in ("llama", "qwen2", "gpt2"):  # the tiny hosts: the config count equals the safetensors headers
        folder = models_dir / f"tiny-{arch}-a"
        if (folder / "config.json").exists():
            cfg = json.loads((folder / "config.json").read_text())
            assert shapes.decoder_params(cfg) == cost.params_from_safetensors(folder)


def test_pairs_of_different_shapes_are_refused_offline(tmp_path):
    d = yaml.safe_load(LLM.read_text())
    d["host_pairs"] = [["qwen-base", "smollm-instruct"]]
    with pytest.raises(SpecError, match=r"host_pairs\[0\]: hosts 'qwen-base' and 'smollm-instruct' differ in shape"):
        checks.check_spec(S.parse(d), "llm.yaml")


def test_memory_model_counts_every_class_row_and_the_logits():
    shape = cost.host_shape("Qwen/Qwen2.5-0.5B")
    assert shape == (896, 4864, 14, 24)
    tr = {"max_length": 128, "batch_size": 32, "precision": "bf16", "frozen_dtype": "bf16"}
    two = cost.run_memory(494_032_768, shape, tr, task="causal-lm", classes=2, vocab=151936)
    three = cost.run_memory(494_032_768, shape, tr, task="causal-lm", classes=3, vocab=151936)
    plain = cost.run_memory(494_032_768, shape, tr, task="causal-lm", classes=1, vocab=151936)
    assert two["weights"] == pytest.approx(494_032_768 * 2 / 1e9) and two["bf16_copies"] == 0
    assert three["activations"] == pytest.approx(1.5 * two["activations"])  # a row per class, logits included
    assert two["activations"] == pytest.approx(2 * plain["activations"])
    assert 10 < two["total"] < 15  # ~12.1 GB (the T5-fitted model said 26.9: 2-4x high for decoders)


def test_a_spec_over_gpu_mem_gb_is_refused_naming_the_host():
    d = yaml.safe_load(LLM.read_text())
    d["resources"]["stage2"]["gpu_mem_gb"] = 14  # the Llama-3.2-1B runs (~16.5 GB with the fp32 LM head) no longer
    with pytest.raises(SpecError, match=r"resources\.stage2\.gpu_mem_gb: a run on host 'llama-base' "  # fit
                                        r"\(meta-llama/Llama-3.2-1B\) needs ~16\.\d GB at batch 32 x 128"):
        checks.check_spec(S.parse(d), "llm.yaml")
    d["further_training"]["batch_size"] = 16
    checks.check_spec(S.parse(d), "llm.yaml")  # half the batch fits
    assert "gpu_mem_gb" not in S.parse(yaml.safe_load((ROOT / "tests/specs/tiny.yaml").read_text())).model_dump(
        mode="json")["resources"]["stage1"]  # left out of dumps while unset: older specs keep their digests


def test_dry_run_prints_memory_per_host_offline(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "pipeline", "plan", str(LLM)], cwd=ROOT, capture_output=True, text=True,
                       env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = " ".join(p.stdout.split())
    assert "240 stage-1 runs" in out and "2160 stage-2 runs" in out and "provisional" in out
    for name in ("qwen-base", "qwen-instruct", "smollm-base", "smollm-instruct", "llama-base", "llama-instruct"):
        assert f"host {name}: ~" in out and "GB peak GPU memory a run" in out
    assert "GPU-h" in out


def test_zero_shot_runs_keep_the_frozen_dtype_of_the_trained_ones():
    """llm.yaml holds frozen weights in bf16: its zero-shot runs must be scored with them too (retention divides
    one by the other), and the run ids of a spec without frozen_dtype stay as they were."""
    plan = P.build(S.load(LLM))
    zero = [r for r in plan.stage2 if r.key["regime"] == 0]
    trained = [r for r in plan.stage2 if r.key["regime"]]
    assert zero and trained
    assert all(r.key["training"]["frozen_dtype"] == "bf16" for r in zero + trained)
    assert {r.key["training"]["precision"] for r in zero} == {"bf16"}
    d = yaml.safe_load(LLM.read_text())
    for stage in ("origin_training", "further_training"):
        d[stage].pop("frozen_dtype")
    plain = P.build(S.parse(d))
    assert all("frozen_dtype" not in r.key["training"] for r in plain.stage2)


def test_gradient_checkpointing_with_prefix_is_refused_at_plan_time():
    d = yaml.safe_load(LLM.read_text())
    d["further_training"]["gradient_checkpointing"] = True
    with pytest.raises(SpecError, match="gradient_checkpointing cannot be used with prefix") as e:
        P.build(S.parse(d), source="llm.yaml")
    assert "\n" not in str(e.value)
    d["techniques"] = ["lora", "bottleneck"]
    assert P.build(S.parse(d)).runs  # without prefix it plans
