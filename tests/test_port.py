"""Porting: every technique's module copies bit-exactly between two hosts of one shape;
sampled modules follow each ported tensor's own mean and std; module files are checksummed."""

import pytest
import torch

from pipeline import techniques as T
from pipeline.hosts import resolve_host
from pipeline.run import port
from pipeline.run import techniques as RT

PARAMS = {"compacter": {"reduction_factor": 16}}


def attached(models_dir, host, technique, seed):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    m = AutoModelForSequenceClassification.from_pretrained(resolve_host(f"embedded:{host}", models_dir), num_labels=2)
    return RT.build(technique, m, "classification", PARAMS.get(technique))


def train_a_little(model):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    x = torch.randint(5, 500, (8, 12))
    for _ in range(3):
        loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=torch.arange(8) % 2).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("technique", T.known())
def test_port_is_bit_exact_and_changes_the_receiving_model(models_dir, technique):
    origin = attached(models_dir, "tiny-bert-a", technique, 0)
    train_a_little(origin)
    state = RT.module_state(origin)
    assert state and all(t.dtype.is_floating_point for t in state.values())
    receiver = attached(models_dir, "tiny-bert-b", technique, 1)
    fresh = RT.module_state(receiver)
    assert set(fresh) == set(state)
    assert any(not torch.equal(fresh[n], state[n]) for n in state)
    info = port.load_into(receiver, state, include_head=True)
    assert info["port_exact"] and info["ported_tensors"] == len(state)
    after = RT.module_state(receiver)
    assert all(torch.equal(after[n], state[n]) for n in state)
    # host weights are untouched by a port
    hb = dict(attached(models_dir, "tiny-bert-b", technique, 1).named_parameters())
    for n, p in receiver.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, hb[n])


@pytest.mark.parametrize("technique", T.known())
def test_port_without_head_keeps_fresh_head(models_dir, technique):
    origin = attached(models_dir, "tiny-bert-a", technique, 0)
    train_a_little(origin)
    state = {n: t for n, t in RT.module_state(origin).items() if not T.is_head_param(n)}
    receiver = attached(models_dir, "tiny-bert-b", technique, 1)
    head_before = {n: t for n, t in RT.module_state(receiver).items() if T.is_head_param(n)}
    assert head_before, "classification hosts train their head"
    port.load_into(receiver, state, include_head=False)
    after = RT.module_state(receiver)
    assert all(torch.equal(after[n], t) for n, t in head_before.items())
    assert all(torch.equal(after[n], t) for n, t in state.items())


def test_sampled_follows_per_tensor_statistics():
    g = torch.Generator().manual_seed(0)
    state = {
        "big": torch.randn(200, 50, generator=g) * 0.3 + 1.5,
        "other": torch.rand(4000, generator=g) * 4 - 1,
        "constant": torch.zeros(16, 8),  # e.g. an untrained LoRA B
        "scalar": torch.tensor([0.7]),
    }
    s, checks = port.sample_like(state, seed=3)
    for n in ("big", "other"):
        assert s[n].shape == state[n].shape and not torch.equal(s[n], state[n])
        assert abs(s[n].mean() - state[n].mean()) < 0.05 * state[n].std()
        assert abs(s[n].std() - state[n].std()) < 0.05 * state[n].std()
    assert torch.equal(s["constant"], state["constant"]) and torch.equal(s["scalar"], state["scalar"])
    assert checks["sample_mean_err"] < 0.05 and checks["sample_std_err"] < 0.05
    again, _ = port.sample_like(state, seed=3)
    other, _ = port.sample_like(state, seed=4)
    assert all(torch.equal(again[n], s[n]) for n in s)
    assert not torch.equal(other["big"], s["big"])


def test_module_files_are_checksummed(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.ones(2)}
    port.save_module(state, tmp_path / "m", {"run_id": "m"})
    loaded, info = port.load_module(tmp_path / "m")
    assert all(torch.equal(loaded[k], state[k]) for k in state) and info["tensors"] == 2
    f = tmp_path / "m" / "module.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-7])
    with pytest.raises(port.ModuleError, match="fails its checksum"):
        port.load_module(tmp_path / "m")
    f.unlink()
    with pytest.raises(port.ModuleError, match="missing"):
        port.load_module(tmp_path / "m")


def test_port_refuses_a_module_of_another_shape(models_dir):
    origin = attached(models_dir, "tiny-bert-a", "lora", 0)
    state = RT.module_state(origin)
    name = next(iter(n for n in state if "lora_A" in n))
    state[name] = torch.zeros(3, 3)
    receiver = attached(models_dir, "tiny-bert-b", "lora", 1)
    with pytest.raises(port.ModuleError, match="shape"):
        port.load_into(receiver, state, include_head=True)
