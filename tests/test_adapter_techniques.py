"""Bottleneck adapter and Compacter techniques on tiny BERT and T5 hosts."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

from pipeline.run import techniques as RT
from pipeline.run.techniques import adapter, compacter
from pipeline.techniques import REGISTRY, base

CLS, T2T = base.CLASSIFICATION, base.TEXT_TO_TEXT

HIDDEN, LAYERS = 32, 2
# rf 8 -> bottleneck 4, divisible by phm_dim 4 (the compacter default rf 32 would give width 1).
PARAMS = {"bottleneck": {"reduction_factor": 8}, "compacter": {"reduction_factor": 8}}


# --------------------------------------------------------------------------- hosts


def _bert_config():
    return BertConfig(
        vocab_size=200, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64
    )


def _t5_config():
    return T5Config(
        vocab_size=200, d_model=HIDDEN, d_ff=64, num_layers=LAYERS, num_decoder_layers=LAYERS,
        num_heads=2, d_kv=16, decoder_start_token_id=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def host_dirs(tmp_path_factory):
    """Two saved hosts of each kind: same shape, different weights."""
    dirs = {}
    for kind, make in (("bert", lambda: BertForSequenceClassification(_bert_config())),
                       ("t5", lambda: T5ForConditionalGeneration(_t5_config()))):  # fmt: skip
        for seed in (0, 1):
            torch.manual_seed(seed)
            d = tmp_path_factory.mktemp(f"{kind}{seed}")
            make().save_pretrained(d)
            dirs[kind, seed] = d
    return dirs


def load(host_dirs, kind, seed=0):
    loader = AutoModelForSequenceClassification if kind == "bert" else AutoModelForSeq2SeqLM
    return loader.from_pretrained(host_dirs[kind, seed])


def task_of(kind):
    return CLS if kind == "bert" else T2T


def attach(technique, model, kind, placement, seed=0):
    torch.manual_seed(seed)
    params = {**PARAMS[technique], "placement": placement}
    return RT.build(technique, model, task_of(kind), params)


def batch(kind, seed=123):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 200, (4, 7), generator=g)
    if kind == "bert":
        labels = torch.randint(0, 2, (4,), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {"input_ids": ids, "labels": torch.randint(1, 200, (4, 3), generator=g)}


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def adapter_count(kind, placement):
    blocks = LAYERS if kind == "bert" else 2 * LAYERS  # T5: encoder + decoder blocks
    return blocks * len(adapter.PLACEMENTS[placement])


CASES = [
    pytest.param(t, k, p, id=f"{t}-{k}-{p}")
    for t in ("bottleneck", "compacter")
    for k in ("bert", "t5")
    for p in ("pfeiffer", "houlsby")
]


# --------------------------------------------------------------------------- registry


def test_registered():
    for name in ("bottleneck", "compacter"):
        t = REGISTRY[name]
        assert t.paper and t.description
        assert "lr" in t.defaults
    assert REGISTRY["bottleneck"].defaults["placement"] == "pfeiffer"
    assert REGISTRY["bottleneck"].defaults["reduction_factor"] == 16
    assert REGISTRY["bottleneck"].defaults["non_linearity"] == "relu"
    assert REGISTRY["compacter"].defaults["phm_dim"] == 4
    assert REGISTRY["compacter"].defaults["phm_rank"] == 1


# --------------------------------------------------------------------------- per case


@pytest.mark.parametrize("technique,kind,placement", CASES)
def test_trainable_set(host_dirs, technique, kind, placement):
    model = attach(technique, load(host_dirs, kind), kind, placement)
    names = set(trainable(model))
    head = {n for n in names if base.is_head_param(n)}
    module = names - head
    assert head == ({"classifier.weight", "classifier.bias"} if kind == "bert" else set())
    per_adapter = (
        {"down.weight", "down.bias", "up.weight", "up.bias"}
        if technique == "bottleneck"
        else {"down.s", "down.t", "down.bias", "up.s", "up.t", "up.bias"}
    )
    adapter_names = {n for n in module if ".adapter." in n}
    sublayers = {n.split(".adapter.")[0] for n in adapter_names}
    assert len(sublayers) == adapter_count(kind, placement)
    assert adapter_names == {f"{s}.adapter.{p}" for s in sublayers for p in per_adapter}
    shared = module - adapter_names
    assert shared == ({"compacter.phm_rule"} if technique == "compacter" else set())
    # every other host parameter is frozen
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in names)
    # attention sublayers get adapters only with houlsby
    att_marker = "attention.output" if kind == "bert" else "layer.0"
    assert any(s.endswith(att_marker) for s in sublayers) == (placement == "houlsby")


@pytest.mark.parametrize("technique,kind,placement", CASES)
def test_fresh_attach_keeps_host_output(host_dirs, technique, kind, placement):
    model = load(host_dirs, kind).eval()
    b = batch(kind)
    with torch.no_grad():
        before = model(**b).logits
        attach(technique, model, kind, placement)
        after = model(**b).logits
    if technique == "bottleneck":
        assert torch.equal(before, after)  # up-projection is exactly zero
    else:
        # phm_rule ~ N(0, 1e-4): the adapter adds ~1e-8 of the hidden state (often below float32 resolution).
        torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("technique,kind,placement", CASES)
def test_training_changes_only_module(host_dirs, technique, kind, placement):
    model = attach(technique, load(host_dirs, kind), kind, placement).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    b = batch(kind)
    losses = []
    torch.manual_seed(0)
    for _ in range(4):
        loss = model(**b).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] != losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(trainable(model))


@pytest.mark.parametrize("technique,kind,placement", CASES)
def test_port_by_name_is_bit_exact(host_dirs, technique, kind, placement):
    src = attach(technique, load(host_dirs, kind, seed=0), kind, placement, seed=10)
    dst = attach(technique, load(host_dirs, kind, seed=1), kind, placement, seed=20)
    # give the source module non-trivial values (bottleneck up-projections start at zero)
    with torch.no_grad():
        for p in trainable(src).values():
            p.add_(torch.randn_like(p) * 0.1)
    src_state = RT.module_state(src)
    assert set(src_state) == set(trainable(dst))  # same names on a host of the same shape
    assert any(not torch.equal(src_state[n], p) for n, p in trainable(dst).items())
    with torch.no_grad():
        for n, p in trainable(dst).items():
            p.copy_(src_state[n])
    dst_state = RT.module_state(dst)
    assert all(torch.equal(src_state[n], dst_state[n]) for n in src_state)
    # the ported adapters compute the same function (compacter: through the ported shared rule)
    src_mods = {n: m for n, m in src.named_modules() if isinstance(m, adapter.ResidualAdapter)}
    dst_mods = {n: m for n, m in dst.named_modules() if isinstance(m, adapter.ResidualAdapter)}
    assert src_mods.keys() == dst_mods.keys()
    x = torch.randn(3, HIDDEN)
    with torch.no_grad():
        for n in src_mods:
            assert torch.equal(src_mods[n](x), dst_mods[n](x))
    # and the hosts differ only in their frozen weights
    host = [n for n in src.state_dict() if n not in src_state]
    assert any(not torch.equal(src.state_dict()[n], dst.state_dict()[n]) for n in host)


# --------------------------------------------------------------------------- compacter specifics


def test_compacter_shares_one_rule(host_dirs):
    model = attach("compacter", load(host_dirs, "t5"), "t5", "houlsby")
    phm = [m for m in model.modules() if isinstance(m, compacter.PHMLinear)]
    assert len(phm) == 2 * adapter_count("t5", "houlsby")
    rule = model.compacter.phm_rule
    assert all(m._shared[0].phm_rule is rule for m in phm)
    assert [n for n in model.state_dict() if "phm_rule" in n] == ["compacter.phm_rule"]
    assert [n for n, _ in model.named_parameters(remove_duplicate=False) if "phm_rule" in n] == ["compacter.phm_rule"]
    # the weight is sum_i A_i (x) s_i t_i^T
    m = phm[0]
    expected = sum(torch.kron(rule[i], m.s[i] @ m.t[i]) for i in range(rule.shape[0]))
    torch.testing.assert_close(m.weight(), expected)


def test_deepcopy_rebinds_hooks_and_shared_rule(host_dirs):
    for technique in ("bottleneck", "compacter"):
        model = attach(technique, load(host_dirs, "bert"), "bert", "houlsby").eval()
        clone = copy.deepcopy(model)
        b = batch("bert")
        with torch.no_grad():
            ref = model(**b).logits
            for n, p in trainable(clone).items():
                if not base.is_head_param(n):
                    p.add_(0.5)
            assert torch.equal(model(**b).logits, ref)  # editing the clone leaves the original alone
            assert not torch.equal(clone(**b).logits, ref)


def test_dtype_conversion_keeps_working(host_dirs):
    model = attach("compacter", load(host_dirs, "bert"), "bert", "pfeiffer").double()
    assert model(**batch("bert")).logits.dtype == torch.float64


# --------------------------------------------------------------------------- sizes and errors


@pytest.fixture
def sizes(host_dirs):
    """sizes(technique, params): trainable parameters of the module alone (head excluded) on the tiny BERT."""

    def size(technique, params):
        m = RT.build(technique, load(host_dirs, "bert"), CLS, params)
        return sum(p.numel() for n, p in m.named_parameters() if p.requires_grad and not base.is_head_param(n))

    return size


def test_parameter_counts(sizes):
    h, w, n = HIDDEN, HIDDEN // 8, 4
    bottleneck = 2 * h * w + w + h
    assert sizes("bottleneck", {"reduction_factor": 8}) == LAYERS * bottleneck
    assert sizes("bottleneck", {"reduction_factor": 8, "placement": "houlsby"}) == 2 * LAYERS * bottleneck
    phm = (h + w) + (w + h) + w + h  # down s, t, bias + up s, t, bias at rank 1
    assert sizes("compacter", {"reduction_factor": 8}) == LAYERS * phm + n**3
    assert sizes("compacter", {"reduction_factor": 8, "phm_rank": 2}) == LAYERS * (2 * (h + w) * 2 + w + h) + n**3


def test_compacter_much_smaller_at_minilm_shape():
    """all-MiniLM-L6-v2 shape (hidden 384, 6 layers; tiny vocab): at the same reduction factor the
    PHM factorisation removes the d x m weight matrices, leaving mostly biases."""
    cfg = BertConfig(vocab_size=8, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    host = BertForSequenceClassification(cfg)

    def size(technique, params):
        m = RT.build(technique, copy.deepcopy(host), CLS, params)
        return sum(p.numel() for n, p in m.named_parameters() if p.requires_grad and not base.is_head_param(n))

    for rf in (16, 32):
        for placement in ("pfeiffer", "houlsby"):
            params = {"reduction_factor": rf, "placement": placement}
            assert size("compacter", params) < size("bottleneck", params) / 5
    assert size("bottleneck", {}) == 6 * (2 * 384 * 24 + 24 + 384)  # defaults: rf 16, pfeiffer
    assert size("compacter", {}) == 6 * (2 * (384 + 12) + 12 + 384) + 4**3  # defaults: rf 32, pfeiffer


@pytest.mark.parametrize(
    "technique,params,match",
    [
        ("bottleneck", {"placement": "middle"}, "placement"),
        ("bottleneck", {"reduction": 4}, "unknown"),
        ("bottleneck", {"non_linearity": "nope"}, "nope"),
        ("compacter", {"reduction_factor": 16}, "phm_dim"),  # 32 // 16 = 2, not divisible by 4
        ("compacter", {"phm_rank": 0}, "phm_rank"),
    ],
)
def test_bad_params(host_dirs, technique, params, match):
    with pytest.raises((ValueError, KeyError), match=match):
        RT.build(technique, load(host_dirs, "bert"), CLS, params)


def test_errors(host_dirs):
    with pytest.raises(ValueError, match="task"):
        RT.build("bottleneck", load(host_dirs, "bert"), "regression", {})
    for technique in ("bottleneck", "compacter"):
        model = attach(technique, load(host_dirs, "bert"), "bert", "pfeiffer")
        with pytest.raises(ValueError, match="twice"):
            attach(technique, model, "bert", "pfeiffer")
    # a text-to-text host has no classification head to train
    with pytest.raises(ValueError, match="head"):
        RT.build("bottleneck", load(host_dirs, "t5"), CLS, {})
