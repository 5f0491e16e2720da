"""Stage-1 modules load outside the pipeline: peft's public API on a fresh host gives the recorded logits,
and loading a module into the receiving host (porting) gives the pipeline's bit-exact tensors and scores."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline import results
from pipeline.hosts import resolve_host
from pipeline.sweep import Sweep

ROOT = Path(__file__).resolve().parent.parent
PEFT = {"lora", "prefix", "prompt", "ia3"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, models_dir):
    import yaml

    tmp = tmp_path_factory.mktemp("export")
    d = yaml.safe_load((ROOT / "tests" / "specs" / "tiny.yaml").read_text())
    d.update(output_dir=str(tmp / "sweep"), models_dir=str(models_dir), conditions=["ported"], regimes=["zero-shot"],
             both_directions=False)
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(d))
    p = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--workers", "2"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return Sweep(Path(d["output_dir"]))


def fresh_host(name: str, models_dir: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(resolve_host(name, models_dir))  # head-free modules (the default)


def scores(model, folder: Path, texts, models_dir, host: str) -> torch.Tensor:
    """Class-1 minus class-0 scores computed with a plain tokenizer call and the documented formula (no
    pipeline code): temperature * (cosine(pooled text, pooled label text) + the module's class bias)."""
    from transformers import AutoTokenizer

    meta = json.loads((folder / "pipeline_module.json").read_text())
    tok = AutoTokenizer.from_pretrained(resolve_host(host, models_dir))

    def pooled(batch_texts):
        batch = tok(batch_texts, truncation=True, max_length=meta["max_length"], padding=True, return_tensors="pt")
        return torch.nn.functional.normalize(model(**batch).pooler_output.float(), dim=-1)

    out = []
    with torch.no_grad():
        labels = pooled(meta["label_words"])
        for i in range(0, len(texts), 16):
            s = meta["temperature"] * (pooled(texts[i:i + 16]) @ labels.T + torch.tensor(meta["class_bias"]))
            out.append(s[:, 1] - s[:, 0])
    return torch.cat(out)


def eval_texts(sweep: Sweep, run_id: str) -> list[str]:
    from pipeline.run import data
    from pipeline.run.runner import dataset_of

    row = sweep.plan_rows[run_id]
    return data.load(dataset_of(row, json.loads(row["config_json"])))[1].texts


def load(host, folder: Path, technique: str):
    """peft techniques through peft's own API (after prepare_host); the in-project ones through load_module."""
    from pipeline.run.export import load_module, prepare_host

    if technique in PEFT:
        from peft import PeftModel

        return PeftModel.from_pretrained(prepare_host(host, folder), str(folder)).eval()
    return load_module(host, folder)


@pytest.mark.slow
def test_modules_load_and_port_through_public_apis(sweep, models_dir):
    from safetensors.torch import load_file

    df = results.load(sweep.root)
    preds = results.predictions(sweep.root)
    model_of = {name: h["model"] for name, h in json.loads((sweep.root / "hosts.json").read_text()).items()}
    stage1 = df[df["stage"] == 1]
    assert set(stage1["technique"]) == PEFT | {"bottleneck", "compacter"}
    for _, r in stage1.iterrows():
        folder = sweep.module(r["run_id"]) / "adapter"
        cfg = (folder / "adapter_config.json").read_text()
        assert (folder / "adapter_model.safetensors").exists()
        if r["technique"] in PEFT:
            assert json.loads(cfg)["peft_type"]  # peft's own config, not ours
        texts = eval_texts(sweep, r["run_id"])
        s2 = df[(df["stage"] == 2) & (df["needs"] == r["run_id"]) & (df["condition"] == "ported")]
        assert len(s2) == 1
        origin, receiving = r["origin_host"], s2["receiving_host"].iloc[0]
        assert origin != receiving

        # 1. the origin run's recorded logits, from a fresh host
        model = load(fresh_host(model_of[origin], models_dir), folder, r["technique"])
        got = scores(model, folder, texts, models_dir, model_of[origin])
        want = torch.tensor(preds[preds["run_id"] == r["run_id"]].sort_values("example_id")["score"].to_numpy(),
                            dtype=torch.float32)
        assert torch.allclose(got, want, atol=2e-4), (r["technique"], (got - want).abs().max())

        # 2. port: the module loaded into the receiving host is bit-exactly the pipeline's module...
        ported = load(fresh_host(model_of[receiving], models_dir), folder, r["technique"])
        params = dict(ported.named_parameters())
        module = load_file(str(sweep.module(r["run_id"]) / "module.safetensors"))
        for name, t in module.items():
            assert torch.equal(params[name].detach(), t), (r["technique"], name)
        # ...and scores what the pipeline's ported zero-shot run recorded on that host
        got = scores(ported, folder, texts, models_dir, model_of[receiving])
        want = torch.tensor(preds[preds["run_id"] == s2["run_id"].iloc[0]].sort_values("example_id")["score"].to_numpy(),
                            dtype=torch.float32)
        assert torch.allclose(got, want, atol=2e-4), (r["technique"], (got - want).abs().max())


def test_a_folder_without_the_sidecar_is_refused_in_one_line(tmp_path):
    from pipeline.errors import UserError
    from pipeline.run.export import prepare_host

    with pytest.raises(UserError, match="pipeline_module.json"):
        prepare_host(torch.nn.Linear(1, 1), tmp_path)
