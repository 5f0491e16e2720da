"""Expand a spec into runs: a two-stage DAG with content-hashed run ids.

Stage 1 trains each module on its origin host (technique x origin x dataset x
seed).  Stage 2 runs on the receiving host (x condition x regime); what each
condition loads, and so which stage-1 run it needs, is declared in
``pipeline/conditions.py`` (under ``head: free``, ``no-module`` has nothing to
train and is planned at zero-shot only).
A run id is a short hash of everything that affects the run's result, so it
is stable under key order and changes when any such field changes: the
technique and its params, the data and its split recipe, the seed, the
training settings that change numbers, and each host's *identity* -- the
fingerprint of its config and weights (``hosts.fingerprint``) and its
pooling -- so a rebuilt host or another ``models_dir`` never reuses old
results.  Settings that do not change a result (``checkpoint_every``, ``gradient_checkpointing``,
``eval_batch_size``; a zero-shot run's training budget) are carried in
``settings`` instead, outside the hash.

A host that is not available on this machine yet (a hub name not fetched, an
embedded host not built) has no fingerprint: its runs get provisional ids
(``unresolved``) and ``Plan.unresolved`` names it.  ``run`` and ``sweep``
build or fetch every host before planning, so the ids they record are final.

Ids also see what the spec cannot: the *content* of the data and the host's
tokenizer (``pipeline.dataid``).  Each dataset's key carries ``content`` (the
sha256 of a local file or folder or of an embedded corpus' file; a hub
dataset's resolved commit), and each host's key its tokenizer files' hash (a
hub host: the commit its name resolves to in the HF cache).  A data file
edited in place, a new revision of a hub dataset or changed tokenizer files
therefore plan new runs; the old shards keep their old ids (other runs, not
lost, never counted as this plan's).  File hashes are cached by (path, size,
mtime), so planning stays fast.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conditions import CONDITIONS, FREE, TRAINED
from .devices import device_kind
from .errors import SpecError
from .spec import Spec
from .techniques.base import CLASSIFICATION, TRAINING_KEYS

ID_LEN = 12
EVAL_FIELDS = ("max_length", "precision", "device", "frozen_dtype")  # what a zero-shot run's result depends on of
# further_training (frozen_dtype only when set: the spec leaves out its default fp32, so fp32 ids are unchanged)
SETTINGS = ("checkpoint_every", "eval_batch_size", "gradient_checkpointing")  # settings that never change a result
SPLIT_VERSION = 2  # in every run id: 2 = deduplicated, stratified, disjoint splits (pipeline.run.data)
UNRESOLVED = "unresolved"
VARYING2 = ("condition", "origin", "regime", "seed", "training")  # of a stage-2 key, within a dataset
# The columns of plan.parquet (``Run.row``) besides the run's full config and settings (JSON).
PLAN_COLUMNS = ("run_id", "stage", "technique", "origin_host", "receiving_host", "host_pair", "dataset", "variant",
                "seed", "condition", "regime", "needs", "origin_run")


def host_identities(spec: Spec) -> dict[str, dict[str, Any]]:
    """Each host's identity from files on this machine, without building or importing torch:
    ``{name: {model, path, fingerprint, pooling}}``; fingerprint None when the host is not here."""
    from . import dataid, hosts
    from .hub import is_hub_host

    out = {}
    for h in spec.hosts:
        d = hosts.local_host_dir(h.model, Path(spec.models_dir))
        pooling = None
        if h.task == "classification":
            pooling = h.pooling if h.pooling != "auto" else (hosts.default_pooling(d) if d else "auto")
        out[h.name] = {"model": h.model, "path": str(d) if d else None,
                       "fingerprint": hosts.fingerprint(d) if d else None, "pooling": pooling,
                       "tokenizer": dataid.tokenizer_identity(d) if d else None}
        if d is None and is_hub_host(h.model):  # the commit the name resolves to in the HF cache (None: not there)
            out[h.name]["revision"] = dataid.hub_revision(h.model, "model")
        if h.chat_template:  # causal-lm: inputs wrapped in the chat template (absent otherwise: ids unchanged)
            out[h.name]["chat_template"] = True
    dataid.save_cache()
    return out


def data_identities(spec: Spec) -> dict[str, dict[str, Any]]:
    """Each dataset's content identity (``pipeline.dataid.dataset_identity``), by dataset name; torch-free."""
    from . import dataid

    out = {ds.name: dataid.dataset_identity(ds.source, ds.revision) for ds in spec.datasets}
    dataid.save_cache()
    return out


