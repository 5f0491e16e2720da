"""Training curves through accelerate's trackers: TensorBoard by default, W&B / MLflow when asked.

The spec's ``tracking`` (default ``[tensorboard]``; ``[]`` turns it off) names
the trackers.  Each run is one tracker run, named
``stage<N>/<technique>/<condition>/<regime>/<origin>_to_<receiving>/s<seed>-<run_id>`` (stage 1:
``stage1/<technique>/origin/<host>/s<seed>-<run_id>``; regime ``zero-shot`` or ``+<steps>``), so
``tensorboard --logdir <sweep>/tb`` shows the sweep as a tree and a zero-shot run and its +10 twin apart.  Logged: the
training loss and both learning rates (module, head) at every step, and the
eval metrics (accuracy, macro-F1, AUC, loss) at the run's last step; the run's
config as text.

* TensorBoard: event files under ``<sweep>/tb`` (tensorboardX writes them; no
  TensorFlow needed; view them with ``pip install tensorboard``).
* W&B: project = the sweep's name, run = the name above, files under
  ``<sweep>/wandb``.  Compute nodes without internet: ``WANDB_MODE=offline``
  (the sbatch environment passes it on), then ``wandb sync <sweep>/wandb/offline-run-*``
  from the login node.
* MLflow: experiment = the sweep's name, run = the name above; the store is
  ``MLFLOW_TRACKING_URI`` or, if unset, ``<sweep>/mlruns`` (a file store: no
  server, works offline; MLflow 3 keeps it in maintenance mode, so it is
  allowed with ``MLFLOW_ALLOW_FILE_STORE=true``; ``mlflow ui --backend-store-uri
  <sweep>/mlruns``).

A tracker that is asked for but not installed is skipped with one warning in the
run's log: curves are a convenience, never a reason to lose a run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
PACKAGE = {"tensorboard": "tensorboardX", "wandb": "wandb", "mlflow": "mlflow"}


def installed(name: str) -> bool:
    if name == "tensorboard":
        return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))
    return importlib.util.find_spec(PACKAGE[name]) is not None


def run_name(row: dict) -> str:
    pair = (row.get("host_pair") or row.get("origin_host") or "host").replace("->", "_to_")
    cond = row.get("condition") or "origin"
    regime = row.get("regime")
    if regime is not None and regime == regime:  # stage 2 (NaN: a stage-1 row read from a table)
        cond += "/zero-shot" if int(regime) == 0 else f"/+{int(regime)}"
    return f"stage{row['stage']}/{row['technique']}/{cond}/{pair}/s{row['seed']}-{row['run_id']}"


def trackers(names, root: Path, project: str, row: dict) -> list:
    """accelerate tracker objects for ``names`` (those installed), one tracker run per planned run."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    out, name = [], run_name(row)
    for n in names:
        if not installed(n):
            log.warning("tracking: %s asked for but not installed (pip install %s): no %s curves for this run",
                        n, PACKAGE[n], n)
            continue
        if n == "tensorboard":
            out.append(TensorBoardTracker(name, str(root / "tb"), flush_secs=30))
        elif n == "wandb":
            out.append(WandBTracker(project, name=name, group=f"stage{row['stage']}", dir=str(root),
                                    reinit="finish_previous"))
        else:
            if not os.environ.get("MLFLOW_TRACKING_URI"):  # a file store: no server, no database, offline
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it in maintenance mode
                import mlflow

                mlflow.set_tracking_uri((root / "mlruns").resolve().as_uri())
            out.append(MLflowTracker(experiment_name=project, run_name=name))
    return out


def start(acc, project: str, config: dict) -> None:
    """Start the accelerator's trackers; the run's config as hyperparameters (text on TensorBoard)."""
    if not acc.log_with:
        return
    try:
        acc.init_trackers(project)
    except Exception as e:  # noqa: BLE001 - a tracker that cannot start (server down, a race on a new experiment)
        log.warning("tracking: could not start (%s): no curves for this run", str(e).splitlines()[0][:200])
        acc.trackers = []
        return
    flat = {k: v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v) for k, v in config.items()}
    for t in acc.trackers:
        if t.name == "tensorboard":  # add_hparams would make a timestamped sub-run per run: text instead
            t.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(flat.items())), 0)
        else:
            t.store_init_configuration(flat)


def log_step(acc, step: int, loss: float, opt) -> None:
    if not acc.trackers:
        return
    values = {"train/loss": loss}
    for g in opt.param_groups:
        values[f"train/lr_{g.get('name', 'module')}"] = g["lr"]
    for t in acc.trackers:  # not acc.log: TensorBoardTracker.log flushes the file at every call
        if t.name == "tensorboard":
            for k, v in values.items():
                t.writer.add_scalar(k, v, global_step=step)
        else:
            t.log(values, step=step)


def finish(acc, step: int, metrics: dict) -> None:
    if not acc.trackers:
        return
    keys = ("accuracy", "macro_f1", "auc", "eval_loss")
    try:
        acc.log({f"eval/{k.removeprefix('eval_')}": metrics[k] for k in keys if metrics.get(k) is not None}, step=step)
        acc.end_training()
    except Exception as e:  # noqa: BLE001 - the run's results are safe whatever a tracker does
        log.warning("tracking: could not finish (%s)", str(e).splitlines()[0][:200])
