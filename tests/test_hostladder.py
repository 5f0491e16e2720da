"""The receiving-host ladder (pipeline.run.hostladder): names, function-preserving permutations, the trained rungs.

Permutations are checked on a small random BERT (fast) and once on the shipped MiniLM; the trained rungs run
two steps each without measuring (the full builds take a minute or two each: ``pipeline hosts NAME``).
"""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from pipeline import hosts
from pipeline.hosts import EMBEDDED, LADDER_RECIPES, HostError, default_pooling, resolve_host
from pipeline.run import hostladder
from pipeline.run.hostladder import hidden_difference, moved_permutation, permute_bert

CLASSIFIER = {"classifier.weight", "classifier.bias"}


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name, recipe, words", [
    ("all-minilm-l6-v2-simcse-lr1e-3-60", "simcse", "lr 0.001"),
    ("all-minilm-l6-v2-tweetsent-150", "tweetsent", "150 steps"),
    ("all-minilm-l6-v2-rtgenre-150", "rtgenre", "plot synopsis vs review"),
    ("all-minilm-l6-v2-mlm-120", "mlm", "120 steps"),
    ("all-minilm-l6-v2-perm-heads-1", "perm", "heads permuted (fraction 1"),
    ("all-minilm-l6-v2-perm-ffn-0.5", "perm", "ffn permuted (fraction 0.5"),
    ("all-minilm-l6-v2-perm-heads-ffn-resid-0.25", "perm", "heads + ffn + resid"),
])
def test_ladder_names_resolve(name, recipe, words):
    assert name in EMBEDDED and EMBEDDED[name].recipe == LADDER_RECIPES[recipe]
    assert words in EMBEDDED[name].description and EMBEDDED[name].family == "bert"
    assert name not in list(EMBEDDED)  # parameterised: not listed


@pytest.mark.parametrize("bad", [
    "all-minilm-l6-v2-perm-ffn-heads-1",  # not the canonical order
    "all-minilm-l6-v2-perm-heads-heads-1", "all-minilm-l6-v2-perm-heads-0.50", "all-minilm-l6-v2-perm-heads-1.0",
    "all-minilm-l6-v2-perm-heads-0", "all-minilm-l6-v2-perm-tails-1", "all-minilm-l6-v2-tweetsent-0",
    "all-minilm-l6-v2-tweetsent-030", "all-minilm-l6-v2-simcse-lr10e-3-60", "all-minilm-l6-v2-simcse-lr1e-3-0",
    "all-minilm-l6-v2-mlm-", "all-minilm-l6-v2-rtgenre-0",
])
def test_non_canonical_ladder_names_are_errors(bad, tmp_path):
    assert bad not in EMBEDDED and EMBEDDED.get(bad) is None
    with pytest.raises(HostError, match="perm-<heads"):
        resolve_host(f"embedded:{bad}", tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- permutations


def _small_bert(heads=4):
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=heads,
                                intermediate_size=128)).eval()


def _outputs(model, ids, att):
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=att)
    return out.last_hidden_state, out.pooler_output


@pytest.mark.parametrize("kinds", [["heads"], ["ffn"], ["resid"], ["heads", "ffn", "resid"]])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_permutations_keep_the_function(kinds, fraction):
    base = _small_bert()
    host = copy.deepcopy(base)
    perms = permute_bert(host, kinds, fraction, seed=3)
    ids = torch.randint(0, 100, (3, 12))
    att = torch.ones_like(ids)
    att[1, 7:] = 0
    (hb, pb), (hh, ph) = _outputs(base, ids, att), _outputs(host, ids, att)
    if "resid" in kinds:  # hidden states and pooler output are the base's, permuted: new i = old p[i]
        assert not torch.allclose(hh, hb, atol=1e-3)
        p = perms["resid"]
        hb, pb = hb[..., p], pb[..., p]
    assert torch.allclose(hh, hb, atol=1e-5) and torch.allclose(ph, pb, atol=1e-5)
    sb, sh = base.state_dict(), host.state_dict()
    changed = {k for k in sb if not torch.equal(sb[k], sh[k])}
    if kinds == ["heads"]:
        assert all(".attention." in k for k in changed) and changed
    if kinds == ["ffn"]:
        assert all("intermediate.dense" in k or k.endswith("output.dense.weight") for k in changed) and changed
    if "resid" in kinds:
        assert "embeddings.word_embeddings.weight" in changed and "pooler.dense.weight" in changed
    n = {"heads": 4, "ffn": 128, "resid": 64}
    for kind in kinds:
        for q in (perms[kind] if kind != "resid" else [perms[kind]]):
            assert sorted(q) == list(range(n[kind]))
            assert sum(i != j for i, j in enumerate(q)) == round(fraction * n[kind])


def test_moved_permutation_moves_exactly_the_fraction():
    rng = random.Random(0)
    for n, f in ((12, 1.0), (12, 0.5), (1536, 0.25), (384, 0.1)):
        p = moved_permutation(n, f, rng)
        assert sorted(p) == list(range(n)) and sum(i != j for i, j in enumerate(p)) == round(f * n)
    assert moved_permutation(12, 0.05, rng) == list(range(12))  # one unit cannot move alone


