"""What a run leaves behind in a long-lived process (a pack): accelerate's process-wide state, and the
objects an accelerator prepared, watched weakly so that ``release`` collects cycles only when a run's
objects outlived it (issue 29: a full collection costs ~0.4 s with torch and transformers loaded)."""

from __future__ import annotations

import functools
import gc
import weakref

import torch


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state (its singletons refuse a second Accelerator with another
    precision in the same process: ``pipeline run --debug``, packs, tests)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


_prepared: list[weakref.ref] = []  # what accelerators prepared since the last release() (models, optimizers)


def _watch(objs) -> None:
    _prepared[:] = [r for r in _prepared if r() is not None]  # a process that never releases stays small
    for o in objs:
        try:
            _prepared.append(weakref.ref(o))
        except TypeError:  # not weak-referenceable (a dataloader's plain list ...): nothing a cycle keeps
            pass


@functools.cache
def accelerator_class():
    from accelerate import Accelerator

    class WatchedAccelerator(Accelerator):
        """accelerate's Accelerator; what it prepares is watched (weakly) so ``release`` can tell whether a
        run's objects outlived it."""

        def prepare(self, *args, **kwargs):
            out = super().prepare(*args, **kwargs)
            _watch((*args, *(out if isinstance(out, tuple) else (out,))))
            return out

    return WatchedAccelerator


def release() -> None:
    """Free what a finished (or failed) run held before the next run of a pack starts, and reset
    accelerate's state.  Under bf16, accelerate leaves a reference cycle (``model._original_forward``)
    that keeps a run's model, optimizer and gradients alive until the cycle collector happens to run --
    on T5-large 3 GB a run.  A full collection costs ~0.4 s with torch and transformers loaded (about a
    tiny run's whole work), so it runs only where it pays: when something an accelerator prepared for the
    run is still alive once the run's references are gone (a cycle kept it; an fp32 run on CPU frees
    everything by reference counting).  Cached CUDA blocks are handed back on a GPU."""
    reset_accelerate()
    survivors = any(r() is not None for r in _prepared)
    _prepared.clear()
    if survivors:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
