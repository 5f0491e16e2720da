"""Plan-time checks: everything a job would fail on that can be known on the login node, without torch.

``check_spec`` runs after the spec's own validation (``pipeline.spec``) and before any host is
built or anything is written (``pipeline plan``, ``run``, ``sweep``, ``sweep --dry-run``, ``fetch``):

* **GPU memory**: a run whose estimated peak (``pipeline.cost.run_memory``) exceeds its stage's
  ``resources.gpu_mem_gb`` is refused, naming the host;
* **host shapes** of each pair, from the config.json each host has or -- an embedded host not built
  yet -- will have (``pipeline.shapes``, ``hosts.planned_config``);
* **embedded dataset names** (``embedded:rotten_tomatoes``, ``embedded:tweets``; a near miss gets a
  did-you-mean) and **local data files** (that they exist and have the text and label columns);
* **sizes**: ``eval_size + train_size`` (+ ``dev_size`` where the dataset has one) against the
  examples the run will have -- the labelled rows left after the same deduplication
  ``pipeline.run.data`` does (case and whitespace ignored, texts seen with two labels dropped).
  Each corpus is counted once and cached by the sha256 of its file (``count_cache``), so a
  later plan pays a hash, not a parse.

Each failure is one SpecError line naming the field, e.g.
``sweeps/x.yaml: datasets[0].eval_size: 50000 + train_size 4000 exceed the 12,751 examples of
embedded:rotten_tomatoes``.  Hub datasets are left to ``pipeline fetch`` / ``sweep``'s offline check.
Files are read with the standard library (pyarrow for Parquet): no ``datasets``, no torch.
"""

from __future__ import annotations

import bz2
import csv
import difflib
import hashlib
import io
import json
import os
from pathlib import Path

from . import hosts
from .errors import SpecError
from .hub import DATA_SUFFIXES
from .hub import EMBEDDED as PREFIX

# name -> (package, file in it, encoding, text column, label column, label -> 0/1); what pipeline.run.data's
# EMBEDDED loads (tests/test_checks.py holds the two together)
CORPORA = {
    "rotten_tomatoes": (*hosts.ROTTEN_TOMATOES, "utf-8", "text", "category", {"rotten": 0, "fresh": 1}),
    "tweets": (*hosts.TWEETS, "latin-1", "text", "sentiment", {"negative": 0, "positive": 1}),
}
# what pandas (under datasets' csv loader) reads as a missing value: such a text or label is no example
_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                 "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
COUNT_VERSION = 1  # bump when the counting below changes: older cache entries are then ignored


def check_spec(spec, source: str) -> None:
    """Everything checked before any host is built: host shapes, then each dataset (see the module doc)."""
    from .shapes import check_pairs

    check_pairs(spec, source)
    check_gpu_features(spec, source)
    check_memory(spec, source)
    for i, ds in enumerate(spec.datasets):
        check_dataset(ds, f"{source}: datasets[{i}]")


def check_gpu_features(spec, source: str) -> None:
    """``resources.stageN.gpu_features``: the site's GPU node features -> GPU memory in GB (jobs get a --constraint
    to those whose GPU holds ``gpu_mem_gb``: ``launch.layout.gpu_constraint``); name only features the cluster
    has (``sinfo -o %f``): Slurm refuses a constraint naming an unknown one.  SpecError for a bad name or size,
    or when no feature's GPU holds ``gpu_mem_gb``."""
    for stage in (1, 2):
        r = getattr(spec.resources, f"stage{stage}")
        where = f"{source}: resources.stage{stage}.gpu_features"
        for k, gb in r.gpu_features.items():
            if not gb > 0 or not k.strip() or set(k) & set("|&,[]()*! "):
                raise SpecError(f"{where}: a node feature name (no spaces or |&,[]()*!) -> its GPU memory in GB "
                                f"(> 0), got {k!r}: {gb!r}")
        if r.gpu_features and r.gpu_mem_gb and max(r.gpu_features.values()) < r.gpu_mem_gb:
            raise SpecError(f"{where}: no feature's GPU holds gpu_mem_gb {r.gpu_mem_gb:g} GB (largest "
                            f"{max(r.gpu_features.values()):g} GB)")


