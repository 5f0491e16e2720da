"""Prefix tuning (Li & Liang 2021) through peft.

``prefix_projection`` is off by default: with it on, peft stores the
*computed* prefix rather than the projection MLP, so porting would carry the
prefix but not the MLP that produced it.
"""

from . import register
from ._peft import cache_shim, host_config, task_type, wrap
from .base import CLASSIFICATION, Technique


def attach(model, task, params):
    import peft

    cfg = peft.PrefixTuningConfig(task_type=task_type(task), **host_config(model), **params)
    return wrap(cache_shim(model) if task == CLASSIFICATION else model, cfg)


register(
    Technique(
        name="prefix",
        attach=attach,
        defaults={"num_virtual_tokens": 10, "prefix_projection": False, "lr": 1e-2},
        description="trainable key/value prefixes in every layer (peft PrefixTuningConfig)",
        paper=True,
    )
)