def _norm(value: Any) -> Any:
    """Numerically equal values hash equally: a float with an integer value is the integer (16.0 -> 16)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def _canon(value: Any) -> str:
    return json.dumps(_norm(value), sort_keys=True, separators=(",", ":"), default=str)


def run_id(key: dict[str, Any]) -> str:
    """sha256 of the key's canonical JSON (sorted keys, no spaces), first ID_LEN hex digits."""
    return hashlib.sha256(_canon(key).encode()).hexdigest()[:ID_LEN]


class IdMaker:
    """``run_id`` for many keys that share their nested values (the same dataset, host, params and training
    dicts, by identity): each distinct value is encoded once and a key's canonical JSON is joined from the
    encoded pieces -- the very text ``json.dumps(key, sort_keys=True, ...)`` gives, so the ids are exactly
    ``run_id``'s (tests/test_plan.py checks both, and a committed list of ids).  Planning 100,000 runs spent
    80 % of its time re-encoding those shared dicts."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, str]] = {}  # id(dict/list) -> (the object, kept alive; its JSON)
        self._by_value: dict[tuple[type, Any], str] = {}
        self._order: dict[frozenset, list[tuple[str, str]]] = {}  # key names -> sorted (name, '"name":')

    def _enc(self, v: Any) -> str:
        if isinstance(v, (dict, list)):
            hit = self._by_id.get(id(v))
            if hit is None:
                hit = self._by_id[id(v)] = (v, _canon(v))
            return hit[1]
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        try:
            k = (type(v), v)
            s = self._by_value.get(k)
            if s is None:
                s = self._by_value[k] = _canon(v)
            return s
        except TypeError:  # unhashable, not a dict or list
            return _canon(v)

    def __call__(self, key: dict[str, Any]) -> str:
        names = frozenset(key)
        order = self._order.get(names)
        if order is None:
            order = self._order[names] = [(k, _canon(str(k)) + ":") for k in sorted(key)]
        enc = self._enc
        blob = "{" + ",".join(head + enc(key[k]) for k, head in order) + "}"
        return hashlib.sha256(blob.encode()).hexdigest()[:ID_LEN]

    def template(self, fixed: dict[str, Any], varying: tuple[str, ...]):
        """A function of the *encoded* varying values (``self.encode(v)``, in ``varying`` order) giving the id
        of ``{**fixed, **dict(zip(varying, values))}``: the fixed part is encoded once, here."""
        segs, slots, cur = [], [], "{"
        for i, k in enumerate(sorted([*fixed, *varying])):
            cur += ("," if i else "") + _canon(str(k)) + ":"
            if k in fixed:
                cur += self._enc(fixed[k])
            else:
                segs.append(cur)
                slots.append(varying.index(k))
                cur = ""
        segs.append(cur + "}")
        pairs = list(zip(segs[1:], slots))
        head, sha = segs[0], hashlib.sha256

        def make(*values: str) -> str:
            blob = head + "".join(values[slot] + seg for seg, slot in pairs)
            return sha(blob.encode()).hexdigest()[:ID_LEN]

        return make

    encode = _enc


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    stage: int
    key: dict[str, Any]  # what the id hashes: everything that affects the result
    labels: dict[str, Any]  # names for tables (host/dataset names), not hashed
    needs: str | None = None  # stage-1 run id whose module this run loads
    origin_run: str | None = None  # the stage-1 run this run is paired with
    settings: dict[str, Any] = field(default_factory=dict)  # execution settings, not hashed

    def row(self) -> dict[str, Any]:
        """Flat columns for plan files and shards: PLAN_COLUMNS, config_json, settings_json."""
        k = self.key
        return {
            "run_id": self.run_id,
            "stage": self.stage,
            "technique": k["technique"],
            "origin_host": self.labels["origin_host"],
            "receiving_host": self.labels.get("receiving_host"),
            "host_pair": self.labels["host_pair"],
            "dataset": self.labels["dataset"],
            "variant": self.labels.get("variant"),
            "seed": k["seed"],
            "condition": k.get("condition"),
            "regime": k.get("regime"),
            "needs": self.needs,
            "origin_run": self.origin_run,
            "config_json": json.dumps(k, sort_keys=True, default=str),
            "settings_json": json.dumps(self.settings, sort_keys=True, default=str),
        }


@dataclass
class Plan:
    spec: Spec
    stage1: list[Run] = field(default_factory=list)
    stage2: list[Run] = field(default_factory=list)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # host_identities()
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # data_identities()

    @property
    def unresolved(self) -> list[str]:
        """Hosts not available here (no fingerprint, nor a hub commit in the HF cache): their runs' ids are
        provisional."""
        return [n for n, h in self.hosts.items() if not h.get("fingerprint") and not h.get("revision")]

    @property
    def unresolved_data(self) -> list[str]:
        """Datasets whose content is not known here (a hub dataset not in the HF cache): provisional ids."""
        return [n for n, d in self.data.items() if UNRESOLVED in d.values()]

    @property
    def runs(self) -> list[Run]:
        return self.stage1 + self.stage2

    def by_id(self) -> dict[str, Run]:
        return {r.run_id: r for r in self.runs}


def _host_key(info: dict[str, Any]) -> dict[str, Any]:
    chat = {"chat_template": True} if info.get("chat_template") else {}
    # a hub host: the commit its name resolves to (config, weights and tokenizer alike)
    rev = {"revision": info.get("revision") or UNRESOLVED} if "revision" in info else {}
    return {"model": info["model"], "fingerprint": info.get("fingerprint") or UNRESOLVED, "pooling": info.get("pooling"),
            "tokenizer": info.get("tokenizer") or UNRESOLVED, **rev, **chat}


def _check_poolings(spec: Spec, hosts: dict[str, dict[str, Any]], source: str) -> None:
    for i, (a, b) in enumerate(spec.host_pairs):
        pa, pb = hosts[a].get("pooling"), hosts[b].get("pooling")
        if "auto" not in (pa, pb) and pa != pb:
            raise SpecError(f"{source}: host_pairs[{i}]: hosts {a!r} and {b!r} pool differently ({pa} vs {pb}); a ported "
                            "head would read another vector -- set the same `pooling:` on both hosts")


def _formulation(spec: Spec, task: str) -> dict[str, Any]:
    """What the run ids carry of the head formulation (pipeline/conditions.py): text-to-text hosts are always
    head-free; a classification host's ``head``, and the settings that shape its scores or its head; a tuning
    sweep's ``evaluate_on: dev``."""
    head = spec.head if task == CLASSIFICATION else FREE
    out: dict[str, Any] = {"head": head}
    if task == CLASSIFICATION and head == FREE:
        out.update({"temperature": spec.temperature, "class_bias": spec.class_bias})
    if head == TRAINED:
        out["port_head"] = spec.port_head
    if spec.evaluate_on == "dev":
        out["evaluate_on"] = "dev"
    return out


