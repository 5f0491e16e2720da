"""What a PEFT technique *is*, readable without torch: its declaration.

A technique turns a frozen host model into a model whose *trainable*
parameters are exactly the PEFT module (plus, for classification hosts, the
classification head).  Porting, sampling and checkpointing all work on the
trainable parameters by name, so every technique, peft-backed or written here,
is treated alike.

This file holds the declaration side only (peft's per-tuner ``config.py``):
the name, whether the study uses it, its default hyperparameters and the type
of each hyperparameter, so that ``plan`` checks a spec's ``technique_params``
without importing torch.  The torch code that attaches a technique lives in
``pipeline/run/techniques/<impl>.py`` and is loaded only when a run attaches it
(:func:`pipeline.run.techniques.build`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

# Task formulations a host can have.
CLASSIFICATION = "classification"  # encoder + classification head (AutoModelForSequenceClassification)
TEXT_TO_TEXT = "text-to-text"  # encoder-decoder, label verbalised as a word (AutoModelForSeq2SeqLM)
CAUSAL_LM = "causal-lm"  # decoder-only, label word scored as the continuation (AutoModelForCausalLM)
TASKS = (CLASSIFICATION, TEXT_TO_TEXT, CAUSAL_LM)
# How a run scores classes (pipeline.run.tasks): a classification host with ``head: free`` runs as
# SIMILARITY (the bare encoder, classes scored by pooled-vector similarity to the label texts), with
# ``head: trained`` as CLASSIFICATION; text-to-text and causal-lm hosts always score their label words.
SIMILARITY = "similarity"
RUN_KINDS = (CLASSIFICATION, SIMILARITY, TEXT_TO_TEXT, CAUSAL_LM)
ENCODER_KINDS = (CLASSIFICATION, SIMILARITY)  # pooled encoders (pipeline.run.pooling)

# Keys of a technique's params that configure its training, not the module: its learning rate and
# its origin-training step budget (overriding origin_training.steps).  Every technique accepts them,
# each may be a list of values (a tuning grid: one set of runs per value), and attach never sees them.
TRAINING_KEYS = ("lr", "steps")

# Parameter-name fragments that belong to a classification head.
HEAD_MARKERS = ("classifier", "score")

ABSENT = object()  # a Param without a default: left out of the params (the library's own default applies)
KINDS = ("int", "float", "bool", "str", "names")  # names: a module name or a list of them


CLASS_BIAS = "class_bias"  # head: free -- the module's per-class bias (pipeline.run.pooling.Pool.class_bias)


def is_class_bias(name: str) -> bool:
    """True for the head-free formulation's per-class bias (part of the module; see pipeline/conditions.py)."""
    return name == CLASS_BIAS or name.endswith("." + CLASS_BIAS)


def is_head_param(name: str) -> bool:
    """True for parameters of the classification head (ported only when the spec asks)."""
    return any(f"{m}." in name or name.startswith(m) for m in HEAD_MARKERS)


@dataclass(frozen=True)
class Param:
    """One hyperparameter of a technique: its type, default and allowed values."""

    kind: str  # one of KINDS
    default: Any = ABSENT
    choices: tuple = ()
    min: float | None = None  # inclusive lower bound (numbers)
    above: float | None = None  # exclusive lower bound (numbers)
    below: float | None = None  # exclusive upper bound (numbers)
    nullable: bool = False  # null (None) allowed

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r} (known: {', '.join(KINDS)})")

    def problem(self, v: Any) -> str | None:
        """None if ``v`` is allowed, else what is wrong with it (one phrase)."""
        if v is None:
            return None if self.nullable else f"must not be null{self._expect()}"
        if self.kind == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            return f"must be an integer, got {v!r}"
        if self.kind == "float" and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"must be a number, got {v!r}"
        if self.kind == "bool" and not isinstance(v, bool):
            return f"must be true or false, got {v!r}"
        if self.kind == "str" and not isinstance(v, str):
            return f"must be a string, got {v!r}"
        if self.kind == "names" and not (isinstance(v, str) or isinstance(v, list) and v
                                         and all(isinstance(x, str) and x for x in v)):
            return f"must be a module name or a list of module names, got {v!r}"
        if self.choices and v not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}, got {v!r}"
        if self.min is not None and v < self.min:
            return f"must be at least {self.min:g}, got {v!r}"
        if self.above is not None and not v > self.above:
            return f"must be greater than {self.above:g}, got {v!r}"
        if self.below is not None and not v < self.below:
            return f"must be less than {self.below:g}, got {v!r}"
        return None

    def _expect(self) -> str:
        return f" (a {self.kind})" if self.kind != "names" else ""


@dataclass(frozen=True)
class Technique:
    """A PEFT technique's declaration.

    ``params``: every hyperparameter ``attach`` accepts, with its type; those with a default
    are part of every run's params (and so of its run id).  ``lr``: the default learning rate
    of the module.  ``impl``: the module under ``pipeline.run.techniques`` whose
    ``attach(model, task, params)`` freezes the host, injects a freshly initialised module
    (from torch's current RNG) and returns the model to train.
    """

    name: str
    impl: str
    params: dict[str, Param] = field(default_factory=dict)
    lr: float = 1e-3
    description: str = ""
    paper: bool = False  # one of the study's four techniques

    @property
    def defaults(self) -> dict[str, Any]:
        """The hyperparameters every run gets unless the spec overrides them, ``lr`` included."""
        return {**{k: p.default for k, p in self.params.items() if p.default is not ABSENT}, "lr": self.lr}

    def known(self) -> list[str]:
        return [*self.params, *TRAINING_KEYS]

    def check(self, key: str, value: Any) -> str | None:
        """None if ``key: value`` is a valid hyperparameter of this technique, else the one-phrase problem.

        The training keys (``lr``, ``steps``) are checked by the spec (they may be lists)."""
        if key in TRAINING_KEYS:
            return None
        if key not in self.params:
            m = difflib.get_close_matches(str(key), self.known(), n=1)
            hint = f" (did you mean {m[0]!r}?)" if m else ""
            return f"unknown {self.name} parameter{hint} (known: {', '.join(self.known())})"
        return self.params[key].problem(value)
