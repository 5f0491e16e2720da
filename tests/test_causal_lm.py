"""Decoder-only hosts (``task: causal-lm``) on the tiny Llama, Qwen2 and GPT-2 hosts: label-word scoring,
padding on either side, positions under virtual tokens, every technique, porting, conditions, export, bf16.

The hosts (``embedded:tiny-{llama,qwen2,gpt2}-{a,b}``) are saved with ``save_pretrained`` and loaded back
through ``from_pretrained`` -- the path a hub name takes on a cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline import techniques as T
from pipeline.conditions import NONE, PORTED, SAMPLED
from pipeline.hosts import DECODER_SHAPES, build_all
from pipeline.run import causal, export, port
from pipeline.run import techniques as RT
from pipeline.run.runner import prepare
from pipeline.run.tasks import Task

LM = "causal-lm"
ARCHS = tuple(DECODER_SHAPES)  # llama, qwen2, gpt2
PARAMS = {"bottleneck": {"reduction_factor": 8, "placement": "houlsby"}, "compacter": {"reduction_factor": 16}}
TEXTS = ["a great movie , loved it", "boring", "fine , i guess , nothing special at all", "what a waste of time"]
LABELS = [1, 0, 1, 0]
TEMPLATE = "Review: {text}\nSentiment:"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def paths(models_dir) -> dict[str, str]:
    return build_all(models_dir, [f"tiny-{a}-{s}" for a in ARCHS for s in "ab"])


def make_task(paths, arch, side="right", words=("negative", "positive"), **kw) -> Task:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(paths[f"tiny-{arch}-a"])
    tok.padding_side = side
    return Task(LM, tok, words, kw.pop("max_length", 32), TEMPLATE, **kw)


@pytest.fixture(scope="module")
def hosts(paths) -> dict[str, torch.nn.Module]:
    task = make_task(paths, "llama")
    return {name: task.load_model(path).eval() for name, path in paths.items()}


def attached(hosts, host, technique, seed=0):
    torch.manual_seed(seed)
    return RT.build(technique, copy.deepcopy(hosts[host]), LM, PARAMS.get(technique))


def perturb(model, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def batch_of(task, texts=TEXTS, labels=LABELS):
    return task.collate(task.encode(texts), labels)


def by_hand(model, task, text) -> list[float]:
    """One unpadded sequence per class, log-probabilities read token by token."""
    prompt = task.encode([text])[0]
    out = []
    for word in task.word_ids():
        ids = torch.tensor([prompt + word])
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        out.append(sum(float(logp[len(prompt) - 1 + t, w]) for t, w in enumerate(word)))
    return out


# ---------------------------------------------------------------- text and scoring


def test_tiny_decoders_are_built_with_their_declared_shapes(paths):
    import json

    for arch in ARCHS:
        for s in "ab":
            cfg = json.loads((Path(paths[f"tiny-{arch}-{s}"]) / "config.json").read_text())
            assert {k: cfg[k] for k in DECODER_SHAPES[arch]} == DECODER_SHAPES[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_label_words_are_continuations_and_long_inputs_lose_the_start_of_their_text(paths, arch):
    task = make_task(paths, arch, max_length=20)
    tok = task.tokenizer
    words = task.word_ids()
    assert [tok.decode(w) for w in words] == [" negative", " positive"]
    assert len(words[1]) > 1  # the tiny tokenizers split " positive": multi-token words are exercised
    long = task.encode(["word " * 40])[0]
    full = tok(TEMPLATE.replace("{text}", "word " * 40))["input_ids"]
    head = tok(TEMPLATE.split("{text}")[0].rstrip())["input_ids"]  # "Review:" (after a BOS where there is one)
    assert 18 <= len(long) <= 20 and long[-5:] == full[-5:]  # the template's end survives (a cut may merge tokens)
    assert long[: len(head)] == head  # and so does its start: the text is cut, not the template
    if tok.bos_token_id is not None:  # llama: BOS kept in front
        assert long[0] == tok.bos_token_id == full[0]
    assert tok.pad_token_id is not None  # gpt2 has none: the task pads with eos
    with pytest.raises(ValueError, match="shorter than the template alone"):
        make_task(paths, arch, max_length=8).encode(["word " * 40])


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_are_summed_label_word_log_likelihoods_on_either_padding_side(hosts, paths, arch):
    model = hosts[f"tiny-{arch}-b"]
    right, left = make_task(paths, arch, "right"), make_task(paths, arch, "left")
    got_r, got_l = right.scores(model, batch_of(right)), left.scores(model, batch_of(left))
    expected = torch.tensor([by_hand(model, right, t) for t in TEXTS])
    assert batch_of(left)["input_ids"][1, 0] == left.tokenizer.pad_token_id  # really left-padded
    assert torch.allclose(got_r, expected, atol=1e-4)
    assert torch.allclose(got_l, expected, atol=1e-4)


def test_chat_template_is_applied_only_when_asked(paths):
    plain, chat = make_task(paths, "qwen2"), make_task(paths, "qwen2", chat=True)
    assert plain.encode(["fun"])[0] == plain.tokenizer(TEMPLATE.replace("{text}", "fun"))["input_ids"]
    wrapped = chat.tokenizer.apply_chat_template([{"role": "user", "content": TEMPLATE.replace("{text}", "fun")}],
                                                 add_generation_prompt=True, tokenize=False)
    assert wrapped.startswith("<|user|>") and wrapped.endswith("<|assistant|>")
    assert chat.encode(["fun"])[0] == chat.tokenizer(wrapped, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="no chat template"):
        make_task(paths, "gpt2", chat=True).encode(["fun"])


DATED = ("{% if date_string is not defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}"
         "<|system|>Today Date: {{ date_string }}\nYou judge reviews.\n"
         "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")  # shaped like Llama 3.2's system header


def test_chat_template_label_words_have_no_leading_space(paths):
    """After the generation prompt (a header and a newline) an answer starts without a space."""
    chat = make_task(paths, "qwen2", chat=True)
    tok = chat.tokenizer
    assert [tok.decode(w) for w in chat.word_ids()] == ["negative", "positive"]
    assert chat.word_ids() == [tok(w, add_special_tokens=False)["input_ids"] for w in ("negative", "positive")]
    assert [tok.decode(w) for w in make_task(paths, "qwen2").word_ids()] == [" negative", " positive"]


def test_chat_prompts_carry_no_date_of_today(paths):
    """A template that writes today's date (Llama 3.2's) sees a fixed one: prompts must not change by day under
    one run id."""
    import datetime

    chat = make_task(paths, "qwen2", chat=True, max_length=100)
    tok = chat.tokenizer
    tok.chat_template = DATED
    text = tok.decode(chat.encode(["fun"])[0])
    assert "Today Date: 26 Jul 2024" in text
    assert datetime.datetime.now().strftime("%d %b %Y") not in text


def test_truncation_keeps_the_chat_system_header(paths):
    tok = make_task(paths, "qwen2").tokenizer
    long = make_task(paths, "qwen2", chat=True, max_length=60)
    long.tokenizer.chat_template = DATED
    ids = long.encode(["word " * 80])[0]
    assert len(ids) <= 60 and tok.decode(ids).startswith("<|system|>Today Date: ")
    assert "\nYou judge reviews.\n<|user|>Review: " in tok.decode(ids)
    assert tok.decode(ids).endswith("Sentiment:\n<|assistant|>\n")


def test_label_words_are_scored_in_fp32_from_bf16_weights(hosts, paths):
    """With frozen weights in bf16 under autocast, a label word's log-likelihood is computed in fp32 from the
    final hidden state -- not from logits the bf16 LM head already rounded (8 bits of mantissa)."""
    from pipeline.run.train import set_frozen_dtype

    task = make_task(paths, "llama")
    model = copy.deepcopy(hosts["tiny-llama-b"]).requires_grad_(False)
    set_frozen_dtype(model, "bf16")
    assert model.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = task.scores(model, batch_of(task))
        hidden = [model.model(input_ids=torch.tensor([task.encode([t])[0] + w])).last_hidden_state[0]
                  for t in TEXTS for w in task.word_ids()]
    assert got.dtype == torch.float32
    expected = []
    for (t, w), h in zip([(t, w) for t in TEXTS for w in task.word_ids()], hidden):
        logp = F.log_softmax(h.float() @ model.lm_head.weight.float().T, dim=-1)
        n = len(task.encode([t])[0])
        expected.append(sum(float(logp[n - 1 + i, tok]) for i, tok in enumerate(w)))
    assert torch.allclose(got, torch.tensor(expected).view(len(TEXTS), 2), atol=1e-4, rtol=0)


def test_no_kv_cache_is_built(paths):
    task = make_task(paths, "llama")
    model = task.load_model(paths["tiny-llama-a"])
    assert model.config.use_cache is False
    caches = []
    causal.inner(model).register_forward_hook(lambda _m, _a, out: caches.append(out.past_key_values))
    task.scores(model, batch_of(task))
    task.loss(model, batch_of(task))
    assert caches == [None, None]


@pytest.mark.parametrize("technique", ["compacter", "bottleneck"])
def test_adapters_keep_the_residual_stream_in_bf16_under_autocast(hosts, technique):
    """Compacter's fp32 bias added to a bf16 product promoted the stream after every adapter to fp32."""
    from pipeline.run.train import set_frozen_dtype

    model = attached(hosts, "tiny-llama-a", technique)
    set_frozen_dtype(model, "bf16")
    dtypes = []
    for layer in model.model.layers:
        layer.register_forward_hook(lambda _m, _a, out: dtypes.append((out[0] if isinstance(out, tuple) else out).dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert dtypes == [torch.bfloat16] * len(model.model.layers)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- techniques


@pytest.mark.parametrize("technique", T.known())
@pytest.mark.parametrize("arch", ARCHS)
def test_every_technique_trains_and_pads_either_side(hosts, paths, arch, technique):
    task, left = make_task(paths, arch), make_task(paths, arch, "left")
    model = attached(hosts, f"tiny-{arch}-a", technique).train()
    before = RT.module_state(model)
    assert before and not any(T.is_head_param(n) for n in before)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # LoRA's A and the adapters' down-projections get gradient from step 2
        task.loss(model, batch_of(task)).backward()
        opt.step()
        opt.zero_grad()
    after = RT.module_state(model)
    assert all(not torch.equal(before[n], after[n]) for n in before), "a module tensor did not train"
    model.eval()
    got = task.scores(model, batch_of(task))
    assert torch.allclose(got, left.scores(model, batch_of(left)), atol=1e-4)  # padding side changes nothing
    assert not torch.allclose(got, task.scores(hosts[f"tiny-{arch}-a"], batch_of(task)), atol=1e-4)


@pytest.mark.parametrize("technique", ["prefix", "prompt", "lora"])
def test_real_tokens_keep_positions_0_to_n_on_gpt2(hosts, paths, technique):
    """GPT-2 has absolute positions: the position ids its ``wpe`` sees for the real tokens are 0..n-1 for
    every technique and padding side; prompt tuning's virtual tokens sit at 0."""
    for side in ("right", "left"):
        task = make_task(paths, "gpt2", side)
        model = attached(hosts, "tiny-gpt2-a", technique).eval()
        wpe = next(m for n, m in model.named_modules() if n.endswith(".wpe"))
        seen = {}
        h = wpe.register_forward_hook(lambda m, a, o: seen.__setitem__("pos", a[0].clone()))
        batch = batch_of(task)
        with torch.no_grad():
            task.scores(model, batch)
        h.remove()
        pos, mask = seen["pos"], batch["attention_mask"]
        v = pos.shape[1] - mask.shape[1]  # prompt tuning's virtual tokens
        assert v == (10 if technique == "prompt" else 0)
        assert (pos[:, :v] == 0).all()
        for r in range(mask.shape[0]):
            real = pos[r, v:][mask[r].bool()].tolist()
            assert real == list(range(int(mask[r].sum()))), f"{technique}, {side} padding, row {r}: {real}"


def test_without_the_fix_peft_would_shift_gpt2_positions(hosts, paths):
    """The fault is real: peft's prefix tuning hands GPT-2 a cache, and GPT-2 counts positions after it."""
    task = make_task(paths, "gpt2")
    model = attached(hosts, "tiny-gpt2-a", "prefix").eval()
    causal.inner(model.base_model)._forward_pre_hooks.clear()  # remove causal.Positions
    wpe = next(m for n, m in model.named_modules() if n.endswith(".wpe"))
    seen = {}
    wpe.register_forward_hook(lambda m, a, o: seen.__setitem__("pos", a[0].clone()))
    with torch.no_grad():
        task.scores(model, batch_of(task))
    assert seen["pos"][0, 0].item() == 10


def test_lora_targets_per_architecture_and_all_linear(hosts):
    def targets(model):
        return sorted({n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n})

    torch.manual_seed(0)
    assert targets(RT.build("lora", copy.deepcopy(hosts["tiny-llama-a"]), LM, {})) == ["q_proj", "v_proj"]
    assert targets(RT.build("lora", copy.deepcopy(hosts["tiny-qwen2-a"]), LM, {})) == ["q_proj", "v_proj"]
    assert targets(RT.build("lora", copy.deepcopy(hosts["tiny-gpt2-a"]), LM, {})) == ["c_attn"]
    every = RT.build("lora", copy.deepcopy(hosts["tiny-llama-a"]), LM, {"target_modules": "all-linear"})
    assert set(targets(every)) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # no lm_head
    gpt = RT.build("lora", copy.deepcopy(hosts["tiny-gpt2-a"]), LM, {"target_modules": "all-linear"})
    assert targets(gpt) == ["c_attn", "c_fc", "c_proj"]


def test_adapters_sit_after_attention_and_mlp_of_each_decoder_block(hosts):
    from pipeline.run.techniques.adapter import find_sites

    for arch, att, mlp in (("llama", "self_attn", "mlp"), ("qwen2", "self_attn", "mlp"), ("gpt2", "attn", "mlp")):
        sites = find_sites(hosts[f"tiny-{arch}-a"], ("attention", "ffn"))
        assert [s.name.split(".")[-1] for s in sites] == [att, mlp] * 2 and all(s.hidden == 64 for s in sites)
        model = attached(hosts, f"tiny-{arch}-a", "bottleneck")
        assert sum(1 for n, p in model.named_parameters() if p.requires_grad and n.endswith("down.weight")) == 4


# ---------------------------------------------------------------- porting, conditions, export


@pytest.mark.parametrize("technique", T.known())
@pytest.mark.parametrize("arch", ARCHS)
def test_every_technique_ports_bit_exactly_between_tiny_decoders(hosts, paths, arch, technique, tmp_path):
    task = make_task(paths, arch)
    origin = attached(hosts, f"tiny-{arch}-a", technique, seed=0).eval()
    perturb(origin)
    state = RT.module_state(origin)
    port.save_module(state, tmp_path / "m", {"run_id": "x", "technique": technique})
    loaded, _ = port.load_module(tmp_path / "m")
    receiver = attached(hosts, f"tiny-{arch}-b", technique, seed=1).eval()
    checks = port.load_into(receiver, loaded, include_head=True)
    assert checks["port_exact"] and checks["ported_parameters"] == sum(t.numel() for t in state.values())
    assert all(torch.equal(t, state[n]) for n, t in RT.module_state(receiver).items())
    batch = batch_of(task)
    assert not torch.allclose(task.scores(receiver, batch), task.scores(origin, batch), atol=1e-4)
    again = attached(hosts, f"tiny-{arch}-a", technique, seed=2).eval()
    port.load_into(again, loaded, include_head=True)
    assert torch.equal(task.scores(again, batch), task.scores(origin, batch))


def _cfg(technique, stage, condition=None, seed=0):
    return {"stage": stage, "seed": seed, "technique": technique, "params": PARAMS.get(technique, {}),
            "condition": condition}


@pytest.mark.parametrize("technique", T.known())
def test_conditions_load_what_they_declare_on_a_decoder(hosts, paths, technique, tmp_path):
    task = make_task(paths, "qwen2")
    model, _ = prepare(_cfg(technique, 1), task, copy.deepcopy(hosts["tiny-qwen2-a"]))
    perturb(model, scale=0.05)
    state = RT.module_state(model)
    port.save_module(state, tmp_path, {"run_id": "x"})
    got = {}
    for cond in ("ported", "scratch", "sampled", "no-module"):
        m, checks = prepare(_cfg(technique, 2, cond, seed=3), task, copy.deepcopy(hosts["tiny-qwen2-b"]), tmp_path)
        got[cond] = RT.module_state(m)
        assert checks["loaded_module"] == {"ported": PORTED, "scratch": "fresh", "sampled": SAMPLED,
                                           "no-module": NONE}[cond]
        assert torch.isfinite(task.scores(m.eval(), batch_of(task))).all()
    assert all(torch.equal(got["ported"][n], t) for n, t in state.items())
    assert set(got["scratch"]) == set(got["sampled"]) == set(state)
    assert not any(torch.equal(got["sampled"][n], t) for n, t in state.items())
    assert got["no-module"] == {}


@pytest.mark.parametrize("technique", ["lora", "prompt", "prefix", "bottleneck"])
def test_export_loads_into_the_other_host_of_the_pair(hosts, paths, technique, tmp_path):
    from transformers import AutoModelForCausalLM

    task = make_task(paths, "gpt2")
    origin = attached(hosts, "tiny-gpt2-a", technique).eval()
    perturb(origin)
    state = RT.module_state(origin)
    export.save(origin, tmp_path / "adapter", state, technique=technique, params=PARAMS.get(technique, {}),
                task=task, host={"model": "embedded:tiny-gpt2-a"})
    if technique != "bottleneck":
        assert (tmp_path / "adapter" / "adapter_config.json").exists()  # peft's own layout
    plain = AutoModelForCausalLM.from_pretrained(paths["tiny-gpt2-b"])  # as a user loads it: no positions fix yet
    model = export.load_module(plain, tmp_path / "adapter")
    ported = attached(hosts, "tiny-gpt2-b", technique, seed=5).eval()
    port.load_into(ported, state, include_head=True)
    batch = batch_of(task)
    assert torch.allclose(task.scores(model, batch), task.scores(ported, batch), atol=1e-6)


@pytest.mark.parametrize("technique", T.known())
def test_every_technique_and_condition_runs_in_bf16_autocast_on_cpu(hosts, paths, technique, tmp_path):
    """bf16 autocast with frozen weights in bf16 (the GPU setting): training, porting and sampling keep the
    module fp32 and scores finite, so dtype mismatches show without a GPU."""
    from pipeline.run.train import set_frozen_dtype

    task = make_task(paths, "llama")
    model, _ = prepare(_cfg(technique, 1), task, copy.deepcopy(hosts["tiny-llama-a"]))
    set_frozen_dtype(model, "bf16")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            task.loss(model.train(), batch_of(task)).backward()
            opt.step()
            opt.zero_grad()
    state = RT.module_state(model)
    assert all(t.dtype == torch.float32 for t in state.values())
    port.save_module(state, tmp_path, {"run_id": "x"})
    for cond in ("ported", "scratch", "sampled", "no-module"):
        m, _ = prepare(_cfg(technique, 2, cond), task, copy.deepcopy(hosts["tiny-llama-b"]), tmp_path)
        set_frozen_dtype(m, "bf16")
        assert all(p.dtype == torch.float32 for p in m.parameters() if p.requires_grad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s = task.scores(m.eval(), batch_of(task))
            if cond != "no-module":
                task.loss(m.train(), batch_of(task)).backward()
        assert s.dtype == torch.float32 and torch.isfinite(s).all(), cond
        if cond == "ported":
            assert all(torch.equal(t, state[n]) for n, t in RT.module_state(m).items())


# ---------------------------------------------------------------- a sweep end to end, per architecture


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_causal_lm_sweep_end_to_end(tmp_path, models_dir, paths, arch):
    """``pipeline run`` trains stage 1, ports, runs every condition, merges and reports."""
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq
    import yaml

    root = Path(__file__).resolve().parent.parent
    d = yaml.safe_load((root / "tests" / "specs" / "tiny_llm.yaml").read_text())
    d.update(output_dir=str(tmp_path / "sweep"), models_dir=str(models_dir), both_directions=False,
             host_pairs=[[f"{arch}-a", f"{arch}-b"]], techniques=["lora", "prompt", "bottleneck"])
    d["datasets"][0].update(train_size=32, eval_size=16)
    d["origin_training"]["steps"] = 2
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(d))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec), "--debug"], cwd=root,
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = pq.read_table(tmp_path / "sweep" / "results.parquet").to_pylist()
    # per technique: stage 1 + (ported, scratch, sampled) x 2 regimes + no-module at zero-shot only
    assert len(rows) == 3 * (1 + 3 * 2 + 1)
    by_id = {r["run_id"]: r for r in rows}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["eval_examples"] == 16 and r["host_pair"].startswith(arch)
        if r["stage"] == 1:
            assert r["train_steps"] == 2 and r["module_parameters"] > 0
        if r["condition"] == "ported":
            assert r["port_exact"] and r["origin_module_sha256"] == by_id[r["needs"]]["module_sha256"]
    assert {r["condition"] for r in rows} == {None, "ported", "scratch", "sampled", "no-module"}
    rep = subprocess.run([sys.executable, "-m", "pipeline", "report", str(tmp_path / "sweep"), "--bootstrap", "50"],
                         cwd=root, capture_output=True, text=True, env=env)
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    assert (tmp_path / "sweep" / "report" / "report.md").read_text().strip()


