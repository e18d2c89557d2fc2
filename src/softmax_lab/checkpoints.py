"""Reading our checkpoints, with one clear error for a missing, unreadable or foreign file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from softmax_lab.errors import UserError


class CheckpointError(UserError):
    """The checkpoint is missing, unreadable, not one of ours, or does not fit the config."""


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{key}={path}: no such file. Fix: point {key} at a .ckpt file, e.g. "
                              "outputs/runs/<date>/<time>/checkpoints/last.ckpt.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{key}={path}: not a readable checkpoint ({str(e).splitlines()[0][:200]}). "
                              "Fix: use a checkpoint written by src/train.py; a partly written file cannot be "
                              "recovered.") from None
    missing = {"state_dict", "hyper_parameters", "datamodule_hyper_parameters"} - set(ckpt)
    if missing:
        raise CheckpointError(f"{key}={path}: not a softmax-lab checkpoint (lacks {', '.join(sorted(missing))}).")
    return ckpt


def check_resumable(ckpt: dict, path, model_hparams: dict) -> None:
    """A run resumes only into the model it saved: same implementation, loss and shape."""
    saved = ckpt["hyper_parameters"]
    for key in ("impl", "num_inputs", "num_classes"):
        if saved[key] != model_hparams[key]:
            raise CheckpointError(f"ckpt_path={path} was trained with {key}={saved[key]}, this config has "
                                  f"{key}={model_hparams[key]}. Fix: resume with the run's own config "
                                  "(its config.yaml), or start a new run without ckpt_path.")
    if saved["loss"]["_target_"] != model_hparams["loss"]["_target_"]:
        raise CheckpointError(f"ckpt_path={path} was trained with loss {saved['loss']['_target_']}, this config "
                              f"has {model_hparams['loss']['_target_']}. Fix: resume with the same loss=.")
