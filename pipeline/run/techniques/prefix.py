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
"""

from ...techniques.base import ENCODER_KINDS
from ._peft import cache_shim, host_config, task_type, wrap


def attach(model, task, params):
    import peft

    cfg = peft.PrefixTuningConfig(task_type=task_type(task), **host_config(model), **params)
    return wrap(cache_shim(model) if task in ENCODER_KINDS else model, cfg)
