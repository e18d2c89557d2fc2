"""Reading our checkpoints, with one clear error for a bad file, and the rules a resumed run must keep.

Torch only (no Lightning), so predict.py reads a checkpoint without loading the training stack.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from softmax_lab.errors import UserError

OLD_LOSSES, NEW_LOSSES = "softmax_lab.losses.", "softmax_lab.maths.losses."


class CheckpointError(UserError):
    """The checkpoint is missing, unreadable, not one of ours, or does not fit the config."""


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """The checkpoint at `path` (weights_only); CheckpointError naming `key` for a folder, no file, a foreign one."""
    path = Path(path).expanduser()
    if path.is_dir():  # a run dir or its checkpoints/ folder: name what is in it
        found = sorted(p.relative_to(path).as_posix() for p in [*path.glob("*.ckpt"), *path.glob("checkpoints/*.ckpt")])
        listed = f" It holds {', '.join(found[:6])}." if found else " It holds no .ckpt file."
        raise CheckpointError(f"{key}={path} is a directory, not a checkpoint file.{listed} Fix: {key}="
                              f"{path / found[0] if found else '<run dir>/checkpoints/last.ckpt'} (best-*.ckpt is "
                              "the best epoch, last.ckpt the latest).")
    if not path.is_file():
        raise CheckpointError(f"{key}={path}: no such file. Fix: point {key} at a .ckpt file, e.g. "
                              "outputs/runs/<date>/<time>/checkpoints/last.ckpt.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{key}={path}: not a readable checkpoint ({str(e).splitlines()[0][:200]}). "
                              "Fix: use a checkpoint written by src/train.py; a partly written file cannot be "
                              "recovered.") from e
    missing = {"state_dict", "hyper_parameters", "datamodule_hyper_parameters"} - set(ckpt)
    if missing:
        raise CheckpointError(f"{key}={path}: not a softmax-lab checkpoint (lacks {', '.join(sorted(missing))}).")
    loss = ckpt["hyper_parameters"].get("loss") or {}
    if str(loss.get("_target_", "")).startswith(OLD_LOSSES):  # written before the package had its parts
        loss["_target_"] = NEW_LOSSES + loss["_target_"][len(OLD_LOSSES):]
    return ckpt


# What a resumed run must share with the run that saved the checkpoint: a difference would silently change
# what is trained (Lightning restores the optimizer's own settings from the checkpoint, for one).
MODEL_KEYS = ("impl", "num_inputs", "num_classes", "loss", "optimizer")
DATA_KEYS = ("batch_size", "val_size", "split_seed", "shuffle_seed", "normalize", "resize", "classes")


def _shown(key: str, value) -> str:
    if isinstance(value, dict):
        opts = " ".join(f"{key}.{k}={v}" for k, v in value.items() if k != "_target_")
        return f"{key}={value.get('_target_', '?').rsplit('.', 1)[-1]}" + (f" ({opts})" if opts else "")
    return f"{key}={value}"


def check_resumable(ckpt: dict, path, model_hparams: dict, data_hparams: dict | None = None) -> None:
    """A run resumes only into what it saved: the same model, loss, optimizer settings and data preparation."""
    saved = ckpt["hyper_parameters"]
    saved_data = ckpt["datamodule_hyper_parameters"]
    pairs = [(k, saved.get(k), model_hparams.get(k)) for k in MODEL_KEYS]
    if data_hparams is not None:
        pairs += [(f"data.{k}", saved_data.get(k), data_hparams.get(k)) for k in DATA_KEYS]
    for key, before, now in pairs:
        if isinstance(before, dict) and isinstance(now, dict):
            before = {k: v for k, v in before.items() if k != "default_lr"}
            now = {k: v for k, v in now.items() if k != "default_lr"}
        if before != now:
            raise CheckpointError(f"ckpt_path={path} was trained with {_shown(key, before)}, this config has "
                                  f"{_shown(key, now)}; resuming restores the former, so the run would not be what "
                                  "the config says. Fix: resume with the run's own config (its config.yaml and "
                                  "overrides.yaml), or start a new run without ckpt_path.")


def epochs_done(ckpt: dict) -> int:
    """Epochs the checkpoint's run completed (one history entry each; 0 for the checkpoint written at start)."""
    return len(ckpt.get("history", []))


def limit_reached(ckpt: dict, max_epochs: int, max_steps: int) -> str | None:
    """The Trainer limit the checkpoint's run has already reached ("trainer.max_epochs=2"), or None. As Lightning
    reads them: max_epochs=-1 sets no epoch limit, max_steps=-1 no step limit."""
    if 0 <= max_epochs <= epochs_done(ckpt):
        return f"trainer.max_epochs={max_epochs}"
    if 0 <= max_steps <= ckpt.get("global_step", 0):
        return f"trainer.max_steps={max_steps}"
    return None


def run_dir_of(ckpt: dict, path: Path) -> Path | None:
    """The run dir the checkpoint belongs to, if it is still there: a resumed run continues in it."""
    recorded = ckpt.get("run_dir")
    for candidate in ([Path(recorded)] if recorded else []) + [Path(path).resolve().parent.parent]:
        if (candidate / "checkpoints").is_dir():
            return candidate
    return None
