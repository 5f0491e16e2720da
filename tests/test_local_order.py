"""`pipeline run` hands runs to its workers longest first, so a stage does not end with one worker
finishing a long training while the others idle."""

import json
from types import SimpleNamespace

from pipeline.launch.local import longest_first, split


def _sweep(runs):
    rows = {rid: {"config_json": json.dumps(cfg)} for rid, cfg in runs}
    return SimpleNamespace(plan_rows=rows)


def test_longest_training_first_plan_order_among_equals():
    sweep = _sweep([
        ("lora-0", {"stage": 1, "training": {"steps": 100, "batch_size": 32}}),
        ("compacter-0", {"stage": 1, "training": {"steps": 150, "batch_size": 32}}),
        ("lora-1", {"stage": 1, "training": {"steps": 100, "batch_size": 32}}),
        ("small-batch", {"stage": 1, "training": {"steps": 150, "batch_size": 16}}),
        ("zero-shot", {"stage": 2, "regime": 0, "training": {"batch_size": 16}}),
        ("ten-steps", {"stage": 2, "regime": 10, "training": {"batch_size": 16}}),
    ])
    got = longest_first(sweep, list(sweep.plan_rows))
    assert got == ["compacter-0", "lora-0", "lora-1", "small-batch", "ten-steps", "zero-shot"]


def test_views_are_rotations_that_together_walk_the_given_order():
    ids = [f"r{i}" for i in range(7)]
    views = split(ids, 3)
    assert len(views) == 3 and all(sorted(v) == sorted(ids) for v in views)
    # each worker takes the first run of its view that no one has claimed: in lock-step that is the order given
    claimed: list[str] = []
    while len(claimed) < len(ids):
        for v in views:
            nxt = next((r for r in v if r not in claimed), None)
            if nxt is not None:
                claimed.append(nxt)
    assert claimed == ids
    assert split(ids[:2], 5) == [["r0", "r1"], ["r1", "r0"]]  # never more views than runs
