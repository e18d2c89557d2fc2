"""EpochRecorder: what a training run records per epoch, written from what the module keeps on the device.

Per epoch: the seconds of training work (its clock stops while validation runs and at the epoch's last
batch, so checkpoint writes and store flushes at the epoch's end stay off it), the train loss and accuracy
with them, and one entry of the run's history (train metrics with the epoch's last validation metrics),
which the learning curves draw and checkpoints carry, so a resumed run's curves are whole. The module's
step losses are written here too, once per epoch, before every checkpoint and when anything fails.
"""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from softmax_lab.steps.train_totals import log_step_losses


class EpochClock:
    """Seconds of training work in an epoch. Waits for the device at its edges only."""

    def __init__(self):
        self.elapsed, self._since, self._finished = 0.0, None, False

    @staticmethod
    def _now(device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def start(self, device) -> None:
        self.elapsed, self._since, self._finished = 0.0, self._now(device), False

    def pause(self, device) -> None:
        if self._since is not None:
            self.elapsed += self._now(device) - self._since
            self._since = None

    def resume(self, device) -> None:
        if self._since is None and not self._finished:
            self._since = self._now(device)

    def stop(self, device) -> float:
        """End the clock (after the device's queued work); the seconds it ran."""
        self.pause(device)
        self._finished = True
        return self.elapsed


class EpochRecorder(pl.Callback):
    """Added to every training run's Trainer (jobs/train_job.py); `history` holds one dict per epoch."""

    def __init__(self):
        self.history: list[dict[str, float]] = []
        self.clock = EpochClock()

    def on_train_epoch_start(self, trainer, pl_module):
        self.clock.start(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.clock.resume(pl_module.device)  # after a validation inside the epoch and its checkpoint writes

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 >= trainer.num_training_batches:  # the epoch's training work is done
            self.clock.stop(pl_module.device)

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.clock.pause(pl_module.device)

    def on_train_epoch_end(self, trainer, pl_module):
        seconds = self.clock.stop(pl_module.device)
        train, n = pl_module.epoch_train_metrics()
        record = {**train, "time/epoch_s": seconds, "time/samples_per_s": n / seconds if seconds > 0 else 0.0}
        pl_module.log_dict(record, logger=False)  # for callbacks (EarlyStopping, ModelCheckpoint)
        self.write_step_losses(pl_module)
        # `epoch` (1, 2, ...) at the epoch's step: the x axis on which a sweep's view draws every job's validation
        # curve (jobs with other batch sizes take other numbers of steps an epoch)
        pl_module.log_at_step({**record, "epoch": trainer.current_epoch + 1})
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **record,
                             **pl_module.last_val})

    def write_step_losses(self, pl_module) -> None:
        log_step_losses(pl_module.loggers, pl_module.totals.take_step_losses())

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.write_step_losses(pl_module)  # the store holds what the checkpoint's run measured (tracking/logger.py)
        checkpoint["history"] = self.history
        checkpoint["run_dir"] = trainer.default_root_dir  # a resume continues there

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn == "fit":  # testing the best epoch keeps the whole run's history for the curves
            self.history = list(checkpoint.get("history", []))

    def on_exception(self, trainer, pl_module, exception):
        self.write_step_losses(pl_module)
