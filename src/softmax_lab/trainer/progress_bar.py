"""Lightning's tqdm bar, counting SGD steps in the speed mode, with the epoch's running train loss and accuracy."""

from __future__ import annotations

from pytorch_lightning.callbacks import TQDMProgressBar


class TrainProgressBar(TQDMProgressBar):
    """In the speed mode (data.batches_per_step > 1) the train loader yields groups of minibatches (its `group`):
    the bar then counts minibatches (SGD steps), not Lightning steps. Each refresh (every `refresh_rate` steps)
    reads the running loss and accuracy from the device."""

    def _group(self) -> int | None:
        return getattr(self.trainer.train_dataloader, "group", None)

    @property
    def total_train_batches(self):
        if self._group():
            return self.trainer.train_dataloader.num_minibatches
        return super().total_train_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        group = self._group()
        if not group:  # one minibatch per step: Lightning's own bar
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
        totals = getattr(pl_module, "totals", None)
        if trainer.training and totals is not None:
            metrics.update({k: f"{v:.4f}" for k, v in totals.running().items()})
        return metrics
