"""LoRA (Hu et al. 2021) through peft."""

from . import register
from ._peft import task_type, wrap
from .base import Technique


def attach(model, task, params):
    import peft

    cfg = peft.LoraConfig(task_type=task_type(task), **params)
    return wrap(model, cfg)


register(
    Technique(
        name="lora",
        attach=attach,
        defaults={"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": None, "lr": 3e-3},
        description="low-rank update of attention projections (peft LoraConfig)",
        paper=True,
    )
)
