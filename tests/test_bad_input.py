"""Property-based: broken specs and CLI arguments end with exit 2 and one line naming file and field."""

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from tests.test_spec import BASE

FIELDS = list(BASE) + ["port_head", "both_directions", "technique_params", "origin_training", "further_training",
                       "resources", "models_dir"]
junk = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                 st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def mutations():
    set_field = st.tuples(st.just("set"), st.sampled_from(FIELDS), junk)
    drop_field = st.tuples(st.just("drop"), st.sampled_from(list(BASE)), st.none())
    extra_key = st.tuples(st.just("extra"), st.text(min_size=1, max_size=10).filter(lambda k: k not in FIELDS), junk)
    empty_axis = st.tuples(st.just("set"), st.sampled_from(["techniques", "seeds", "conditions", "regimes",
                                                            "datasets", "host_pairs"]), st.just([]))
    nested = st.tuples(st.just("nested"), st.sampled_from(["hosts", "datasets"]), junk)
    return st.one_of(set_field, drop_field, extra_key, empty_axis, nested)


def apply(d, m):
    kind, key, value = m
    if kind in ("set", "extra"):
        d[key] = value
    elif kind == "drop":
        d.pop(key, None)
    elif kind == "nested" and isinstance(d.get(key), list) and d[key] and isinstance(d[key][0], dict):
        d[key][0]["name" if isinstance(value, str) else "model"] = value
    return d


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutations(), min_size=1, max_size=3))
def test_broken_specs_exit_2_with_one_line(tmp_path_factory, capsys, muts):
    d = copy.deepcopy(BASE)
    for m in muts:
        apply(d, m)
    path = tmp_path_factory.mktemp("spec") / "broken.yaml"
    path.write_text(yaml.safe_dump(d))
    code = main(["plan", str(path)])
    out = capsys.readouterr()
    if code == 0:  # some mutations leave a valid spec (e.g. port_head: true)
        return
    assert code == 2
    err = out.err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"error: {path}: "), err
    assert "Traceback" not in out.err + out.out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8), max_size=4))
def test_bad_cli_arguments_exit_2_with_one_line(capsys, argv):
    if argv and argv[0] in ("-h", "--help") or any(a in ("-h", "--help") for a in argv):
        return
    try:
        code = main(["plan", "--rows", "x", *argv]) if argv[:1] == ["plan"] else main(argv or ["nope"])
    except SystemExit as e:  # pragma: no cover - argparse must never exit on its own
        raise AssertionError(f"argparse exited with {e.code}") from None
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: "), (argv, err)


