"""Planner: counts, the two-stage DAG and run-id stability."""

import copy
from pathlib import Path

from pipeline import plan as P
from pipeline import spec as S
from pipeline import techniques as T
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


def test_host_identity_is_in_every_run_id(tmp_path):
    """A rebuilt host (other weights) or another folder with other weights gets new ids; the same
    files under another models_dir keep them."""
    import shutil

    from pipeline import hosts

    base = hosts.minilm_dir()

    def host_copy(name: str, flip: bool) -> Path:
        d = tmp_path / name
        d.mkdir()
        shutil.copy(base / "config.json", d / "config.json")
        data = bytearray((base / "model.safetensors").read_bytes()[:4096])
        if flip:
            data[-1] ^= 1
        (d / "model.safetensors").write_bytes(bytes(data))
        return d

    a, b, same = host_copy("a", False), host_copy("b", False), host_copy("c", False)
    spec = lambda m: make(hosts=[{"name": "a", "model": str(a)}, {"name": "b", "model": str(m)}])  # noqa: E731
    ids = lambda p: {r.run_id for r in p.runs}  # noqa: E731
    first = P.build(spec(b))
    assert all(r.key["host"]["fingerprint"] != P.UNRESOLVED for r in first.runs) and not first.unresolved
    assert ids(P.build(spec(b))) == ids(first)
    # "rebuilding" b with other weights changes every run on it
    (b / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes()[:-1] + b"\x00")
    rebuilt = P.build(spec(b))
    on_b = lambda p: {r.run_id for r in p.runs if r.labels.get("receiving_host", r.labels["origin_host"]) == "b"}  # noqa: E731
    assert not on_b(rebuilt) & on_b(first)
    # the same bytes elsewhere: the stage-1 runs on `a` are unchanged, only the path differs
    moved = P.build(spec(same))
    s1a = lambda p: {r.run_id for r in p.stage1 if r.labels["origin_host"] == "a"}  # noqa: E731
    assert s1a(moved) == s1a(first)


def test_unavailable_hosts_give_provisional_ids():
    p = P.build(make())
    assert set(p.unresolved) == {"a", "b"}
    assert all(r.key["host"]["fingerprint"] == P.UNRESOLVED for r in p.runs)


def test_settings_that_do_not_change_results_are_not_hashed():
    a = P.build(make())
    for changed in (make(origin_training={"checkpoint_every": 5}), make(further_training={"eval_batch_size": 7}),
                    make(further_training={"steps": 999})):
        assert {r.run_id for r in P.build(changed).runs} == {r.run_id for r in a.runs}
    row = P.build(make(further_training={"eval_batch_size": 7})).stage2[0].row()
    assert '"eval_batch_size": 7' in row["settings_json"]


def test_no_module_control_follows_the_conditions_table_and_per_technique_budgets():
    # head-free (default): the bare host -- needs no module, has nothing to train (zero-shot only)
    p = P.build(make(conditions=["ported", "no-module"], regimes=["zero-shot", 10],
                     technique_params={"lora": {"steps": 33, "lr": 0.01}}))
    nm = [r for r in p.stage2 if r.key["condition"] == "no-module"]
    assert nm and all(r.needs is None and r.key["regime"] == 0 for r in nm)
    assert {r.key["regime"] for r in p.stage2 if r.key["condition"] == "ported"} == {0, 10}
    assert all(r.key["training"]["steps"] == 33 and r.key["training"]["lr"] == 0.01 for r in p.stage1)
    # trained head: every condition gets the ported head, so every condition needs the stage-1 run
    p = P.build(make(head="trained", conditions=["scratch", "no-module"], regimes=["zero-shot", 10]))
    assert p.stage2 and all(r.needs == r.origin_run for r in p.stage2)
    assert {r.key["regime"] for r in p.stage2 if r.key["condition"] == "no-module"} == {0, 10}
    assert all(r.key["head"] == "trained" and r.key["port_head"] is True for r in p.runs)


