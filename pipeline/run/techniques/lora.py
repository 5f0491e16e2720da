"""LoRA (Hu et al. 2021) through peft."""

from ._peft import task_type, wrap


def attach(model, task, params):
    import peft

    cfg = peft.LoraConfig(task_type=task_type(task), **params)
    return wrap(model, cfg)
