"""What a training step really keeps for its backward pass, counted on CPU: the check of ``pipeline.cost.run_memory``.

``saved(path, kind, batch, max_length, precision)`` builds a run's model the pipeline's way (``runner.HostCache`` ->
``runner.prepare``, LoRA at its defaults, ``train.set_frozen_dtype``), collates ``batch`` inputs of exactly
``max_length`` tokens with the run's Task (so a causal-lm run has its row per class, a text-to-text run its label
words), and runs ``task.loss`` under ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd saves is
counted once by its storage (views share one), parameters excluded.  Autocast's bf16 copies of frozen weights
are counted apart (``weight_copies``: bf16 tensors the shape of a parameter under autocast, and with frozen bf16
weights the fp32 LM head the word scoring keeps).  Nothing is run backward.

``python -m benches.memory_count PATH KIND BATCH MAX_LENGTH [fp32|bf16]`` prints the count beside
``run_memory``'s estimate for that host (any local host folder: a built tiny host, all-MiniLM, a SmolLM2 folder).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = {"similarity": "{text}", "classification": "{text}", "text-to-text": "sentiment: {text}",
             "causal-lm": "Review: {text}\nSentiment:"}


def _full_length_texts(n: int, tokenizer, max_length: int) -> list[str]:
    """n texts of at least max_length tokens each (Rotten Tomatoes snippets joined), so every row is full."""
    from pipeline.run import corpora

    snippets = corpora.rotten_tomatoes_snippets()
    out, i = [], 0
    for _ in range(n):
        parts: list[str] = []
        while len(tokenizer(" ".join(parts))["input_ids"]) <= max_length:
            parts.append(snippets[i % len(snippets)])
            i += 1
        out.append(" ".join(parts))
    return out


def saved(path: str, kind: str, batch: int, max_length: int, precision: str = "fp32", frozen: str = "fp32",
          technique: str = "lora") -> dict[str, float]:
    """Bytes autograd keeps for one training step's backward pass: ``activations`` (everything but parameters
    and autocast's weight copies), ``weight_copies``; ``params`` (host parameter count), ``rows`` and ``width``
    of the collated batch."""
    import torch

    from pipeline.run import runner
    from pipeline.run.tasks import Task
    from pipeline.run.train import set_frozen_dtype

    cache = runner.HostCache(ROOT / "models")
    task_kind = "similarity" if kind == "classification" else kind
    task = Task(task_kind, cache.tokenizer(path), ("negative", "positive"), max_length, TEMPLATES[kind],
                "mean" if task_kind == "similarity" else "cls")
    torch.manual_seed(0)
    model, _ = runner.prepare({"stage": 1, "seed": 0, "technique": technique, "params": {}}, task,
                              cache.model(path, task))
    set_frozen_dtype(model, frozen)
    model.train()
    texts = _full_length_texts(batch, cache.tokenizer(path), max_length)
    b = task.collate(task.encode(texts), [i % 2 for i in range(batch)])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = {tuple(p.shape) for p in model.parameters()}
    seen: dict[int, tuple[int, bool]] = {}

    def keep(t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = (st.nbytes(), (tuple(t.shape) in shapes or tuple(t.shape)[::-1] in shapes) and (
                (t.dtype == torch.bfloat16 and precision == "bf16" and frozen == "fp32")  # autocast's weight copies
                or (t.dtype == torch.float32 and frozen == "bf16")))  # the fp32 LM head (transposed) the scoring keeps
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), ctx:
        task.loss(model, b)
    copies = sum(n for n, c in seen.values() if c)
    return {"activations": sum(n for n, c in seen.values() if not c), "weight_copies": copies,
            "params": sum(p.numel() for p in model.parameters() if not p.requires_grad),
            "rows": int(b["input_ids"].shape[0]), "width": int(b["input_ids"].shape[1])}


def estimate(path: str, kind: str, batch: int, max_length: int, precision: str = "fp32", frozen: str = "fp32") -> dict:
    """``cost.run_memory`` of the same run (host shape and size from the folder)."""
    from pipeline import cost

    n, _ = cost.host_params(path)
    return cost.run_memory(n, cost.host_shape(path), {"max_length": max_length, "batch_size": batch,
                                                      "precision": precision, "frozen_dtype": frozen},
                           task=kind, vocab=cost.host_vocab(path))


def main(argv=None) -> int:
    a = list(argv if argv is not None else sys.argv[1:])
    path, kind, batch, max_length = a[0], a[1], int(a[2]), int(a[3])
    precision = a[4] if len(a) > 4 else "fp32"
    frozen = a[5] if len(a) > 5 else "fp32"
    got = saved(path, kind, batch, max_length, precision, frozen)
    est = estimate(path, kind, batch, max_length, precision, frozen)
    err = est["activations"] * 1e9 / got["activations"] - 1
    print(f"{Path(path).name} {kind} {batch} x {max_length} {precision} (frozen {frozen}): {got['rows']} rows x "
          f"{got['width']} tokens; saved activations {got['activations'] / 1e9:.3f} GB, weight copies "
          f"{got['weight_copies'] / 1e9:.3f} GB; run_memory activations {est['activations']:.3f} GB "
          f"({err:+.0%}), bf16 copies {est['bf16_copies']:.3f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
