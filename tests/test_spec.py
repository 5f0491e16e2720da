"""Spec validation: every bad spec gets one line naming file, field and what is allowed."""

import copy

import pytest

from pipeline import spec as S
from pipeline import specfile

BASE = {
    "name": "x", "output_dir": "o",
    "hosts": [{"name": "a", "model": "m1"}, {"name": "b", "model": "m2"}],
    "host_pairs": [["a", "b"]],
    "datasets": [{"name": "rt", "source": "embedded:rotten_tomatoes"}],
    "techniques": ["lora"], "conditions": ["ported"], "regimes": ["zero-shot", 10], "seeds": [0],
}


def bad(mutate) -> str:
    d = copy.deepcopy(BASE)
    mutate(d)
    with pytest.raises(S.SpecError) as e:
        S.parse(d, "sweeps/x.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("sweeps/x.yaml: ")
    return msg


def test_valid_spec_normalises_regimes():
    s = S.parse(copy.deepcopy(BASE))
    assert s.regimes == [0, 10]
    assert s.directed_pairs() == [("a", "b"), ("b", "a")]


def test_unknown_technique_names_index_and_known_list():
    msg = bad(lambda d: d.update(techniques=["lora", "lora2"]))
    assert "techniques[1]: unknown technique 'lora2'" in msg
    assert "known: lora, prefix, prompt, ia3, bottleneck, compacter" in msg


def test_unknown_key_did_you_mean():
    msg = bad(lambda d: d.update(tecniques=["lora"]))
    assert "tecniques: unknown key (did you mean 'techniques'?)" in msg
    msg = bad(lambda d: d["hosts"][1].update(tsk="x"))
    assert "hosts[1].tsk" in msg and "'task'" in msg


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d.update(seeds=[]), "seeds: must not be empty"),
    (lambda d: d.update(regimes=[-5]), "regimes[0]: a budget must be zero-shot or a step count >= 0"),
    (lambda d: d.update(conditions=["port"]), "conditions[0]: 'port' is not allowed"),
    (lambda d: d.update(host_pairs=[["a", "c"]]), "host_pairs[0][1]: unknown host 'c'"),
    (lambda d: d.update(host_pairs=[["a", "a"]]), "host_pairs[0]: origin and receiving host are the same"),
    (lambda d: d["hosts"].append({"name": "a", "model": "m3"}), "hosts[2].name: duplicate host name 'a'"),
    (lambda d: d.update(seeds=[1, 1]), "seeds[1]: duplicate value 1"),
    (lambda d: d.update(seeds=["x"]), "seeds[0]:"),
    (lambda d: d.pop("name"), "name: required field is missing"),
    (lambda d: d.update(origin_training={"steps": -1}), "origin_training.steps"),
    (lambda d: d.update(technique_params={"lroa": {}}), "technique_params.lroa: unknown technique (did you mean 'lora'?)"),
    (lambda d: d["hosts"][1].update(task="text-to-text"), "have different tasks"),
])
def test_bad_specs(mutate, expect):
    assert expect in bad(mutate)


def test_load_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(S.SpecError, match="no such spec file"):
        S.load(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(S.SpecError, match=r"broken.yaml: line \d+: invalid YAML"):
        S.load(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(S.SpecError, match="must be a YAML mapping"):
        S.load(p)


def test_cli_bad_spec_exits_2_with_one_line(tmp_path, write_spec, capsys):
    from pipeline.cli import main

    d = copy.deepcopy(BASE)
    d["techniques"] = ["lora2"]
    path = write_spec(d)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown technique 'lora2'" in err and str(path) in err
    assert main(["plan"]) == 2
    assert main(["run", str(path), "--workers", "0"]) == 2


# ---------------------------------------------------------------- strict types, hints, size guards (issue 18)
@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d.update(seeds=["0", "1"]), "seeds[0]: Input should be a valid integer (got '0')"),
    (lambda d: d.update(seeds=[False, True]), "seeds[0]: Input should be a valid integer (got False)"),
    (lambda d: d.update(port_head="true"), "port_head: Input should be a valid boolean (got 'true')"),
    (lambda d: d.update(both_directions=1), "both_directions: Input should be a valid boolean (got 1)"),
    (lambda d: d.update(regimes=["10"]), "regimes[0]: a budget must be zero-shot or a step count >= 0, got '10'"),
    (lambda d: d.update(origin_training={"steps": "100"}), "origin_training.steps: Input should be a valid integer"),
    (lambda d: d.update(origin_training={"lr": True}), "origin_training.lr: must be a number"),
    (lambda d: d["datasets"][0].update(eval_size="50"), "datasets[0].eval_size: Input should be a valid integer"),
    (lambda d: d.update(resources={"stage1": {"cpus": "4"}}), "resources.stage1.cpus: Input should be a valid integer"),
])
def test_no_silent_coercion(mutate, expect):
    assert expect in bad(mutate)


