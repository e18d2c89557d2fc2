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
