"""Text-to-text on the tiny T5 hosts: label-word scoring, every technique, porting, sampling, a sweep.

The hosts (``embedded:tiny-t5-a``/``-b``) are saved with ``save_pretrained`` and loaded
back through ``from_pretrained`` -- the path a hub name takes on a cluster.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml

from pipeline import techniques as T
from pipeline.hosts import build_all
from pipeline.run import port
from pipeline.run import techniques as RT
from pipeline.run.tasks import Task
from pipeline.spec import Training

ROOT = Path(__file__).resolve().parent.parent
T2T = "text-to-text"
PARAMS = {"bottleneck": {"reduction_factor": 8}, "compacter": {"reduction_factor": 16}}  # tiny hosts are 64 wide
TEXTS = ["a great movie , loved it", "boring and dull", "fine", "what a waste of time , awful acting"]
LABELS = [1, 0, 1, 0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and spinning threads crawl on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def t5(models_dir) -> dict[str, str]:
    return build_all(models_dir, ["tiny-t5-a", "tiny-t5-b"])


@pytest.fixture(scope="module")
def task(t5) -> Task:
    from transformers import AutoTokenizer

    return Task(T2T, AutoTokenizer.from_pretrained(t5["tiny-t5-a"]), ("negative", "positive"), 32, "sentiment: {text}")


@pytest.fixture(scope="module")
def hosts(t5, task) -> dict[str, torch.nn.Module]:
    return {name: task.load_model(path).eval() for name, path in t5.items()}


def attached(hosts, host, technique, seed=0):
    torch.manual_seed(seed)
    return RT.build(technique, copy.deepcopy(hosts[host]), T2T, PARAMS.get(technique))


def batch_of(task, texts=TEXTS, labels=LABELS):
    return task.collate(task.encode(texts), labels)


def perturb(model, seed=0):
    """Give every trainable tensor non-trivial values (LoRA B and adapter up-projections start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


def manual_scores(model, task, batch) -> torch.Tensor:
    """Hand-built reference: explicit decoder inputs (start token + word[:-1]), one class at a time."""
    start = model.config.decoder_start_token_id
    cols = []
    with torch.no_grad():
        for word in task.word_ids():
            n = batch["input_ids"].shape[0]
            target = torch.tensor([word] * n)
            dec = torch.tensor([[start] + word[:-1]] * n)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=dec).logits
            logp = F.log_softmax(logits.float(), dim=-1)
            cols.append(sum(logp[:, t, target[0, t]] for t in range(len(word))))
    return torch.stack(cols, dim=-1)


# ---------------------------------------------------------------- scoring


def test_label_words_are_scored_with_their_eos(task):
    words = task.word_ids()
    assert [w[-1] for w in words] == [task.tokenizer.eos_token_id] * 2
    assert task.tokenizer.convert_ids_to_tokens(words[1]) == ["positive", "</s>"]
    assert task.encode(["great"])[0] == task.tokenizer("sentiment: great")["input_ids"]


def test_scores_are_label_word_log_likelihoods_on_a_hand_checked_example(hosts, task):
    model = hosts["tiny-t5-a"]
    batch = batch_of(task, TEXTS[:1], LABELS[:1])
    got = task.scores(model, batch)
    # by hand, position by position: decoder input <pad>, word -> p(word | x); then word -> p(</s> | x, word)
    start, eos = model.config.decoder_start_token_id, task.tokenizer.eos_token_id
    for c, word in enumerate(task.label_words):
        (wid, _eos) = task.word_ids()[c]
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=torch.tensor([[start, wid]])).logits[0]
        expected = logits[0].log_softmax(-1)[wid] + logits[1].log_softmax(-1)[eos]
        assert torch.allclose(got[0, c], expected, atol=1e-5), word
        # the same number is -(mean token cross-entropy) x tokens
        with torch.no_grad():
            loss = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, labels=torch.tensor([[wid, eos]])).loss
        assert torch.allclose(got[0, c], -2 * loss, atol=1e-5)


