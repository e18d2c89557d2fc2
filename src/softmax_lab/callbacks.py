"""Lightning callbacks of ours."""

from __future__ import annotations

from pytorch_lightning.callbacks import TQDMProgressBar


class TrainProgressBar(TQDMProgressBar):
    """tqdm bar showing the epoch's running train loss and accuracy (read every refresh, not every step)."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        if trainer.training and hasattr(pl_module, "running_train_metrics"):
            metrics.update({k: f"{v:.4f}" for k, v in pl_module.running_train_metrics().items()})
        return metrics
