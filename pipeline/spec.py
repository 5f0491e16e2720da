"""The sweep spec: a YAML file validated by pydantic.

Every error is one line naming the file, the field path and what is allowed, e.g.
``sweeps/x.yaml: techniques[2]: unknown technique 'lora2' (known: ...)``.  Whatever a run
would reject is rejected here, at plan time: technique hyperparameters by name and type
(``pipeline.techniques``, no torch), a file that is not UTF-8 or repeats a key, more than one GPU per run.

Longer than most modules (~500 lines) on purpose: every field carries its description, the docstring under it,
from which ``python -m pipeline.specdoc`` generates the reference in docs/spec.md.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from . import techniques
from .conditions import HEADS
from .conditions import NAMES as CONDITIONS
from .errors import SpecError
from .specfile import _format_loc, _StrictLoader, read_yaml  # noqa: F401  (the YAML side; overrides use these)
from .techniques.base import TASKS, TRAINING_KEYS

POOLINGS = ("mean", "cls", "pooler")  # how a classification host pools (pipeline.run.pooling); "auto" picks one
GRID_KEYS = TRAINING_KEYS  # technique params that may be lists (one set of runs per value)
ZERO_SHOT = "zero-shot"
MAX_GPUS = 1  # per run: one process, one device (more GPUs = more runs at once, not more per run)
MAX_RUNS = 200_000  # a grid over this many runs is refused before it is expanded (``max_runs`` raises it)


def _number(v: Any) -> Any:
    """A float field: a number, or text that spells one (YAML 1.1 reads ``1e-3`` as text); never true/false."""
    if isinstance(v, bool):
        raise ValueError(f"must be a number, got {v!r}")
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise ValueError(f"must be a number, got {v!r}") from None
    return v


Float = Annotated[float, BeforeValidator(_number)]  # the spec is otherwise strict: no '1' -> 1, no 'true' -> True
Pair = Annotated[tuple[str, str], Strict(False)]  # YAML has no tuples: a list of two names


class _Strict(BaseModel):
    # strict: no text -> int or text/number -> bool coercion, and no bool where an int is asked for
    # use_attribute_docstrings: the string under a field is its description (docs/spec.md is generated from them)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)


class Host(_Strict):
    """A pretrained model the study ports modules from or into (``hosts:`` in the spec)."""

    name: str = Field(min_length=1)
    """The name the spec uses for this host (in ``host_pairs``, run ids and the report)."""
    model: str = Field(min_length=1)
    """Where the weights come from: a hub name (``google/flan-t5-base``), a local folder, or ``embedded:NAME`` (a
    host the project ships or builds)."""
    task: Literal[TASKS] = "classification"
    """How the host classifies: ``classification`` (an encoder; head-free or trained head, see ``head``),
    ``text-to-text`` (an encoder-decoder scoring the label words) or ``causal-lm`` (a decoder scoring each label
    word as the continuation of the templated input)."""
    pooling: Literal[("auto", *POOLINGS)] = "auto"
    """How a classification host turns token states into one vector (``pipeline/run/pooling.py``): ``mean`` of the
    real tokens, ``cls`` (the first token), ``pooler`` (BERT's dense + tanh on [CLS]); ``auto``: the host's own
    sentence-transformers pooling when it ships one (``1_Pooling/config.json``), else ``cls``."""
    chat_template: bool = Field(default=False, exclude_if=lambda v: not v)
    """causal-lm only: wrap each templated input in the tokenizer's chat template (one user turn). Both hosts of a
    pair must agree."""


class Dataset(_Strict):
    """A labelled text dataset (``datasets:`` in the spec); every run of the sweep sees the same fixed splits."""

    name: str = Field(min_length=1)
    """The name the spec and the report use for this dataset."""
    source: str = Field(min_length=1)
    """Where the examples come from: a hub name, a local .csv/.json(l)/.parquet file or a folder with one file per
    split, or ``embedded:NAME``."""
    text_field: str = "text"
    """The column that holds the input text."""
    label_field: str = "label"
    """The column that holds the class: an integer 0 .. len(label_words) - 1 (rows with a missing or negative label
    are skipped)."""
    label_words: tuple[str, ...] = Field(default=("negative", "positive"), strict=False)  # YAML has no tuples
    """One word (or short text) per class, in label order: what a head-free, text-to-text or causal-lm host scores."""
    template: str = Field(default="{text}", exclude_if=lambda v: v == "{text}")
    """How an input is rendered, with ``{text}`` where the text goes (e.g. ``"Review: {text}\\nSentiment:"``).
    Left out of dumps (and so of run ids) while it is the default."""
    train_split: str = "train"
    """The split training examples come from (and the held-out sets, when ``eval_split`` is null)."""
    eval_split: str | None = None
    """The split the study scores on; null: hold ``eval_size`` stratified examples out of ``train_split``."""
    train_size: int | None = Field(default=None, gt=0)
    """Train on this many stratified examples of what is left after the held-out sets; null: all of them."""
    eval_size: int = Field(default=500, gt=0)
    """Examples in the stratified evaluation set every run is scored on."""
    dev_size: int = Field(default=0, ge=0)
    """A stratified development split of this size, disjoint from train and eval (tuning sweeps score on it with
    ``evaluate_on: dev``); 0: none."""
    revision: str | None = Field(default=None, min_length=1, exclude_if=lambda v: v is None)
    """A hub dataset's branch, tag or commit to load; the commit it resolves to in the local HF cache enters run ids
    (null: the cache's main)."""

    @field_validator("template")
    @classmethod
    def _template_has_text(cls, v: str) -> str:
        if "{text}" not in v:
            raise ValueError(f"must contain {{text}} where the input text goes, got {v!r}")
        return v


class Training(_Strict):
    """How a module is trained: ``origin_training`` (stage 1) and ``further_training`` (stage 2's budgets)."""

    steps: int = Field(default=100, ge=0)
    """Optimizer steps of origin training (a technique's ``steps`` in technique_params overrides it; stage 2 trains
    for each budget of ``regimes`` instead)."""
    batch_size: int = Field(default=32, gt=0)
    """Training examples per optimizer step (batches are length-bucketed)."""
    eval_batch_size: int = Field(default=64, gt=0)
    """Examples per forward pass when scoring (changes no number, so not part of run ids)."""
    max_length: int = Field(default=64, gt=0)
    """Tokens an input is truncated to (a causal-lm input loses its start, keeping the question)."""
    lr: Float | None = Field(default=None, gt=0)
    """The module's learning rate; null: the technique's own (or ``technique_params.<technique>.lr``)."""
    head_lr: Float = Field(default=1e-2, gt=0)
    """head: trained -- the classification head's learning rate (its own parameter group), the same for every
    technique."""
    weight_decay: Float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    warmup_ratio: Float = Field(default=0.1, ge=0, lt=1)
    """Share of the steps over which the learning rate rises linearly from 0."""
    max_grad_norm: Float | None = Field(default=1.0, gt=0)
    """Clip the gradient norm to this; null: no clipping."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training precision; ``auto``: bf16 on a stage whose resources ask for a GPU, else fp32 (resolved at plan time
    and part of the run id; never fp16)."""
    checkpoint_every: int = Field(default=0, ge=0)
    """Save a checkpoint every this many steps; 0: only when Slurm signals a timeout or preemption."""
    frozen_dtype: Literal["fp32", "bf16"] = Field(default="fp32", exclude_if=lambda v: v == "fp32")
    """dtype of the frozen host's weights: ``bf16`` halves their memory on a GPU with native bf16."""
    gradient_checkpointing: bool = Field(default=False, exclude_if=lambda v: not v)
    """Recompute the host's activations in the backward pass: the same gradients, less memory, more compute (not
    part of run ids)."""


class Resources(_Strict):
    """What one array task of a stage asks Slurm for (``resources.stage1`` / ``resources.stage2``; ignored locally)."""

    partition: str | None = None
    """Slurm partition (``--partition``); null: the cluster's default."""
    account: str | None = None
    """Slurm account to charge (``--account``); null: yours by default."""
    qos: str | None = None
    """Slurm quality of service (``--qos``); null: the default."""
    gpus: int = Field(default=0, ge=0)
    """GPUs per array task: 0 or 1 (a run uses at most one GPU; more GPUs run more tasks at once)."""
    gpu_request: Literal["gpus-per-node", "gres"] = "gpus-per-node"
    """How GPUs are asked for: ``--gpus-per-node=N`` (select/cons_tres) or ``--gres=gpu:N`` (older select/cons_res
    sites)."""
    cpus: int = Field(default=2, gt=0)
    """CPU cores per array task (``--cpus-per-task``)."""
    mem_gb: Float = Field(default=8, gt=0)
    """Memory per array task in GB (``--mem``)."""
    gpu_mem_gb: Float | None = Field(default=None, gt=0, exclude_if=lambda v: v is None)
    """Memory of the GPU a run gets, in GB: a spec whose runs are estimated to need more is refused at plan time,
    naming the host; null: no check."""
    time_min: int = Field(default=60, gt=0)
    """Wall-time limit of an array task in minutes (``--time``); a task that reaches it is requeued and resumes from
    its checkpoint."""
    constraint: str | None = None
    """Node features the task needs (``--constraint``, e.g. ``a100``); null: any node."""
    gpu_features: dict[str, Float] = Field(default_factory=dict, exclude_if=lambda v: not v)
    """Node features (``sinfo -o %f``) that mark GPUs, each with its GPU memory in GB: with ``gpu_mem_gb`` set, the
    task asks ``--constraint`` for the features whose GPU holds that much (name only features the cluster has)."""
    array_parallelism: int = Field(default=64, gt=0)
    """At most this many array tasks of the stage run at once, shared out between its arrays (``%N``)."""
    pack_size: int | None = Field(default=None, gt=0)
    """Runs packed into one array task (one Python start, one host load); null: estimated so a task runs about ten
    minutes."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """More sbatch options, ``option: value`` (single values, e.g. ``exclusive: true``, ``mail-type: END``)."""

    @field_validator("extra")
    @classmethod
    def _scalar_extra(cls, v: dict[str, Any]) -> dict[str, Any]:  # a list or mapping would land in sbatch as repr
        bad = next(((k, x) for k, x in v.items() if not isinstance(x, (str, int, float, bool))), None)
        if bad:
            raise _KeyError(bad[0], f"must be a single value (text, number or true/false), got {bad[1]!r}")
        return v

    @field_validator("gpus")
    @classmethod
    def _one_gpu(cls, v: int) -> int:
        if v > MAX_GPUS:
            raise ValueError("multi-GPU per run is not supported: one GPU a run; more GPUs run more runs at once (arrays)")
        return v


class Stages(_Strict):
    """Slurm resources per stage."""

    stage1: Resources = Resources()
    """Stage 1: training each module on its origin host."""
    stage2: Resources = Resources()
    """Stage 2: every condition and budget on the receiving host."""


class Spec(_Strict):
    """A sweep: hosts, host pairs, datasets, techniques, conditions, budgets and seeds, and how to train and run."""

    name: str = Field(min_length=1)
    """The sweep's name (the report's title; the W&B project or MLflow experiment)."""
    output_dir: str = Field(min_length=1)
    """The sweep folder: plan, shards, modules, results and report (relative to where the command runs)."""
    models_dir: str = "models"
    """Where embedded hosts are built and looked up."""
    hosts: list[Host] = Field(min_length=2)
    """The hosts (at least two); see *Host* below."""
    host_pairs: list[Pair] = Field(min_length=1)
    """Pairs ``[origin, receiving]`` of host names (two hosts of the same shape): modules trained on the first are
    ported into the second."""
    both_directions: bool = True
    """Also port every pair the other way (receiving -> origin)."""
    datasets: list[Dataset] = Field(min_length=1)
    """The datasets; see *Dataset* below."""
    techniques: list[str] = Field(min_length=1)
    """PEFT techniques to train and port: ``lora``, ``bottleneck``, ``compacter``, ``prefix`` (the study's four),
    ``prompt``, ``ia3``."""
    technique_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per technique, its hyperparameters (see *Technique parameters* below) plus ``lr`` and ``steps``; a list makes
    a grid axis (one set of runs per value)."""
    conditions: list[Literal[CONDITIONS]] = Field(min_length=1)
    """What the receiving host gets (``pipeline/conditions.py``): ``ported`` (the origin module, bit-exact),
    ``scratch`` (the technique's fresh init), ``sampled`` (each tensor redrawn from its own mean and std),
    ``no-module`` (the bare host)."""
    regimes: list[int | Literal["zero-shot"]] = Field(min_length=1)
    """Budgets on the receiving host: ``zero-shot`` (evaluate as loaded) or a number of further-training steps."""
    seeds: list[int] = Field(min_length=1)
    """Seeds: each trains its own origin module and seeds every stage-2 run made from it."""
    head: Literal[HEADS] = "free"
    """Where a classification host's task knowledge sits: ``free`` (no head: classes scored by the adapted host's
    similarity to the label words, all knowledge in the module) or ``trained`` (a classification head trained with
    the module and given to every condition alike)."""
    temperature: Float = Field(default=20.0, gt=0)
    """head: free -- the fixed scale of the cosine class scores."""
    class_bias: bool = Field(default=True)
    """head: free -- add a trainable per-class bias to the scores; it is part of the module (ported and sampled with
    it)."""
    port_head: bool = Field(default=True)
    """head: trained -- give every stage-2 condition the ported head; false: the same seeded fresh head."""
    evaluate_on: Literal["eval", "dev"] = Field(default="eval")
    """The split runs are scored on: ``eval`` (the study) or ``dev`` (tuning sweeps; needs ``dev_size``)."""
    origin_training: Training = Training()
    """How stage 1 trains each module on its origin host; see *Training* below."""
    further_training: Training = Training()
    """How stage 2 trains at each budget of ``regimes`` (its ``steps`` is unused: the budget is)."""
    resources: Stages = Stages()
    """Slurm resources per stage; see *Resources* below."""
    tracking: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=lambda: ["tensorboard"])
    """Where training curves go: TensorBoard events under ``<sweep>/tb``, W&B, MLflow (the last two when installed);
    ``[]``: off. Not part of run ids."""
    max_runs: int = Field(default=MAX_RUNS, gt=0, exclude_if=lambda v: v == MAX_RUNS)
    """A grid over this many runs is refused before it is expanded (raise it to mean it)."""

    @field_validator("techniques")
    @classmethod
    def _known_techniques(cls, v: list[str]) -> list[str]:
        for i, t in enumerate(v):
            if t not in techniques.REGISTRY:
                raise _ItemError(i, f"unknown technique {t!r}{_did_you_mean(t, techniques.known())} "
                                 f"(known: {', '.join(techniques.known())})")
        return _unique(v)

    @field_validator("regimes", mode="before")
    @classmethod
    def _regimes(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        for i, r in enumerate(v):  # a step count, never text or true/false
            if r != ZERO_SHOT and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
                raise _ItemError(i, f"a budget must be zero-shot or a step count >= 0, got {r!r}")
        return _unique([0 if r == ZERO_SHOT else r for r in v])

    @field_validator("seeds", "conditions")
    @classmethod
    def _no_duplicates(cls, v: list) -> list:
        return _unique(v)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Spec":
        names = [h.name for h in self.hosts]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise _PathError(f"hosts[{i}].name", f"duplicate host name {n!r}")
            if self.hosts[i].chat_template and self.hosts[i].task != "causal-lm":
                raise _PathError(f"hosts[{i}].chat_template", "chat_template applies to causal-lm hosts only")
        for i, (a, b) in enumerate(self.host_pairs):
            for j, h in enumerate((a, b)):
                if h not in names:
                    raise _PathError(f"host_pairs[{i}][{j}]", f"unknown host {h!r}{_did_you_mean(h, names)} "
                                     f"(hosts: {', '.join(names)})")
            if a == b:
                raise _PathError(f"host_pairs[{i}]", f"origin and receiving host are the same ({a!r})")
            if self.host(a).task != self.host(b).task:
                raise _PathError(f"host_pairs[{i}]", f"hosts {a!r} and {b!r} have different tasks")
            if self.host(a).chat_template != self.host(b).chat_template:
                raise _PathError(f"host_pairs[{i}]", f"hosts {a!r} and {b!r} differ in chat_template: the two hosts "
                                 "of a pair must see the same text")
        ds = [d.name for d in self.datasets]
        for i, n in enumerate(ds):
            if ds.index(n) != i:
                raise _PathError(f"datasets[{i}].name", f"duplicate dataset name {n!r}")
        for t, params in self.technique_params.items():
            if t not in techniques.REGISTRY:
                raise _PathError(_format_loc(("technique_params", t)),
                                 f"unknown technique{_did_you_mean(t, techniques.known())} "
                                 f"(known: {', '.join(techniques.known())})")
            declared = techniques.get(t)
            for k, v in params.items():
                problem = declared.check(k, v)
                if problem:
                    raise _PathError(_format_loc(("technique_params", t, k)), problem)
            for k in GRID_KEYS:
                v = params.get(k)
                vals = v if isinstance(v, list) else [v]
                if v is None:
                    continue
                bad = [x for x in vals if isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0
                       or (k == "steps" and not isinstance(x, int))]
                if bad or not vals:
                    what = "a positive integer" if k == "steps" else "a positive number"
                    raise _PathError(f"technique_params.{t}.{k}", f"must be {what} or a list of them, got {v!r}")
        for i, d in enumerate(self.datasets if self.evaluate_on == "dev" else []):
            if not d.dev_size:
                raise _PathError(f"datasets[{i}].dev_size", "evaluate_on: dev needs a development split (dev_size > 0)")
        if len(self.directed_pairs()) != len(set(self.directed_pairs())):
            raise _PathError("host_pairs", "the same origin -> receiving pair appears twice "
                             "(both_directions already adds the reverse)")
        return self

    @model_validator(mode="after")
    def _grid_size(self) -> "Spec":
        """Refuse a grid over ``max_runs`` from the product of its axes, before anything expands it."""
        import math

        variants = sum(math.prod(len(v) for k in GRID_KEYS if isinstance(v := self.params_for(t).get(k), list))
                       for t in self.techniques)
        stage1 = variants * len(self.directed_pairs()) * len(self.datasets) * len(self.seeds)
        total = stage1 * (1 + len(self.conditions) * len(self.regimes))
        if total > self.max_runs:
            raise _PathError("max_runs", f"the grid has {total:,} runs ({stage1:,} stage-1 runs x (1 + "
                             f"{len(self.conditions)} conditions x {len(self.regimes)} regimes)), over max_runs "
                             f"{self.max_runs:,}; shrink an axis, or raise max_runs (--set max_runs={total}) "
                             "if you mean it")
        return self

    # -- derived views -------------------------------------------------------------
    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def directed_pairs(self) -> list[tuple[str, str]]:
        pairs = [tuple(p) for p in self.host_pairs]
        if self.both_directions:
            pairs += [(b, a) for a, b in pairs]
        return pairs

    def params_for(self, technique: str) -> dict[str, Any]:
        return {**techniques.get(technique).defaults, **self.technique_params.get(technique, {})}

    def variants_for(self, technique: str) -> list[tuple[str | None, dict[str, Any]]]:
        """The technique's params, one ``(label, params)`` per point of its grid: ``lr`` and ``steps`` may
        be lists (a tuning sweep) and every combination becomes its own set of runs, labelled by the keys
        that vary (``'lr=0.003 steps=100'``); without a grid, one point labelled None."""
        import itertools

        base = self.params_for(technique)
        keys = [k for k in GRID_KEYS if isinstance(base.get(k), list)]
        if not keys:
            return [(None, base)]
        return [(" ".join(f"{k}={v:g}" for k, v in zip(keys, combo)), {**base, **dict(zip(keys, combo))})
                for combo in itertools.product(*[base[k] for k in keys])]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


class _PathError(ValueError):
    def __init__(self, path: str, msg: str):
        super().__init__(msg); self.path, self.msg = path, msg  # noqa: E702


class _KeyError(ValueError):
    def __init__(self, key: Any, msg: str):
        super().__init__(msg); self.key, self.msg = key, msg  # noqa: E702


class _ItemError(ValueError):
    def __init__(self, index: int, msg: str):
        super().__init__(msg); self.index, self.msg = index, msg  # noqa: E702


def _unique(v: list) -> list:
    seen = set()
    for i, x in enumerate(v):
        if x in seen:
            raise _ItemError(i, f"duplicate value {x!r}")
        seen.add(x)
    return v


def _did_you_mean(word: str, choices) -> str:
    m = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _fields_of(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names allowed at a location (for unknown-key messages)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or cur is None:
            continue
        f = getattr(cur, "model_fields", {}).get(part)
        if f is None:
            return []
        ann = f.annotation
        args = getattr(ann, "__args__", ()) or ()
        cur = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(getattr(cur, "model_fields", {}) or [])


def _renamed(errors: list[dict], loc: tuple) -> str:
    """For a missing key at ``loc``: ' (did you mean to rename 'KEY'?)' when an unknown key beside it is close."""
    unknown = [str(e["loc"][-1]) for e in errors
               if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == tuple(loc[:-1])]
    m = difflib.get_close_matches(str(loc[-1]), unknown, n=1)
    return f" (did you mean to rename {m[0]!r}?)" if m else ""


def _first_error(e: ValidationError) -> str:
    errors = e.errors(include_url=False)
    err = errors[0]
    # pydantic adds its own tags to a location ('function-after[...]', 'list[...]'); a key the user wrote
    # (the last part of an unknown-key error) stays, whatever characters it holds
    *parents, last = err["loc"] or ("",)
    tag = lambda p: isinstance(p, str) and ("[" in p or p.startswith("function-"))
    loc = tuple(p for p in parents if not tag(p)) + (() if tag(last) and err["type"] != "extra_forbidden" else (last,))
    ctx = err.get("ctx") or {}
    exc = ctx.get("error")
    if isinstance(exc, _PathError):
        return f"{exc.path}: {exc.msg}"
    if isinstance(exc, _ItemError):
        return f"{_format_loc(loc)}[{exc.index}]: {exc.msg}"
    if isinstance(exc, _KeyError):
        return f"{_format_loc(loc + (exc.key,))}: {exc.msg}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _fields_of(Spec, loc)
        key = loc[-1]
        return f"{_format_loc(loc)}: unknown key{_did_you_mean(str(key), allowed)} (allowed: {', '.join(allowed)})"
    if err["type"] == "too_short" and err.get("input") in ([], {}, ()):
        return f"{_format_loc(loc)}: must not be empty"
    if err["type"] == "missing":
        return f"{_format_loc(loc)}: required field is missing{_renamed(errors, err['loc'])}"
    if err["type"] == "literal_error":
        return f"{_format_loc(loc)}: {err['input']!r} is not allowed ({msg.removeprefix('Input should be ')})"
    return f"{_format_loc(loc)}: {msg} (got {err.get('input')!r})"


def parse(data: Any, source: str = "<spec>") -> Spec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a YAML mapping, got {type(data).__name__}")
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: {_first_error(e)}") from None


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """The spec in ``path`` with ``overrides`` (``--set KEY=VALUE``) applied, validated as one: an
    error in a field an override set names that override (``--set seeds=[x]: seeds[0]: ...``)."""
    from .overrides import apply_overrides, override_for

    data = read_yaml(path)
    if not overrides:
        return parse(data, str(path))
    data = apply_overrides(data, overrides)
    if not isinstance(data, dict):
        return parse(data, str(path))
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        msg = _first_error(e)
    culprit = override_for(msg, overrides)
    if culprit is not None:
        raise SpecError(f"--set {culprit}: {msg}")
    raise SpecError(f"{path} (with {', '.join('--set ' + o for o in overrides)}): {msg}")
