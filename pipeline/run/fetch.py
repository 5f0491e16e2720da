"""``pipeline fetch SPEC``: put every hub host and hub dataset the spec names into the HF cache, then
check that each loads offline, as the jobs will load it (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``:
see ``pipeline.hub``).  ``fetch`` is the one offline check: ``pipeline sweep``, ``sweep --dry-run``,
``resume`` and ``run`` call it before they build, write or submit anything, so a name that is neither
cached nor reachable fails on the login node with one line, not in every job of the sweep.  With the hub
off here (``HF_HUB_OFFLINE=1``) nothing is downloaded and a name missing from the cache is refused at
once; a gated or private repo is refused naming ``HF_TOKEN``; ``--dry-run`` downloads nothing and only
notes what a real sweep would fetch.

Hosts: only what loading needs (:func:`files_to_fetch`): the weights in one format -- safetensors, or where a
repo has none ``pytorch_model*.bin`` (T5 v1.1) --, never the TensorFlow, Flax, ONNX or ``original/`` copies a
repo may also carry; configs; tokenizer files.  The bytes are printed per host.  The offline check loads the
config and tokenizer and reads the weights as a load would find them (:func:`check_weights`: every shard an
index names is there, and each weight file opens and yields a tensor: a truncated or missing file fails here,
on the login node, not inside a job).  Datasets: ``datasets.load_dataset`` of each
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
           offline: bool, timeout: float | None, say=None) -> dict[str, str]:
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
    lines = p.stdout.strip().splitlines() or [""]
    last = lines[-1]
    for ln in lines[:-1]:  # what the child said on the way (bytes fetched per host)
        if say is not None:
            say(ln)
    try:
        return json.loads(last)
    except ValueError:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {f"{mode}": f"the {mode} process failed (exit {p.returncode}): {tail}"}


def check_offline(hosts: dict[str, str], datasets_: dict[str, tuple]) -> dict[str, str]:
    """What does not load offline: ``{"host NAME" | "dataset NAME": reason}`` (empty: all load)."""
    return _child("check", hosts, datasets_, offline=True, timeout=CHECK_TIMEOUT_S)


# weight files by format, in the order a load prefers them (transformers: safetensors first)
_WEIGHTS = (("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin"))
_TOKENIZER = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
              "tokenizer.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json")
_CONFIGS = ("config.json", "generation_config.json")


def weight_files(files: list[str], read_index=None) -> list[str]:
    """The weight files a load reads, of the repo files ``files`` (top level only): an index and the shards it
    names (``read_index(name)`` -> the index's JSON; without it, every ``*-of-*`` shard of the format), else the
    single file, safetensors first; a repo with neither layout: its top-level ``*.safetensors``, else ``*.bin``."""
    top = [f for f in files if "/" not in f]
    for index, single in _WEIGHTS:
        if index in top:
            if read_index is not None:
                shards = sorted(set(read_index(index).get("weight_map", {}).values()))
            else:
                stem, ext = single.rsplit(".", 1)
                shards = [f for f in top if f.startswith(stem + "-") and f.endswith("." + ext) and "-of-" in f]
            return [index, *shards]
        if single in top:
            return [single]
    for ext in (".safetensors", ".bin"):
        if got := sorted(f for f in top if f.endswith(ext)):
            return got
    return []


def files_to_fetch(files: list[str], read_index=None) -> list[str]:
    """What loading a host needs of the repo files ``files``: its weights in one format (:func:`weight_files`),
    its configs and its tokenizer files -- not the other formats' weights (``tf_model.h5``, ``flax_model.msgpack``,
    ``*.onnx``), nor ``original/`` checkpoints, nor docs and images."""
    top = {f for f in files if "/" not in f}
    return sorted(set(weight_files(files, read_index)) | (top & set(_CONFIGS + _TOKENIZER)))


def _read_tensor(path: Path) -> None:
    """Open a weight file and read one tensor from it (the first one): a truncated, empty or foreign file raises."""
    if path.name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            if not keys:
                raise ValueError(f"{path.name} holds no tensor")
            f.get_tensor(keys[0])
        return
    import torch

    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if not state:
        raise ValueError(f"{path.name} holds no tensor")
    next(iter(state.values())).clone()


def check_weights(folder: Path) -> int:
    """Every weight file a load of ``folder`` reads is there and yields a tensor (one tensor a file, not a full
    load); returns their bytes.  Raises FileNotFoundError / ValueError (a safetensors or torch error) naming
    the file."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    want = weight_files(files, lambda name: json.loads((folder / name).read_text()))
    if not want:
        raise FileNotFoundError(f"no weights (*.safetensors, *.bin) in the cached snapshot {folder}")
    total = 0
    for name in want:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"weight file {name} (named by the index) is missing from the cached snapshot "
                                    f"{folder}")
        if not name.endswith(".json"):
            try:
                _read_tensor(path)
            except Exception as e:  # noqa: BLE001 - the library's reason, with the file's name
                raise ValueError(f"weight file {name} does not read: {_first_line(e)}") from None
        total += path.stat().st_size
    return total


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
                check_weights(folder)
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
            from huggingface_hub import HfApi, hf_hub_download, snapshot_download

            info = HfApi().model_info(repo, files_metadata=True)
            size = {s.rfilename: s.size or 0 for s in info.siblings or []}
            want = files_to_fetch(list(size), lambda index: json.loads(Path(hf_hub_download(repo, index)).read_text()))
            if not weight_files(want):
                raise FileNotFoundError(f"the repo has no weights a load reads (*.safetensors, *.bin) among "
                                        f"{len(size)} files")
            snapshot_download(repo, allow_patterns=want)
            got = sum(size.get(f, 0) for f in want)
            print(f"host {name} ({repo}): {len(want)} files, {_gb(got)} of the repo's {_gb(sum(size.values()))} "
                  f"({', '.join(f for f in weight_files(want) if not f.endswith('.json'))})", flush=True)
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated, disk full, ...
            failed[f"host {name}"] = _first_line(e)
    failed.update(_load_datasets(datasets_))
    return failed


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


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
        why = _child("download", todo_h, todo_d, offline=False, timeout=None, say=say)
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
