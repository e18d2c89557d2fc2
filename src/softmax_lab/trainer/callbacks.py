"""Callbacks of ours a config can name: the initial checkpoint, and the DDP replica check."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from softmax_lab.files import write_text


class SaveInitialCheckpoint(pl.Callback):
    """Write last.ckpt before the first epoch, so an interrupt always leaves a checkpoint to resume from.

    The last_checkpoint ModelCheckpoint overwrites it at the end of every epoch; an interrupt mid-epoch
    never writes a half-epoch state, so resuming from last.ckpt replays exactly what an uninterrupted
    run does.
    """

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_start(self, trainer, pl_module):
        if trainer.fast_dev_run:  # Lightning's smoke test writes no checkpoint
            return
        # save_checkpoint is collective (rank 0 writes, all wait), so every rank must take the same branch:
        # rank 0 looks, the others follow (a rank looking for itself may see the file rank 0 just wrote).
        if not trainer.strategy.broadcast(self.path.exists()):
            trainer.save_checkpoint(self.path, weights_only=False)  # the full state: resumable


class ReplicaCheck(pl.Callback):
    """Under DDP, gather every rank's parameters after training and record how far the replicas drifted
    apart (0.0 when they stayed identical) in `path` and as the metric `ddp/replica_max_abs_diff`."""

    def __init__(self, path: str | None = None):
        self.path = Path(path) if path else None

    def on_train_end(self, trainer, pl_module):
        import torch

        flat = torch.cat([p.detach().reshape(-1) for p in pl_module.net.parameters()])
        gathered = pl_module.all_gather(flat).reshape(trainer.world_size, -1)
        diff = (gathered - gathered[0]).abs().max().item()
        if trainer.is_global_zero:
            if self.path is not None:
                write_text(self.path, f"{trainer.world_size} {diff!r}\n")
            for logger in trainer.loggers:
                logger.log_metrics({"ddp/replica_max_abs_diff": diff}, step=trainer.global_step)
