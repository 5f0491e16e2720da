"""Ready for the first GPU run (issue 20), checked on CPU: accelerate's CPU bf16 path goes through the
same autocast wrapper as on a GPU, and a mocked ``torch.cuda`` stands in where a device is needed.

On a real GPU node the file runs as it is (the mocks still apply); a ``make gpu-check`` target that runs
the unmocked checks on a device is left to the issue on decoder hosts.
"""

import gc
import io
import json
import random
import weakref
from pathlib import Path

import pytest
import torch
from rich.console import Console

from pipeline import plan as planmod
from pipeline.launch import layout, local
from pipeline.run import job, runner
from pipeline.run import train as T
from pipeline.spec import Training, load
from pipeline.sweep import Sweep

ONE_RUN = {"techniques": ["lora"], "technique_params": {}, "both_directions": False,
           "conditions": ["scratch"], "regimes": ["zero-shot"]}  # 1 stage-1 run + 1 zero-shot stage-2 run


def _sweep(tiny_spec, write_spec, name="s", **changes) -> Sweep:
    d = {**tiny_spec, **ONE_RUN, **changes}
    d["output_dir"] = str(Path(d["output_dir"]).with_name(name))
    spec = load(write_spec(d, f"{name}.yaml"))
    sweep = Sweep.for_spec(spec)
    sweep.write(spec, planmod.build(spec))
    return sweep


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as on a GPU node: available, one device; what was asked of it is recorded in ``calls``."""
    calls: dict[str, list] = {"reset_peak": [], "bf16": [], "set_rng": []}
    native = {"bf16": True}

    def is_bf16_supported(including_emulation=True):
        calls["bf16"].append(including_emulation)
        return native["bf16"] or including_emulation  # emulation makes any GPU say yes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls["reset_peak"].append(1))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([7, 7], dtype=torch.uint8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: calls["set_rng"].append(s))
    calls["native"] = native
    return calls


# ---------------------------------------------------------------- 1. memory between the runs of a pack
def test_a_pack_frees_each_runs_model_before_the_next(tiny_spec, write_spec, monkeypatch):
    """Under bf16 accelerate keeps model._original_forward (a reference cycle): without a collection between
    runs, every earlier run's model, optimizer and gradients stay alive while the next run loads."""
    sweep = _sweep(tiny_spec, write_spec)
    rids = list(sweep.plan_rows)
    alive: list[weakref.ref] = []
    seen: list[int] = []

    def fake_execute(row, sweep, hosts, stop_requested=lambda: False, on_step=None):
        seen.append(sum(r() is not None for r in alive))  # models of earlier runs still in memory
        acc = T.accelerator(T.Device("cpu", "bf16"))
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
        opt = torch.optim.AdamW(model.parameters())
        model, opt = acc.prepare(model, opt)
        acc.backward(model(torch.randn(4, 64)).sum())
        opt.step()
        alive.append(weakref.ref(model))
        return {}

    monkeypatch.setattr(runner, "execute", fake_execute)
    gc.collect()
    gc.disable()  # only the pipeline's own collections count
    try:
        job.RunPack(str(sweep.root), rids * 3)()  # no shard is written: each id runs every time
    finally:
        gc.enable()
    assert len(seen) == 3 * len(rids)
    assert seen == [0] * len(seen), f"models of earlier runs alive at each run's start: {seen}"


def test_release_collects_only_when_a_runs_objects_survive(tiny_spec, write_spec, monkeypatch):
    """A full collection costs about a tiny run's whole work (issue 29): an fp32 run on CPU frees its model by
    reference counting, so release() must not collect after it; a run whose prepared model outlives it (the
    bf16 cycle) must still be collected before the next run."""
    collects: list[int] = []
    real = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collects.append(1) or real(*a))
    sweep = _sweep(tiny_spec, write_spec, name="fp32")
    T.release()
    collects.clear()
    job.RunPack(str(sweep.root), list(sweep.plan_rows))()  # a real stage-1 run and its zero-shot run, CPU fp32
    assert all(job.is_complete(sweep, row) for row in sweep.plan_rows.values())
    assert collects == [], "release() collected although no run's objects survived it"

    def run_in_cycle(precision: str):
        acc = T.accelerator(T.Device("cpu", precision))
        model = acc.prepare(torch.nn.Linear(8, 2))
        model.me = [model]  # kept alive only by a cycle, as accelerate's bf16 wrapper keeps a model
        return weakref.ref(model)

    gc.disable()
    try:
        ref = run_in_cycle("fp32")
        T.release()
        assert collects == [1] and ref() is None
    finally:
        gc.enable()


