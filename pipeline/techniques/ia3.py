"""IA3 (Liu et al. 2022) through peft."""

from . import register
from ._peft import task_type, wrap
from .base import Technique


def attach(model, task, params):
    import peft

    cfg = peft.IA3Config(task_type=task_type(task), **params)
    return wrap(model, cfg)


register(
    Technique(
        name="ia3",
        attach=attach,
        defaults={"lr": 1e-2},
        description="learned rescaling of keys, values and feed-forward activations (peft IA3Config)",
    )
)
