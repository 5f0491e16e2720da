"""Expand a spec into runs: a two-stage DAG with content-hashed run ids.

Stage 1 trains each module on its origin host (technique x origin x dataset x
seed).  Stage 2 runs on the receiving host (x condition x regime); ``ported``
and ``sampled`` runs need their stage-1 module, ``scratch`` runs need nothing.
A run id is a short hash of everything that affects the run's result, so it
is stable under key order and changes when any such field changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .spec import Spec

ID_LEN = 12
EVAL_FIELDS = ("max_length", "eval_batch_size", "precision")  # what a zero-shot run uses of further_training


def run_id(key: dict[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_LEN]


@dataclass(frozen=True)
class Run:
    run_id: str
    stage: int
    key: dict[str, Any]  # what the id hashes: everything that affects the result
    labels: dict[str, Any]  # names for tables (host/dataset names), not hashed
    needs: str | None = None  # stage-1 run id whose module this run loads
    origin_run: str | None = None  # the stage-1 run this run is paired with

    def row(self) -> dict[str, Any]:
        """Flat columns for plan files and shards."""
        k = self.key
        return {
            "run_id": self.run_id,
            "stage": self.stage,
            "technique": k["technique"],
            "origin_host": self.labels["origin_host"],
            "receiving_host": self.labels.get("receiving_host"),
            "host_pair": self.labels["host_pair"],
            "dataset": self.labels["dataset"],
            "seed": k["seed"],
            "condition": k.get("condition"),
            "regime": k.get("regime"),
            "needs": self.needs,
            "origin_run": self.origin_run,
            "config_json": json.dumps(k, sort_keys=True, default=str),
        }


@dataclass
class Plan:
    spec: Spec
    stage1: list[Run] = field(default_factory=list)
    stage2: list[Run] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return self.stage1 + self.stage2

    def by_id(self) -> dict[str, Run]:
        return {r.run_id: r for r in self.runs}


def build(spec: Spec) -> Plan:
    plan = Plan(spec)
    stage1: dict[tuple, Run] = {}
    ft = spec.further_training.model_dump()
    ot = spec.origin_training.model_dump()
    for technique in spec.techniques:
        params = spec.params_for(technique)
        for origin_name, recv_name in spec.directed_pairs():
            origin, recv = spec.host(origin_name), spec.host(recv_name)
            pair = f"{origin_name}->{recv_name}"
            for ds in spec.datasets:
                dsd = ds.model_dump(mode="json", exclude={"name"})
                for seed in spec.seeds:
                    k1 = (technique, origin_name, ds.name, seed)
                    if k1 not in stage1:
                        key = {"stage": 1, "technique": technique, "params": params,
                               "host": origin.model, "task": origin.task, "dataset": dsd,
                               "seed": seed, "training": ot}
                        labels = {"origin_host": origin_name, "host_pair": origin_name, "dataset": ds.name}
                        stage1[k1] = Run(run_id(key), 1, key, labels)
                    s1 = stage1[k1]
                    for condition in spec.conditions:
                        for regime in spec.regimes:
                            key = {"stage": 2, "origin": s1.run_id, "host": recv.model, "task": recv.task,
                                   "technique": technique, "params": params, "dataset": dsd, "seed": seed,
                                   "condition": condition, "regime": regime,
                                   "training": ft if regime else {k: ft[k] for k in EVAL_FIELDS},
                                   "port_head": spec.port_head if condition != "scratch" else None}
                            labels = {"origin_host": origin_name, "receiving_host": recv_name,
                                      "host_pair": pair, "dataset": ds.name}
                            needs = s1.run_id if condition != "scratch" else None
                            plan.stage2.append(Run(run_id(key), 2, key, labels, needs, s1.run_id))
    plan.stage1 = list(stage1.values())
    ids = [r.run_id for r in plan.runs]
    if len(ids) != len(set(ids)):  # pragma: no cover - would need a hash collision
        raise RuntimeError("run id collision")
    return plan