# ---------------------------------------------------------------- the spec side


def test_spec_accepts_causal_lm_and_checks_chat_template(tmp_path):
    import yaml

    from pipeline import plan, spec
    from pipeline.errors import SpecError

    root = Path(__file__).resolve().parent.parent
    d = yaml.safe_load((root / "tests" / "specs" / "tiny_llm.yaml").read_text())
    d["output_dir"] = str(tmp_path)
    s = spec.parse(d)
    assert {h.task for h in s.hosts} == {"causal-lm"} and "chat_template" not in s.model_dump(mode="json")["hosts"][0]
    ids = {r.run_id for r in plan.build(s).runs}
    d["hosts"][0]["chat_template"] = True
    with pytest.raises(SpecError, match=r"host_pairs\[0\]: .*differ in chat_template"):
        spec.parse(d)
    d["hosts"][1]["chat_template"] = True
    chat_ids = {r.run_id for r in plan.build(spec.parse(d)).runs}
    assert ids != chat_ids and len(ids - chat_ids) == len(ids) // 3  # only the llama pair's runs change
    bad = yaml.safe_load((root / "tests" / "specs" / "tiny_t5.yaml").read_text())
    bad["hosts"][0]["chat_template"] = True
    with pytest.raises(SpecError, match="chat_template applies to causal-lm hosts only"):
        spec.parse(bad)


