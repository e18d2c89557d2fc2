"""The three implementations take the same steps through the module (steps/hand_steps.py) for the SGD options that
the plain runs leave at their defaults: momentum with and without Nesterov, gradient clipping in the speed mode.
In process on the tiny data, one epoch: fast enough for the fast loop (the command-line version on the real data is
tests/test_textbook.py)."""

from __future__ import annotations

import pytest
import torch

from conftest import fit_only, weights


@pytest.mark.parametrize("nesterov", [False, True])
def test_func_and_scratch_take_nns_momentum_steps(make_cfg, nesterov):
    opts = ["optimizer.momentum=0.9", f"optimizer.nesterov={str(nesterov).lower()}", "trainer.max_epochs=1",
            "optimizer.lr=0.05"]
    found = {impl: weights(fit_only(make_cfg(f"impl={impl}", *opts)).cfg) for impl in ("nn", "func", "scratch")}
    torch.testing.assert_close(found["func"], found["nn"], rtol=0, atol=1e-6)
    torch.testing.assert_close(found["scratch"], found["nn"], rtol=0, atol=1e-6)


def test_nn_clips_its_gradients_in_the_speed_mode_as_in_the_default_mode(make_cfg):
    opts = ["impl=nn", "trainer.max_epochs=1", "+trainer.gradient_clip_val=0.01", "optimizer.lr=0.5"]
    default = weights(fit_only(make_cfg(*opts)).cfg)
    speed = weights(fit_only(make_cfg(*opts, "data.batches_per_step=2")).cfg)
    plain = weights(fit_only(make_cfg("impl=nn", "trainer.max_epochs=1", "optimizer.lr=0.5")).cfg)
    torch.testing.assert_close(speed, default, rtol=0, atol=1e-6)
    assert (plain - default).abs().max() > 1e-3  # the clipping changed the steps


def test_an_accumulation_windows_loss_is_its_minibatches_mean():
    from softmax_lab.steps.hand_steps import window_mean

    one = torch.tensor(5.0)
    assert window_mean([one]) is one  # the usual window of one: no stacking, no new tensor per step
    assert window_mean([torch.tensor(1.0), torch.tensor(3.0)]).item() == 2.0
    assert window_mean([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(6.0)]).item() == 3.0


def test_a_lightning_that_no_longer_counts_bare_steps_is_one_line_with_the_fix(monkeypatch):
    import pytorch_lightning as pl

    from softmax_lab.errors import ConfigError
    from softmax_lab.steps import bare_steps

    monkeypatch.setattr(bare_steps, "lightning_counts_bare_steps", lambda: False)
    with pytest.raises(ConfigError) as e:
        bare_steps.check_supported()
    assert str(e.value) == (f"data.batches_per_step>1 (the speed mode) counts its SGD steps through Lightning "
                            f"internals that pytorch-lightning {pl.__version__} no longer has. Fix: "
                            "data.batches_per_step=1, or the pinned versions (make install).")


def test_evaluation_metrics_are_logged_at_the_sgd_step():
    from types import SimpleNamespace

    from softmax_lab.steps.eval_hooks import EvalHooks

    class Logger:
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step=None):
            self.calls.append((metrics, step))

    first, second = Logger(), Logger()
    EvalHooks.log_at_step(SimpleNamespace(loggers=[first, second], global_step=7), {"val/acc": 0.5})
    assert first.calls == second.calls == [({"val/acc": 0.5}, 7)]
