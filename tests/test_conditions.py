"""The conditions table (pipeline/conditions.py) is what the runner loads: for every technique and both
head formulations, each contrast's two sides differ in exactly the part the table names -- the module --
and in nothing else (same receiving-host weights, same head); and the head-free score is what it says."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from pipeline import techniques as T
from pipeline.conditions import CONDITIONS, CONTRASTS, FREE, FRESH, NONE, PORTED, SAMPLE_MIN_NUMEL, SAMPLED, TRAINED
from pipeline.hosts import resolve_host
from pipeline.run import port
from pipeline.run import techniques as RT
from pipeline.run.runner import prepare
from pipeline.run.tasks import Task

PARAMS = {"compacter": {"reduction_factor": 16}}
KIND = {FREE: T.SIMILARITY, TRAINED: T.CLASSIFICATION}


def task_for(models_dir, formulation):
    tok = AutoTokenizer.from_pretrained(resolve_host("embedded:tiny-bert-a", models_dir))
    return Task(KIND[formulation], tok, ("negative", "positive"), 32, pooling="mean", class_bias=True)


def cfg(technique, stage, condition=None, seed=0):
    return {"stage": stage, "seed": seed, "technique": technique, "params": PARAMS.get(technique, {}),
            "condition": condition, "port_head": True}


def host(models_dir, name, task):
    return task.load_model(resolve_host(f"embedded:{name}", models_dir)).eval()


def host_name(n):
    """A host weight's own name under any wrapper (peft: base_model.model. / base_model. / .base_layer)."""
    for prefix in ("base_model.model.", "base_model."):
        n = n.removeprefix(prefix)
    return n.replace(".base_layer", "")


def split(model):
    """(module tensors, head tensors, frozen host tensors) of a prepared model, by name."""
    module, head, frozen = {}, {}, {}
    for n, p in model.named_parameters():
        t = p.detach().clone()
        if T.is_head_param(n) and p.requires_grad:
            head[port._head_suffix(n)] = t  # peft's modules_to_save copy, or the bare host's head
        elif p.requires_grad:
            module[n] = t
        else:
            frozen[host_name(n)] = t
    return module, head, frozen


@pytest.fixture(scope="module")
def stage1(models_dir, tmp_path_factory):
    """A 'trained' stage-1 module per (technique, formulation): the fresh module with every tensor moved."""
    out = {}
    for formulation in (FREE, TRAINED):
        task = task_for(models_dir, formulation)
        for technique in T.known():
            model, _ = prepare(cfg(technique, 1), task, host(models_dir, "tiny-bert-a", task))
            with torch.no_grad():
                g = torch.Generator().manual_seed(7)
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn(p.shape, generator=g) * 0.05)
            folder = tmp_path_factory.mktemp(f"{technique}-{formulation}")
            port.save_module(RT.module_state(model), folder, {"run_id": "x"})
            out[technique, formulation] = (folder, RT.module_state(model))
    return out


@pytest.mark.parametrize("formulation", [FREE, TRAINED])
@pytest.mark.parametrize("technique", T.known())
def test_each_contrast_differs_in_the_module_only(models_dir, stage1, technique, formulation):
    task = task_for(models_dir, formulation)
    folder, state = stage1[technique, formulation]
    loaded, records = {}, {}
    for name in CONDITIONS:
        model, checks = prepare(cfg(technique, 2, name), task, host(models_dir, "tiny-bert-b", task), folder)
        loaded[name], records[name] = split(model), checks
        assert checks["loaded_module"] == CONDITIONS[name].module
    ported_module = {n: t for n, t in state.items() if not T.is_head_param(n)}
    # what each condition's module is
    assert loaded["ported"][0].keys() == ported_module.keys()
    assert all(torch.equal(loaded["ported"][0][n], t) for n, t in ported_module.items())
    fresh, _ = prepare(cfg(technique, 1), task, host(models_dir, "tiny-bert-b", task))  # the technique's own init
    fresh_module = split(fresh)[0]
    assert all(torch.equal(loaded["scratch"][0][n], fresh_module[n]) for n in fresh_module)
    assert loaded["sampled"][0].keys() == ported_module.keys()
    assert not any(torch.equal(loaded["sampled"][0][n], t) for n, t in ported_module.items() if t.numel() > 1)
    assert loaded["no-module"][0] == {}
    # heads: none under free; under trained the very same (ported) head in every condition
    for name in CONDITIONS:
        if formulation == FREE:
            assert loaded[name][1] == {} and records[name]["loaded_head"] == NONE
        else:
            origin_head = {port._head_suffix(n): t for n, t in state.items() if T.is_head_param(n)}
            assert origin_head.keys() == loaded[name][1].keys()
            got = loaded[name][1]
            assert records[name]["loaded_head"] == PORTED
            assert all(torch.equal(got[k], origin_head[k]) for k in origin_head), name
    # every contrast: same host weights, same head, different module
    for c in CONTRASTS:
        (ma, ha, fa), (mb, hb, fb) = loaded[c.a], loaded[c.b]
        shared = fa.keys() & fb.keys()
        assert len(shared) >= len(fb) - 2 and all(torch.equal(fa[n], fb[n]) for n in shared), c
        assert ha.keys() == hb.keys() and all(torch.equal(ha[k], hb[k]) for k in ha), c
        assert ma != {} and (mb == {} or any(not torch.equal(ma[n], mb[n]) for n in ma)), c
    assert records["ported"]["port_exact"] and records["sampled"]["port_exact"]
    assert CONDITIONS["sampled"].module == SAMPLED


def bias_of(model):
    """The head-free class bias of a prepared model (trainable in a module, frozen on the bare host)."""
    (t,) = [p.detach().clone() for n, p in model.named_parameters() if T.is_class_bias(n)]
    return t


