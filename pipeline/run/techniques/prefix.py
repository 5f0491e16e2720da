"""Prefix tuning (Li & Liang 2021) through peft.

``prefix_projection`` is off by default: with it on, peft stores the
*computed* prefix rather than the projection MLP, so porting would carry the
prefix but not the MLP that produced it.

Encoder-decoder hosts (T5, text-to-text) need no shim: peft passes
``past_key_values``, which transformers 5.24 renames to ``cache`` on the way
in (with a FutureWarning: the old name goes in 5.40).  What peft 0.21.2 does
there: the prefix (``num_virtual_tokens`` x 2 x layers x d_model) becomes the
*decoder's self-attention* cache only -- it also builds a cross-attention copy
but resets that cache, and the encoder gets nothing.  So on T5 this is
decoder-side prefix tuning, narrower than Li & Liang's (and AdapterHub's)
prefixes on every attention block; ``tests/test_text_to_text.py`` pins it.

``init_text`` (causal-lm hosts; not a peft field): the prefix starts as the host's *own* key/values of that
text's first ``num_virtual_tokens`` tokens, computed at positions ``-P..-1`` -- so a fresh prefix makes the
host compute exactly what it computes on ``init_text + prompt`` (the real tokens keep positions ``0..n-1``;
RoPE sees only relative offsets), a real context rather than peft's N(0, 1) key/values.  Measured
(2026-12-07, SmolLM2-135M-Instruct, 96 Rotten Tomatoes snippets, 10 virtual tokens, fresh prefix, accuracy /
AUC): bare host 0.792 / 0.868; peft's default init 0.448 / 0.655; init_text "Here is a short movie review
and its sentiment.\n" 0.781 / 0.869, "Review:" 0.729 / 0.871, "\n" 0.667 / 0.859 -- the text matters, and
a sentence that announces the task leaves the host's score.  Li & Liang initialise from real words'
activations too.  The text is tokenised by the host's own tokenizer (read from the folder it was loaded
from) and repeated if it has fewer tokens than the prefix.
"""

import torch

from ...techniques.base import CAUSAL_LM, ENCODER_KINDS
from ._peft import cache_shim, host_config, task_type, wrap

OWN_PARAMS = {"init_text"}  # declared params that are the project's, not peft's


def attach(model, task, params):
    import peft

    params = dict(params)
    init_text = params.pop("init_text", None)
    if init_text is not None and task != CAUSAL_LM:
        raise ValueError("prefix init_text applies to causal-lm hosts only")
    cfg = peft.PrefixTuningConfig(task_type=task_type(task), **host_config(model), **params)
    kv = host_key_values(model, init_text, cfg.num_virtual_tokens) if init_text is not None else None
    wrapped = wrap(cache_shim(model) if task in ENCODER_KINDS else model, cfg)
    if kv is not None:
        emb = wrapped.prompt_encoder[wrapped.active_adapter].embedding.weight
        if emb.shape != kv.shape:
            raise ValueError(f"prefix init_text: the host's key/values {tuple(kv.shape)} do not fit peft's prefix "
                             f"{tuple(emb.shape)}")
        with torch.no_grad():
            emb.copy_(kv)
    return wrapped


def host_key_values(model, text: str, tokens: int):
    """The host's key/values of ``text``'s first ``tokens`` tokens at positions ``-tokens..-1``, laid out as peft's
    prefix embedding: [tokens, layers x (key, value) x key/value heads x head dim]."""
    from transformers import AutoTokenizer

    from .. import causal

    tok = AutoTokenizer.from_pretrained(model.config._name_or_path)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("prefix init_text tokenises to nothing")
    ids = (ids * (tokens // len(ids) + 1))[:tokens]
    pos = causal.find(model)
    if pos is not None:
        pos.enabled = False  # explicit positions here: the prefix sits before the real tokens' 0..n-1
    try:
        with torch.no_grad():
            out = causal.inner(model)(input_ids=torch.tensor([ids]), position_ids=torch.arange(-tokens, 0)[None],
                                      use_cache=True)
    finally:
        if pos is not None:
            pos.enabled = True
    cache = out.past_key_values
    per_layer = [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]  # [2, heads, P, d] each
    kv = torch.stack(per_layer)  # [layers, 2, heads, P, d]
    return kv.permute(3, 0, 1, 2, 4).reshape(tokens, -1).float()