def test_peak_memory_counter_is_reset_for_every_run(fake_cuda):
    cfg = {"training": {"precision": "bf16", "device": "cuda", "max_length": 32}}
    for n in (1, 2, 3):
        tr, dev = T.run_settings(cfg, {"checkpoint_every": 0})
        assert fake_cuda["reset_peak"] == [1] * n
    assert dev == T.Device("cuda", "bf16") and tr.max_length == 32


# ---------------------------------------------------------------- 2. precision from the hardware
def test_precision_is_resolved_from_native_bf16_only(fake_cuda):
    assert T.resolve_device("cuda", "bf16") == T.Device("cuda", "bf16")
    assert T.resolve_device("cuda", "fp32") == T.Device("cuda", "fp32")
    fake_cuda["native"]["bf16"] = False  # a V100 / T4: bf16 only emulated
    assert T.resolve_device("cuda", "auto") == T.Device("cuda", "fp32")  # an old plan: fp32, never fp16
    with pytest.raises(T.DeviceError, match="Tesla V100.* has no native bf16") as e:
        T.resolve_device("cuda", "bf16")  # refused, not silently run in fp32 under the bf16 run id
    assert "\n" not in str(e.value)
    assert fake_cuda["bf16"] and not any(fake_cuda["bf16"])  # always asked without emulation
    assert T.resolve_device("cpu", "fp32") == T.Device("cpu", "fp32")  # planned for CPU: CPU, GPU or not


def test_plan_resolves_auto_precision_and_device_into_the_run_id(tiny_spec, write_spec):
    """auto -> bf16 on a GPU stage, fp32 on a CPU one; the device kind is hashed too, so `resume` never mixes
    CPU-fp32 and GPU-bf16 results (nor CPU-fp32 and GPU-fp32) under one id."""
    def plan(**res):
        d = {**tiny_spec, "resources": {"stage1": res, "stage2": res}}
        return planmod.build(load(write_spec(d, "p.yaml")))

    cpu, gpu, gres = plan(), plan(gpus=1), plan(extra={"gres": "gpu:1"})
    for r in cpu.runs:
        assert (r.key["training"]["precision"], r.key["training"]["device"]) == ("fp32", "cpu")
    for r in gpu.runs:
        assert (r.key["training"]["precision"], r.key["training"]["device"]) == ("bf16", "cuda")
    assert not {r.run_id for r in cpu.runs} & {r.run_id for r in gpu.runs}
    assert [r.run_id for r in gres.runs] == [r.run_id for r in gpu.runs]  # the same GPU run, however requested
    tiny_spec["origin_training"]["precision"] = "fp32"
    tiny_spec["further_training"] = {**tiny_spec["further_training"], "precision": "fp32"}
    assert not {r.run_id for r in plan().runs} & {r.run_id for r in plan(gpus=1).runs}


def test_frozen_bf16_on_a_cpu_stage_is_refused_at_plan_time(tiny_spec, write_spec):
    from pipeline.errors import SpecError

    tiny_spec["origin_training"]["frozen_dtype"] = "bf16"
    with pytest.raises(SpecError, match="origin_training.frozen_dtype: bf16 .* fp32 on cpu"):
        planmod.build(load(write_spec(tiny_spec, "p.yaml")))


def test_a_debug_pack_runs_two_precisions_and_records_them(tiny_spec, write_spec):
    """One process, stage 1 in bf16 (accelerate's CPU autocast) then stage 2 in fp32: accelerate's state is reset
    between them (on CUDA the second Accelerator raised ValueError), and each shard says what ran."""
    sweep = _sweep(tiny_spec, write_spec, origin_training={"steps": 4, "batch_size": 16, "max_length": 32,
                                                            "precision": "bf16"})
    rows = sorted(sweep.plan_rows.values(), key=lambda r: r["stage"])
    out = job.RunPack(str(sweep.root), [r["run_id"] for r in rows])()
    assert len(out["done"]) == 2
    import pyarrow.parquet as pq

    got = [pq.read_table(sweep.shard(r["run_id"])).to_pylist()[0] for r in rows]
    assert [(g["precision"], g["device_kind"]) for g in got] == [("bf16", "cpu"), ("fp32", "cpu")]