def test_yaml_floats_without_a_dot_are_still_numbers():
    """YAML 1.1 reads ``1e-3`` as text: a float field takes it as the number it spells, nothing else."""
    d = copy.deepcopy(BASE)
    d.update(origin_training={"lr": "1e-3"})
    assert S.parse(d).origin_training.lr == 1e-3
    assert "origin_training.lr: must be a number" in bad(lambda d: d.update(origin_training={"lr": "fast"}))


def test_a_renamed_required_key_says_which_key_to_rename():
    def rename(d):
        d["seed"] = d.pop("seeds")
    msg = bad(rename)
    assert "seeds: required field is missing (did you mean to rename 'seed'?)" in msg

    def rename_nested(d):
        d["datasets"][0]["sorce"] = d["datasets"][0].pop("source")
    assert "datasets[0].source: required field is missing (did you mean to rename 'sorce'?)" in bad(rename_nested)
    assert bad(lambda d: d.pop("seeds")) .endswith("seeds: required field is missing")


@pytest.mark.parametrize("value", [["a", "b"], {"x": 1}, None])
def test_extra_sbatch_options_are_single_values(value):
    msg = bad(lambda d: d.update(resources={"stage1": {"extra": {"mail-user": value}}}))
    assert "resources.stage1.extra['mail-user']: must be a single value (text, number or true/false)" in msg


def test_extra_sbatch_options_keep_scalars():
    d = copy.deepcopy(BASE)
    d["resources"] = {"stage1": {"extra": {"mail-user": "a@b", "nice": 10, "exclusive": True}}}
    assert S.parse(d).resources.stage1.extra == {"mail-user": "a@b", "nice": 10, "exclusive": True}


def test_a_spec_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    p = tmp_path / "big.yaml"
    p.write_text("name: x\n# " + "y" * 200 + "\n")
    monkeypatch.setattr(specfile, "MAX_SPEC_BYTES", 100)
    with pytest.raises(S.SpecError, match=r"big.yaml: 2\d\d bytes, over the 100 bytes a spec may have"):
        S.read_yaml(p)


def test_yaml_alias_expansion_is_bounded(tmp_path):
    """A few lines of nested aliases expand to billions of values: refused before anything walks them."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    assert p.stat().st_size < 2000
    with pytest.raises(S.SpecError, match=r"bomb.yaml: YAML aliases expand to over [\d,]+ values"):
        S.read_yaml(p)
    p.write_text("base: &b {lr: 0.1}\nx: *b\ny: [*b, *b]\n")  # ordinary reuse is fine
    assert S.read_yaml(p)["y"] == [{"lr": 0.1}, {"lr": 0.1}]


def test_a_recursive_alias_is_refused(tmp_path):
    p = tmp_path / "loop.yaml"
    p.write_text("a: &a [1, *a]\n")
    with pytest.raises(S.SpecError, match="loop.yaml: .*refers to itself"):
        S.read_yaml(p)


def test_a_grid_over_max_runs_is_refused_before_it_is_expanded():
    msg = bad(lambda d: d.update(seeds=list(range(300_000))))
    assert "the grid has 1,800,000 runs" in msg and "over max_runs 200,000" in msg and "--set max_runs=" in msg
    d = copy.deepcopy(BASE)
    d.update(seeds=list(range(300_000)), max_runs=2_000_000)
    assert len(S.parse(d).seeds) == 300_000
    assert "max_runs" not in S.parse(copy.deepcopy(BASE)).model_dump()  # the default stays out of dumps and hashes
