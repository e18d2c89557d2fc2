"""The module's validation and test passes: metrics summed on the device, read once per pass (maths/metrics.py),
validation's logged at the SGD step, the test's at step 0 (one number per run); the best validation accuracy so
far; the test results the run's pictures draw."""

from __future__ import annotations

from softmax_lab.maths.metrics import EvalMetrics

VAL_KEYS, TEST_KEYS = ("loss", "acc", "nll", "ece", "entropy"), ("loss", "acc", "nll", "ece", "brier")


class EvalHooks:
    """Mixed into SoftmaxRegressionModule, which provides net, loss_fn, impl, guard, val_metrics, test_metrics,
    val_acc_best, last_val and test_results."""

    def log_at_step(self, metrics: dict[str, float]) -> None:
        """To every logger at the SGD step (Lightning's own logging would use its batch count)."""
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def eval_step(self, batch, metrics: EvalMetrics) -> None:
        X, y = batch
        O = self.net(X)
        metrics.update(O, y, self.loss_fn.value(O, y) if self.impl == "scratch" else self.loss_fn.torch_value(O, y))

    def validation_step(self, batch, batch_idx):
        self.eval_step(batch, self.val_metrics)

    def on_validation_epoch_start(self) -> None:
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.guard.read()

    def on_validation_epoch_end(self) -> None:
        r = self.val_metrics.compute()
        self.val_metrics.reset()
        metrics = {f"val/{k}": r[k] for k in VAL_KEYS}
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.val_acc_best.update(r["acc"])
            metrics["val/acc_best"] = self.val_acc_best.compute().item()
            self.last_val = metrics
        self.log_dict(metrics, logger=False)
        if not self.trainer.sanity_checking:
            self.log_at_step(metrics)

    def test_step(self, batch, batch_idx):
        self.eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        r = self.test_metrics.compute()
        self.test_metrics.reset()
        metrics = {f"test/{k}": r[k] for k in TEST_KEYS}
        self.log_dict(metrics, logger=False)
        for logger in self.loggers:  # one number per run at step 0: MLflow charts a metric with no step >= 1 as bars
            logger.log_metrics(metrics, step=0)
        self.test_results = {**metrics, "confusion": r["confusion"], "per_class_acc": r["per_class_acc"],
                             "bins": {k: r[k] for k in ("bin_count", "bin_acc", "bin_conf")}}
