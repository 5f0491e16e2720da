"""IA3 (Liu et al. 2022) through peft."""

from ._peft import task_type, wrap


def attach(model, task, params):
    import peft

    cfg = peft.IA3Config(task_type=task_type(task), **params)
    return wrap(model, cfg)
