"""DivergenceGuard by itself: the first non-finite loss stops the run at its step, with the losses before it and the
advice for a first step; on the CPU at once, in the deferred mode (an accelerator's) at the next read, every
READ_EVERY steps. The guard is fed losses by hand; the run's clock is a counter."""

from __future__ import annotations

import math

import pytest
import torch

from softmax_lab.errors import DivergenceError
from softmax_lab.steps.divergence import CURVE, READ_EVERY, DivergenceGuard

NAN = float("nan")


class Run:
    """The guard with a step counter, what it handed on_divergence and what it asked the advice."""

    def __init__(self, deferred: bool | None = False, device: str = "cpu"):
        self.step, self.curves, self.asked = 0, [], []
        self.guard = DivergenceGuard(torch.device(device), advice=self.advice, step_of=lambda: self.step,
                                     deferred=deferred, on_divergence=self.curves.append)

    def advice(self, before_any_step: bool) -> str:
        self.asked.append(before_any_step)
        return "advice"

    def feed(self, *losses: float) -> None:
        for loss in losses:
            self.step += 1
            self.guard.check(torch.tensor(loss))


def test_the_mode_follows_the_device_unless_given():
    assert Run(deferred=None).guard.deferred is False
    assert Run(deferred=None, device="meta").guard.deferred is True  # any accelerator: a read would stall it
    assert Run(deferred=True).guard.deferred is True


def test_on_the_cpu_the_first_non_finite_loss_stops_at_its_step_with_the_losses_before_it():
    run = Run()
    run.feed(1.0, 2.0, 3.0)
    with pytest.raises(DivergenceError) as e:
        run.feed(NAN)
    assert (e.value.epoch, e.value.step) == (0, 4) and math.isnan(e.value.loss) and run.asked == [False]
    [curve] = run.curves
    assert curve[:3] == [(1, 1.0), (2, 2.0), (3, 3.0)] and curve[3][0] == 4 and math.isnan(curve[3][1])


def test_a_loss_not_finite_at_the_first_step_asks_for_the_first_steps_advice():
    run = Run()
    with pytest.raises(DivergenceError):
        run.feed(float("inf"))
    assert run.asked == [True] and run.curves == [[(1, float("inf"))]]


def test_the_curve_holds_the_last_losses_only():
    run = Run()
    run.feed(*[float(i) for i in range(1, 71)])
    with pytest.raises(DivergenceError):
        run.feed(NAN)
    [curve] = run.curves
    assert len(curve) == CURVE and curve[0] == (71 - CURVE + 1, 71.0 - CURVE + 1) and curve[-1][0] == 71


def test_the_epoch_is_said():
    run = Run()
    run.guard.start_epoch(3)
    with pytest.raises(DivergenceError) as e:
        run.feed(NAN)
    assert e.value.epoch == 3


def test_deferred_the_first_bad_step_is_read_every_read_every_steps():
    run = Run(deferred=True)
    run.feed(1.0, 2.0, NAN, float("inf"), 5.0, 6.0, 7.0)  # 7 checks: not read yet
    assert run.curves == []
    with pytest.raises(DivergenceError) as e:
        run.feed(8.0)  # the 8th check reads
    assert READ_EVERY == 8 and e.value.step == 3 and math.isnan(e.value.loss) and run.asked == [False]
    [curve] = run.curves  # up to the first bad step
    assert [s for s, _ in curve] == [1, 2, 3] and curve[:2] == [(1, 1.0), (2, 2.0)] and math.isnan(curve[2][1])


def test_deferred_the_count_starts_again_after_each_read():
    run = Run(deferred=True)
    run.feed(*[1.0] * READ_EVERY)  # read: nothing
    run.feed(NAN, *[1.0] * (READ_EVERY - 2))  # 7 more checks: not read yet
    assert run.curves == []
    with pytest.raises(DivergenceError) as e:
        run.feed(1.0)
    assert e.value.step == READ_EVERY + 1


def test_deferred_a_bad_first_step_asks_for_the_first_steps_advice():
    run = Run(deferred=True)
    run.feed(NAN)
    with pytest.raises(DivergenceError):
        run.guard.read()
    assert run.asked == [True]


def test_deferred_the_curve_holds_the_last_losses_only():
    run = Run(deferred=True)
    run.feed(*[float(i) for i in range(1, 79)])  # read at every 8th: nothing
    run.feed(NAN)  # step 79, not read yet
    with pytest.raises(DivergenceError):
        run.guard.read()
    [curve] = run.curves
    assert [s for s, _ in curve] == list(range(79 - CURVE + 1, 80)) and curve[0][1] == 79.0 - CURVE + 1


def test_a_new_epoch_forgets_a_note_not_read():
    # the epoch's end reads before the next starts; a note left over is not the new epoch's
    run = Run(deferred=True)
    run.feed(NAN)
    run.guard.start_epoch(1)
    run.guard.read()
    assert run.curves == []


def test_without_a_listener_the_error_still_comes():
    guard = DivergenceGuard(torch.device("cpu"), advice=lambda first: "", step_of=lambda: 5, deferred=False)
    with pytest.raises(DivergenceError):
        guard.check(torch.tensor(NAN))
