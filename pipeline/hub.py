"""Which hosts and datasets of a spec come from the Hugging Face hub, and the jobs' offline mode.

Compute nodes often have no internet.  Jobs therefore run with ``OFFLINE_ENV`` (set in every sbatch
script, ``pipeline.launch.layout.sbatch_params``) and load hub names from the HF cache only; the login
node fills that cache (``pipeline fetch SPEC``, and ``pipeline sweep`` before it submits: see
``pipeline.run.fetch``).  Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
EMBEDDED = "embedded:"
DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")  # local data files (pipeline.run.data)


def is_hub_host(model: str) -> bool:
    """A host name that is neither ``embedded:`` nor an existing local path: a hub repo id."""
    return not model.startswith(EMBEDDED) and not Path(model).exists()


def is_hub_dataset(source: str) -> bool:
    """A dataset source that is neither ``embedded:`` nor a local data file (or folder)."""
    return not source.startswith(EMBEDDED) and Path(source).suffix not in DATA_SUFFIXES and not Path(source).exists()


def hub_hosts(spec) -> dict[str, str]:
    """Host name -> hub repo id, for the spec's hosts that come from the hub."""
    return {h.name: h.model for h in spec.hosts if is_hub_host(h.model)}


def hub_datasets(spec) -> dict[str, tuple[str, list[str], str | None]]:
    """Dataset name -> (hub repo id, the splits the runs load, the spec's ``revision`` or None), for the spec's
    hub datasets."""
    return {d.name: (d.source, [d.train_split] + ([d.eval_split] if d.eval_split else []), d.revision)
            for d in spec.datasets if is_hub_dataset(d.source)}


def hub_off() -> str | None:
    """``"HF_HUB_OFFLINE=1"`` (the variable, as set) when this process is told to keep off the hub, else None:
    then nothing is downloaded here, and a name missing from the cache is refused at once."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        value = os.environ.get(var, "")
        if value.strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={value}"
    return None


def cache_dir() -> Path:
    """The HF hub cache the libraries use (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"
