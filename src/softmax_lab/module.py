"""SoftmaxRegressionModule: one LightningModule for both implementations.

impl="scratch": W, b and a hand-written SGD; the loss value and dL/dO from the loss's formula;
    dL/dW = X^T G, dL/db = row sums of G; Lightning manual optimisation, under torch.no_grad().
impl="nn":      nn.Sequential(Flatten, Linear), the loss's torch.nn.functional form, the optimizer
    from config, Lightning automatic optimisation.

Hyperparameters are plain values (dicts with `_target_` strings), so checkpoints load with
torch.load(weights_only=True) and eval.py rebuilds the exact model from the checkpoint alone.
"""

from __future__ import annotations

import time
import warnings

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from softmax_lab.errors import ConfigError, DivergenceError
from softmax_lab.models import ScratchSGD, ScratchSoftmaxRegression, make_nn_model

# Epoch-level values are reduced across DDP processes here (torchmetrics' compute, strategy.reduce of the sums),
# so Lightning's advice to add sync_dist=True does not apply.
warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")

DEFAULT_LOSS = {"_target_": "softmax_lab.losses.CrossEntropy"}
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.SGD", "lr": 0.1}
SCRATCH_SGD_OPTIONS = {"lr", "momentum", "weight_decay", "nesterov"}


def _is_sgd(optimizer: dict) -> bool:
    try:
        return issubclass(get_class(optimizer["_target_"]), torch.optim.SGD)
    except Exception:
        return False


