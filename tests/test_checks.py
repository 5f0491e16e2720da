"""Plan-time checks (pipeline.checks): host shapes before any build, dataset names, files and sizes -- each
mistake one line naming the field, on the login node, without torch."""

import copy
import time

import pytest

from pipeline import checks, hosts
from pipeline import spec as S
from pipeline.cli import main
from pipeline.errors import SpecError

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def count_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "peft-portability" / "data_counts.json"


def _spec(tmp_path, **kw):
    d = {"name": "x", "output_dir": str(tmp_path / "out"), "models_dir": str(tmp_path / "models"),
         "hosts": [{"name": "minilm", "model": "embedded:all-minilm-l6-v2"},
                   {"name": "tiny", "model": "embedded:tiny-bert-a"}],
         "host_pairs": [["minilm", "tiny"]], "both_directions": False,
         "datasets": [{"name": "rt", "source": "embedded:rotten_tomatoes", "train_size": 4000, "eval_size": 500}],
         "techniques": ["lora"], "conditions": ["ported"], "regimes": ["zero-shot"], "seeds": [0]}
    d.update(kw)
    return d


def _refused(tmp_path, write_spec, capsys, d) -> str:
    path = write_spec(d)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())  # nothing built
    return err.removeprefix(f"error: {path}: ").strip()


# ---------------------------------------------------------------- host shapes before any build
@pytest.mark.parametrize("pooling", ["auto", "mean"])
def test_hosts_of_two_shapes_are_refused_before_the_host_is_built(tmp_path, write_spec, capsys, pooling):
    d = _spec(tmp_path)
    for h in d["hosts"]:
        h["pooling"] = pooling
    err = _refused(tmp_path, write_spec, capsys, d)
    assert err.startswith("host_pairs[0]: hosts 'minilm' and 'tiny' differ in shape (hidden_size 384 vs 64"), err
    assert "pool" not in err


def test_a_derived_host_not_built_has_its_bases_shape(tmp_path):
    models = tmp_path / "models"
    assert hosts.planned_config("embedded:tiny-bert-b", models) == {**hosts.TINY_SHAPES["bert"], "_declared": True}
    minilm = hosts.planned_config("embedded:all-minilm-l6-v2", models)
    assert hosts.planned_config("embedded:all-minilm-l6-v2-tweets-7", models) == minilm
    assert minilm["hidden_size"] == 384 and hosts.planned_config("embedded:nope", models) is None
    d = _spec(tmp_path, hosts=[{"name": "minilm", "model": "embedded:all-minilm-l6-v2"},
                               {"name": "tiny", "model": "embedded:tiny-bert-b"}])
    with pytest.raises(SpecError, match="host_pairs\\[0\\]: hosts 'minilm' and 'tiny' differ in shape"):
        checks.check_spec(S.parse(d), "x.yaml")
    same = _spec(tmp_path, hosts=[{"name": "a", "model": "embedded:tiny-bert-a"},
                                  {"name": "b", "model": "embedded:tiny-bert-b"}], host_pairs=[["a", "b"]])
    checks.check_spec(S.parse(same), "x.yaml")  # one shape: passes, nothing built
    assert not models.exists()


def test_the_declared_tiny_shapes_are_what_a_build_writes():
    from pipeline.run.hostbuild import _tiny_model

    for kind, declared in hosts.TINY_SHAPES.items():
        cfg = _tiny_model(kind, 100).config.to_dict()
        assert {k: cfg[k] for k in declared} == declared


# ---------------------------------------------------------------- datasets
def test_a_mistyped_embedded_dataset_gets_a_did_you_mean(tmp_path, write_spec, capsys):
    d = _spec(tmp_path, hosts=[{"name": "a", "model": "embedded:tiny-bert-a"},
                               {"name": "b", "model": "embedded:tiny-bert-b"}], host_pairs=[["a", "b"]])
    d["datasets"][0]["source"] = "embedded:rotten_tomatos"
    assert _refused(tmp_path, write_spec, capsys, d) == (
        "datasets[0].source: unknown embedded dataset 'embedded:rotten_tomatos' (did you mean "
        "'embedded:rotten_tomatoes'?) (known: embedded:rotten_tomatoes, embedded:tweets)")


def _tiny_pair(tmp_path, **ds):
    return _spec(tmp_path, hosts=[{"name": "a", "model": "embedded:tiny-bert-a"},
                                  {"name": "b", "model": "embedded:tiny-bert-b"}], host_pairs=[["a", "b"]],
                 datasets=[{"name": "d", **ds}])


def test_a_missing_local_data_file_is_refused(tmp_path, write_spec, capsys):
    err = _refused(tmp_path, write_spec, capsys, _tiny_pair(tmp_path, source=str(tmp_path / "nope.csv")))
    assert err.startswith(f"datasets[0].source: no such data file '{tmp_path / 'nope.csv'}'"), err