def test_the_head_formulation_and_a_tuning_split_change_ids():
    ids = lambda **kw: {r.run_id for r in P.build(make(**kw)).runs}  # noqa: E731
    base = ids()
    assert base.isdisjoint(ids(head="trained"))
    assert base.isdisjoint(ids(temperature=10.0))
    assert base.isdisjoint(ids(class_bias=False))
    ds = [{**BASE["datasets"][0], "dev_size": 50}]
    assert ids(datasets=ds).isdisjoint(ids(datasets=ds, evaluate_on="dev"))


def test_numerically_equal_and_default_params_plan_the_same_ids():
    """A no-op override plans no new run: 16 = 16.0, an explicit default = the default, and a technique's
    default step budget or lr written out = left out."""
    ids = lambda **kw: [r.run_id for r in P.build(make(**kw)).runs]  # noqa: E731
    base = ids()
    assert ids(technique_params={"lora": {"lora_alpha": 16.0}}) == ids(technique_params={"lora": {"lora_alpha": 16}})
    assert ids(technique_params={"lora": {"steps": BASE.get("origin_training", {}).get("steps", 100)}}) == base
    assert ids(technique_params={"lora": {"lr": T.get("lora").lr}}) == base
    assert ids(technique_params={"lora": {"r": T.get("lora").defaults["r"]}}) == base
    assert ids(technique_params={"lora": {"r": 4}}) != base


def test_a_learning_rate_grid_plans_one_set_of_runs_per_value():
    p = P.build(make(techniques=["lora"], seeds=[0], technique_params={"lora": {"lr": [0.001, 0.01]}}))
    assert {r.labels["variant"] for r in p.stage1} == {"lr=0.001", "lr=0.01"}
    assert len(p.stage1) == 2 * 2  # two lrs x two directions


# The hosts of the committed-id spec: fixed identities (no files read), one not on "this machine".
GOLDEN_HOSTS = {"a": {"model": "m1", "path": None, "fingerprint": "f" * 16, "pooling": "mean", "tokenizer": "e" * 16},
                "b": {"model": "m2", "path": None, "fingerprint": None, "pooling": "mean", "tokenizer": None}}
GOLDEN_DATA = {"rt": {"sha256": "d" * 64}}  # and of its dataset: a fixed content identity


def golden_spec(reverse=False):
    d = copy.deepcopy(BASE)
    d.update(techniques=["lora", "prefix"], conditions=["ported", "scratch", "sampled", "no-module"], seeds=[0, 1],
             regimes=["zero-shot", 10], technique_params={"lora": {"lr": [1e-3, 3e-3]}})
    return S.parse(dict(reversed(list(d.items()))) if reverse else d)


def test_run_ids_equal_the_committed_list_whatever_the_key_order():
    """Ids identify results across versions: a fixed spec's ids are committed (tests/specs/run_ids.json, computed
    when the fast id maker came in -- the same ids as the plain sha256 of the canonical JSON -- and again when the
    data's content and the hosts' tokenizers joined the key) and must not move."""
    import json

    want = json.loads((Path(__file__).parent / "specs" / "run_ids.json").read_text())
    for reverse in (False, True):
        plan = P.build(golden_spec(reverse), hosts=GOLDEN_HOSTS, data=GOLDEN_DATA)
        assert [r.run_id for r in plan.runs] == want
        assert all(P.run_id(r.key) == r.run_id for r in plan.runs)  # the reference definition


def test_id_maker_matches_run_id_on_any_key_order():
    make = P.IdMaker()
    shared = {"z": [1, {"b": 2, "a": 1.5}], "a": None}
    for key in ({"b": 1, "a": "x", "n": shared}, {"n": shared, "a": "x", "b": 1}, {"t": True, "f": 0.1, "u": "é"}):
        assert make(key) == P.run_id(key) == P.run_id(dict(reversed(list(key.items()))))
    t = make.template({"b": 1, "n": shared}, ("a", "c"))
    assert t(make.encode("x"), make.encode(3)) == P.run_id({"c": 3, "a": "x", "b": 1, "n": shared})
