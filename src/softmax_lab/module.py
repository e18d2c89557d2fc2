"""SoftmaxRegressionModule: the model, its training step and its metrics, for both implementations.

impl="nn":      nn.Sequential(Flatten, Linear), the loss's torch.nn.functional form and a torch.optim
                optimizer under Lightning's automatic optimisation (one minibatch per Lightning step).
impl="scratch": W, b, the loss's formula and analytic gradient, a hand-written SGD (stepping.py),
                under manual optimisation.
In the speed mode (data.batches_per_step > 1) a Lightning step carries several minibatches and both
implementations step by hand (stepping.py), one SGD step per minibatch.

Every metric is logged at trainer.global_step, which counts SGD steps in every mode: per-epoch
metrics at the step that ends their epoch, `train/loss_step` at its own step. Hyperparameters are
plain values, so checkpoints load with torch.load(weights_only=True).
"""

from __future__ import annotations

import time
import warnings

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from torchmetrics import MaxMetric

from softmax_lab.distributed import average_loss_and_grads, broadcast_parameters, wrapped_by_ddp
from softmax_lab.divergence import DivergenceGuard, likely_cause
from softmax_lab.errors import ConfigError
from softmax_lab.metrics import EvalMetrics
from softmax_lab.models import ScratchSGD, ScratchSoftmaxRegression, make_nn_model
from softmax_lab.stepping import NNSteps, ScratchSteps, window_mean

# Epoch values are reduced across DDP processes here (torchmetrics' sync, strategy.reduce of the train sums),
# and impl=scratch has no torch optimizer (Lightning steps its no-op optimizer): both warnings are expected.
warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
warnings.filterwarnings("ignore", ".*`configure_optimizers` returned `None`.*")

DEFAULT_LOSS = {"_target_": "softmax_lab.losses.CrossEntropy"}
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.SGD", "lr": 0.1}
SCRATCH_SGD_OPTIONS = {"lr", "momentum", "weight_decay", "nesterov"}


def _is_sgd(optimizer: dict) -> bool:
    try:
        return issubclass(get_class(optimizer["_target_"]), torch.optim.SGD)
    except Exception:
        return False


