"""Prompt tuning (Lester et al. 2021) through peft."""

from . import register
from ._peft import host_config, task_type, wrap
from .base import Technique


def attach(model, task, params):
    import peft

    cfg = peft.PromptTuningConfig(task_type=task_type(task), **host_config(model), **params)
    return wrap(model, cfg)


register(
    Technique(
        name="prompt",
        attach=attach,
        defaults={"num_virtual_tokens": 10, "lr": 3e-2},
        description="trainable soft-prompt embeddings prepended to the input (peft PromptTuningConfig)",
    )
)
