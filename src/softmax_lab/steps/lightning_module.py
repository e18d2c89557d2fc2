"""SoftmaxRegressionModule: the model, its training step and its metrics, for both implementations.

impl="nn":      nn.Sequential(Flatten, Linear), the loss's torch.nn.functional form and a torch.optim
                optimizer under Lightning's automatic optimisation (one minibatch per Lightning step).
impl="scratch": W, b, the loss's formula and analytic gradient, a hand-written SGD (hand_steps.py),
                under manual optimisation.
impl="func":    the same W, b, as a parameter dict of pure functions (maths/functional.py): the loss's
                torch.nn.functional form differentiated by torch.func, a pure SGD update; manual optimisation.
In the speed mode (batches_per_step > 1) a Lightning step carries several minibatches and both
implementations step by hand (hand_steps.py), one SGD step per minibatch.

Every metric is logged at trainer.global_step, which counts SGD steps in every mode. The epoch's train
metrics, its clock and the run's history are written by a callback (trainer/epoch_record.py) from
what the module keeps on the device (train_totals.py). Hyperparameters are plain values, so
checkpoints load with torch.load(weights_only=True).
"""

from __future__ import annotations

import inspect

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from torchmetrics import MaxMetric

from softmax_lab.errors import ConfigError
from softmax_lab.maths.metrics import EvalMetrics
from softmax_lab.maths.sgd import ScratchSGD
from softmax_lab.maths.softmax_regression import ScratchSoftmaxRegression, make_nn_model
from softmax_lab.steps.bare_steps import step_hooks_in_use
from softmax_lab.steps.divergence import DivergenceGuard, likely_cause
from softmax_lab.steps.eval_hooks import EvalHooks
from softmax_lab.steps.hand_steps import (
    FuncSteps,
    LightningSteps,
    NNSteps,
    ScratchSteps,
    StepRules,
    averager,
    broadcast_parameters,
    wrapped_by_ddp,
)
from softmax_lab.steps.train_totals import TrainTotals, log_step_losses

DEFAULT_LOSS = {"_target_": "softmax_lab.maths.losses.CrossEntropy"}
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.SGD", "lr": 0.1}


def scratch_sgd(params: list[torch.Tensor], optimizer: dict, impl: str = "scratch") -> ScratchSGD:
    """The SGD of impl=scratch and impl=func (its options, and its velocities as buffers, so checkpoints carry them)
    from the optimizer config; ConfigError for what it cannot take."""
    try:
        is_sgd = issubclass(get_class(optimizer["_target_"]), torch.optim.SGD)
    except (ImportError, AttributeError, ValueError, TypeError):  # not a class hydra can locate
        is_sgd = False
    if not is_sgd:
        raise ConfigError(f"impl={impl} trains with its own SGD, so optimizer={optimizer['_target_']} "
                          "cannot be used. Fix: optimizer=sgd, or impl=nn to use any torch.optim optimizer.")
    extra = set(optimizer) - set(ScratchSGD.OPTIONS) - {"_target_"}
    if extra:
        supported = ", ".join(sorted(ScratchSGD.OPTIONS))
        raise ConfigError(f"impl={impl}'s SGD supports optimizer.{{{supported}}}; got also "
                          f"{', '.join('optimizer.' + k for k in sorted(extra))}. Fix: remove them, or use impl=nn.")
    return ScratchSGD(params, **{k: v for k, v in optimizer.items() if k in ScratchSGD.OPTIONS})


