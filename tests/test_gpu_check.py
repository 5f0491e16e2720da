"""`make gpu-check` at tiny shapes on CPU (``--tiny``): every host x paper technique trains in bf16 autocast,
evaluates, is compared with Trainer and ported; and its dtype/device check really catches a wrong dtype."""

import re

import pytest
import torch

from benches import gpu_check as G

LINE = re.compile(r"^(\S+)\s+(\S+)\s+pipeline\s+[\d.]+ samples/s \| Trainer\s+[\d.]+ samples/s \| x[\d.]+ \| peak "
                  r"[\d,]+ MiB \| MFU .+ \| eval acc [\d.]+ \| ported \d+ tensors: ok$")


def test_tiny_run_prints_one_line_per_host_and_technique(capsys):
    # frozen host weights in fp32: with bf16 frozen weights compacter on a BERT host fails (test below)
    assert G.main(["--tiny", "--frozen-dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    got = {(m.group(1), m.group(2)) for m in map(LINE.match, out.splitlines()) if m}
    assert got == {(h.name, t) for h in G.TINY for t in G.TECHNIQUES}, out
    assert "gpu-check passed: 3 hosts x 4 techniques" in out


def test_tiny_compacter_on_bert_with_frozen_bf16(capsys):
    """Fixed with Compacter's bias added in the product's dtype (the LayerNorm after it used to get fp32 input)."""
    assert G.main(["--tiny", "--hosts", "tiny-bert-a", "--techniques", "compacter"]) == 0


def test_failure_is_one_line_and_exit_1(capsys):
    assert G.main(["--tiny", "--hosts", "tiny-bert-a", "--techniques", "no-such-technique"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("gpu-check FAILED: 1 of 1 checks; first: tiny-bert-a/no-such-technique")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_cuda_it_says_so_and_exits_2(capsys):
    assert G.main([]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "for a GPU node" in out[0]


def test_dtype_device_check_catches_a_module_in_bf16():
    from pipeline.hosts import resolve_host
    from pipeline.run import runner
    from pipeline.run import techniques as RT
    from pipeline.run.tasks import Task
    from pipeline.run.train import set_frozen_dtype

    path = resolve_host("embedded:tiny-bert-a", G.ROOT / "models")
    cache = runner.HostCache(G.ROOT / "models")
    task = Task("similarity", cache.tokenizer(path), ("negative", "positive"), 32)
    torch.manual_seed(0)
    model, _ = runner.prepare({"stage": 1, "seed": 0, "technique": "lora", "params": {}}, task, cache.model(path, task))
    set_frozen_dtype(model, "bf16")
    state = RT.module_state(model)
    assert G.placement_problems(model, "cpu", torch.bfloat16, state) == []
    assert G.placement_problems(model, "cpu", torch.float32)  # frozen weights are bf16, not fp32
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # a module cast to bf16: no fp32 master weights any more
    bad = G.placement_problems(model, "cpu", torch.bfloat16)
    assert bad and all("expected torch.float32 (module weight)" in b for b in bad)
    assert G.placement_problems(model, "cuda", torch.bfloat16)  # and every tensor is on the wrong device
    with torch.no_grad():  # back to fp32, one ported value changed: not bit-exact
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        next(p for p in model.parameters() if p.requires_grad).add_(1e-3)
    assert any("differs from the saved module" in b for b in G.placement_problems(model, "cpu", torch.bfloat16, state))
