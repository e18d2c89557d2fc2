"""The training split's running totals (steps/train_totals.py), against sums done by hand: the epoch's loss weighted
by batch size, its accuracy, the progress bar's running values, the step losses handed over once and written to
every logger."""

from __future__ import annotations

import pytest
import torch

from softmax_lab.maths.losses import LOSSES
from softmax_lab.steps.train_totals import TrainTotals, log_step_losses


def batches():
    torch.manual_seed(0)
    for n in (4, 3):
        O, y = torch.randn(n, 10), torch.randint(0, 10, (n,))
        yield torch.nn.functional.cross_entropy(O, y), O, y


def test_the_epoch_metrics_and_the_running_values_are_the_weighted_sums():
    totals = TrainTotals()
    assert totals.running() == {} and totals.epoch_metrics() == ({"train/loss": 0.0, "train/acc": 0.0}, 0.0)
    seen = list(batches())
    for loss, O, y in seen:
        totals.add(loss, O, y)
    loss = sum(v.item() * len(y) for v, _, y in seen) / 7
    acc = sum((O.argmax(1) == y).sum().item() for _, O, y in seen) / 7
    metrics, n = totals.epoch_metrics()
    assert n == 7 and metrics == pytest.approx({"train/loss": loss, "train/acc": acc}, rel=1e-6)
    assert totals.running() == pytest.approx({"loss": loss, "acc": acc}, rel=1e-6)
    totals.reset(torch.device("cpu"))
    assert totals.running() == {} and totals.seen == 0


def test_the_running_accuracy_is_the_share_right():
    totals = TrainTotals()
    O = torch.eye(10)[:4]  # predicts classes 0, 1, 2, 3
    totals.add(torch.tensor(2.0), O, torch.tensor([0, 1, 5, 5]))
    assert totals.running() == {"loss": 2.0, "acc": 0.5} and totals.epoch_metrics() == (
        {"train/loss": 2.0, "train/acc": 0.5}, 4)


def test_step_losses_are_handed_over_once_in_order():
    totals = TrainTotals()
    assert totals.take_step_losses() == []
    totals.note_step_loss(3, torch.tensor(0.5))
    totals.note_step_loss(4, torch.tensor(0.25, dtype=torch.bfloat16))
    assert totals.take_step_losses() == [(3, 0.5), (4, 0.25)]
    assert totals.take_step_losses() == []


class Recorder:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((metrics, step))


def test_step_losses_go_to_every_logger_as_train_loss_step_at_their_steps():
    loggers = [Recorder(), Recorder()]
    log_step_losses(loggers, [(3, 0.5), (6, float("inf"))])
    for logger in loggers:
        assert logger.calls == [({"train/loss_step": 0.5}, 3), ({"train/loss_step": float("inf")}, 6)]
    log_step_losses(loggers, [])
    assert len(loggers[0].calls) == 2


def test_each_loss_says_its_options_in_its_repr():
    assert [repr(c()) for c in LOSSES.values()] == [
        "CrossEntropy()", "SquaredError(on=logits)", "Margin(margin=1.0)", "Huber(on=logits, delta=1.0)",
        "L1(on=logits)", "BinaryCrossEntropy()"]
    huber = LOSSES["huber"](delta=2.0, on="probs", default_lr=0.5)
    assert repr(huber) == "Huber(on=probs, delta=2.0)" and huber.default_lr == 0.5


def test_an_epoch_of_one_image_is_its_loss_and_its_answer():
    totals = TrainTotals()
    O, y = torch.tensor([[3.0, 0.0]]), torch.tensor([0])
    totals.add(torch.tensor(0.5), O, y)
    assert totals.epoch_metrics() == ({"train/loss": 0.5, "train/acc": 1.0}, 1.0)


class TwoReplicas:
    """A DDP strategy of two processes that saw the same images, reducing as Lightning's does: "mean"/"avg" by
    default, else the torch.distributed.ReduceOp of that name."""

    def __init__(self):
        self.ops = []

    def reduce(self, tensor, group=None, reduce_op="mean"):
        self.ops.append(reduce_op)
        if str(reduce_op).lower() in ("mean", "avg"):
            return tensor.clone()
        op = getattr(torch.distributed.ReduceOp, reduce_op.upper())  # AttributeError for a name it does not have
        assert op == torch.distributed.ReduceOp.SUM, op
        return tensor * 2


def test_under_ddp_the_epoch_sums_every_replicas_images():
    totals = TrainTotals()
    seen = list(batches())
    for loss, O, y in seen:
        totals.add(loss, O, y)
    alone, n = totals.epoch_metrics()
    strategy = TwoReplicas()
    together, both = totals.epoch_metrics(strategy)
    assert strategy.ops == ["sum"] and both == 2 * n == 14  # every replica's images counted, once each
    assert together == pytest.approx(alone, rel=1e-6)