def test_unreadable_spec_and_unwritable_output(tmp_path, capsys):
    spec = copy.deepcopy(BASE)
    for h in spec["hosts"]:  # local host folders: no hub name for run's offline check to refuse first
        h["model"] = str(tmp_path / h["name"])
        (tmp_path / h["name"]).mkdir()
        (tmp_path / h["name"] / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    spec["output_dir"] = str(ro / "sweep")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    import os

    if os.geteuid() == 0:  # root ignores permission bits: use a path below a regular file instead
        (tmp_path / "afile").write_text("x")
        spec["output_dir"] = str(tmp_path / "afile" / "sweep")
        path.write_text(yaml.safe_dump(spec))
    code = main(["run", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "sweep" in err, err


def test_host_pair_of_different_shapes_is_refused_at_plan_time(tmp_path, capsys, models_dir):
    """tiny BERT vs the real MiniLM: caught before anything runs or is submitted."""
    spec = copy.deepcopy(BASE)
    spec["hosts"] = [{"name": "tiny", "model": "embedded:tiny-bert-a"}, {"name": "minilm", "model": "embedded:all-minilm-l6-v2"}]
    spec["host_pairs"] = [["tiny", "minilm"]]
    spec["models_dir"] = str(models_dir)
    spec["output_dir"] = str(tmp_path / "sweep")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    from pipeline.hosts import resolve_host

    resolve_host("embedded:tiny-bert-a", models_dir)
    for cmd in (["plan", str(path)], ["run", str(path)], ["sweep", str(path)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "host_pairs[0]: hosts 'tiny' and 'minilm' differ in shape" in err, err
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------- edges: every bad spec is caught at plan time
def _one_line(capsys, code) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, (code, err)
    return err


def test_spec_that_is_not_utf8_gives_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(yaml.safe_dump(BASE, sort_keys=False).encode() + "# caf\xe9 au lait\n".encode("latin-1"))
    err = _one_line(capsys, main(["plan", str(path)]))
    assert err.startswith(f"error: {path}: line ") and "not UTF-8" in err and "0xe9" in err, err


@pytest.mark.parametrize("extra, key", [("seeds: [1, 2]\n", "seeds"),
                                        ("origin_training: {steps: 4, steps: 8}\n", "steps")])
def test_duplicate_yaml_key_gives_one_line_naming_key_and_line(tmp_path, capsys, extra, key):
    text = yaml.safe_dump(BASE, sort_keys=False) + extra
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    line = len(text.splitlines())
    err = _one_line(capsys, main(["plan", str(path)]))
    assert err.startswith(f"error: {path}: line {line}: duplicate key {key!r}"), err


@pytest.mark.parametrize("params, expect", [
    ({"lora": {"r": "eight"}}, "technique_params.lora.r: must be an integer, got 'eight'"),
    ({"lora": {"rank_dropout": 0.1}}, "technique_params.lora.rank_dropout: unknown lora parameter (did you mean "
                                      "'lora_dropout'?)"),
    ({"lora": {"lora_dropout": 1.5}}, "technique_params.lora.lora_dropout: must be less than 1"),
    ({"bottleneck": {"placement": "middle"}}, "technique_params.bottleneck.placement: must be one of pfeiffer, houlsby"),
    ({"compacter": {"phm_dim": 0}}, "technique_params.compacter.phm_dim: must be at least 1"),
    ({"prefix": {"prefix_projection": "yes"}}, "technique_params.prefix.prefix_projection: must be true or false"),
    ({"lora": {"lr": [1e-3, "fast"]}}, "technique_params.lora.lr: must be a positive number or a list of them"),
])
def test_wrong_technique_hyperparameter_is_one_line_at_plan_time(tmp_path, capsys, params, expect):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "techniques": sorted(params), "technique_params": params}))
    err = _one_line(capsys, main(["plan", str(path)]))
    assert err.startswith(f"error: {path}: ") and expect in err, err


def test_technique_hyperparameters_and_grids_that_are_right_pass(tmp_path, capsys):
    params = {"lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "lr": [1e-3, 3e-3], "steps": 5},
              "bottleneck": {"reduction_factor": 8, "placement": "houlsby", "non_linearity": "gelu"}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "techniques": ["lora", "bottleneck"], "technique_params": params}))
    assert main(["plan", str(path), "--rows", "1"]) == 0, capsys.readouterr().err


def test_more_than_one_gpu_per_run_is_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "resources": {"stage2": {"gpus": 4}}}))
    err = _one_line(capsys, main(["plan", str(path)]))
    assert f"{path}: resources.stage2.gpus: multi-GPU per run is not supported" in err and "arrays" in err, err


def test_hosts_help_and_default(monkeypatch, capsys):
    import subprocess
    import sys

    from pipeline import cli, hosts

    p = subprocess.run([sys.executable, "-m", "pipeline", "hosts", "--help"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 0 and "usage: pipeline hosts" in p.stdout and "Traceback" not in p.stderr
    calls = []
    monkeypatch.setattr(hosts, "build_all", lambda models_dir, which: calls.append((models_dir, which)) or {})
    assert cli.main(["hosts"]) == 0  # no argument: the demo's MiniLM pair, no crash
    assert calls == [(Path("models"), cli.MINILM_PAIR)]