@pytest.mark.parametrize("technique", ["lora", "bottleneck"])
def test_gradient_checkpointing_gives_the_same_gradients_and_is_not_hashed(hosts, paths, technique):
    """``gradient_checkpointing: true`` recomputes activations in the backward pass: the same loss and module
    gradients (dropout off), so it is an execution setting, outside the run id."""
    from pipeline import plan as P
    from pipeline import spec as S
    from pipeline.run.train import set_gradient_checkpointing

    task = make_task(paths, "qwen2")
    grads = []
    for on in (False, True):
        model = attached(hosts, "tiny-qwen2-a", technique)
        perturb(model, scale=0.1)
        model.train()
        for m in model.modules():  # dropout off: the two passes must see the same masks (none)
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        set_gradient_checkpointing(model, on)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert base.is_gradient_checkpointing == on
        task.loss(model, batch_of(task)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
    d = {"name": "x", "output_dir": "o", "hosts": [{"name": "a", "model": "m1"}, {"name": "b", "model": "m2"}],
         "host_pairs": [["a", "b"]], "datasets": [{"name": "rt", "source": "embedded:rotten_tomatoes"}],
         "techniques": ["lora"], "conditions": ["ported"], "regimes": ["zero-shot", 10], "seeds": [0]}
    ids = lambda **kw: [r.run_id for r in P.build(S.parse({**d, **kw})).runs]  # noqa: E731
    assert ids(origin_training={"gradient_checkpointing": True}) == ids()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prefix_init_text_starts_as_the_host_reading_that_text_first(hosts, paths, arch):
    """A fresh prefix with ``init_text`` holds the host's own key/values of that text: the host with it scores a
    prompt exactly as the bare host scores text + prompt (peft's default N(0, 1) prefix does not)."""
    task = make_task(paths, arch)
    host = hosts[f"tiny-{arch}-b"]
    text_ids = task.tokenizer("a film review", add_special_tokens=False)["input_ids"][:4]
    fresh = attached_with(hosts, f"tiny-{arch}-b", "prefix", {"num_virtual_tokens": len(text_ids),
                                                             "init_text": "a film review"})
    prompts = task.encode(TEXTS)
    got = task.scores(fresh.eval(), task.collate(prompts, LABELS))
    joined = [text_ids + p for p in prompts]  # llama's BOS included: the prefix sits before everything
    expected = task.scores(host, task.collate(joined, LABELS))
    assert torch.allclose(got, expected, atol=1e-4)
    default = attached_with(hosts, f"tiny-{arch}-b", "prefix", {"num_virtual_tokens": len(text_ids)})
    assert not torch.allclose(task.scores(default.eval(), task.collate(prompts, LABELS)), expected, atol=1e-4)
    with pytest.raises(ValueError, match="causal-lm hosts only"):
        RT.build("prefix", copy.deepcopy(hosts[f"tiny-{arch}-b"]), "similarity", {"init_text": "x"})


def attached_with(hosts, host, technique, params, seed=0):
    torch.manual_seed(seed)
    return RT.build(technique, copy.deepcopy(hosts[host]), LM, params)
