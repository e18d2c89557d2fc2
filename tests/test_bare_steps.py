"""steps/bare_steps.py, the speed mode's one use of Lightning's private API: its guard detects a Lightning that no
longer counts a bare step, and refuses the speed mode in one line before any run; bare and public steps agree."""

from __future__ import annotations

import pytest
from pytorch_lightning.loops.optimization import manual

from conftest import fit_only, last_ckpt, mlflow_runs, store_of, weights
from softmax_lab.errors import ConfigError
from softmax_lab.jobs.train_job import train
from softmax_lab.steps import bare_steps


@pytest.fixture
def fresh_probe():
    bare_steps.lightning_counts_bare_steps.cache_clear()
    yield
    bare_steps.lightning_counts_bare_steps.cache_clear()


def test_this_lightning_counts_a_bare_step_once(fresh_probe):
    assert bare_steps.lightning_counts_bare_steps()


def test_a_lightning_that_injects_no_counters_refuses_the_speed_mode_before_any_run(make_cfg, tmp_path, monkeypatch,
                                                                                   fresh_probe):
    monkeypatch.setattr(manual._ManualOptimization, "on_run_start", lambda self: None)  # what Lightning injects: gone
    with pytest.raises(ConfigError, match=r"data.batches_per_step>1 \(the speed mode\) counts its SGD steps through "
                                          r"Lightning internals .* Fix: data.batches_per_step=1"):
        train(make_cfg("data.batches_per_step=3"))
    assert not (tmp_path / "mlflow.db").exists() or mlflow_runs(store_of(tmp_path))[1] == []
    fit_only(make_cfg("data.batches_per_step=1", "logger=none"))  # the default mode does not depend on them


@pytest.mark.parametrize("impl", ["scratch", "nn", "func"])
def test_bare_and_public_steps_train_the_same_model(make_cfg, impl, monkeypatch):
    from softmax_lab.steps import lightning_module

    common = [f"impl={impl}", "logger=none", "data.batch_size=50", "data.batches_per_step=3",
              "+trainer.precision=64-true", "optimizer.momentum=0.9", "+trainer.accumulate_grad_batches=2",
              "+trainer.gradient_clip_val=0.05"]
    bare = make_cfg(*common)
    fit_only(bare)
    monkeypatch.setattr(lightning_module, "step_hooks_in_use", lambda trainer: True)  # as when a callback listens
    public = make_cfg(*common)
    public.paths.output_dir += "-public"
    fit_only(public)
    assert last_ckpt(bare)["global_step"] == last_ckpt(public)["global_step"] == 10
    assert (weights(bare) - weights(public)).abs().max() <= 1e-12
