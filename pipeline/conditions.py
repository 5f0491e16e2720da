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

=========  ==========================================  ======================  =====================
condition  module                                      head (free)             head (trained)
=========  ==========================================  ======================  =====================
ported     the stage-1 module, copied bit-exactly      none                    the ported head
scratch    the technique's own fresh initialisation    none                    the ported head
sampled    each module tensor redrawn from N(mean,     none                    the ported head
           std) of the ported tensor itself (seeded)
no-module  none: the bare receiving host               none                    the ported head
=========  ==========================================  ======================  =====================

Under ``free``, ``no-module`` has nothing to train, so it is planned at zero-shot
only; under ``trained`` its further training trains the head alone (the old
"head-only" control).  ``tests/test_conditions.py`` loads every condition for
every technique and checks that each contrast's two sides differ in exactly the
part this table names.
"""

from __future__ import annotations

from dataclasses import dataclass

FREE, TRAINED = "free", "trained"
HEADS = (FREE, TRAINED)

# what a condition's module is
PORTED, FRESH, SAMPLED, NONE = "ported", "fresh", "sampled", "none"


@dataclass(frozen=True)
class Condition:
    name: str
    module: str  # PORTED | FRESH | SAMPLED | NONE
    what: str  # one phrase for the report

    def loads_module(self) -> bool:
        """Whether it reads the stage-1 module's tensors (the module part; the head is the formulation's)."""
        return self.module in (PORTED, SAMPLED)

    def head(self, formulation: str, port_head: bool = True) -> str:
        """The head it gets: 'none' (free), else the ported head or the seeded fresh one (trained)."""
        if formulation == FREE:
            return NONE
        return PORTED if port_head else FRESH

    def needs_stage1(self, formulation: str, port_head: bool = True) -> bool:
        return self.loads_module() or self.head(formulation, port_head) == PORTED

    def trains(self, formulation: str) -> bool:
        """Whether further training has anything to train (else: zero-shot only)."""
        return self.module != NONE or formulation == TRAINED


CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("ported", PORTED, "the origin module, copied bit-exactly"),
    Condition("scratch", FRESH, "the technique's own fresh initialisation"),
    Condition("sampled", SAMPLED, "every module tensor redrawn from N(mean, std) of the ported tensor"),
    Condition("no-module", NONE, "the bare receiving host, no module"),
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


CONTRASTS: tuple[Contrast, ...] = (
    Contrast("ported", "scratch", "what the trained module carries beyond the technique's own initialisation"),
    Contrast("ported", "sampled", "what the module's values carry beyond their per-tensor mean and spread"),
    Contrast("ported", "no-module", "everything the ported module adds to the bare receiving host"),
)


def contrasts_for(conditions) -> list[Contrast]:
    have = set(conditions)
    return [c for c in CONTRASTS if c.a in have and c.b in have]
