"""Lightning callbacks of ours."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class TrainProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with the epoch's running train loss and accuracy.

    In the speed mode (data.batches_per_step > 1) a Lightning step carries several minibatches: the bar
    then counts minibatches (SGD steps), not Lightning steps.
    """

    @property
    def total_train_batches(self):
        loader = self.trainer.train_dataloader
        if getattr(loader, "group", None):
            return loader.num_minibatches
        return super().total_train_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not isinstance(batch, list):  # one minibatch per step: Lightning's own bar
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        n = min(bar.n + len(batch), bar.total or bar.n + len(batch))
        crossed = n // self.refresh_rate != bar.n // self.refresh_rate
        bar.n = n
        if self.is_enabled and (crossed or n == bar.total):
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        if trainer.training and hasattr(pl_module, "running_train_metrics"):
            metrics.update({k: f"{v:.4f}" for k, v in pl_module.running_train_metrics().items()})
        return metrics


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
                self.path.write_text(f"{trainer.world_size} {diff!r}\n")
            for logger in trainer.loggers:
                logger.log_metrics({"ddp/replica_max_abs_diff": diff}, step=trainer.global_step)