@pytest.mark.parametrize("technique", T.known())
def test_sampled_redraws_the_matrices_and_keeps_the_fresh_class_bias(models_dir, stage1, technique):
    """Under head: free the table gives sampled the technique's fresh class bias (zeros, as scratch and the bare
    host), never a redraw of the ported pair (a class prior of random sign x 20); every other module tensor is
    drawn, and what the table leaves fresh equals the fresh initialisation -- so sampled differs from scratch
    in the sampled matrices only, and each contrast's two biases are what the table names."""
    task = task_for(models_dir, FREE)
    folder, state = stage1[technique, FREE]
    ported_bias = next(t for n, t in state.items() if T.is_class_bias(n))
    assert ported_bias.abs().min() > 0 and ported_bias[0] != ported_bias[1]  # the 'trained' bias is a real prior
    models, records = {}, {}
    for name in CONDITIONS:
        models[name], records[name] = prepare(cfg(technique, 2, name, seed=3), task,
                                              host(models_dir, "tiny-bert-b", task), folder)
    fresh, _ = prepare(cfg(technique, 1, seed=3), task, host(models_dir, "tiny-bert-b", task))
    want = {PORTED: ported_bias, FRESH: torch.zeros(2), NONE: torch.zeros(2)}
    for name, c in CONDITIONS.items():
        assert records[name]["loaded_bias"] == c.class_bias(FREE) == c.bias
        assert torch.equal(bias_of(models[name]), want[c.bias]), name
    assert CONDITIONS["sampled"].bias == CONDITIONS["scratch"].bias == FRESH
    for c in CONTRASTS:  # each contrast's sides carry the biases the table names: ported's prior vs none
        a, b = (bias_of(models[x]) for x in (c.a, c.b))
        assert c.biases(FREE) == (PORTED, CONDITIONS[c.b].bias) and not torch.equal(a, b), c
    sampled, scratch = split(models["sampled"])[0], split(fresh)[0]
    assert sampled.keys() == scratch.keys()
    for n, t in sampled.items():
        part = CONDITIONS["sampled"].tensor(n, t.numel(), FREE)
        if part == FRESH:
            assert torch.equal(t, scratch[n]), n
        else:
            assert part == SAMPLED and not torch.equal(t, scratch[n]) and not torch.equal(t, state[n]), n
    assert records["sampled"]["fresh_tensors"] == sum(
        CONDITIONS["sampled"].tensor(n, t.numel(), FREE) == FRESH for n, t in sampled.items()) >= 1
    assert records["ported"]["fresh_tensors"] == 0


def test_tiny_tensors_keep_the_fresh_init_in_sampled_only():
    """What each condition loads into a tensor, by size: under SAMPLE_MIN_NUMEL elements N(mean, std) cannot
    describe a tensor (one value: itself; two: the same pair in random order), so sampled leaves it fresh."""
    s, p, r, n = (CONDITIONS[k] for k in ("sampled", "ported", "scratch", "no-module"))
    for numel in (1, SAMPLE_MIN_NUMEL - 1):
        assert s.tensor("encoder.layer.0.adapter.scale", numel, FREE) == FRESH
        assert s.tensor("encoder.layer.0.adapter.scale", numel, TRAINED) == FRESH
        assert p.tensor("encoder.layer.0.adapter.scale", numel, FREE) == PORTED
    assert s.tensor("encoder.layer.0.adapter.down.bias", SAMPLE_MIN_NUMEL, FREE) == SAMPLED
    assert s.tensor("base_model.model.pooler.class_bias", 2, FREE) == FRESH
    assert s.tensor("base_model.model.pooler.class_bias", 10, FREE) == FRESH  # the bias by name, whatever its size
    assert p.tensor("pooler.class_bias", 2, FREE) == PORTED
    assert r.tensor("lora_A.weight", 512, FREE) == FRESH and n.tensor("lora_A.weight", 512, FREE) == NONE
    assert all(c.class_bias(TRAINED) == NONE for c in CONDITIONS.values())


def test_head_free_scores_are_scaled_cosines_of_pooled_vectors_plus_bias(models_dir):
    """The score of class c is temperature * (cos(pool(x), pool(label_c)) + bias_c), the label texts encoded
    in the same forward pass by the same host; a bare host (no module) scores with a zero bias."""
    task = task_for(models_dir, FREE)
    model = host(models_dir, "tiny-bert-a", task)
    from pipeline.run.pooling import find

    find(model).class_bias.data = torch.tensor([0.1, -0.2])
    texts = ["a fine film", "dull and long, with nothing in it"]
    batch = task.collate(task.encode(texts), [0, 1])
    assert batch["input_ids"].shape[0] == 4  # two inputs + the two label texts
    got = task.scores(model, batch)
    assert find(model).last is None  # the pooled batch is not kept on the model

    def pooled(t):
        enc = task.tokenizer(t, return_tensors="pt", padding=True)
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)

    want = 20.0 * (F.normalize(pooled(texts), dim=-1) @ F.normalize(pooled(["negative", "positive"]), dim=-1).T
                   + torch.tensor([0.1, -0.2]))
    assert torch.allclose(got, want, atol=1e-4)


def test_no_module_trains_nothing_under_free_and_the_head_under_trained(models_dir, stage1):
    for formulation, trainable in ((FREE, 0), (TRAINED, 1)):
        task = task_for(models_dir, formulation)
        folder = stage1["lora", formulation][0]
        model, _ = prepare(cfg("lora", 2, "no-module"), task, host(models_dir, "tiny-bert-b", task), folder)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert (n > 0) == bool(trainable)
        assert CONDITIONS["no-module"].trains(formulation) == bool(trainable)