def test_unknown_kind_is_an_error():
    with pytest.raises(HostError, match="unknown permutation kinds"):
        permute_bert(_small_bert(), ["tails"], 1.0)


def test_minilm_with_everything_permuted_computes_the_same_hidden_states():
    """The shipped MiniLM: heads, FFN units and the residual stream all permuted; ~2 s."""
    src = hosts.minilm_dir()
    tok, base = AutoTokenizer.from_pretrained(src), BertModel.from_pretrained(src).eval()
    host = copy.deepcopy(base)
    perms = permute_bert(host, ["heads", "ffn", "resid"], 1.0, seed=0)
    assert hidden_difference(base, host, tok, perms["resid"]) < 1e-4
    assert hidden_difference(base, host, tok) > 0.1  # without un-permuting, far apart


# ---------------------------------------------------------------- building (no distance measured)


def _check_derived(path, family, recipe):
    from transformers import AutoModelForSequenceClassification

    _, info = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, output_loading_info=True)
    assert set(info["missing_keys"]) == CLASSIFIER and not info["unexpected_keys"]
    assert default_pooling(path) == "mean"
    build = json.loads((path / "build_info.json").read_text())
    assert build["family"] == family and build["recipe"] == LADDER_RECIPES[recipe] and "distance" not in build
    base, host = BertModel.from_pretrained(hosts.minilm_dir()).state_dict(), BertModel.from_pretrained(path).state_dict()
    assert all(torch.equal(base[k], host[k]) for k in base if k.startswith("pooler.")) or recipe == "perm"
    return build, base, host


def test_build_permuted_host(tmp_path):
    out = hostladder.build_minilm_permuted(tmp_path / "h", ["heads"], 0.5, measure=False)
    build, base, host = _check_derived(out, "coordinate", "perm")
    assert build["moved"] == {"heads": 6 * 6} and build["max_abs_hidden_difference"] < 1e-4
    assert build["kinds"] == ["heads"] and build["fraction"] == 0.5 and build["mean_relative_weight_change"] > 0


@pytest.mark.parametrize("builder, family, recipe, direction", [
    (hostladder.build_minilm_tweetsent, "task", "tweetsent", "toward"),
    (hostladder.build_minilm_rtgenre, "task", "rtgenre", "away"),
    (hostladder.build_minilm_mlm, "task", "mlm", "none"),
    (lambda out, steps, **kw: hostladder.build_minilm_simcse(out, 1e-3, steps, **kw), "natural", "simcse", None),
])
def test_trained_rungs_two_steps(tmp_path, builder, family, recipe, direction):
    out = builder(tmp_path / "h", 2, progress=False, measure=False)
    build, base, host = _check_derived(out, family, recipe)
    assert build.get("task_direction") == direction
    assert build["steps"] == 2 and build["mean_relative_weight_change"] > 0
    assert any(not torch.equal(base[k], host[k]) for k in base if k.startswith("encoder."))


def test_rtgenre_corpus_is_balanced_and_not_sentiment():
    from pipeline.run.corpora import rotten_tomatoes_genre, rotten_tomatoes_labelled

    data = rotten_tomatoes_genre()
    plots, reviews = [t for t, y in data if y == 1], [t for t, y in data if y == 0]
    assert len(plots) == len(reviews) > 1000 and len(set(plots) | set(reviews)) == len(data)
    polarity = dict(rotten_tomatoes_labelled())
    assert all(t in polarity for t in reviews) and not any(t in polarity for t in plots)
    fresh = sum(polarity[t] for t in reviews) / len(reviews)
    assert 0.45 < fresh < 0.7  # both polarities under one label, near the corpus's 0.58: the label is not polarity
    assert data == rotten_tomatoes_genre.__wrapped__()  # deterministic


def test_tweets_labelled_has_three_sentiments():
    from pipeline.run.corpora import tweets_labelled

    data = tweets_labelled()
    assert len(data) > 30_000 and {y for _, y in data} == {0, 1, 2}


def test_base_features_are_cached_per_fingerprint(tmp_path, monkeypatch):
    from pipeline.run import hostbuild, hostdist

    host = hostbuild.make_tiny_host("bert", tmp_path / "tiny")
    texts = ["a fine film", "dull", "@user great game tonight"]
    state, feats = hostdist.cached_features(host, texts, tmp_path)
    assert len(list((tmp_path / ".hostdist-cache").glob("*.pt"))) == 1
    monkeypatch.setattr(hostdist, "host_features", lambda *a, **k: pytest.fail("encoded again"))
    state2, feats2 = hostdist.cached_features(host, texts, tmp_path)
    assert torch.equal(feats, feats2) and state.keys() == state2.keys()
    monkeypatch.undo()
    hostdist.cached_features(host, texts[:2], tmp_path)  # other texts: another entry
    assert len(list((tmp_path / ".hostdist-cache").glob("*.pt"))) == 2