def check_memory(spec, source: str) -> None:
    """SpecError naming the first host whose runs do not fit a stage's ``gpu_mem_gb`` (hosts of unknown size pass)."""
    from .cost import host_memory

    for h in spec.hosts:
        for stage, (m, tr, p) in enumerate(host_memory(spec, h) or [], start=1):
            limit = getattr(spec.resources, f"stage{stage}").gpu_mem_gb
            if limit is not None and m["total"] > limit:
                raise SpecError(f"{source}: resources.stage{stage}.gpu_mem_gb: a run on host {h.name!r} ({h.model}) "
                                f"needs ~{m['total']:.1f} GB at batch {tr.batch_size} x {tr.max_length} tokens, {p} "
                                f"(weights {m['weights']:.1f}, activations {m['activations']:.1f} GB), over "
                                f"{limit:g} GB; lower batch_size or max_length, set frozen_dtype: bf16, or ask for "
                                "a larger GPU")


# ---------------------------------------------------------------- datasets
def check_dataset(ds, where: str) -> None:
    """SpecError ``<where>.<field>: ...`` for a dataset a job could not load or split; hub datasets pass."""
    src = ds.source
    if src.startswith(PREFIX):
        name = src[len(PREFIX):]
        if name not in CORPORA:
            m = difflib.get_close_matches(name, list(CORPORA), n=1)
            hint = f" (did you mean '{PREFIX}{m[0]}'?)" if m else ""
            raise SpecError(f"{where}.source: unknown embedded dataset {src!r}{hint} "
                            f"(known: {', '.join(PREFIX + k for k in CORPORA)})")
        n = _count_embedded(name)
    elif Path(src).suffix in DATA_SUFFIXES:
        p = Path(src)
        if not p.is_file():
            raise SpecError(f"{where}.source: no such data file {src!r} (relative paths start in the folder "
                            f"`pipeline` runs in, {Path.cwd()})")
        n = _count_file(p, ds.text_field, ds.label_field, where)
    else:
        return  # a hub name or a dataset folder: checked by `pipeline fetch` / sweep's offline check
    if n is None or ds.eval_split is not None:
        return
    _check_sizes(ds, n, where)


def _check_sizes(ds, n: int, where: str) -> None:
    train, dev = ds.train_size or 0, getattr(ds, "dev_size", None) or 0
    what = f"the {n:,} examples of {ds.source} (labelled, duplicates removed)"
    if ds.eval_size >= n:
        raise SpecError(f"{where}.eval_size: {ds.eval_size}"
                        + (f" + train_size {train}" if train else "") + (f" + dev_size {dev}" if dev else "")
                        + f" exceed {what}; at most {n - 1:,} can be held out")
    if ds.eval_size + train + dev > n:
        field = "train_size" if train else "dev_size"
        parts = [f"eval_size {ds.eval_size}"] + ([f"dev_size {dev}"] if dev else [])
        first = train if train else dev
        raise SpecError(f"{where}.{field}: {first} + {' + '.join(parts)} exceed {what}; "
                        f"at most {n - ds.eval_size - (dev if train else 0):,} fit")


def _dedupe_count(rows) -> int:
    """How many (text, label) pairs pipeline.run.data.dedupe keeps: one per text (case and whitespace
    ignored), none of a text seen with two labels."""
    first: dict[str, int] = {}
    conflicted: set[str] = set()
    for text, label in rows:
        k = " ".join(text.lower().split())
        seen = first.setdefault(k, label)
        if seen != label:
            conflicted.add(k)
    return len(first) - len(conflicted)


