"""`make gpu-check` at tiny shapes on CPU (``--tiny``): every host x paper technique trains in bf16 autocast,
evaluates, is compared with Trainer and ported; and its dtype/device check really catches a wrong dtype."""

import re

import pytest
import torch

from benches import gpu_check as G

PACK = re.compile(r"^  pack (\S+)\s+(stage 1 lora origin|stage 2 (ported|scratch) (zero-shot|\+\d+ steps))\s+bf16 on cpu, peak "
                  r"[\d,]+ MiB allocated \(process RSS: CPU\), acc [\d.]+, [\d.]+ s$")
LINE = re.compile(r"^(\S+)\s+(\S+)\s+pipeline\s+[\d.]+ samples/s \| Trainer\s+[\d.]+ samples/s \| x[\d.]+ \| peak "
                  r"[\d,]+ MiB \| MFU .+ \| eval acc [\d.]+ \| ported \d+ tensors: ok$")


def test_tiny_run_prints_one_line_per_host_and_technique(capsys):
    # frozen host weights in fp32: with bf16 frozen weights compacter on a BERT host fails (test below)
    assert G.main(["--tiny", "--frozen-dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    got = {(m.group(1), m.group(2)) for m in map(LINE.match, out.splitlines()) if m}
    assert got == {(h.name, t) for h in G.TINY for t in G.TECHNIQUES}, out
    assert "gpu-check passed: 3 hosts x 4 techniques + a pack" in out
    # one pack of five runs through job.RunPack -> runner.execute, each run's peak from its shard
    pack = [m for m in map(PACK.match, out.splitlines()) if m]
    assert sorted(m.group(2) for m in pack) == ["stage 1 lora origin", "stage 2 ported +2 steps",
                                                 "stage 2 ported zero-shot", "stage 2 scratch +2 steps",
                                                 "stage 2 scratch zero-shot"], out
    assert out.splitlines()[0].startswith("node check: ")
    assert "FLOPs counted on every timed batch" in out and "(synchronized)" in out


def test_each_host_takes_its_studys_precision_path(capsys):
    """paper.yaml: fp32 host weights under bf16 autocast (fp32 scoring) for T5; llm.yaml: frozen bf16 decoders."""
    assert G.main(["--tiny", "--hosts", "tiny-t5-a,tiny-qwen2-a", "--techniques", "lora", "--no-pack"]) == 0
    out = capsys.readouterr().out
    assert "tiny-t5-a: fp32 host weights under bf16 autocast, fp32 scoring" in out
    assert "tiny-qwen2-a: frozen bf16 host weights" in out
    assert {h.name: h.frozen for h in G.REAL} == {"minilm-l6": "fp32", "t5-v1.1-base": "fp32", "qwen2.5-0.5b": "bf16"}


def test_timed_steps_wait_for_the_gpu(monkeypatch):
    """A step's end is marked after torch.cuda.synchronize(): else the mark is when the step was queued."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    marks: list[float] = []
    G._mark(marks, cuda=True)
    assert calls == ["sync"] and len(marks) == 1
    G._mark(marks, cuda=False)
    assert calls == ["sync"] and len(marks) == 2


def test_node_check_says_in_one_line_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, msg = G.node_check(driver=lambda: (12, 4))  # a driver older than the build
    assert not ok and "driver CUDA 12.4" in msg and "CUDA 12.8" in msg and "TORCH_CUDA=cu124" in msg
    ok, msg = G.node_check(driver=lambda: None)
    assert not ok and "no NVIDIA driver here" in msg
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_80", "sm_86", "sm_90"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    ok, msg = G.node_check(driver=lambda: (12, 8))
    assert ok and msg.endswith("NVIDIA H100 80GB HBM3 (sm_90), native bf16: fits"), msg
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (10, 0))  # a Blackwell GPU, no sm_100 kernels
    ok, msg = G.node_check(driver=lambda: (12, 8))
    assert not ok and "no kernels for sm_100" in msg
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_70", "sm_80"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    ok, msg = G.node_check(driver=lambda: (12, 8))
    assert not ok and "no native bf16" in msg
    monkeypatch.setattr(torch.version, "cuda", None)
    ok, msg = G.node_check(driver=lambda: (12, 6))
    assert not ok and "a CPU build of torch: run `make setup TORCH_CUDA=cu126`" in msg


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                       ("NVIDIA H100 NVL", 835.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                       ("NVIDIA A100-PCIE-40GB", 312.0), ("NVIDIA H200", 989.0),
                                       ("NVIDIA GeForce RTX 4090", None), ("NVIDIA H100", None)])
def test_each_gpu_models_peak_is_matched_whole_not_by_substring(name, peak):
    got = G.known_peak(name)
    assert (got[0] if got else None) == peak


def test_tiny_compacter_on_bert_with_frozen_bf16(capsys):
    """Fixed with Compacter's bias added in the product's dtype (the LayerNorm after it used to get fp32 input)."""
    assert G.main(["--tiny", "--hosts", "tiny-bert-a", "--techniques", "compacter", "--frozen-dtype", "bf16",
                   "--no-pack"]) == 0


def test_failure_is_one_line_and_exit_1(capsys):
    assert G.main(["--tiny", "--hosts", "tiny-bert-a", "--techniques", "no-such-technique", "--no-pack"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("gpu-check FAILED: 1 of 1 checks; first: tiny-bert-a/no-such-technique")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_cuda_it_says_so_and_exits_2(capsys):
    assert G.main([]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("node check: ") and "for a GPU node" in out[1]
    assert G.main(["--node"]) == 1  # the node line alone; this node does not fit
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("node check: ")


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
