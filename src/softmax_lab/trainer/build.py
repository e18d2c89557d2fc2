"""The Trainer and its callbacks, as the config says (flags the module honours by hand taken out: flags.py)."""

from __future__ import annotations

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar

from softmax_lab.errors import ConfigError
from softmax_lab.trainer.callbacks import SaveInitialCheckpoint
from softmax_lab.trainer.checkpoint_io import AtomicCheckpointIO
from softmax_lab.trainer.epoch_record import EpochRecorder


def make_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The configured callbacks (`null` switches one off) and the EpochRecorder every training run has. The switches
    Lightning users know also work: trainer.enable_progress_bar=false removes our bar, trainer.enable_checkpointing
    =false our checkpoints."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]  # ~callbacks: none
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not cfg.trainer.get("enable_checkpointing", True):
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint | SaveInitialCheckpoint)]
    return [EpochRecorder(), *callbacks]


def make_trainer(trainer_cfg: DictConfig, overrides: dict, callbacks: list[pl.Callback]) -> pl.Trainer:
    """Lightning's Trainer as configured, `overrides` (flags.py) replacing values, with atomic checkpoint writes; the
    logger is attached once the run exists. Lightning refuses impossible settings here: one ConfigError with its
    reason."""
    try:
        return instantiate(trainer_cfg, callbacks=callbacks, logger=False, plugins=[AtomicCheckpointIO()], **overrides)
    except InstantiationException as e:
        reason = str(e.__cause__ or e).strip()[:600]
        raise ConfigError(f"trainer: {reason} Fix: correct the trainer.* value, or trainer=cpu, which runs anywhere "
                          "(see `python src/train.py --cfg job`).") from e