def test_a_missing_column_is_refused(tmp_path, write_spec, capsys):
    (tmp_path / "d.csv").write_text("review,label\ngood,1\nbad,0\n")
    err = _refused(tmp_path, write_spec, capsys, _tiny_pair(tmp_path, source=str(tmp_path / "d.csv"), eval_size=1))
    assert err == f"datasets[0].text_field: {tmp_path / 'd.csv'} has no column 'text' (columns: review, label)"


def test_sizes_over_the_available_examples_are_refused(tmp_path, write_spec, capsys):
    d = _spec(tmp_path, hosts=[{"name": "a", "model": "embedded:tiny-bert-a"},
                               {"name": "b", "model": "embedded:tiny-bert-b"}], host_pairs=[["a", "b"]])
    d["datasets"][0].update(eval_size=50000)
    assert _refused(tmp_path, write_spec, capsys, d).startswith(
        "datasets[0].eval_size: 50000 + train_size 4000 exceed the 12,751 examples of embedded:rotten_tomatoes")
    d["datasets"][0].update(eval_size=9000)
    assert _refused(tmp_path, write_spec, capsys, d).startswith(
        "datasets[0].train_size: 4000 + eval_size 9000 exceed the 12,751 examples of embedded:rotten_tomatoes")
    d["datasets"][0].update(eval_size=8751)  # exactly all of them
    assert main(["plan", str(write_spec(d))]) == 0


ROWS = ('text,label\n"a, quoted\nline",1\nGood film,1\ngood   FILM,1\nbad,0\nBad,1\nNA,1\nok,\nfine,1\nmeh,0\n'
        'nice,1\nawful,0\n')  # a dup, a text with two labels (both dropped), NA text, no label: 6 examples


def test_local_files_are_counted_as_the_job_will_load_them(tmp_path):
    """The count is what pipeline.run.data.load splits (the datasets loader, deduplicated)."""
    from pipeline.run import data

    for suffix in (".csv", ".tsv"):
        p = tmp_path / f"d{suffix}"
        p.write_text(ROWS if suffix == ".csv" else ROWS.replace(",", "\t").replace("a\t quoted", "a, quoted"))
        texts, labels = data._examples(str(p), "train", "text", "label")
        assert checks._count_file(p, "text", "label", "w") == len(data.dedupe(list(texts), list(labels))[0]) == 6
    ds = S.parse(_tiny_pair(tmp_path, source=str(tmp_path / "d.csv"), eval_size=3, train_size=3)).datasets[0]
    checks.check_dataset(ds, "w")
    assert len(data.load(ds)[0]) == 3
    with pytest.raises(SpecError, match="w.train_size: 4 \\+ eval_size 3 exceed the 6 examples"):
        checks.check_dataset(ds.model_copy(update={"train_size": 4}), "w")


def test_json_and_parquet_files_are_counted(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": t, "label": y} for t, y in [("a", 0), ("b", 1), ("B ", 1), ("c", 1)]]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "d.parquet"):
        assert checks._count_file(tmp_path / name, "text", "label", "w") == 3, name


def test_the_embedded_corpora_are_counted_as_the_job_loads_them():
    from pipeline.run import data

    assert set(checks.CORPORA) == set(data.EMBEDDED)
    for name, (package, rel, encoding, text_f, label_f, mapping) in checks.CORPORA.items():
        kwargs, t, y, m = data.EMBEDDED[name]
        assert (t, y, m) == (text_f, label_f, mapping)
        assert kwargs()["data_files"].endswith(f"{package}/{rel}") and kwargs().get("encoding", "utf-8") == encoding
    texts, labels = data._examples("embedded:rotten_tomatoes", "train", "text", "label")
    assert checks._count_embedded("rotten_tomatoes") == len(data.dedupe(list(texts), list(labels))[0]) == 12751


def test_counts_are_cached_by_content(tmp_path, count_cache, monkeypatch):
    p = tmp_path / "d.csv"
    p.write_text(ROWS)
    assert checks._count_file(p, "text", "label", "w") == 6 and count_cache.exists()
    monkeypatch.setattr(checks, "_file_rows", lambda *a: pytest.fail("counted twice"))
    assert checks._count_file(p, "text", "label", "w") == 6  # from the cache
    p.write_text(ROWS + "new,1\n")
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(count_cache.parents[1]))
    assert checks._count_file(p, "text", "label", "w") == 7  # new content: counted again


def test_the_demos_checks_take_under_a_second(tmp_path):
    spec = S.load(ROOT / "sweeps" / "demo.yaml")
    checks.check_spec(spec, "demo.yaml")  # the first count fills the cache
    t = time.perf_counter()
    checks.check_spec(spec, "demo.yaml")
    assert time.perf_counter() - t < 1.0


def test_hub_datasets_and_eval_splits_are_left_to_fetch(tmp_path):
    d = copy.deepcopy(_tiny_pair(tmp_path, source="some-org/some-data", eval_size=10**6))
    checks.check_spec(S.parse(d), "x.yaml")
