"""``pipeline fetch SPEC``: put every hub host and hub dataset the spec names into the HF cache, then
check that each loads offline, as the jobs will load it (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``:
see ``pipeline.hub``).  ``fetch`` is the one offline check: ``pipeline sweep``, ``sweep --dry-run``,
``resume`` and ``run`` call it before they build, write or submit anything, so a name that is neither
cached nor reachable fails on the login node with one line, not in every job of the sweep.  With the hub
off here (``HF_HUB_OFFLINE=1``) nothing is downloaded and a name missing from the cache is refused at
once; a gated or private repo is refused naming ``HF_TOKEN``; ``--dry-run`` downloads nothing and only
notes what a real sweep would fetch.

Hosts: ``huggingface_hub.snapshot_download`` (the whole repo); the offline check loads the config and
tokenizer and finds the weights in the cached snapshot.  Datasets: ``datasets.load_dataset`` of each
split the runs use (which downloads and prepares it into the datasets cache); the offline check loads
the same splits.  Downloads and the check run in child processes (``python -m pipeline.run.fetch``),
the check with the offline variables set, because the libraries read them once, when imported; the
calling process (the CLI on a login node) imports none of them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from ..hub import OFFLINE_ENV, cache_dir, hub_datasets, hub_hosts, hub_off

CHECK_TIMEOUT_S = 600


class FetchError(UserError, RuntimeError):
    """A hub host or dataset that is not in the HF cache and could not be downloaded."""


def _first_line(e: BaseException) -> str:
    """The error's type and first line, whole (the CLI prints one line: nothing after it would show)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _child(mode: str, hosts: dict[str, str], datasets_: dict[str, tuple],
           offline: bool, timeout: float | None) -> dict[str, str]:
    """Run ``python -m pipeline.run.fetch MODE JOB``; its failures ``{"host NAME" | "dataset NAME": reason}``."""
    if not hosts and not datasets_:
        return {}
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    if offline:
        env.update(OFFLINE_ENV)
    job = json.dumps({"hosts": hosts, "datasets": {k: list(v) for k, v in datasets_.items()}})
    try:
        p = subprocess.run([sys.executable, "-m", "pipeline.run.fetch", mode, job], env=env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {f"{mode}": f"took longer than {timeout:.0f} s"}
    last = (p.stdout.strip().splitlines() or [""])[-1]
    try:
        return json.loads(last)
    except ValueError:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {f"{mode}": f"the {mode} process failed (exit {p.returncode}): {tail}"}


def check_offline(hosts: dict[str, str], datasets_: dict[str, tuple]) -> dict[str, str]:
    """What does not load offline: ``{"host NAME" | "dataset NAME": reason}`` (empty: all load)."""
    return _child("check", hosts, datasets_, offline=True, timeout=CHECK_TIMEOUT_S)


def _load_offline(hosts: dict[str, str], datasets_: dict[str, list]) -> dict[str, str]:
    """In the child (offline variables set before any HF import): try each load, collect the failures."""
    failed: dict[str, str] = {}
    if hosts:
        from huggingface_hub import snapshot_download
        from transformers import AutoConfig, AutoTokenizer

        for name, repo in hosts.items():
            try:
                AutoConfig.from_pretrained(repo)
                folder = Path(snapshot_download(repo, local_files_only=True))
                if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
                    raise FileNotFoundError(f"no weights (*.safetensors, *.bin) in the cached snapshot {folder}")
                AutoTokenizer.from_pretrained(repo)
            except Exception as e:  # noqa: BLE001 - any failure is a reason to report
                failed[f"host {name}"] = _first_line(e)
    failed.update(_load_datasets(datasets_))
    return failed


def _load_datasets(datasets_: dict[str, list]) -> dict[str, str]:
    """Load every split of each dataset (offline or downloading, as the child's environment says);
    ``{"dataset NAME": reason}`` of those that fail."""
    failed: dict[str, str] = {}
    if datasets_:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        for name, (repo, splits, *rev) in datasets_.items():
            kw = {"revision": rev[0]} if rev and rev[0] else {}  # a pinned revision (spec), else main
            try:
                for split in splits:
                    datasets.load_dataset(repo, split=split, **kw)
            except Exception as e:  # noqa: BLE001
                failed[f"dataset {name}"] = _first_line(e)
    return failed


def _download_here(hosts: dict[str, str], datasets_: dict[str, list]) -> dict[str, str]:
    """In the child: download into the HF cache; ``{"host NAME" | "dataset NAME": reason}`` of what could not be."""
    failed: dict[str, str] = {}
    for name, repo in hosts.items():
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(repo)
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated, disk full, ...
            failed[f"host {name}"] = _first_line(e)
    failed.update(_load_datasets(datasets_))
    return failed


def fetch(spec, source: str, download: bool = True, say=print, command: str = "sweep") -> dict[str, list[str]]:
    """Make every hub host and dataset of ``spec`` load offline: check the cache, download what is not
    there (``download``, and only where the hub is not off), check again.  Raises FetchError (one line) for
    the first that still fails, with what to do instead for ``command`` (the CLI command asking);
    returns ``{"hosts": [...], "datasets": [...]}`` (the hub names checked).  ``download=False`` (a dry run)
    with the hub reachable only notes, through ``say``, what a real sweep would fetch."""
    hosts, dsets = hub_hosts(spec), hub_datasets(spec)
    names = {"hosts": sorted(hosts), "datasets": sorted(dsets)}
    if not hosts and not dsets:
        return names
    missing = check_offline(hosts, dsets)
    off = hub_off()
    if missing and not download and not off:
        for what in sorted(missing):
            say(f"note: {what} is not in the HF cache ({cache_dir()}) yet: `pipeline sweep` fetches it first")
        return names
    fetched = False
    if missing and download and not off:
        todo_h = {k: v for k, v in hosts.items() if f"host {k}" in missing}
        todo_d = {k: v for k, v in dsets.items() if f"dataset {k}" in missing}
        for k, v in todo_h.items():
            say(f"fetching host {k} ({v}) into {cache_dir()}")
        for k, (v, splits, *_) in todo_d.items():
            say(f"fetching dataset {k} ({v}, split {', '.join(splits)})")
        why = _child("download", todo_h, todo_d, offline=False, timeout=None)
        missing = check_offline(todo_h, todo_d) if len(why) < len(todo_h) + len(todo_d) else {}
        missing = {**{k: v for k, v in missing.items() if k not in why}, **why}
        fetched = True
    if missing:
        what, reason = next(iter(sorted(missing.items())))
        kind, name = what.split(" ", 1) if " " in what else (what, "")
        repo = hosts.get(name) if kind == "host" else (dsets[name][0] if name in dsets else "")
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FetchError(refusal(source, f"{kind} {name!r} ({repo})", reason + more, off, fetched, command))
    return names


def refusal(source: str, what: str, reason: str, off: str | None, fetched: bool, command: str) -> str:
    """The one line that refuses ``what`` (e.g. ``host 'a' (org/model)``): where it was looked for, why it
    failed (``reason``, whole), and what to do instead -- for ``fetch`` itself never "run pipeline fetch"."""
    head = f"{source}: {what} does not load offline from the HF cache ({cache_dir()})"
    if "GatedRepoError" in reason or re.search(r"\bgated\b", reason, re.I):
        return (f"{head}: a gated repo, which needs a token: accept its terms on the hub, set HF_TOKEN to a token "
                f"of that account, then run `pipeline fetch {source}` ({reason})")
    if fetched and re.search(r"\b401\b|RepositoryNotFoundError", reason):
        return (f"{head}: no such repo, or a private one: check the name, or set HF_TOKEN to a token with access "
                f"and run `pipeline fetch {source}` ({reason})")
    if off:
        head += f" and the hub is off here ({off})"
    elif fetched:
        head += " and could not be fetched"
    if command == "fetch":
        todo = ("set HF_HOME to a cache that has it, or run this on a machine that reaches the hub"
                + (f" (without {off.split('=')[0]})" if off else ""))
    else:
        todo = (f"run `pipeline fetch {source}` on a machine that reaches the hub (jobs run with "
                "HF_HUB_OFFLINE=1), or set HF_HOME to a cache that has it")
    return f"{head}: {reason}; {todo}"


def main(argv: list[str] | None = None) -> None:
    mode, text = argv or sys.argv[1:3]
    job = json.loads(text)
    work = _load_offline if mode == "check" else _download_here
    print(json.dumps(work(job.get("hosts", {}), job.get("datasets", {}))))


if __name__ == "__main__":
    main()
