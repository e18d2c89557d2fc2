"""Pruning from inside a trial: after each validation the trial reports val/acc to its study and asks the study's
pruner (median, successive halving, ...) whether to go on; a hopeless trial stops at the end of that epoch.

hparams_search=optuna adds this callback; it does nothing outside a search's trial. Under DDP rank 0 reports
(val/acc is already reduced over the ranks) and its answer is broadcast, so every rank stops at the same epoch.
A trial is never pruned at its last epoch: stopping there saves nothing."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from softmax_lab.search.study import PRUNED_AT, load_study

log = logging.getLogger(__name__)


class TrialPruning(pl.Callback):
    def __init__(self, storage: str | None, study_name: str, trial: int | None, pruner=None, monitor: str = "val/acc"):
        self.storage, self.study_name, self.number, self.pruner = storage, study_name, trial, pruner
        self.monitor = monitor
        self.trial = None
        self.reports = 0
        self.pruned_at: int | None = None  # the 1-based epoch after which the pruner stopped the trial

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.number is not None and self.storage is not None and trainer.is_global_zero:  # in memory: no pruning
            self.trial = load_study(self.storage, self.study_name, self.pruner).live_trial(self.number)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.number is None or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        prune = False
        if self.trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                self.trial.report(float(value), self.reports)  # one step per validation, as every trial counts them
                self.reports += 1
                last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
                prune = not last and self.trial.should_prune()
        prune = trainer.strategy.broadcast(prune, src=0)
        if not prune:
            return
        self.pruned_at = epoch
        trainer.should_stop = True
        if self.trial is not None:
            self.trial.set_user_attr(PRUNED_AT, epoch)
            log.info("trial %d pruned after epoch %d: its %s is below what the study's pruner lets go on",
                     self.number, epoch, self.monitor)