def resolve_precision(training: dict[str, Any], resources, name: str, source: str = "<spec>") -> dict[str, Any]:
    """A stage's training settings as hashed: ``precision: auto`` replaced by what its runs use (bf16 where the
    stage's resources request a GPU, else fp32) and the device kind added (``device``: cuda/cpu), so a GPU-bf16
    result and a CPU-fp32 one never share a run id (``resume`` cannot mix them).  The runner checks the
    hardware against both and refuses what it cannot honour (pipeline.run.train.resolve_device)."""
    device = device_kind(resources)
    precision = training["precision"]
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    if training.get("frozen_dtype") == "bf16" and precision != "bf16":
        raise SpecError(f"{source}: {name}.frozen_dtype: bf16 frozen weights need bf16 precision, and this stage "
                        f"resolves to {precision} on {device} (request a GPU in its resources, or drop frozen_dtype)")
    return {**training, "precision": precision, "device": device}


def build(spec: Spec, hosts: dict[str, dict[str, Any]] | None = None, source: str = "<spec>",
          data: dict[str, dict[str, Any]] | None = None) -> Plan:
    """The plan of ``spec``; ``hosts`` (``host_identities``) and ``data`` (``data_identities``) are read from this
    machine when not given.  ``source`` (the spec's file) starts the message of a SpecError."""
    hosts = hosts if hosts is not None else host_identities(spec)
    data = data if data is not None else data_identities(spec)
    _check_poolings(spec, hosts, source)
    plan = Plan(spec, hosts=hosts, data=data)
    stage1: dict[tuple, Run] = {}
    make_id = IdMaker()
    enc = make_id.encode
    conds = [(c, enc(c), CONDITIONS[c]) for c in spec.conditions]
    ft = resolve_precision(spec.further_training.model_dump(), spec.resources.stage2, "further_training", source)
    ot = resolve_precision(spec.origin_training.model_dump(), spec.resources.stage1, "origin_training", source)
    if "prefix" in spec.techniques and (ot.get("gradient_checkpointing") or ft.get("gradient_checkpointing")):
        raise SpecError(f"{source}: gradient_checkpointing cannot be used with prefix (checkpointed layers drop "
                        "the prefix's key/values): turn it off, or plan prefix in a spec of its own")
    settings1 = {k: ot[k] for k in SETTINGS if k in ot}
    settings2 = {k: ft[k] for k in SETTINGS if k in ft}
    ft_train = {k: v for k, v in ft.items() if k not in SETTINGS and k != "steps"}
    ft_eval = {k: ft[k] for k in EVAL_FIELDS if k in ft}
    ot_train = {k: v for k, v in ot.items() if k not in SETTINGS}
    for technique, (variant, params) in ((t, v) for t in spec.techniques for v in spec.variants_for(t)):
        # lr and steps are training settings: hashed once, resolved, in the training dicts (so `--set
        # lora.steps=100` = the default budget plans the same ids); the module's own params stay in `params`
        module_params = {k: v for k, v in params.items() if k not in TRAINING_KEYS}
        training1 = {**ot_train, "steps": params.get("steps", ot["steps"]), "lr": ot_train["lr"] or params["lr"]}
        regs = [(r, enc(r), tr, enc(tr)) for r in spec.regimes
                for tr in [{**ft_train, "lr": ft_train["lr"] or params["lr"]} if r else ft_eval]]
        for origin_name, recv_name in spec.directed_pairs():
            origin, recv = spec.host(origin_name), spec.host(recv_name)
            pair = f"{origin_name}->{recv_name}"
            recv_host = _host_key(hosts[recv_name])
            origin_host = _host_key(hosts[origin_name])
            form = _formulation(spec, origin.task)
            for ds in spec.datasets:
                dsd = {**ds.model_dump(mode="json", exclude={"name"}), "split_version": SPLIT_VERSION,
                       "content": data[ds.name]}
                id2 = make_id.template({"stage": 2, "host": recv_host, "task": recv.task, "technique": technique,
                                        "params": module_params, "dataset": dsd, **form}, VARYING2)
                for seed in spec.seeds:
                    k1 = (technique, variant, origin_name, ds.name, seed)
                    if k1 not in stage1:
                        key = {"stage": 1, "technique": technique, "params": module_params,
                               "host": origin_host, "task": origin.task, "dataset": dsd,
                               "seed": seed, "training": training1, **form}
                        labels = {"origin_host": origin_name, "host_pair": origin_name, "dataset": ds.name,
                                  "variant": variant}
                        stage1[k1] = Run(make_id(key), 1, key, labels, settings=settings1)
                    s1 = stage1[k1]
                    labels2 = {"origin_host": origin_name, "receiving_host": recv_name, "host_pair": pair,
                               "dataset": ds.name, "variant": variant}  # shared by the seed's stage-2 runs
                    e_origin, e_seed = enc(s1.run_id), enc(seed)
                    for condition, e_cond, cond in conds:
                        needs = s1.run_id if cond.needs_stage1(form["head"], spec.port_head) else None
                        for regime, e_regime, training, e_training in regs:
                            if regime and not cond.trains(form["head"]):
                                continue  # nothing to train: planned at zero-shot only
                            key = {"stage": 2, "origin": s1.run_id, "host": recv_host,
                                   "task": recv.task, "technique": technique, "params": module_params,
                                   "dataset": dsd, "seed": seed, "condition": condition, "regime": regime,
                                   "training": training, **form}
                            rid = id2(e_cond, e_origin, e_regime, e_seed, e_training)
                            plan.stage2.append(Run(rid, 2, key, labels2, needs, s1.run_id, settings2))
    plan.stage1 = list(stage1.values())
    ids = [r.run_id for r in plan.runs]
    if len(ids) != len(set(ids)):  # pragma: no cover - would need a hash collision
        raise RuntimeError("run id collision")
    return plan


