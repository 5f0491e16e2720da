"""The sweep folder: where a spec's plan, modules, shards and logs live.

    <output_dir>/
      spec.yaml  sweep.json  plan.parquet     what was asked, when, by which code
      modules/<run_id>/module.safetensors    stage-1 modules (+ module.json, checksum)
      hosts.json                             each host's path, fingerprint, tokenizer, pooling, build_info
      data.json                              each dataset's content identity when planned (pipeline.dataid)
      shards/<run_id>.parquet                one result row per finished run
      preds/<run_id>.parquet                 its per-example predictions (written before the shard)
      errors/<run_id>.txt                    last error of a failed run
      ckpt/<run_id>.pt                       training checkpoints (preemption)
      jobs.jsonl  submitit/                  submitted jobs and their logs
      results.parquet  quarantine/           merged results, shards moved aside
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from . import plan as planmod
from . import spec as specmod
from .errors import DataError, UsageError
from .files import atomic_path, atomic_write


@dataclass
class Sweep:
    root: Path

    @classmethod
    def for_spec(cls, spec: specmod.Spec) -> "Sweep":
        return cls(Path(spec.output_dir))

    @classmethod
    def of(cls, target: str | Path) -> "Sweep":
        """The sweep a command's TARGET names: a sweep folder, or a spec file (its ``output_dir``)."""
        p = Path(target)
        if p.is_dir():
            if not (p / "plan.parquet").exists():
                raise UsageError(f"{p}: not a sweep folder (no plan.parquet); pass a spec or run the sweep first")
            return cls(p)
        return cls.for_spec(specmod.load(p))

    # -- paths -------------------------------------------------------------------
    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def shard(self, run_id: str) -> Path:
        return self.shards / f"{run_id}.parquet"

    def preds(self, run_id: str) -> Path:
        return self.root / "preds" / f"{run_id}.parquet"

    def module(self, run_id: str) -> Path:
        return self.root / "modules" / run_id

    def error(self, run_id: str) -> Path:
        return self.root / "errors" / f"{run_id}.txt"

    def ckpt(self, run_id: str) -> Path:
        return self.root / "ckpt" / f"{run_id}.pt"

    @property
    def results(self) -> Path:
        return self.root / "results.parquet"

    # -- spec and plan -------------------------------------------------------------
    def write(self, spec: specmod.Spec, plan: planmod.Plan, overrides: list[str] | tuple[str, ...] = ()) -> None:
        """Record the spec and its plan (idempotent: an existing plan must match).  ``spec`` is the spec
        as run, command-line ``--set`` overrides applied; they are also listed in ``sweep.json`` and at
        the top of ``spec.yaml``, so the copy alone reproduces the sweep."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / "hosts.json", json.dumps(hosts_record(plan.hosts), indent=1, sort_keys=True))
        atomic_write(self.root / "data.json", json.dumps(plan.data, indent=1, sort_keys=True))
        table = plan_table(plan)
        if (self.root / "plan.parquet").exists():
            old = set(pq.read_table(self.root / "plan.parquet", columns=["run_id"]).column("run_id").to_pylist())
            new = set(table.column("run_id").to_pylist())
            if old == new:
                return
        header = "".join(f"# --set {o}\n" for o in overrides)
        if header:
            header = "# the spec as run, with these command-line overrides applied:\n" + header
        atomic_write(self.root / "spec.yaml", header + yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        atomic_write(self.root / "sweep.json", json.dumps({
            "name": spec.name, "spec_hash": spec.digest(), "overrides": list(overrides), "code_version": code_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "runs": {"stage1": len(plan.stage1), "stage2": len(plan.stage2)}}, indent=1))
        with atomic_path(self.root / "plan.parquet") as tmp:
            pq.write_table(table, tmp)

    @cached_property
    def spec(self) -> specmod.Spec:
        return specmod.load(self.root / "spec.yaml")

    @cached_property
    def plan_rows(self) -> dict[str, dict]:
        path = self.root / "plan.parquet"
        if not path.exists():
            raise UsageError(f"{self.root}: no plan.parquet (not a sweep folder; run `pipeline sweep` first)")
        return {r["run_id"]: r for r in pq.read_table(path).to_pylist()}

    def changed_data(self) -> list[str]:
        """Datasets whose content is no longer what the recorded plan was made with (``data.json`` against
        ``pipeline.dataid`` now), as one phrase each; empty for a sweep recorded before data.json existed, or
        when a dataset cannot be identified here (a hub dataset not in this machine's cache)."""
        from .dataid import UNRESOLVED
        from .plan import data_identities

        try:
            recorded = json.loads((self.root / "data.json").read_text())
        except (OSError, ValueError):
            return []
        now = data_identities(self.spec)
        return [f"{name} ({next(d.source for d in self.spec.datasets if d.name == name)})"
                for name, want in sorted(recorded.items())
                if name in now and UNRESOLVED not in now[name].values() and UNRESOLVED not in want.values()
                and now[name] != want]

    def refuse_changed_data(self) -> None:
        """``resume``: a sweep whose data changed since planning is planned again first (its recorded run ids
        name the old data: running them on the new data would file new results under old ids)."""
        changed = self.changed_data()
        if changed:
            raise DataError(f"{self.root}: the data of {', '.join(changed)} changed since this sweep was planned, so "
                            "its planned runs no longer describe it; plan it again with `pipeline sweep SPEC` (the "
                            "changed data gets new run ids; the results already here stay under their old ids)")

    def changed_data_note(self) -> str | None:
        """``status``: one line when the data changed since planning (the states shown are the old data's)."""
        changed = self.changed_data()
        return (f"the data of {', '.join(changed)} changed since this sweep was planned: these states are the old "
                "data's runs; plan again (`pipeline run` / `pipeline sweep` with the spec) for runs on the data as it "
                "is now (new ids; these results stay)") if changed else None

    def done_ids(self) -> set[str]:
        """Run ids whose shard file exists (cheap; validation happens in status/merge)."""
        if not self.shards.exists():
            return set()
        return {e.name[:-8] for e in os.scandir(self.shards) if e.name.endswith(".parquet") and not e.name.startswith(".")}


def hosts_record(hosts: dict[str, dict]) -> dict[str, dict]:
    """``plan.hosts`` plus each built host's ``build_info.json`` (recipe, distance to its base)."""
    out = {}
    for name, h in hosts.items():
        info = None
        if h.get("path"):
            f = Path(h["path"]) / "build_info.json"
            try:
                info = json.loads(f.read_text()) if f.exists() else None
            except (OSError, ValueError):
                info = None
        out[name] = {**h, "build_info": info}
    return out


def plan_table(plan: planmod.Plan) -> pa.Table:
    return pa.Table.from_pylist([r.row() for r in plan.runs])


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the pipeline's code ('+dirty' when pipeline/ has uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--", "pipeline"], cwd=here, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