def test_label_words_of_different_lengths_are_scored_exactly(hosts, t5):
    from transformers import AutoTokenizer

    task = Task(T2T, AutoTokenizer.from_pretrained(t5["tiny-t5-a"]), ("not positive at all", "positive"), 32)
    assert len(task.word_ids()[0]) > len(task.word_ids()[1])
    batch = batch_of(task)
    assert torch.allclose(task.scores(hosts["tiny-t5-b"], batch), manual_scores(hosts["tiny-t5-b"], task, batch),
                          atol=1e-5)


@pytest.mark.parametrize("technique", T.known())
def test_every_technique_scores_from_labels_like_explicit_decoder_inputs(hosts, task, technique):
    """peft's seq2seq wrappers (prompt and prefix tuning included) get labels the same way as the bare host."""
    model = attached(hosts, "tiny-t5-a", technique).eval()
    perturb(model)
    batch = batch_of(task)
    got = task.scores(model, batch)
    assert got.shape == (len(TEXTS), 2) and torch.isfinite(got).all()
    assert torch.allclose(got, manual_scores(model, task, batch), atol=1e-5)
    assert not torch.allclose(got, task.scores(hosts["tiny-t5-a"], batch), atol=1e-4)  # the module is used


def test_evaluate_predicts_the_argmax_of_the_scores(hosts, task):
    from pipeline.run.train import accelerator, evaluate

    model = hosts["tiny-t5-b"]
    ev, per_example = evaluate(model, task, TEXTS, LABELS, cfg=Training(eval_batch_size=3), acc=accelerator("fp32"))
    scores = manual_scores(model, task, batch_of(task))
    preds = scores.argmax(-1).tolist()
    assert per_example["pred"] == preds
    assert per_example["score"] == pytest.approx((scores[:, 1] - scores[:, 0]).tolist(), abs=1e-4)
    assert ev["accuracy"] == sum(p == y for p, y in zip(preds, LABELS, strict=True)) / len(LABELS)
    assert ev["pred_positive_rate"] == sum(preds) / len(preds)


# ---------------------------------------------------------------- techniques on T5


@pytest.mark.parametrize("technique", T.known())
def test_every_technique_trains_on_t5(hosts, task, technique):
    model = attached(hosts, "tiny-t5-a", technique).train()
    before = RT.module_state(model)
    assert before and not any(T.is_head_param(n) for n in before)  # text-to-text: no head
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = batch_of(task)
    for _ in range(2):  # two steps: LoRA's A and the adapters' down-projections get gradient from step 2
        task.loss(model, batch).backward()
        opt.step()
        opt.zero_grad()
    after = RT.module_state(model)
    assert all(not torch.equal(before[n], after[n]) for n in before), "a module tensor did not train"
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    host = dict(hosts["tiny-t5-a"].named_parameters())
    assert all(torch.equal(p, host[n.removeprefix("base_model.model.")]) for n, p in model.named_parameters()
               if n in frozen and n.removeprefix("base_model.model.") in host)


def test_prefix_tuning_on_t5_reaches_the_decoder_without_a_shim(hosts, task):
    """transformers 5.24 renamed T5's ``past_key_values`` to ``cache``; peft 0.21.2 still passes
    ``past_key_values``, which transformers renames on the way in (with a FutureWarning), so no shim.
    peft's seq2seq prefix tuning gives the prefix to the *decoder's self-attention* only: the encoder
    is untouched and the cross-attention cache is reset (pinned here so an upgrade that changes it shows)."""
    model = attached(hosts, "tiny-t5-a", "prefix").train()
    (prefix,) = [p for p in model.parameters() if p.requires_grad]
    assert prefix.shape[0] == model.peft_config["default"].num_virtual_tokens  # no unused rows
    task.loss(model, batch_of(task)).backward()
    assert (prefix.grad.abs().sum(-1) > 0).all(), "every prefix row gets a gradient"
    model.eval()
    batch = batch_of(task)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    labels = torch.tensor([task.word_ids()[1]] * len(TEXTS))
    with torch.no_grad():
        out, bare = model(**inputs, labels=labels), hosts["tiny-t5-a"](**inputs, labels=labels)
    assert torch.equal(out.encoder_last_hidden_state, bare.encoder_last_hidden_state)
    assert not torch.allclose(out.logits, bare.logits)