# ---------------------------------------------------------------- 3. no silent CPU fallback
def test_a_run_planned_for_a_gpu_is_refused_where_cuda_is_not_usable(tiny_spec, write_spec):
    assert not torch.cuda.is_available()
    res = {"gpus": 1}
    sweep = _sweep(tiny_spec, write_spec, resources={"stage1": res, "stage2": res})
    rid = next(r for r, row in sweep.plan_rows.items() if row["stage"] == 1)
    with pytest.raises(job.PackFailed, match="DeviceError: run planned for a GPU"):
        job.RunPack(str(sweep.root), [rid])()
    first = sweep.error(rid).read_text().splitlines()[0]
    assert first.startswith("DeviceError: run planned for a GPU, but ") and "refusing to train on CPU" in first
    assert not sweep.shard(rid).exists() and not sweep.ckpt(rid).exists()


def test_an_allocated_gpu_counts_for_plans_without_a_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "1")
    with pytest.raises(T.DeviceError, match="refusing to train on CPU"):
        T.resolve_device(None, "auto")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what submitit gives a CPU-only local worker
    assert T.resolve_device(None, "auto") == T.Device("cpu", "fp32")


# ---------------------------------------------------------------- 4. every RNG in a checkpoint
def test_checkpoint_saves_and_restores_every_rng(tmp_path, fake_cuda):
    import numpy as np

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ck = T.Checkpoint(tmp_path / "c.pt")
    ck.save(model, opt, sched, 3, [0.5])
    after = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()  # the run went on ...
    assert ck.load(model, opt, sched) == (3, [0.5])  # ... and was preempted: resume from the checkpoint
    assert torch.equal(torch.rand(3), after[0]) and random.random() == after[1] and np.random.rand() == after[2]
    assert len(fake_cuda["set_rng"]) == 1 and torch.equal(fake_cuda["set_rng"][0][0], torch.tensor([7, 7],
                                                                                                   dtype=torch.uint8))


# ---------------------------------------------------------------- 5. accelerate's state between runs
def test_accelerators_of_two_precisions_in_one_process():
    for precision in ("bf16", "fp32", "bf16"):
        acc = T.accelerator(T.Device("cpu", precision))
        assert acc.mixed_precision == ("no" if precision == "fp32" else "bf16")


# ---------------------------------------------------------------- 6. fp32 evaluation scores
def _tiny_task(models_dir):
    hosts = runner.HostCache(Path(models_dir))
    name = "embedded:tiny-bert-a"
    task = runner.make_task({"task": "classification", "host": {"model": name, "pooling": "cls"}},
                            runner.Dataset(name="d", source="x"), hosts.tokenizer(name), Training(max_length=32))
    return hosts, name, task


TEXTS = ["a gripping, funny film", "dull and far too long", "the cast shines", "i walked out",
         "a small gem", "forgettable", "warm and wise", "a mess from start to end"] * 2
LABELS = [1, 0, 1, 0, 1, 0, 1, 0] * 2


def test_evaluation_under_bf16_scores_like_fp32(models_dir):
    hosts, name, task = _tiny_task(models_dir)
    model = hosts.model(name, task)
    task.reset_head(model, 0)
    cfg = Training(eval_batch_size=4)
    acc32 = T.accelerator(T.Device("cpu", "fp32"))
    m32, p32 = T.evaluate(acc32.prepare(model), task, TEXTS, LABELS, cfg=cfg, acc=acc32)
    acc16 = T.accelerator(T.Device("cpu", "bf16"))
    bf = acc16.prepare(hosts.model(name, task))  # forward wrapped in bf16 autocast, as for training
    task.reset_head(bf, 0)
    m16, p16 = T.evaluate(bf, task, TEXTS, LABELS, cfg=cfg, acc=acc16)
    assert p16["pred"] == p32["pred"]
    assert p16["score"] == pytest.approx(p32["score"], abs=1e-6, rel=1e-5)
    assert m16["eval_loss"] == pytest.approx(m32["eval_loss"], rel=1e-6)