def _count_embedded(name: str) -> int | None:
    package, rel, encoding, text_f, label_f, mapping = CORPORA[name]
    try:
        path = hosts._package_dir(package) / rel
    except hosts.HostError:
        return None  # the package is missing: the job's DataError says which to install
    key = json.dumps([COUNT_VERSION, "embedded", encoding, text_f, label_f, mapping], sort_keys=True)

    def count() -> int:
        rows = ((t, mapping.get(y)) for t, y in _csv_rows(path, encoding, ",", text_f, label_f))
        return _dedupe_count((t, y) for t, y in rows if y is not None)

    return _cached(path, key, count)


def _count_file(path: Path, text_f: str, label_f: str, where: str) -> int | None:
    """Labelled examples of a local data file after deduplication; None when they cannot be told here
    (labels that are not whole numbers: the job decides)."""
    cols = _columns(path)
    if cols is not None:
        for field, col in (("text_field", text_f), ("label_field", label_f)):
            if col not in cols:
                raise SpecError(f"{where}.{field}: {path} has no column {col!r} (columns: {', '.join(map(str, cols))})")
    key = json.dumps([COUNT_VERSION, "file", path.suffix, text_f, label_f])

    def count() -> int | None:
        out = []
        for t, y in _file_rows(path, text_f, label_f):
            if t is None or y is None:
                continue
            try:
                y = int(y)
            except (TypeError, ValueError):
                return None
            if y >= 0:
                out.append((str(t), y))
        return _dedupe_count(out)

    return _cached(path, key, count)


def _open_text(path: Path, encoding: str):
    raw = bz2.open(path, "rb") if path.suffix == ".bz2" else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def _csv_rows(path: Path, encoding: str, delimiter: str, text_f: str, label_f: str):
    with _open_text(path, encoding) as f:
        for row in csv.DictReader(f, delimiter=delimiter):
            t, y = row.get(text_f), row.get(label_f)
            if t is None or y is None or t in _NA or y in _NA:
                continue
            yield t, y


def _columns(path: Path) -> list | None:
    try:
        if path.suffix in (".csv", ".tsv"):
            with _open_text(path, "utf-8") as f:
                return next(csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ","), [])
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError):
        return None
    return None  # JSON: the keys may differ row to row


def _file_rows(path: Path, text_f: str, label_f: str):
    if path.suffix in (".csv", ".tsv"):
        yield from _csv_rows(path, "utf-8", "\t" if path.suffix == ".tsv" else ",", text_f, label_f)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=[text_f, label_f])
        yield from zip(t.column(text_f).to_pylist(), t.column(label_f).to_pylist())
    else:  # .json / .jsonl: JSON lines, or one JSON list of records
        text = path.read_text(encoding="utf-8")
        try:
            records = json.loads(text)
            records = records if isinstance(records, list) else []
        except ValueError:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        for r in records:
            if isinstance(r, dict):
                yield r.get(text_f), r.get(label_f)


# ---------------------------------------------------------------- the count cache
def count_cache() -> Path:
    """Where example counts are kept: $XDG_CACHE_HOME (else ~/.cache)/peft-portability/data_counts.json."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peft-portability" / "data_counts.json"


def _cached(path: Path, key: str, count) -> int | None:
    """``count()`` of the file at ``path``, cached under the sha256 of its bytes and ``key``."""
    from .dataid import file_sha256, save_cache

    try:
        digest = file_sha256(path)  # cached by (path, size, mtime): a later plan does not read the file
    except OSError:
        return None
    save_cache()
    entry = hashlib.sha256(f"{digest}\0{key}".encode()).hexdigest()[:32]
    cache_file = count_cache()
    try:
        cache = json.loads(cache_file.read_text())
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache.get(entry), int):
        return cache[entry]
    try:
        n = count()
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, KeyError):
        return None  # unreadable here: the job reports it in its own words
    if n is not None:
        cache[entry] = n
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps(cache, sort_keys=True))
            os.replace(tmp, cache_file)
        except OSError:  # a read-only home: no cache, the same answer
            pass
    return n
