"""Splits: deduplicated, stratified, disjoint, deterministic; the head trains in its own parameter group."""

from __future__ import annotations

import pytest

from pipeline.run import data
from pipeline.spec import Dataset


def test_dedupe_keeps_first_copy_and_drops_conflicting_labels():
    texts = ["Good film", "good   FILM", "bad", "meh", "Meh"]
    labels = [1, 1, 0, 1, 0]
    t, y, dropped = data.dedupe(texts, labels)
    assert t == ["Good film", "bad"] and y == [1, 0] and dropped == 3


def test_stratified_take_matches_class_shares():
    labels = [1] * 70 + [0] * 30
    order = list(range(100))
    taken, rest = data.stratified_take(order, labels, 10)
    assert sum(labels[i] for i in taken) == 7 and len(taken) == 10
    assert not set(taken) & set(rest) and len(rest) == 90


@pytest.fixture(scope="module")
def rt_splits():
    return data.load(Dataset(name="rt", source="embedded:rotten_tomatoes", train_size=2000, eval_size=500))


def test_embedded_splits_are_stratified_disjoint_and_deduplicated(rt_splits):
    tr, ev = rt_splits
    assert len(ev) == 500 and len(tr) == 2000
    key = lambda t: " ".join(t.lower().split())  # noqa: E731
    assert not {key(t) for t in tr.texts} & {key(t) for t in ev.texts}
    assert len({key(t) for t in tr.texts}) == len(tr) and len({key(t) for t in ev.texts}) == len(ev)
    corpus_share = 0.578  # fresh snippets in the corpus (facts: 57.8 %)
    for split in (tr, ev):
        assert abs(sum(split.labels) / len(split) - corpus_share) < 0.01


def test_splits_are_deterministic(rt_splits):
    again = data.load(Dataset(name="rt", source="embedded:rotten_tomatoes", train_size=2000, eval_size=500))
    assert again == rt_splits


def test_head_has_its_own_parameter_group():
    import torch

    from pipeline.run.train import param_groups

    model = torch.nn.ModuleDict({"lora_A": torch.nn.Linear(4, 2), "classifier": torch.nn.Linear(2, 2),
                                 "frozen": torch.nn.Linear(2, 2)})
    model["frozen"].requires_grad_(False)
    groups = {g["name"]: g for g in param_groups(model, lr=0.2, head_lr=0.01)}
    assert groups["module"]["lr"] == 0.2 and groups["head"]["lr"] == 0.01
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in model["classifier"].parameters()}
    assert {id(p) for p in groups["module"]["params"]} == {id(p) for p in model["lora_A"].parameters()}