class SoftmaxRegressionModule(pl.LightningModule):
    """Softmax regression (inputs -> classes) trained with one of the losses.

    >>> m = SoftmaxRegressionModule(impl="scratch", loss={"_target_": "softmax_lab.losses.Huber"})
    >>> m(torch.zeros(2, 784)).shape
    torch.Size([2, 10])
    """

    divergence_deferred: bool | None = None  # None: the divergence check is deferred on accelerators only

    def __init__(self, impl: str = "nn", loss: dict | None = None, optimizer: dict | None = None,
                 num_inputs: int = 784, num_classes: int = 10, init_std: float = 0.01,
                 class_names: list[str] | None = None, batches_per_step: int = 1,
                 accumulate_grad_batches: int = 1, gradient_clip_val: float | None = None,
                 gradient_clip_algorithm: str = "norm"):
        super().__init__()
        loss = dict(loss or DEFAULT_LOSS)
        optimizer = dict(optimizer or DEFAULT_OPTIMIZER)
        self.save_hyperparameters({
            "impl": impl, "loss": loss, "optimizer": optimizer, "num_inputs": num_inputs, "num_classes": num_classes,
            "init_std": init_std, "class_names": class_names, "batches_per_step": batches_per_step,
            "accumulate_grad_batches": accumulate_grad_batches, "gradient_clip_val": gradient_clip_val,
            "gradient_clip_algorithm": gradient_clip_algorithm}, logger=False)
        self.loss_fn = instantiate(loss)
        hand = {"accumulate": accumulate_grad_batches, "clip_val": gradient_clip_val,
                "clip_algorithm": gradient_clip_algorithm}
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
            self.steps = ScratchSteps(self, **hand)
        elif impl == "nn":
            self.net = make_nn_model(num_inputs, num_classes, init_std)
            self.steps = NNSteps(self, **hand)
        else:
            raise ConfigError(f"impl={impl!r}: expected 'scratch' or 'nn'.")
        self.impl = impl
        # Lightning's own loop for impl=nn by default; by hand otherwise (stepping.py)
        self.automatic_optimization = impl == "nn" and batches_per_step == 1

        # Train loss and accuracy are running sums on the device, read once per epoch (a torchmetrics update
        # costs a tenth of a step here); validation and test, whose batches are few and large, use EvalMetrics.
        self.register_buffer("_loss_sum", torch.zeros(()), persistent=False)  # sum of loss x batch size
        self.register_buffer("_correct", torch.zeros((), dtype=torch.long), persistent=False)
        self._seen = 0
        self.val_metrics = EvalMetrics(num_classes)
        self.test_metrics = EvalMetrics(num_classes, confusion=True)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints: a resumed run keeps its best
        self.history: list[dict[str, float]] = []  # one entry per epoch: the curves; saved in checkpoints
        self.test_results: dict = {}
        self.guard: DivergenceGuard | None = None
        self._window: list[torch.Tensor] = []  # automatic optimisation: losses since the last optimizer step
        self._epoch_clock = EpochClock()
        self._val_record: dict[str, float] = {}
        self._step_loss: torch.Tensor | None = None  # automatic optimisation: the loss of the step Lightning takes

    # ----------------------------------------------------------------------------------------
    # The model

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)

    def loss_value(self, O: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn.value(O, y) if self.impl == "scratch" else self.loss_fn.torch_value(O, y)

    def configure_optimizers(self):
        if self.impl == "scratch":
            return None  # Lightning's no-op optimizer: its step() runs the step hooks and counts the step
        return instantiate(self.hparams.optimizer, params=self.parameters())

    # ----------------------------------------------------------------------------------------
    # Training

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1 and not wrapped_by_ddp(self.trainer):
            broadcast_parameters(self.trainer, list(self.net.parameters()))  # replicas identical by construction
        self.guard = DivergenceGuard(self.device, self._divergence_advice, lambda: self.global_step + 1,
                                     deferred=self.divergence_deferred)

    def on_train_start(self) -> None:
        if not self.automatic_optimization:
            self.steps.start(self.trainer)

    def _divergence_advice(self, before_any_step: bool) -> str:
        return likely_cause(self.hparams.optimizer, self.hparams.loss, before_any_step)

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:  # Lightning backpropagates, accumulates, clips and steps
            X, y = batch
            O = self.net(X)
            loss = self.loss_fn.torch_value(O, y)
            self._record_train(loss, O, y)
            self._window.append(loss.detach())
            return loss
        minibatches = batch if isinstance(batch, list) else [batch]
        first = batch_idx * self.hparams.batches_per_step  # the epoch's index of this step's first minibatch
        total = self._minibatches_per_epoch()
        max_steps = self.trainer.max_steps
        for i, (X, y) in enumerate(minibatches):
            if max_steps >= 0 and self.global_step >= max_steps:  # the speed mode stops mid-group, in SGD steps
                break
            loss, O = self.steps.minibatch(X, y, last_of_epoch=first + i + 1 >= total)
            self._record_train(loss, O, y)
        return None

    def _minibatches_per_epoch(self) -> int:
        if self.hparams.batches_per_step > 1:  # the loader applies the epoch's limit (trainer_flags.py)
            return self.trainer.train_dataloader.num_minibatches
        return self.trainer.num_training_batches

    def _record_train(self, loss, O, y) -> None:
        self._loss_sum.add_(loss.detach(), alpha=len(y))
        self._correct.add_(O.detach().argmax(1).eq(y).sum())
        self._seen += len(y)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Automatic optimisation: average (DDP) and check the window's loss before Lightning's step."""
        if not self.automatic_optimization:
            return
        loss = window_mean(self._window)
        self._window = []
        if self.trainer.world_size > 1:
            wrapped = wrapped_by_ddp(self.trainer)  # DistributedDataParallel averaged the gradients already
            grads = [] if wrapped else [p.grad for p in self.net.parameters() if p.grad is not None]
            loss = average_loss_and_grads(self.trainer, loss, grads)
        self.guard.check(loss)
        self._step_loss = loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._step_loss is not None:  # automatic optimisation: Lightning just took the step
            self.after_sgd_step(self._step_loss)
            self._step_loss = None
        if batch_idx + 1 >= self.trainer.num_training_batches:  # the epoch's training work is done:
            self._epoch_clock.finish(self.device)  # its validation, checkpoints and logging stay off the clock

    def after_sgd_step(self, loss: torch.Tensor) -> None:
        """After every SGD step (global_step counts it): `train/loss_step` every trainer.log_every_n_steps."""
        step, every = self.global_step, self.trainer.log_every_n_steps
        if every and step % every == 0 and self.loggers:  # 0: never, as Lightning's log_every_n_steps=0
            self.log_at_step({"train/loss_step": loss.item()})

    def log_at_step(self, metrics: dict[str, float]) -> None:
        """To every logger at the SGD step (Lightning's own logging would use its batch count)."""
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def running_train_metrics(self) -> dict[str, float]:
        """Loss and accuracy of the epoch so far, for the progress bar."""
        if not self._seen:
            return {}
        return {"loss": self._loss_sum.item() / self._seen, "acc": self._correct.item() / self._seen}

    def on_train_epoch_start(self) -> None:
        self._loss_sum.zero_()
        self._correct.zero_()
        self._seen = 0
        self._val_record = {}
        self.guard.start_epoch(self.current_epoch)
        self._epoch_clock.start(self.device)

    def on_train_epoch_end(self) -> None:
        """The epoch's train metrics (the clock stopped at validation), logged with the epoch's last val metrics."""
        seconds = self._epoch_clock.stop(self.device)
        self.guard.read()
        seen = self._loss_sum.new_tensor(self._seen, dtype=torch.float64)
        sums = torch.stack([self._loss_sum.double(), self._correct.double(), seen])
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        loss_sum, correct, n = sums.tolist()
        record = {"train/loss": loss_sum / max(n, 1), "train/acc": correct / max(n, 1), "time/epoch_s": seconds,
                  "time/samples_per_s": n / seconds if seconds > 0 else 0.0}
        self.log_dict(record, logger=False)  # for callbacks (EarlyStopping, ModelCheckpoint)
        self.log_at_step({**record, "epoch": self.current_epoch + 1})
        self.history.append({"epoch": self.current_epoch, "step": self.global_step, **record, **self._val_record})

    # ----------------------------------------------------------------------------------------
    # Validation and test

    def _fitting(self) -> bool:
        return self.trainer.state.fn == "fit" and not self.trainer.sanity_checking

    def on_validation_epoch_start(self) -> None:
        if self._fitting():  # validation inside a training epoch stays off its clock
            self._epoch_clock.pause(self.device)
            self.guard.read()

    def on_validation_end(self) -> None:
        if self._fitting():  # after ModelCheckpoint saved (callbacks run before the module)
            self._epoch_clock.resume(self.device)

    def _eval_step(self, batch, metrics: EvalMetrics) -> None:
        X, y = batch
        O = self.net(X)
        metrics.update(O, y, self.loss_value(O, y))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        r = self.val_metrics.compute()
        self.val_metrics.reset()
        metrics = {f"val/{k}": r[k].item() for k in ("loss", "acc", "nll", "ece", "entropy")}
        if self._fitting():
            self.val_acc_best.update(r["acc"])
            metrics["val/acc_best"] = self.val_acc_best.compute().item()
            self._val_record = metrics
        self.log_dict(metrics, logger=False)
        if not self.trainer.sanity_checking:
            self.log_at_step(metrics)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        r = self.test_metrics.compute()
        confusion = r["confusion"].cpu()
        self.test_metrics.reset()
        metrics = {f"test/{k}": r[k].item() for k in ("loss", "acc", "nll", "ece", "brier")}
        self.log_dict(metrics, logger=False)
        self.log_at_step(metrics)
        per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1)).tolist()
        self.test_results = {**metrics, "confusion": confusion, "per_class_acc": per_class,
                             "bins": {k: r[k].cpu() for k in ("bin_count", "bin_acc", "bin_conf")}}

    # ----------------------------------------------------------------------------------------
    # Checkpoints carry the per-epoch history, so the curves of a resumed run are whole

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history
        checkpoint["mlflow_run_id"] = getattr(self.logger, "run_id", None)  # a resume reopens it; eval.py cites it
        checkpoint["run_dir"] = self.trainer.default_root_dir  # a resume continues there

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        try:
            testing = self.trainer.state.fn == "test"
        except RuntimeError:  # not attached to a trainer (load_from_checkpoint)
            testing = False
        if not testing:  # testing the best epoch keeps the whole run's history for the curves
            self.history = list(checkpoint.get("history", []))


class EpochClock:
    """Seconds of training work in an epoch: paused for validation, stopped at the epoch's last batch, so
    checkpoint writes and metric flushes at the epoch's end stay off it. Waits for the device at its edges only."""

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

    def finish(self, device) -> None:
        self.pause(device)
        self._finished = True

    def stop(self, device) -> float:
        self.finish(device)
        return self.elapsed
