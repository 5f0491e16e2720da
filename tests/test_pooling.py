"""A host's pooling and real-token positions are the same whatever technique is attached."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pipeline.run import pooling
from pipeline.run import techniques as RT
from pipeline.techniques.base import CLASSIFICATION


def _host(mode: str):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=2))
    pooling.install(model, mode)
    return model.eval()


def _batch():
    ids = torch.tensor([[2, 11, 12, 13, 3], [2, 14, 3, 0, 0]])
    return ids, (ids != 0).long()


def _pooled_and_positions(model, ids, mask):
    seen = {}
    enc = pooling.encoder_of(model.base_model if hasattr(model, "peft_config") else model)
    pool = pooling.find(model)
    handle = enc.pooler.register_forward_hook(lambda m, a, out: seen.__setitem__("pooled", out.detach()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    handle.remove()
    return seen["pooled"], pool.last_positions


@pytest.mark.parametrize("technique", ["prefix", "prompt", "lora"])
def test_real_tokens_keep_positions_0_to_n(technique):
    ids, mask = _batch()
    model = RT.build(technique, _host("mean"), CLASSIFICATION, {"num_virtual_tokens": 4} if technique != "lora" else {})
    _, pos = _pooled_and_positions(model, ids, mask)
    n = ids.shape[1]
    real = pos[0, -n:].tolist()
    assert real == list(range(n)), f"{technique}: real tokens at positions {real}"
    if technique == "prompt":
        assert pos[0, :-n].tolist() == [0] * 4  # virtual tokens at position 0


def test_without_the_hook_prefix_would_shift_positions():
    """The fault the hook fixes is real: BERT offsets positions by peft's prefix length."""
    from transformers.models.bert.modeling_bert import BertEmbeddings

    emb = BertEmbeddings(BertConfig(vocab_size=100, hidden_size=32))
    seen = {}
    emb.position_embeddings.register_forward_hook(lambda m, a, o: seen.__setitem__("pos", a[0]))
    emb(input_ids=torch.tensor([[2, 11, 3]]), cache_length=4)
    assert seen["pos"][0].tolist() == [4, 5, 6]


@pytest.mark.parametrize("technique", ["prefix", "prompt"])
def test_virtual_tokens_never_enter_the_mean_pool(technique):
    """At initialisation-independent level: the pool covers exactly the real, unpadded tokens."""
    ids, mask = _batch()
    model = RT.build(technique, _host("mean"), CLASSIFICATION, {"num_virtual_tokens": 4})
    enc = pooling.encoder_of(model.base_model)
    hidden = {}
    enc.encoder.register_forward_hook(lambda m, a, out: hidden.__setitem__("h", out.last_hidden_state.detach()))
    pooled, _ = _pooled_and_positions(model, ids, mask)
    h = hidden["h"][:, -ids.shape[1]:]  # the real tokens' states
    expected = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(pooled, expected)


def test_cls_and_pooler_modes_read_the_first_real_token():
    ids, mask = _batch()
    for mode in ("cls", "pooler"):
        model = RT.build("prompt", _host(mode), CLASSIFICATION, {"num_virtual_tokens": 3})
        enc = pooling.encoder_of(model.base_model)
        hidden = {}
        enc.encoder.register_forward_hook(lambda m, a, out: hidden.__setitem__("h", out.last_hidden_state.detach()))
        pooled, _ = _pooled_and_positions(model, ids, mask)
        first = hidden["h"][:, 3]
        expected = first if mode == "cls" else torch.tanh(enc.pooler.dense(first))
        torch.testing.assert_close(pooled, expected)


def test_bare_host_mean_pool_ignores_padding():
    ids, mask = _batch()
    model = _host("mean")
    pooled, pos = _pooled_and_positions(model, ids, mask)
    alone, _ = _pooled_and_positions(model, ids[1:, :3], mask[1:, :3])
    torch.testing.assert_close(pooled[1:], alone, atol=1e-5, rtol=1e-5)
    assert pos[0].tolist() == list(range(ids.shape[1]))


def test_unknown_pooling_is_refused():
    with pytest.raises(pooling.PoolingError):
        _host("max")