# ---------------------------------------------------------------- 7. host syncs
def test_the_step_loss_is_read_in_batches_not_every_step(models_dir, monkeypatch):
    hosts, name, task = _tiny_task(models_dir)
    model = hosts.model(name, task)
    for n, p in model.named_parameters():
        p.requires_grad_("classifier" in n)
    reads = []
    item = torch.Tensor.item

    def counting_item(t):
        if t.grad_fn is not None:
            reads.append(1)
        return item(t)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    steps = 12
    logged = []
    monkeypatch.setattr(T, "log_step", lambda acc, s, v, opt: logged.append((s, v, opt.param_groups[0]["lr"])))
    out = T.train(model, task, TEXTS, LABELS, steps=steps, lr=1e-3, cfg=Training(batch_size=4), seed=0,
                  acc=T.accelerator(T.Device("cpu", "fp32")))
    assert not reads  # no loss.item() in the step loop
    assert [s for s, _, _ in logged] == list(range(1, steps + 1))  # every step still logged, with its own lr
    assert logged[0][2] < logged[1][2]  # warmup: each step's own lr, not the lr at the time of reading
    assert out["train_loss"] == pytest.approx(sum(v for _, v, _ in logged[-10:]) / 10, rel=1e-12)


def test_text_to_text_class_ids_stay_on_the_cpu():
    class Kind:
        kind = "text-to-text"

    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "class_ids": torch.tensor([0, 1])}
    out = T.to_device(batch, "cpu", Kind())
    assert out["class_ids"] is batch["class_ids"]


# ---------------------------------------------------------------- 8. explicit host dtype
def test_a_host_stored_in_bf16_loads_with_fp32_weights_and_fp32_adapters(tmp_path, models_dir):
    from pipeline import techniques as Tq
    from pipeline.run import techniques as RT

    hosts, name, task = _tiny_task(models_dir)
    src = hosts.path(name)
    bf16_dir = tmp_path / "tiny-bf16"
    task.load_model(src).to(torch.bfloat16).save_pretrained(bf16_dir)
    hosts.tokenizer(name).save_pretrained(bf16_dir)
    host = runner.HostCache(tmp_path).model(str(bf16_dir), task)
    assert {p.dtype for p in host.parameters()} == {torch.float32}
    model = RT.build(Tq.get("lora"), host, task.kind, Tq.get("lora").defaults)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    T.set_frozen_dtype(model, "bf16")  # frozen_dtype: bf16 -- the host halves, master weights stay fp32
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


# ---------------------------------------------------------------- 9. how GPUs are requested
def test_gres_requests_render_and_count_as_gpu_stages(tiny_spec, write_spec):
    tiny_spec["resources"] = {"stage1": {"gpus": 1, "gpu_request": "gres"}, "stage2": {"extra": {"gres": "gpu:1"}}}
    spec = load(write_spec(tiny_spec, "g.yaml"))
    p1 = layout.sbatch_params(spec, 1)
    assert p1["gres"] == "gpu:1" and "gpus_per_node" not in p1
    assert "#SBATCH --gres=gpu:1" in layout.render_sbatch(Path("/x"), p1, 2)
    assert "--gpus-per-node" not in layout.render_sbatch(Path("/x"), layout.sbatch_params(spec, 2), 2)
    gpu = load(write_spec({**tiny_spec, "resources": {"stage1": {"gpus": 1}, "stage2": {"gpus": 1}}}, "h.yaml"))
    assert layout.estimate_run_s(spec, 2) == layout.estimate_run_s(gpu, 2)  # extra gres: costed as a GPU stage
    from pipeline import cost

    text = io.StringIO()
    cost.print_cost(Console(file=text, width=200), spec, planmod.build(spec))
    assert "asks for no GPU" not in text.getvalue()


class _FakeJob:
    job_id = "1"

    def done(self):
        return True

    def result(self):
        return {}


class _FakeExecutor:
    made: list[dict] = []

    def __init__(self, folder):
        self.params: dict = {}
        _FakeExecutor.made.append(self.params)

    def update_parameters(self, **kw):
        self.params.update(kw)

    def submit(self, fn):
        return _FakeJob()


