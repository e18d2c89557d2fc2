"""Every tensor the training and evaluation steps create lives on the module's device, none is float64 there, and
the host reads the device only where docs/speed.md says (device_modes.py explains how, with no GPU at hand)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from device_modes import HostReads, NoFloat64, OneDevice
from softmax_lab.data.batches import TensorBatches
from softmax_lab.maths.losses import LOSSES
from softmax_lab.maths.sgd import clip_
from softmax_lab.steps.divergence import DivergenceGuard
from softmax_lab.steps.hand_steps import FuncSteps, LightningSteps, NNSteps, ScratchSteps, StepRules
from softmax_lab.steps.lightning_module import SoftmaxRegressionModule
from softmax_lab.steps.train_totals import TrainTotals
from softmax_lab.trainer.epoch_record import EpochRecorder

META = torch.device("meta")
OPTIONS = {"mse": {"on": "probs"}, "margin": {"margin": 2.0}, "huber": {"on": "probs"}}


@pytest.mark.parametrize("mix", [
    lambda X: torch.stack([X.sum(), torch.tensor(4.0)]),  # the bug issue 10 found by reading
    lambda X: X @ torch.rand(784, 10),
    lambda X: X.clone().sub_(torch.rand(4, 784)),
    lambda X: X.gather(1, torch.zeros(4, 1, dtype=torch.long)),
    lambda X: X * torch.tensor(2.0),
])
def test_one_device_catches_a_host_tensor(mix):  # so the tests below would fail for the bugs they look for
    X = torch.rand(4, 784, device=META)
    with OneDevice(), pytest.raises(RuntimeError, match="mixes devices"):
        mix(X)


def test_no_float64_catches_float64_on_the_device_and_host_reads_answer_on_meta():
    X = torch.rand(4, 784, device=META)
    with NoFloat64(), pytest.raises(RuntimeError, match="float64 on meta"):
        X.double()
    with NoFloat64():
        torch.rand(3).double()  # the host has float64
    with HostReads() as reads:
        assert X.sum().item() == 0.0 and X[:2, :2].tolist() == [[0.0, 0.0], [0.0, 0.0]] and int(X.sum()) == 0
    assert reads.count == 3


class CountingOptimizer:
    """Lightning's stand-in optimizer for impl=scratch, as the hand steps see it."""

    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1


def module_on_meta(impl: str, loss: str) -> SoftmaxRegressionModule:
    module = SoftmaxRegressionModule(
        impl=impl, loss={"_target_": f"softmax_lab.maths.losses.{type(LOSSES[loss]()).__name__}",
                         **OPTIONS.get(loss, {})},
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True})
    return module.to(META)


def hand_steps(module, guard, noted):
    common = {"rules": StepRules(accumulate=2, clip_val=0.5), "average": lambda loss, grads: loss, "guard": guard,
              "after_step": noted.append}
    if module.impl in ("scratch", "func"):
        cls = ScratchSteps if module.impl == "scratch" else FuncSteps
        return cls(module.net, module.loss_fn, module.sgd, optimizer=CountingOptimizer(), **common)
    optimizer = torch.optim.SGD(module.net.parameters(), lr=0.1, momentum=0.9)
    return NNSteps(module.net, module.loss_fn, backward=torch.Tensor.backward,
                   clip_gradients=lambda opt, gradient_clip_val, gradient_clip_algorithm: clip_(
                       [p.grad for p in module.net.parameters()], gradient_clip_val, gradient_clip_algorithm),
                   optimizer=optimizer, **common)


@pytest.mark.parametrize("impl", ["scratch", "nn", "func"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_train_and_eval_steps_stay_on_the_device_without_float64(impl, loss):
    module = module_on_meta(impl, loss)
    X, y = torch.rand(8, 784, device=META), torch.randint(0, 10, (8,), device=META)
    guard = DivergenceGuard(META, advice=lambda first: "", step_of=lambda: 3, deferred=True)
    noted, totals = [], TrainTotals()
    # torch has no meta kernel for F.multi_margin_loss's backward: autograd's margin (nn, func) is checked up to
    # its forward
    backward = not (impl in ("nn", "func") and loss == "margin")
    with OneDevice(), NoFloat64(), HostReads():
        totals.reset(META)
        if backward:
            steps = hand_steps(module, guard, noted)
            for _ in range(2):  # accumulated over a window of two, then the step: average, guard, clip, update
                value, O = steps.minibatch(X, y, last_of_epoch=False)
                totals.add(value, O, y)
            assert len(noted) == 1 and noted[0].device == META
        if impl == "nn" and backward:  # Lightning's automatic optimisation: the module's side of its step
            auto = LightningSteps(average=lambda loss, grads: loss, guard=guard, after_step=noted.append)
            auto.note(module.loss_fn.torch_value(module.net(X), y)).backward()
            auto.before_step([p.grad for p in module.net.parameters()])
            auto.after_batch()
        totals.note_step_loss(3, torch.ones((), device=META))
        totals.epoch_metrics()
        totals.take_step_losses()
        for metrics in (module.val_metrics, module.test_metrics):
            module.eval_step((X, y), metrics)
            metrics.compute()
    assert all(t.device == META for t in [*module.parameters(), *module.buffers(), totals.loss_sum, totals.correct])
    states = [getattr(m, k) for m in (module.val_metrics, module.test_metrics) for k in m._defaults]
    assert states and all(s.device == META and s.dtype != torch.float64 for s in states)


class Recording(pl.loggers.Logger):
    name, version = "recording", 0

    def __init__(self):
        super().__init__()
        self.metrics = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def epochs_of(X, y, impl: str, group: int | None, epochs: int = 2) -> Recording:
    """Fit on (X, y) as an accelerator run would (the deferred divergence guard), every step's loss logged."""
    module = SoftmaxRegressionModule(impl=impl, batches_per_step=group or 1)
    module.divergence_deferred = True  # what an accelerator does
    logger = Recording()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         log_every_n_steps=1, callbacks=[EpochRecorder()])
    trainer.fit(module, train_dataloaders=TensorBatches(X, y, 8, group=group, shuffle=True))
    return logger


@pytest.mark.parametrize("impl", ["scratch", "nn"])
@pytest.mark.parametrize("group", [None, 4], ids=["default-mode", "speed-mode"])
def test_the_host_reads_the_device_once_per_eight_steps_and_at_epoch_edges(impl, group):
    """docs/speed.md's claim, counted: with the progress bar off, the host reads the device for the divergence guard
    every 8 SGD steps and at each epoch's end, and nowhere per step (not even logging train/loss_step)."""
    g = torch.Generator().manual_seed(0)
    counts = {}
    for steps in (16, 48):  # the reads that grow with the steps are the guard's, one per 8
        X, y = torch.rand(steps * 8, 784, generator=g), torch.randint(0, 10, (steps * 8,), generator=g)
        with HostReads(every_device=True) as reads:
            logger = epochs_of(X, y, impl, group)
        counts[steps] = reads.count
        assert [s for s, m in logger.metrics if "train/loss_step" in m] == list(range(1, 2 * steps + 1))
    assert counts[48] - counts[16] == 2 * (48 - 16) // 8, (counts, reads.where[-40:])
