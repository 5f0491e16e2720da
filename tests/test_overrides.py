"""Command-line overrides (--set KEY=VALUE) for plan, run and sweep: applied like the file, validated
like the file with errors naming the override, recorded in the sweep folder, and reflected in run ids."""

import json
import shutil
import subprocess

import pytest
import yaml

from pipeline import cli
from pipeline import spec as S
from pipeline.errors import SpecError
from pipeline.overrides import apply_overrides
from pipeline.sweep import Sweep
from tests.conftest import ROOT


def ids(spec_path, *overrides):
    _, plan, _ = cli.prepare(str(spec_path), build_hosts=False, overrides=list(overrides))
    return {r.run_id for r in plan.runs}


def test_overrides_set_nested_fields_and_create_missing_mappings():
    d = {"seeds": [0], "origin_training": {"steps": 8}, "hosts": [{"name": "a", "model": "m"}]}
    out = apply_overrides(d, ["seeds=[0,1]", "origin_training.steps=50", "technique_params.lora.lr=0.001",
                                "hosts.0.model=other", "name=x"])
    assert out["seeds"] == [0, 1] and out["origin_training"] == {"steps": 50}
    assert out["technique_params"] == {"lora": {"lr": 0.001}} and out["hosts"][0]["model"] == "other"
    assert out["name"] == "x" and d["seeds"] == [0]  # the file's data is left alone


def test_changed_override_plans_new_ids_unchanged_plans_nothing_new(tiny_spec, write_spec):
    p = write_spec(tiny_spec)
    base = ids(p)
    assert ids(p, "seeds=[0]") == base  # the file's own value: the same runs
    two = ids(p, "seeds=[0,1]")
    assert base < two and len(two) == 2 * len(base)
    steps = ids(p, "origin_training.steps=9")
    assert len(steps) == len(base) and not steps & base
    lr = ids(p, "technique_params.lora.lr=0.001")
    assert lr != base and len(lr) == len(base)
    assert ids(p, "techniques=[lora]") < base


def test_plan_command_takes_set(tiny_spec, write_spec, capsys):
    p = write_spec(tiny_spec)
    assert cli.main(["plan", str(p), "--set", "seeds=[0,1]", "--set", "techniques=[lora]", "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 stage-1 runs (origin training) + 24 stage-2 runs" in out  # 1 technique x 2 directions x 2 seeds


@pytest.mark.parametrize("args, message", [
    (["--set", "seeds=[x]"], "error: --set seeds=[x]: seeds[0]: "),
    (["--set", "origin_training.stepz=5"], "error: --set origin_training.stepz=5: origin_training.stepz: unknown key"),
    (["--set", "technique_params.lora.lr=-1"], "error: --set technique_params.lora.lr=-1: technique_params.lora.lr: "),
    (["--set", "techniques=[lora2]"], "error: --set techniques=[lora2]: techniques[0]: unknown technique 'lora2'"),
    (["--set", "seeds"], "error: --set seeds: expected KEY=VALUE"),
    (["--set", "seeds=[0,"], "error: --set seeds=[0,: invalid YAML value"),
    (["--set", "hosts.5.model=x"], "error: --set hosts.5.model=x: hosts is a list of 2"),
])
def test_bad_override_is_one_line_naming_it(tiny_spec, write_spec, capsys, args, message):
    p = write_spec(tiny_spec)
    for cmd in ("plan", "run"):
        assert cli.main([cmd, str(p), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message), err
        assert err.count("\n") == 1


def test_error_not_in_an_overridden_field_names_file_and_overrides(tiny_spec, write_spec):
    tiny_spec["seeds"] = ["x"]
    p = write_spec(tiny_spec)
    with pytest.raises(SpecError, match=r"spec.yaml \(with --set techniques=\[lora\]\): seeds\[0\]"):
        S.load(p, ["techniques=[lora]"])


def test_sweep_folder_records_the_spec_as_run(tiny_spec, write_spec):
    p = write_spec(tiny_spec)
    overrides = ["seeds=[0,1]", "technique_params.lora.lr=0.001"]
    spec, plan, sweep = cli.prepare(str(p), build_hosts=False, overrides=overrides)
    sweep.write(spec, plan, overrides=overrides)
    copy = Sweep(sweep.root)
    assert copy.spec == spec and copy.spec.seeds == [0, 1]  # the copy alone reproduces the sweep
    assert (sweep.root / "spec.yaml").read_text().splitlines()[1] == "# --set seeds=[0,1]"
    assert json.loads((sweep.root / "sweep.json").read_text())["overrides"] == overrides
    # planning the copy gives the same runs
    _, again, _ = cli.prepare(str(sweep.root / "spec.yaml"), build_hosts=False)
    assert {r.run_id for r in again.runs} == {r.run_id for r in plan.runs}


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_passes_set_words_as_set_options():
    out = subprocess.run(["make", "-n", "-s", "dry-run", "sweep", "run", "SPEC=x.yaml", "STAMP=",
                          "SET=seeds=[0,1] origin_training.steps=50"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if "-m pipeline" in ln]
    assert len(lines) == 4  # dry-run: plan, then sweep --dry-run (sbatch --test-only); sweep; run
    assert any("-m pipeline sweep x.yaml --dry-run --set" in ln for ln in lines)
    for ln in lines:
        assert "--set 'seeds=[0,1]' --set 'origin_training.steps=50'" in ln, ln
    assert yaml.safe_load("[0,1]") == [0, 1]