def ensure_hosts(spec: Spec) -> None:
    """Build the embedded hosts the spec uses that are not built yet (before workers start or jobs are
    submitted: one build, with progress, and run ids that carry the built hosts' fingerprints)."""
    from .hosts import resolve_host

    for h in spec.hosts:
        if h.model.startswith("embedded:"):
            resolve_host(h.model, Path(spec.models_dir))


# ---------------------------------------------------------------- the dry run's tables
SHOWN = ("run_id", "stage", "technique", "host_pair", "dataset", "seed", "condition", "regime", "needs")  # of PLAN_COLUMNS


def print_plan(console, spec: Spec, plan: Plan, sweep, rows: int = 8) -> None:
    """The axes of the spec and the first ``rows`` runs of each stage (``pipeline plan``)."""
    from rich.table import Table

    console.print(f"[bold]{spec.name}[/bold] (spec {spec.digest()}): "
                  f"{len(plan.stage1)} stage-1 runs (origin training) + {len(plan.stage2)} stage-2 runs "
                  f"(receiving host) = {len(plan.runs)}")
    axes = Table(title="axes", show_header=True)
    axes.add_column("axis")
    axes.add_column("values")
    axes.add_row("techniques", ", ".join(spec.techniques))
    axes.add_row("host pairs", ", ".join(f"{a}->{b}" for a, b in spec.directed_pairs()))
    axes.add_row("datasets", ", ".join(d.name for d in spec.datasets))
    axes.add_row("conditions", ", ".join(spec.conditions))
    axes.add_row("regimes", ", ".join("zero-shot" if r == 0 else f"{r} steps" for r in spec.regimes))
    axes.add_row("seeds", ", ".join(map(str, spec.seeds)))
    console.print(axes)
    for stage, runs in ((1, plan.stage1), (2, plan.stage2)):
        t = Table(title=f"stage {stage}: first {min(rows, len(runs))} of {len(runs)} runs")
        for c in SHOWN:
            t.add_column(c)
        for r in runs[:rows]:
            row = r.row()
            t.add_row(*["" if row[c] is None else str(row[c]) for c in SHOWN])
        console.print(t)
    done = sweep.done_ids() if sweep.root.exists() else set()
    console.print(f"results go to {sweep.root}/ (shards/, modules/, results.parquet); "
                  f"{len(done & {r.run_id for r in plan.runs})} of {len(plan.runs)} runs already have a shard")
