"""Stage-1 modules as standard artefacts: peft's folder layout, loadable outside the pipeline.

Every stage-1 run writes, beside the module the pipeline ports
(``modules/<run_id>/module.safetensors``), a folder ``modules/<run_id>/adapter/``:

* techniques peft implements (LoRA, prefix, prompt, IA3): ``model.save_pretrained``
  -- ``adapter_config.json`` + ``adapter_model.safetensors``, the classification
  head included as peft's ``modules_to_save`` -- so
  ``peft.PeftModel.from_pretrained(host, folder)`` loads it;
* the bottleneck adapter and Compacter (written here, not in peft): the same
  two file names, with their own config (``{"technique": ..., "params": ...}``)
  and every trainable tensor, head included;
* ``pipeline_module.json``: what the host must be for the module to mean what it
  meant in training -- technique, task, pooling, label words, max length, the
  host's name and fingerprint.

Two documented calls, both on a host you loaded yourself (``AutoModel.from_pretrained(path)`` for a
head-free module -- the default; ``AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)``
for ``head: trained``; ``AutoModelForCausalLM.from_pretrained(path)`` for a causal-lm host)::

    from pipeline.run.export import load_module, prepare_host
    model = load_module(host, "sweep/modules/<run_id>/adapter")   # any technique
    # or, for a peft technique, through peft's own API:
    model = peft.PeftModel.from_pretrained(prepare_host(host, folder), folder)

``prepare_host`` gives the host the pooling and positions the pipeline trained
with (``pipeline.run.pooling``; on a causal-lm host the real-token positions of
``pipeline.run.causal``) and, for prefix tuning on an encoder, the
cache-argument shim; without it a mean-pooled host would classify from its
untrained BERT pooler.  Loading the module into a *different* host of the same
shape is porting: the tensors arrive bit-exactly (``tests/test_export.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModuleError
from ..files import atomic_dir
from ..techniques import get
from ..techniques.base import CAUSAL_LM, ENCODER_KINDS, SIMILARITY

FOLDER = "adapter"
CONFIG, WEIGHTS, SIDECAR = "adapter_config.json", "adapter_model.safetensors", "pipeline_module.json"
FORMAT = "pipeline-module"  # the config's "format" for the in-project techniques


def _is_peft(model: nn.Module) -> bool:
    import peft

    return isinstance(model, peft.PeftModel)


def save(model: nn.Module, folder: Path, state: dict, *, technique: str, params: dict[str, Any], task,
         host: dict) -> Path:
    """Write ``folder`` (atomically, as a whole): the module in peft's layout + the sidecar.  ``state``: the
    module's tensors (``techniques.module_state``), written as they are for the in-project techniques."""
    from safetensors.torch import save_file

    from . import pooling

    meta = {"technique": technique, "params": params, "task": task.kind, "pooling": task.pooling,
            "label_words": list(task.label_words), "max_length": task.max_length, "template": task.template,
            "host": host.get("model"), "host_fingerprint": host.get("fingerprint")}
    if task.kind == CAUSAL_LM:
        meta["chat_template"] = task.chat
    if task.kind == SIMILARITY:  # head-free scoring: its scale, and the module's per-class bias (peft keeps no copy)
        pool = pooling.find(model)
        bias = pool.class_bias if pool is not None else None
        meta.update({"temperature": task.temperature,
                     "class_bias": bias.detach().cpu().tolist() if bias is not None else None})
    with atomic_dir(folder) as tmp:
        if _is_peft(model):
            model.save_pretrained(str(tmp))
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS))
            (tmp / CONFIG).write_text(json.dumps({"format": FORMAT, "technique": technique, "params": params,
                                                  "task": task.kind}, indent=1, sort_keys=True))
        (tmp / SIDECAR).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return folder


def read_meta(folder: Path | str) -> dict:
    f = Path(folder) / SIDECAR
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        raise ModuleError(f"{f}: missing or unreadable: not a module folder the pipeline wrote") from None


def _config(folder: Path) -> dict:
    return json.loads((folder / CONFIG).read_text())


def prepare_host(host: nn.Module, folder: Path | str) -> nn.Module:
    """Give a freshly loaded host the pooling, positions and shims the module was trained with."""
    return _prepare(host, read_meta(folder), _config(Path(folder)))


def _prepare(host: nn.Module, meta: dict, config: dict) -> nn.Module:
    from . import pooling
    from .techniques._peft import cache_shim

    if meta["task"] == CAUSAL_LM:  # the real-token positions it trained with (pipeline.run.causal)
        from . import causal

        pos = causal.install(host)
        if get(meta["technique"]).impl == "prompt":
            pos.virtual_front = int(config["num_virtual_tokens"])
        return host
    if meta["task"] not in ENCODER_KINDS:
        return host
    pool = pooling.find(host) or pooling.install(host, meta["pooling"])
    if meta.get("class_bias") is not None:
        import torch

        pooling.add_class_bias(pool, len(meta["class_bias"]))
        pool.class_bias.data = torch.tensor(meta["class_bias"], dtype=pool.class_bias.dtype)
    impl = get(meta["technique"]).impl
    if impl == "prompt":
        pool.virtual_front = int(config["num_virtual_tokens"])
    if impl == "prefix":
        host = cache_shim(host)
    return host


def load_module(host: nn.Module, folder: Path | str, *, trainable: bool = False) -> nn.Module:
    """The host with the module in ``folder`` attached (eval mode unless ``trainable``)."""
    folder = Path(folder)
    meta, config = read_meta(folder), _config(folder)
    host = _prepare(host, meta, config)
    if config.get("format") != FORMAT:
        import peft

        model = peft.PeftModel.from_pretrained(host, str(folder), is_trainable=trainable)
    else:
        from safetensors.torch import load_file

        from . import pooling, port
        from . import techniques as RT

        model = RT.build(meta["technique"], host, meta["task"], config["params"])
        pool = pooling.find(model)
        if pool is not None and pool.class_bias is not None:
            pool.class_bias.requires_grad_(True)  # part of the module
        port.load_into(model, load_file(str(folder / WEIGHTS)), include_head=True)
        if not trainable:
            model.requires_grad_(False)
    return model if trainable else model.eval()
