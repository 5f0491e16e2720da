"""Prompt tuning (Lester et al. 2021) through peft.

On encoder-decoder hosts peft defaults to ``num_transformer_submodules=2`` and
allocates 2 x ``num_virtual_tokens`` prompt rows, but prompt tuning only ever
prepends the first ``num_virtual_tokens`` to the encoder input: the other half
gets no gradient and would pollute the module (its size and the statistics the
``sampled`` condition draws from).  One submodule allocates exactly the rows
that are used; the computation is the same.

On encoders and decoders (causal-lm) the prompt's length is handed to the host's
position fix (``pooling.Pool`` / ``causal.Positions``): real tokens keep
positions ``0..n-1``, the virtual ones get 0.
"""

from ...techniques.base import CAUSAL_LM, ENCODER_KINDS
from .. import causal
from ..pooling import find
from ._peft import host_config, task_type, wrap


def attach(model, task, params):
    import peft

    extra = {} if task in ENCODER_KINDS else {"num_transformer_submodules": 1}
    cfg = peft.PromptTuningConfig(task_type=task_type(task), **host_config(model), **{**extra, **params})
    pool = find(model) if task in ENCODER_KINDS else causal.find(model) if task == CAUSAL_LM else None
    if pool is not None:  # the prompt is prepended: keep it out of the pool and of the real tokens' positions
        pool.virtual_front = cfg.num_virtual_tokens
    return wrap(model, cfg)