def test_prompt_tuning_on_t5_allocates_only_used_rows(hosts, task):
    model = attached(hosts, "tiny-t5-a", "prompt").train()
    (emb,) = [p for p in model.parameters() if p.requires_grad]
    assert emb.shape[0] == T.get("prompt").defaults["num_virtual_tokens"]
    task.loss(model, batch_of(task)).backward()
    assert (emb.grad.abs().sum(-1) > 0).all()


# ---------------------------------------------------------------- porting and sampling


@pytest.mark.parametrize("technique", T.known())
def test_every_technique_ports_bit_exactly_between_tiny_t5_hosts(hosts, task, technique, tmp_path):
    origin = attached(hosts, "tiny-t5-a", technique, seed=0).eval()
    perturb(origin)
    state = RT.module_state(origin)
    sha = port.save_module(state, tmp_path / "m", {"run_id": "x", "technique": technique})
    loaded, info = port.load_module(tmp_path / "m")
    assert info["sha256"] == sha and set(loaded) == set(state)

    receiver = attached(hosts, "tiny-t5-b", technique, seed=1).eval()
    scratch = RT.module_state(receiver)
    assert {n: t.shape for n, t in scratch.items()} == {n: t.shape for n, t in state.items()}
    checks = port.load_into(receiver, loaded, include_head=True)
    assert checks["port_exact"] and checks["ported_parameters"] == sum(t.numel() for t in state.values())
    assert all(torch.equal(t, state[n]) for n, t in RT.module_state(receiver).items())
    batch = batch_of(task)
    assert not torch.allclose(task.scores(receiver, batch), task.scores(origin, batch), atol=1e-4)  # other host

    # ported back into a fresh copy of the origin host it computes exactly what the origin did
    again = attached(hosts, "tiny-t5-a", technique, seed=2).eval()
    port.load_into(again, loaded, include_head=True)
    assert torch.equal(task.scores(again, batch), task.scores(origin, batch))


@pytest.mark.parametrize("technique", ["lora", "prefix", "compacter"])
def test_sampled_module_follows_each_tensors_statistics(hosts, task, technique):
    origin = attached(hosts, "tiny-t5-a", technique)
    perturb(origin)
    state = RT.module_state(origin)
    sampled, checks = port.sample_like(state, seed=3)
    assert checks["sample_mean_err"] < 0.1 and checks["sample_std_err"] < 0.1
    for n, t in state.items():
        s = sampled[n]
        assert s.shape == t.shape and s.dtype == t.dtype and not torch.equal(s, t)
        if t.numel() >= 200:
            sd = t.std(unbiased=False)
            assert abs(s.mean() - t.mean()) < 0.3 * sd and abs(s.std(unbiased=False) - sd) < 0.3 * sd, n
    receiver = attached(hosts, "tiny-t5-b", technique, seed=1)
    assert port.load_into(receiver, sampled, include_head=True)["port_exact"]
    assert torch.isfinite(task.scores(receiver.eval(), batch_of(task))).all()


# ---------------------------------------------------------------- a sweep end to end


def test_tiny_text_to_text_sweep_end_to_end(tmp_path, models_dir):
    d = yaml.safe_load((ROOT / "tests" / "specs" / "tiny_t5.yaml").read_text())
    d.update(output_dir=str(tmp_path / "sweep"), models_dir=str(models_dir), both_directions=False,
             regimes=["zero-shot", 1])
    d["datasets"][0].update(train_size=32, eval_size=16)
    d["origin_training"]["steps"] = 2
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(d))
    # Passive OpenMP waiting: on a shared, oversubscribed CPU, spinning threads made this 6x slower.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec), "--debug"], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = pq.read_table(tmp_path / "sweep" / "results.parquet").to_pylist()
    techniques = d["techniques"]
    assert len(rows) == len(techniques) * (1 + 3 * 2)
    by_id = {r["run_id"]: r for r in rows}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["eval_examples"] == 16 and r["host_pair"].startswith("t5-a")
        if r["stage"] == 1:
            assert r["train_steps"] == 2 and r["module_parameters"] > 0
        else:
            assert r["train_steps"] == r["regime"]
        if r["condition"] == "ported":
            assert r["port_exact"] and r["origin_module_sha256"] == by_id[r["needs"]]["module_sha256"]
    assert {r["technique"] for r in rows} == set(techniques)
