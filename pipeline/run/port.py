"""Port a PEFT module between hosts: copy, sample, save and load its tensors.

A module is the set of trainable parameters after a technique is attached
(``pipeline.run.techniques.module_state``).  Modules are saved as safetensors; a sidecar
JSON holds the SHA-256 of the file, checked before any load, so a stage-2 run
never trains from a truncated or corrupt module.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModuleError
from ..files import atomic_path, atomic_write, sha256_file
from ..techniques.base import is_head_param


def save_module(state: dict[str, torch.Tensor], folder: Path, meta: dict) -> str:
    """Write module.safetensors + module.json atomically; returns the file's sha256."""
    from safetensors.torch import save_file

    with atomic_path(folder / "module.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"run_id": str(meta.get("run_id"))})
        digest = sha256_file(tmp)
    info = {**meta, "sha256": digest, "tensors": len(state), "parameters": sum(v.numel() for v in state.values())}
    atomic_write(folder / "module.json", json.dumps(info, indent=1, sort_keys=True))
    return digest


def load_module(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    f, j = folder / "module.safetensors", folder / "module.json"
    if not f.exists() or not j.exists():
        raise ModuleError(f"module {folder.name} is missing ({f} not found): rerun its stage-1 run")
    try:
        info = json.loads(j.read_text())
    except (OSError, ValueError):
        raise ModuleError(f"module {folder.name}: unreadable {j.name}") from None
    if sha256_file(f) != info.get("sha256"):
        raise ModuleError(f"module {folder.name} fails its checksum (corrupt or truncated): rerun its stage-1 run")
    return load_file(str(f)), info


def module_ok(folder: Path) -> bool:
    try:
        load_module(folder)
        return True
    except Exception:
        return False


def load_into(model, state: dict[str, torch.Tensor], include_head: bool, fresh: frozenset[str] = frozenset()) -> dict:
    """Copy tensors into the model's trainable parameters by name; verify bit-exactness.

    ``fresh``: trainable parameters deliberately left at the technique's fresh initialisation (the sampled
    condition's class bias and tiny tensors, pipeline/conditions.py); every other one must be in ``state``."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    wanted = {n: t for n, t in state.items() if include_head or not is_head_param(n)}
    missing = [n for n in params if n not in state and n not in fresh and (include_head or not is_head_param(n))]
    unknown = [n for n in wanted if n not in params]
    if missing or unknown:
        raise ModuleError(f"module does not fit this host: missing {missing[:3]}, unexpected {unknown[:3]}")
    with torch.no_grad():
        for n, t in wanted.items():
            if params[n].shape != t.shape:
                raise ModuleError(f"module tensor {n} has shape {tuple(t.shape)}, host wants {tuple(params[n].shape)}")
            params[n].copy_(t)
    exact = all(torch.equal(params[n].detach().cpu(), t) for n, t in wanted.items())
    if not exact:
        raise ModuleError("ported tensors differ from the origin module after loading")
    return {"port_exact": exact, "ported_tensors": len(wanted), "ported_parameters": sum(t.numel() for t in wanted.values())}


def load_head(model, state: dict[str, torch.Tensor]) -> dict:
    """Copy only the classification head's tensors (the head-only control); verify bit-exactness."""
    head = {n: t for n, t in state.items() if is_head_param(n)}
    params = {n: p for n, p in model.named_parameters() if is_head_param(n)}
    # peft keeps the trained head under modules_to_save: map names by their head suffix
    by_suffix = {_head_suffix(n): p for n, p in params.items()}
    missing = [n for n in head if _head_suffix(n) not in by_suffix]
    if not head or missing:
        raise ModuleError(f"module has no classification head that fits this host (missing {missing[:3]})")
    with torch.no_grad():
        for n, t in head.items():
            p = by_suffix[_head_suffix(n)]
            if p.shape != t.shape:
                raise ModuleError(f"head tensor {n} has shape {tuple(t.shape)}, host wants {tuple(p.shape)}")
            p.copy_(t)
    exact = all(torch.equal(by_suffix[_head_suffix(n)].detach().cpu(), t) for n, t in head.items())
    if not exact:
        raise ModuleError("ported head differs from the origin module's after loading")
    return {"port_exact": exact, "ported_tensors": len(head), "ported_parameters": sum(t.numel() for t in head.values())}


def _head_suffix(name: str) -> str:
    """'base_model.model.classifier.modules_to_save.default.weight' -> 'classifier.weight'."""
    parts = [p for p in name.split(".") if p not in ("base_model", "model", "modules_to_save", "default", "original_module")]
    i = next(i for i, p in enumerate(parts) if is_head_param(".".join(parts[i:])))
    return ".".join(parts[i:])


def sample_like(state: dict[str, torch.Tensor], seed: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Draw every tensor from N(mean, std) of the ported tensor itself (seeded).

    Constant tensors (one element, or std 0 -- e.g. an untrained LoRA B) are
    filled with their mean.  The runner never passes the class bias or a tensor
    under ``conditions.SAMPLE_MIN_NUMEL`` elements: those keep the fresh init.  Returns the tensors and the largest deviation of a
    sampled tensor's mean/std from its target, relative to the target std.
    """
    g = torch.Generator().manual_seed(seed)
    out, mean_err, std_err = {}, 0.0, 0.0
    for name in sorted(state):
        t = state[name].float()
        mu = t.mean().item()
        sd = t.std(unbiased=False).item() if t.numel() > 1 else 0.0
        if sd > 0 and torch.isfinite(t).all():
            s = torch.randn(t.shape, generator=g) * sd + mu
            if t.numel() >= 1000:  # small tensors' sample statistics are too noisy to check
                mean_err = max(mean_err, abs(s.mean().item() - mu) / sd)
                std_err = max(std_err, abs(s.std(unbiased=False).item() - sd) / sd)
        else:
            s = torch.full(t.shape, mu)
        out[name] = s.to(state[name].dtype)
    return out, {"sample_mean_err": mean_err, "sample_std_err": std_err}
