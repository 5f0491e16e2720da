"""Planner: counts, the two-stage DAG and run-id stability."""

import copy

from pipeline import plan as P
from pipeline import spec as S
from tests.test_spec import BASE


def make(**kw):
    d = copy.deepcopy(BASE)
    d.update(kw)
    return S.parse(d)


def test_counts_follow_the_axes():
    s = make(techniques=["lora", "ia3"], conditions=["ported", "scratch", "sampled"], seeds=[0, 1, 2],
             regimes=["zero-shot", 5, 50])
    p = P.build(s)
    # stage 1: technique x origin x dataset x seed; both directions -> 2 origins
    assert len(p.stage1) == 2 * 2 * 1 * 3
    assert len(p.stage2) == 2 * 2 * 1 * 3 * 3 * 3
    assert len({r.run_id for r in p.runs}) == len(p.runs)


def test_stage2_needs_its_stage1_module_except_scratch():
    p = P.build(make(conditions=["ported", "scratch", "sampled"]))
    s1 = {r.run_id: r for r in p.stage1}
    for r in p.stage2:
        assert r.origin_run in s1
        assert s1[r.origin_run].labels["origin_host"] == r.labels["origin_host"]
        assert (r.needs is None) == (r.key["condition"] == "scratch")


def test_ids_stable_under_key_order_and_sensitive_to_results_fields():
    a = P.build(make())
    d = copy.deepcopy(BASE)
    reordered = S.parse(dict(reversed(list(d.items()))))
    assert [r.run_id for r in P.build(reordered).runs] == [r.run_id for r in a.runs]
    assert P.run_id({"a": 1, "b": 2}) == P.run_id({"b": 2, "a": 1})
    # a renamed host or output dir changes nothing that affects results
    renamed = make(output_dir="elsewhere")
    assert {r.run_id for r in P.build(renamed).runs} == {r.run_id for r in a.runs}
    # anything that affects results changes the ids
    for changed in (make(technique_params={"lora": {"r": 4}}), make(origin_training={"steps": 7}),
                    make(hosts=[{"name": "a", "model": "m1"}, {"name": "b", "model": "other"}])):
        assert not {r.run_id for r in P.build(changed).stage2} & {r.run_id for r in a.stage2}
    # further-training settings change only the trained regimes
    ft = P.build(make(further_training={"batch_size": 8}))
    zs = lambda p: {r.run_id for r in p.stage2 if r.key["regime"] == 0}  # noqa: E731
    tr = lambda p: {r.run_id for r in p.stage2 if r.key["regime"] > 0}  # noqa: E731
    assert zs(ft) == zs(a) and not tr(ft) & tr(a)
    # ... but what evaluation uses (max_length) changes zero-shot runs too
    ml = P.build(make(further_training={"max_length": 128}))
    assert not zs(ml) & zs(a)


def test_plan_rows_flatten_config():
    p = P.build(make())
    row = p.stage2[0].row()
    assert row["host_pair"] == "a->b" and row["stage"] == 2 and row["needs"] == p.stage1[0].run_id