def test_local_workers_spread_over_the_visible_gpus(tiny_spec, write_spec, monkeypatch):
    res = {"gpus": 1}
    sweep = _sweep(tiny_spec, write_spec, resources={"stage1": res, "stage2": res}, seeds=[0, 1, 2, 3])
    monkeypatch.setattr(local.submitit, "LocalExecutor", _FakeExecutor)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert local.visible_gpus() == ["2", "3"]
    _FakeExecutor.made = []
    local.run_local(sweep, workers=3, console=Console(file=io.StringIO()))
    assert [p.get("visible_gpus") for p in _FakeExecutor.made] == [[2], [3], [2]] * 2  # both stages
    assert all(p["gpus_per_node"] == 1 for p in _FakeExecutor.made)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f1e,GPU-77aa")  # UUIDs: set through the job's setup
    _FakeExecutor.made = []
    local.run_local(sweep, workers=2, console=Console(file=io.StringIO()))
    assert [p["setup"] for p in _FakeExecutor.made[:2]] == [["export CUDA_VISIBLE_DEVICES=GPU-8f1e"],
                                                            ["export CUDA_VISIBLE_DEVICES=GPU-77aa"]]
    from pipeline.errors import UsageError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UsageError, match="stage 1 is planned for a GPU.*no GPU is visible"):
        local.run_local(sweep, workers=2, console=Console(file=io.StringIO()))


def test_cpu_stage_workers_see_no_gpu(tiny_spec, write_spec, monkeypatch):
    sweep = _sweep(tiny_spec, write_spec)
    monkeypatch.setattr(local.submitit, "LocalExecutor", _FakeExecutor)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    _FakeExecutor.made = []
    local.run_local(sweep, workers=2, console=Console(file=io.StringIO()))
    assert _FakeExecutor.made and not any("visible_gpus" in p or "setup" in p for p in _FakeExecutor.made)


def test_the_plan_records_the_device_in_config_json(tiny_spec, write_spec):
    sweep = _sweep(tiny_spec, write_spec)
    for row in sweep.plan_rows.values():
        assert json.loads(row["config_json"])["training"]["device"] == "cpu"


# ---------------------------------------------------------------- 8b. the memory model against a measured count
def _saved_for_backward(d, ff, heads, layers, seq, batch=2, vocab=1000):
    """Bytes autograd keeps for the backward pass of a LoRA-wrapped T5 v1.1 (random weights) under CPU bf16
    autocast: (bf16 copies of frozen matmul weights, everything else = activations, parameters)."""
    import peft
    import transformers

    cfg = transformers.T5Config(vocab_size=vocab, d_model=d, d_kv=d // heads, d_ff=ff, num_layers=layers,
                                num_heads=heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = peft.get_peft_model(transformers.T5ForConditionalGeneration(cfg),
                                peft.LoraConfig(r=8, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM"))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    saved: dict[int, tuple[int, bool]] = {}

    def keep(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = (st.nbytes(), t.dtype == torch.bfloat16 and tuple(t.shape) in shapes)
        return t

    x = torch.randint(0, vocab, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=x, attention_mask=torch.ones_like(x), labels=torch.randint(0, vocab, (batch, 2)))
    copies = sum(n for n, is_copy in saved.values() if is_copy)
    return copies, sum(n for n, _ in saved.values()) - copies, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("shape,seq", [((384, 768, 6, 2), 64), ((256, 1024, 8, 3), 96)])
def test_memory_model_matches_a_measured_count(shape, seq):
    """cost.run_memory's activation and bf16-copy terms (and so sweeps/paper.yaml's ~15 GB for T5-large) agree
    with what autograd really keeps, counted on CPU, within 15 % -- on shapes the constants were not fitted on."""
    from pipeline import cost

    copies, acts, n = _saved_for_backward(*shape, seq)
    est = cost.run_memory(n, shape, {"max_length": seq, "batch_size": 2, "precision": "bf16"}, trainable=0,
                          task=cost.ENCODER_DECODER)
    assert est["activations"] * 1e9 == pytest.approx(acts, rel=0.15)
    assert est["bf16_copies"] * 1e9 == pytest.approx(copies, rel=0.25)  # every matmul weight, not the norms
    big = cost.run_memory(cost.KNOWN_PARAMS["google/t5-v1_1-large"], cost.KNOWN_SHAPES["google/t5-v1_1-large"],
                          {"max_length": 128, "batch_size": 32, "precision": "bf16"}, task=cost.ENCODER_DECODER)
    assert 13 < big["total"] < 17 and big["activations"] / 32 == pytest.approx(0.32, abs=0.02)