class SoftmaxRegressionModule(EvalHooks, pl.LightningModule):
    """Softmax regression (inputs -> classes) trained with one of the losses.

    >>> m = SoftmaxRegressionModule(impl="scratch", loss={"_target_": "softmax_lab.maths.losses.Huber"})
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
        loss, optimizer = dict(loss or DEFAULT_LOSS), dict(optimizer or DEFAULT_OPTIMIZER)
        self.save_hyperparameters(logger=False)  # the arguments as they are now: plain values
        self.loss_fn = instantiate(loss)
        if impl in ("scratch", "func"):  # func keeps the same W, b (no autograd) and SGD options and velocities
            self.net = ScratchSoftmaxRegression(num_inputs, num_classes, init_std)
            self.sgd = scratch_sgd([self.net.W, self.net.b], optimizer, impl)
        elif impl == "nn":
            self.net = make_nn_model(num_inputs, num_classes, init_std)
        else:
            raise ConfigError(f"impl={impl!r}: expected 'scratch', 'nn' or 'func'.")
        self.impl, self.group = impl, batches_per_step
        self.rules = StepRules(accumulate_grad_batches, gradient_clip_val or None, gradient_clip_algorithm)
        self.automatic_optimization = impl == "nn" and batches_per_step == 1  # else by hand: hand_steps.py
        self.totals = TrainTotals()
        self.val_metrics, self.test_metrics = EvalMetrics(num_classes), EvalMetrics(num_classes, confusion=True)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints: a resumed run keeps its best
        self.last_val: dict[str, float] = {}  # this epoch's validation metrics, for the history
        self.test_results: dict = {}
        self.guard = self.steps = None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)

    def configure_optimizers(self):
        if self.impl != "nn":
            return None  # Lightning's stand-in optimizer: its step() runs the step hooks and counts the step
        return instantiate(self.hparams.optimizer, params=self.parameters())

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1 and not wrapped_by_ddp(self.trainer):
            broadcast_parameters(self.trainer, list(self.net.parameters()))  # replicas identical by construction
        advice = lambda first: likely_cause(self.hparams.optimizer, self.hparams.loss, first)  # noqa: E731
        self.guard = DivergenceGuard(self.device, advice, lambda: self.global_step + 1,
                                     deferred=self.divergence_deferred, on_divergence=self.log_divergence)

    def on_train_start(self) -> None:
        """The step objects, given what they use (steps/hand_steps.py)."""
        common = {"average": averager(self.trainer), "guard": self.guard, "after_step": self.after_sgd_step}
        if self.automatic_optimization:
            self.steps = LightningSteps(**common)
            return
        common.update(rules=self.rules, optimizer=self.optimizers(),
                      bare=self.group > 1 and not step_hooks_in_use(self.trainer))  # the speed mode: bare_steps.py
        if self.impl == "nn":
            self.steps = NNSteps(self.net, self.loss_fn, self.manual_backward, self.clip_gradients, **common)
        else:
            self.steps = (FuncSteps if self.impl == "func" else ScratchSteps)(self.net, self.loss_fn, self.sgd,
                                                                              **common)

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:  # Lightning backpropagates, accumulates, clips and steps
            X, y = batch
            O = self.net(X)
            loss = self.loss_fn.torch_value(O, y)
            self.totals.add(loss, O, y)
            return self.steps.note(loss)
        trainer, group = self.trainer, self.group
        total = trainer.train_dataloader.num_minibatches if group > 1 else trainer.num_training_batches
        for i, (X, y) in enumerate(batch if group > 1 else [batch]):
            if 0 <= trainer.max_steps <= self.global_step:  # the speed mode stops mid-group, in SGD steps
                break
            loss, O = self.steps.minibatch(X, y, last_of_epoch=batch_idx * group + i + 1 >= total)
            self.totals.add(loss, O, y)
        return None

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.automatic_optimization:
            self.steps.before_step([p.grad for p in self.net.parameters() if p.grad is not None])

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.automatic_optimization:
            self.steps.after_batch()

    def after_sgd_step(self, loss: torch.Tensor) -> None:
        """After every SGD step (global_step counts it): note the loss every trainer.log_every_n_steps steps."""
        step, every = self.global_step, self.trainer.log_every_n_steps
        if every and step % every == 0 and self.loggers:  # 0: never, as Lightning's log_every_n_steps=0
            self.totals.note_step_loss(step, loss)

    def log_divergence(self, curve: list[tuple[int, float]]) -> None:
        """The losses up to a divergence, as train/loss_step at their steps: the failed run shows its blow-up."""
        log_step_losses(self.loggers, curve)

    def on_train_epoch_start(self) -> None:
        self.totals.reset(self.device)
        self.last_val = {}
        self.guard.start_epoch(self.current_epoch)

    def epoch_train_metrics(self) -> tuple[dict[str, float], float]:
        """The epoch's train loss and accuracy over every process, and the number of images they cover."""
        self.guard.read()
        return self.totals.epoch_metrics(self.trainer.strategy if self.trainer.world_size > 1 else None)

    def on_train_epoch_end(self) -> None:
        self.guard.read()


def module_from_checkpoint(ckpt: dict) -> SoftmaxRegressionModule:
    """The module a checkpoint (trainer/checkpoints.read_checkpoint) holds, on the CPU: built from its saved
    arguments (those this version takes) and loaded with its weights."""
    accepted = inspect.signature(SoftmaxRegressionModule.__init__).parameters
    module = SoftmaxRegressionModule(**{k: v for k, v in ckpt["hyper_parameters"].items() if k in accepted})
    module.load_state_dict(ckpt["state_dict"])
    return module
