"""The study's conditions and contrasts, as data (torch-free; the runner, the plan and the report read it).

A *formulation* says where a classification host's task knowledge may sit:

* ``free`` (the default): no trained head.  The class score is the host's own
  similarity between the input's pooled vector and the pooled vectors of the
  label texts (the dataset's ``label_words``), both computed by the *adapted*
  host in the same forward pass (``pipeline.run.tasks``), times a fixed
  temperature, plus a per-class bias that belongs to the module.  All task
  knowledge is in the module -- as on a text-to-text host, which scores label
  words through its adapted decoder (always ``free``).
* ``trained``: a classification head trained with the module at stage 1.  On
  the receiving host *every* condition gets the same head -- the ported one
  (or, with ``port_head: false``, the same seeded fresh head) -- so every
  contrast still differs in the module only.

What each condition puts on the receiving host:

=========  ==========================================  ====================  ======================  ===============
condition  module                                      class bias (free)     head (free)             head (trained)
=========  ==========================================  ====================  ======================  ===============
ported     the stage-1 module, copied bit-exactly      ported                none                    the ported head
scratch    the technique's own fresh initialisation    fresh (zeros)         none                    the ported head
sampled    each module matrix redrawn from N(mean,     fresh (zeros)         none                    the ported head
           std) of the ported tensor itself (seeded);
           tensors under SAMPLE_MIN_NUMEL elements
           keep the fresh initialisation
no-module  none: the bare receiving host               none (zeros, frozen)  none                    the ported head
=========  ==========================================  ====================  ======================  ===============

The class bias (``head: free``: class score = temperature x (cos + bias_c)) is part of the
module -- it is ported with it and trained with it -- but the ``sampled`` condition does *not*
redraw it.  It has two elements, and N(mean, std) of two values gives back the same pair in a
random order: a class prior of random sign, times the temperature (20), so "ported - sampled"
would partly measure that sign.  Sampled therefore keeps the technique's fresh bias (zeros,
trainable), the same bias scratch has and the bare host has in effect: the three controls carry
no class prior, sampled differs from scratch in the sampled matrices only, and every contrast
compares the whole ported module (matrices and its learned prior) with a control that has none.
The same reasoning covers any other module tensor of fewer than ``SAMPLE_MIN_NUMEL`` (3)
elements: one value's N(mean, 0) is the value itself (sampled would copy it), two values come
back as the same pair in random order.  Such tensors keep the fresh initialisation in
``sampled`` (none of the study's techniques has one today besides the class bias: the smallest
module tensors are Compacter's 12-element factors and biases, which are sampled).  Under
``head: trained`` there is no class bias: the head's own bias is part of the ported head that
every condition gets.

Under ``free``, ``no-module`` has nothing to train, so it is planned at zero-shot
only; under ``trained`` its further training trains the head alone (the old
"head-only" control).  ``tests/test_conditions.py`` loads every condition for
every technique and checks that each contrast's two sides differ in exactly the
part this table names.
"""

from __future__ import annotations

from dataclasses import dataclass

from .techniques.base import is_class_bias

FREE, TRAINED = "free", "trained"
HEADS = (FREE, TRAINED)

# what a condition's module is
PORTED, FRESH, SAMPLED, NONE = "ported", "fresh", "sampled", "none"
SAMPLE_MIN_NUMEL = 3  # sampled: a module tensor with fewer elements keeps the fresh initialisation (module doc)


@dataclass(frozen=True)
class Condition:
    name: str
    module: str  # PORTED | FRESH | SAMPLED | NONE
    what: str  # one phrase for the report
    bias: str = NONE  # head: free -- the module's per-class bias: PORTED | FRESH | NONE (see the module doc)

    def loads_module(self) -> bool:
        """Whether it reads the stage-1 module's tensors (the module part; the head is the formulation's)."""
        return self.module in (PORTED, SAMPLED)

    def head(self, formulation: str, port_head: bool = True) -> str:
        """The head it gets: 'none' (free), else the ported head or the seeded fresh one (trained)."""
        if formulation == FREE:
            return NONE
        return PORTED if port_head else FRESH

    def class_bias(self, formulation: str) -> str:
        """The per-class bias it gets under ``formulation``: the table's ``bias`` under free; 'none' under
        trained (no class bias there: the head's bias is part of the head)."""
        return self.bias if formulation == FREE else NONE

    def tensor(self, name: str, numel: int, formulation: str) -> str:
        """What it loads into one module tensor (by name and size): PORTED, SAMPLED or FRESH (the technique's
        fresh initialisation, left as it is).  The class bias follows ``class_bias``; under ``sampled`` a tensor
        of fewer than SAMPLE_MIN_NUMEL elements stays fresh (module doc)."""
        if self.module == NONE:
            return NONE
        if is_class_bias(name):
            bias = self.class_bias(formulation)
            return FRESH if bias == NONE else bias
        if self.module == SAMPLED and numel < SAMPLE_MIN_NUMEL:
            return FRESH
        return self.module

    def needs_stage1(self, formulation: str, port_head: bool = True) -> bool:
        return self.loads_module() or self.head(formulation, port_head) == PORTED

    def trains(self, formulation: str) -> bool:
        """Whether further training has anything to train (else: zero-shot only)."""
        return self.module != NONE or formulation == TRAINED


CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("ported", PORTED, "the origin module, copied bit-exactly", bias=PORTED),
    Condition("scratch", FRESH, "the technique's own fresh initialisation", bias=FRESH),
    Condition("sampled", SAMPLED, "every module matrix redrawn from N(mean, std) of the ported tensor, the class bias "
              "left at its fresh initialisation", bias=FRESH),
    Condition("no-module", NONE, "the bare receiving host, no module", bias=NONE),
)}
NAMES = tuple(CONDITIONS)  # display order


@dataclass(frozen=True)
class Contrast:
    a: str
    b: str
    measures: str  # what a - b measures, for the report's prose

    @property
    def differs_in(self) -> tuple[str, str]:
        """The part of the receiving host the two sides differ in: (module of a, module of b)."""
        return CONDITIONS[self.a].module, CONDITIONS[self.b].module

    def biases(self, formulation: str) -> tuple[str, str]:
        """The class bias of each side (free: the table's; trained: none on either side)."""
        return CONDITIONS[self.a].class_bias(formulation), CONDITIONS[self.b].class_bias(formulation)


CONTRASTS: tuple[Contrast, ...] = (
    Contrast("ported", "scratch", "what the trained module carries beyond the technique's own initialisation"),
    Contrast("ported", "sampled", "what the module's values carry beyond each tensor's mean and spread (its class bias "
                                  "included: sampled keeps the fresh one)"),
    Contrast("ported", "no-module", "everything the ported module adds to the bare receiving host"),
)


def contrasts_for(conditions) -> list[Contrast]:
    have = set(conditions)
    return [c for c in CONTRASTS if c.a in have and c.b in have]
