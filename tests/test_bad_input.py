"""Property-based: broken specs and CLI arguments end with exit 2 and one line naming file and field."""

import copy

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
