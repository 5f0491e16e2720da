"""Spec validation: every bad spec gets one line naming file, field and what is allowed."""

import copy

import pytest

from pipeline import spec as S

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