class SoftmaxRegressionModule(pl.LightningModule):
    """Softmax regression (inputs -> classes) trained with one of the five losses.

    >>> m = SoftmaxRegressionModule(impl="scratch", loss={"_target_": "softmax_lab.losses.Huber"})
    >>> m(torch.zeros(2, 784)).shape
    torch.Size([2, 10])
    """

    def __init__(self, impl: str = "nn", loss: dict | None = None, optimizer: dict | None = None,
                 num_inputs: int = 784, num_classes: int = 10, init_std: float = 0.01,
                 class_names: list[str] | None = None, log_every_n_steps: int = 50):
        super().__init__()
        loss = dict(loss or DEFAULT_LOSS)
        optimizer = dict(optimizer or DEFAULT_OPTIMIZER)
        self.save_hyperparameters({"impl": impl, "loss": loss, "optimizer": optimizer, "num_inputs": num_inputs,
                                   "num_classes": num_classes, "init_std": init_std,
                                   "class_names": class_names, "log_every_n_steps": log_every_n_steps}, logger=False)
        self.loss_fn = instantiate(loss)
        self.automatic_optimization = False  # both take one SGD step per minibatch of a group (below)
        if impl == "scratch":
            if not _is_sgd(optimizer):
                raise ConfigError(f"impl=scratch trains with its own hand-written SGD, so optimizer="
                                  f"{optimizer['_target_']} cannot be used. Fix: optimizer=sgd, or impl=nn to "
                                  "use any torch.optim optimizer.")
            extra = set(optimizer) - SCRATCH_SGD_OPTIONS - {"_target_"}
            if extra:
                supported = ", ".join(sorted(SCRATCH_SGD_OPTIONS))
                raise ConfigError(f"impl=scratch's SGD supports optimizer.{{{supported}}}; "
                                  f"got also {', '.join('optimizer.' + k for k in sorted(extra))}. Fix: remove "
                                  "them, or use impl=nn.")
            self.net = ScratchSoftmaxRegression(num_inputs, num_classes, init_std)
            self.sgd = ScratchSGD([self.net.W, self.net.b],
                                  **{k: v for k, v in optimizer.items() if k in SCRATCH_SGD_OPTIONS})
        elif impl == "nn":
            self.net = make_nn_model(num_inputs, num_classes, init_std)
        else:
            raise ConfigError(f"impl={impl!r}: expected 'scratch' or 'nn'.")
        self.impl = impl

        # Train accuracy and loss are running sums (a torchmetrics update costs 10% of a step here);
        # validation and test use torchmetrics, whose batches are few and large.
        self.register_buffer("_loss_sum", torch.zeros(()), persistent=False)  # sum of loss * batch size
        self.register_buffer("_correct", torch.zeros((), dtype=torch.long), persistent=False)
        self._seen = 0
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc_best = MaxMetric()
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_class_acc = MulticlassAccuracy(num_classes, average=None, validate_args=False)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.register_buffer("_eval_sums", torch.zeros(2), persistent=False)  # loss * n, n
        self.history: list[dict[str, float]] = []  # per epoch, for the curves; saved in checkpoints
        self.test_results: dict[str, float] = {}
        self._epoch_start = self._train_record = None
        self.steps_this_epoch = 0
        self._bare_steps = self._deferred = False
        # The first non-finite loss of the epoch as (step, loss); step -1 while all is well. On an accelerator
        # it is noted on the device and read once per Lightning step (a read per SGD step would stall the
        # queue); on the CPU, where a read costs nothing, every step is checked as it happens.
        self.register_buffer("_divergence", torch.tensor([-1.0, 0.0]), persistent=False)
        self.defer_divergence_check: bool | None = None  # None: defer on accelerators only

    # ----------------------------------------------------------------------------------------
    # The model

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)

    def loss_value(self, O: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn.value(O, y) if self.impl == "scratch" else self.loss_fn.torch_value(O, y)

    @property
    def lr(self) -> float | None:
        return self.hparams.optimizer.get("lr")

    def configure_optimizers(self):
        if self.impl == "scratch":
            return None  # Lightning's no-op optimizer: its step() only advances global_step
        return instantiate(self.hparams.optimizer, params=self.parameters())

    # ----------------------------------------------------------------------------------------
    # Training: one Lightning step is a group of minibatches (data.batches_per_step), one SGD step each.
    # Lightning's per-step machinery costs about as much as a minibatch of this model, so it runs once
    # per group; trainer.global_step still counts SGD steps (one optimizer.step() per minibatch).

    def training_step(self, minibatches, group_idx):
        if isinstance(minibatches, tuple):  # a loader of single batches
            minibatches = [minibatches]
        opt = self.optimizers()
        for X, y in minibatches:
            loss, O = self._scratch_step(X, y, opt) if self.impl == "scratch" else self._nn_step(X, y, opt)
            with torch.no_grad():
                self._loss_sum.add_(loss.detach(), alpha=len(y))
                self._correct.add_((O.argmax(1) == y).sum())
            self._seen += len(y)
            self.steps_this_epoch += 1
            if self.global_step % self.hparams.log_every_n_steps == 0:
                for logger in self.loggers:  # per step, straight to the logger (self.log works per group)
                    logger.log_metrics({"train/loss_step": loss.item()}, step=self.global_step)
        if self._deferred:
            step, value = self._divergence.tolist()
            if step >= 0:
                raise DivergenceError(value, self.current_epoch, int(step), self.lr)

    def _scratch_step(self, X, y, opt):
        with torch.no_grad():
            O = self.net(X)
            loss, G = self.loss_fn.value_and_grad(O, y)
            grads = self.net.grads(X, G)
            self._guard_finite(self._average_across_processes(loss, grads))
            self.sgd.step([self.net.W, self.net.b], grads)
        if self._bare_steps:
            self._count_step(opt)
        else:
            opt.step()  # Lightning's no-op optimizer: runs the step hooks and counts the step
        return loss, O

    def _nn_step(self, X, y, opt):
        O = self.net(X)
        loss = self.loss_fn.torch_value(O, y)
        if self._bare_steps:
            opt.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
        grads = (p.grad for p in self.net.parameters() if p.grad is not None)  # only read under DDP
        self._guard_finite(self._average_across_processes(loss.detach(), grads))
        if self._bare_steps:
            opt.optimizer.step()
            self._count_step(opt)
        else:
            opt.step()
        return loss, O.detach()

    # Lightning wraps every optimizer step in hooks (on_before_backward, on_after_backward,
    # on_before_zero_grad, on_before_optimizer_step) and precision-plugin calls: ~180 us a step, a third of
    # this model's step on a CPU. When nothing listens to them (plain 32-bit precision, no callback or
    # override of those hooks) the step is taken bare, and counted as Lightning counts it.
    _STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_zero_grad", "on_before_optimizer_step")

    def _step_hooks_in_use(self) -> bool:
        from pytorch_lightning.plugins.precision import Precision
        from pytorch_lightning.utilities.model_helpers import is_overridden

        return (type(self.trainer.precision_plugin) is not Precision
                or any(is_overridden(h, cb, pl.Callback) for cb in self.trainer.callbacks for h in self._STEP_HOOKS)
                or any(is_overridden(h, self, pl.LightningModule) for h in self._STEP_HOOKS))

    @staticmethod
    def _count_step(opt) -> None:
        """Advance trainer.global_step by one step, with the callables LightningOptimizer.step() calls."""
        opt._on_before_step()
        opt._on_after_step()

    def _average_across_processes(self, loss, grads) -> torch.Tensor:
        """DDP: average the gradients in place and return the mean loss, in one all-reduce, so replicas take
        identical steps (see strategies.py) and all see the same loss: when one diverges, every one stops at
        that step instead of the others waiting for it in the next all-reduce. One process: the loss as is."""
        if self.trainer.world_size == 1:
            return loss
        grads = list(grads)
        flat = torch.cat([loss.reshape(1), *(g.reshape(-1) for g in grads)])
        flat = self.trainer.strategy.reduce(flat, reduce_op="mean")
        for g, mean in zip(grads, flat[1:].split([g.numel() for g in grads])):
            g.copy_(mean.view_as(g))
        return flat[0]

    def _guard_finite(self, loss: torch.Tensor) -> None:
        """Stop at a non-finite loss. Under DDP `loss` is the mean over the processes, so all of them take
        the same decision at the same step."""
        if self._deferred:  # noted on the device, without a host sync; training_step reads it
            first = (self._divergence[0] < 0) & ~torch.isfinite(loss)
            self._divergence[0] = torch.where(first, float(self.steps_this_epoch), self._divergence[0])
            self._divergence[1] = torch.where(first, loss.detach().float(), self._divergence[1])
        elif not torch.isfinite(loss):
            raise DivergenceError(loss.item(), self.current_epoch, self.steps_this_epoch, self.lr)

    def running_train_metrics(self) -> dict[str, float]:
        """Loss and accuracy of the epoch so far, for the progress bar."""
        n = self._seen
        return {"loss": self._loss_sum.item() / n, "acc": self._correct.item() / n} if n else {}

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # the sanity check's value must not count as the best
        self._bare_steps = not self._step_hooks_in_use()
        defer = self.defer_divergence_check
        self._deferred = self.device.type != "cpu" if defer is None else defer

    def on_train_epoch_start(self) -> None:
        self._loss_sum.zero_()
        self._correct.zero_()
        self._seen = self.steps_this_epoch = 0
        self._divergence.fill_(-1.0)
        self._sync_device()
        self._epoch_start, self._train_record = time.perf_counter(), None

    def _sync_device(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _close_train_epoch(self) -> None:
        """Stop the epoch clock and log the epoch's train metrics, once per epoch.

        Called when validation starts (it runs inside the training epoch and stays off the clock) or,
        without validation, at the epoch's end; either way before ModelCheckpoint saves the epoch.
        """
        if self._train_record is not None or self._epoch_start is None:
            return
        self._sync_device()
        seconds = time.perf_counter() - self._epoch_start
        sums = torch.stack([self._loss_sum, self._correct.to(self._loss_sum.dtype),
                            torch.tensor(float(self._seen), device=self.device)])
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        loss_sum, correct, n = sums.tolist()
        self._train_record = {"train/loss": loss_sum / n, "train/acc": correct / n,
                              "time/epoch_s": seconds, "time/samples_per_s": n / seconds}
        self.log_dict(self._train_record)

    def on_train_epoch_end(self) -> None:
        if self._train_record is None:  # no validation this epoch
            self._close_train_epoch()
            self.history.append({"epoch": self.current_epoch, **self._train_record})

    # ----------------------------------------------------------------------------------------
    # Validation and test

    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self._close_train_epoch()
        self._eval_sums.zero_()

    def _eval_step(self, batch, acc_metrics):
        X, y = batch
        O = self.net(X)
        self._eval_sums += torch.stack([self.loss_value(O, y) * len(y), torch.tensor(len(y))])
        for m in acc_metrics:
            m.update(O, y)
        return O

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, [self.val_acc])

    def _eval_loss(self) -> float:
        s = self.trainer.strategy.reduce(self._eval_sums, reduce_op="sum") if self.trainer.world_size > 1 \
            else self._eval_sums
        return (s[0] / s[1]).item()

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.val_acc.reset()
        metrics = {"val/loss": self._eval_loss(), "val/acc": acc.item()}
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(acc)
            metrics["val/acc_best"] = self.val_acc_best.compute().item()
        self.log_dict(metrics)
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit" and self._train_record is not None:
            self.history.append({"epoch": self.current_epoch, **self._train_record, **metrics})

    def on_test_epoch_start(self) -> None:
        self._eval_sums.zero_()

    def test_step(self, batch, batch_idx):
        O = self._eval_step(batch, [self.test_acc, self.test_class_acc])
        self.test_confusion.update(O, batch[1])

    def on_test_epoch_end(self) -> None:
        per_class = self.test_class_acc.compute().tolist()
        names = self.hparams.class_names or [str(i) for i in range(self.hparams.num_classes)]
        metrics = {"test/loss": self._eval_loss(), "test/acc": self.test_acc.compute().item(),
                   **{f"test/acc_class/{name.replace(' ', '_')}": a for name, a in zip(names, per_class)}}
        self.log_dict(metrics)
        self.test_results = {**metrics, "confusion": self.test_confusion.compute().cpu()}
        for m in (self.test_acc, self.test_class_acc, self.test_confusion):
            m.reset()

    # ----------------------------------------------------------------------------------------
    # Checkpoints carry the per-epoch history, so curves of a resumed run are whole

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history
        checkpoint["mlflow_run_id"] = getattr(self.logger, "run_id", None)  # eval.py tags its run with it

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is None or self.trainer.state.fn == "fit":  # testing the best epoch keeps the history
            self.history = list(checkpoint.get("history", []))
