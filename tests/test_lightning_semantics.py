"""Trainer flags do what Lightning documents, in SGD steps, in the default mode and the speed mode, or are
refused before any run; the implementations and modes train the same model; one step axis for metrics.

The tiny data has 500 training images: batch 50 gives 10 minibatches (SGD steps) an epoch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import fit_only, last_ckpt, mlflow_runs, weights
from softmax_lab.errors import ConfigError
from softmax_lab.jobs.train_job import train

B50 = ["data.batch_size=50"]
SPEED = ["data.batches_per_step=3"]


@pytest.mark.parametrize("mode", [[], SPEED], ids=["default", "speed"])
@pytest.mark.parametrize("impl", ["scratch", "nn"])  # func steps through scratch's HandSteps: its own test below
@pytest.mark.parametrize("flags, steps", [
    (["+trainer.limit_train_batches=3"], 6),
    (["+trainer.limit_train_batches=0.45"], 8),  # int(10 x 0.45) = 4 an epoch
    (["+trainer.max_steps=7", "trainer.max_epochs=5"], 7),
    (["+trainer.accumulate_grad_batches=4"], 6),  # 10 minibatches: steps after 4, 8 and the epoch's last
    (["+trainer.check_val_every_n_epoch=2", "trainer.max_epochs=3"], 30),  # last.ckpt every epoch regardless
])
def test_flags_that_count_batches_count_sgd_steps(make_cfg, impl, mode, flags, steps):
    cfg = make_cfg(f"impl={impl}", "logger=none", *B50, *mode, *flags)
    assert fit_only(cfg).trainer.global_step == steps
    assert last_ckpt(cfg)["global_step"] == steps


@pytest.mark.parametrize("mode", [[], SPEED], ids=["default", "speed"])
def test_func_counts_sgd_steps_as_lightning_does(make_cfg, mode):
    cfg = make_cfg("impl=func", "logger=none", *B50, *mode, "+trainer.accumulate_grad_batches=4",
                   "+trainer.max_steps=5", "trainer.max_epochs=5")
    assert fit_only(cfg).trainer.global_step == 5  # 3 steps an epoch (after 4, 8, 10 minibatches), stopped at 5


@pytest.mark.parametrize("recipe", [
    ["+trainer.accumulate_grad_batches=3", "+trainer.gradient_clip_val=0.05"],
    ["+trainer.gradient_clip_val=0.002", "+trainer.gradient_clip_algorithm=value"],
], ids=["accumulate-and-clip-norm", "clip-value"])
def test_both_impls_in_both_modes_train_the_same_model(make_cfg, recipe):
    # float64 (Lightning's 64-true precision) so that only a different computation could tell them apart
    common = ["logger=none", *B50, "+trainer.precision=64-true", "optimizer.momentum=0.9",
              "optimizer.weight_decay=1e-3", "loss=huber", *recipe]
    runs = {(impl, bps): make_cfg(f"impl={impl}", f"data.batches_per_step={bps}", *common)
            for impl in ("nn", "scratch", "func") for bps in (1, 3)}
    for (impl, bps), cfg in runs.items():
        cfg.paths.output_dir += f"-{impl}-{bps}"
        fit_only(cfg)
    reference = weights(runs["nn", 1])  # Lightning's own automatic optimisation
    assert reference.dtype == torch.float64
    for key, cfg in runs.items():
        torch.testing.assert_close(weights(cfg), reference, rtol=0, atol=1e-12, msg=str(key))
        assert last_ckpt(cfg)["global_step"] == last_ckpt(runs["nn", 1])["global_step"]


def test_fast_dev_run_records_nothing_and_writes_no_checkpoint(make_cfg, tmp_path, capsys):
    cfg = make_cfg("+trainer.fast_dev_run=true")
    metrics = train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists() or \
        not any((Path(cfg.paths.output_dir) / "checkpoints").iterdir())
    assert not (tmp_path / "mlflow.db").exists() or mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")[1] == []
    assert "test/acc" in metrics and "nothing was recorded or checkpointed" in capsys.readouterr().out


@pytest.mark.parametrize("mode", [[], SPEED], ids=["default", "speed"])
def test_fast_dev_run_takes_its_batches_in_sgd_steps(make_cfg, mode):
    Recorder.steps, Recorder.batches = [], {}
    fit_only(make_cfg("logger=none", *B50, *mode, "+trainer.fast_dev_run=2",
                      f"+callbacks.recorder._target_={__name__}.Recorder"))
    assert Recorder.steps == [2]


class Recorder(__import__("pytorch_lightning").Callback):
    """Records the labels of every training minibatch per epoch and the final global step."""

    steps: list = []
    batches: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        minibatches = batch if isinstance(batch, list) else [batch]
        Recorder.batches.setdefault(trainer.current_epoch, []).extend(y.tolist() for _, y in minibatches)

    def on_train_end(self, trainer, pl_module):
        Recorder.steps.append(trainer.global_step)


def test_overfit_batches_trains_on_the_same_first_batches_every_epoch(make_cfg):
    Recorder.batches = {}
    cfg = make_cfg("logger=none", *B50, "+trainer.overfit_batches=2", "trainer.max_epochs=3",
                   f"+callbacks.recorder._target_={__name__}.Recorder")
    fit_only(cfg)
    assert len(Recorder.batches) == 3 and Recorder.batches[0] == Recorder.batches[1] == Recorder.batches[2]
    assert len(Recorder.batches[0]) == 2  # two minibatches, in the split's own order (no shuffle)


def test_val_check_interval_validates_mid_epoch_but_train_metrics_cover_the_epoch(make_cfg, tmp_path):
    cfg = make_cfg("impl=scratch", *B50, "+trainer.val_check_interval=0.5", "trainer.max_epochs=2")
    train(cfg)
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rid = runs[0].info.run_id
    steps = {k: [m.step for m in client.get_metric_history(rid, k)] for k in ("val/acc", "train/acc")}
    assert steps == {"val/acc": [5, 10, 15, 20], "train/acc": [10, 20]}
    ckpt = last_ckpt(cfg)
    assert ckpt["global_step"] == 20 and [h["epoch"] for h in ckpt["history"]] == [0, 1]


def test_early_stopping_stops_as_lightning_documents(make_cfg):
    es = "+callbacks.early_stopping"
    cfg = make_cfg("logger=none", *B50, "trainer.max_epochs=6",
                   f"{es}._target_=pytorch_lightning.callbacks.EarlyStopping", f"{es}.monitor=val/acc",
                   f"{es}.mode=max", f"{es}.patience=1", f"{es}.min_delta=1.0")
    fit_only(cfg)
    assert last_ckpt(cfg)["global_step"] == 20  # epoch 1 sets the best, epoch 2 fails to beat it by 1.0: stop


PRECISIONS = [(impl, precision) for impl in ("scratch", "nn") for precision in ("64-true", "bf16-mixed")] + \
    [("func", "bf16-mixed"), ("scratch", "bf16-true"), ("nn", "16-true")]


@pytest.mark.parametrize("impl, precision", PRECISIONS)
def test_precision_plugins_train_test_and_draw(make_cfg, impl, precision):
    cfg = make_cfg(f"impl={impl}", "logger=none", f"+trainer.precision={precision}")
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.5 and (Path(cfg.paths.output_dir) / "predictions.png").exists()
    if precision.endswith("-true"):  # the precision asked for is the one the weights were trained in
        dtype = {"64-true": torch.float64, "bf16-true": torch.bfloat16, "16-true": torch.float16}[precision]
        assert weights(cfg).dtype == dtype


@pytest.mark.parametrize("impl, precision", PRECISIONS)
def test_the_trainer_runs_at_the_precision_asked_for(make_cfg, impl, precision):
    from softmax_lab.jobs.training_run import build_run

    assert build_run(make_cfg(f"impl={impl}", f"+trainer.precision={precision}")).trainer.precision == precision


@pytest.mark.parametrize("impl", ["scratch", "nn"])
def test_metrics_share_one_step_axis_of_sgd_steps(make_cfg, tmp_path, impl):
    cfg = make_cfg(f"impl={impl}", *B50, *SPEED, "trainer.log_every_n_steps=4", "trainer.max_epochs=2")
    train(cfg)
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rid = runs[0].info.run_id
    steps = {k: [m.step for m in client.get_metric_history(rid, k)] for k in
             ("train/loss", "val/acc", "time/epoch_s", "train/loss_step", "epoch")}
    assert steps == {"train/loss": [10, 20], "val/acc": [10, 20], "time/epoch_s": [10, 20],
                     "train/loss_step": [4, 8, 12, 16, 20], "epoch": [10, 20]}
    # the epoch (1-based) at the steps of the validation: the x axis of a sweep's curves (tracking/uris.sweep_view)
    assert [m.value for m in client.get_metric_history(rid, "epoch")] == [1, 2]
    # one number per run, at step 0: MLflow draws a metric no run logged at a step >= 1 as bars, not as a line
    assert [m.step for m in client.get_metric_history(rid, "test/acc")] == [0]


def test_log_every_n_steps_zero_logs_no_step_losses_as_in_lightning(make_cfg, tmp_path):
    train(make_cfg(*B50, "trainer.log_every_n_steps=0"))
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_metric_history(runs[0].info.run_id, "train/loss_step") == []


@pytest.mark.parametrize("flags, refusal", [
    (SPEED + ["+trainer.val_check_interval=0.5"], "trainer.val_check_interval=0.5 counts Lightning steps"),
    (SPEED + ["+trainer.overfit_batches=2"], "trainer.overfit_batches=2 counts Lightning steps"),
    (SPEED + ["+callbacks.model_checkpoint.every_n_train_steps=5"], "every_n_train_steps=5"),
    (["impl=scratch", "+trainer.precision=16-mixed"], "trainer.precision=16-mixed cannot be honoured by impl=scratch"),
    (["impl=func", "+trainer.precision=16-mixed"], "trainer.precision=16-mixed cannot be honoured by impl=func"),
    (["impl=func", "trainer.devices=2"], "which cannot train impl=func (it has no autograd parameters)"),
    (["impl=scratch", "trainer.devices=2"], "DDPStrategy with 2 process(es) wraps the model"),
    (["impl=scratch", "+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is not allowed"),
    (["impl=scratch", "+trainer.gradient_clip_algorithm=max"], "trainer.gradient_clip_algorithm='max'"),
])
def test_flags_that_cannot_be_honoured_are_refused_before_any_run(make_cfg, tmp_path, flags, refusal):
    with pytest.raises(ConfigError, match=__import__("re").escape(refusal)):
        train(make_cfg(*flags))
    assert not (tmp_path / "mlflow.db").exists()


def test_a_callback_sees_every_sgd_step_of_the_speed_mode(make_cfg):
    # every SGD step goes through Lightning's optimizer step: a callback's per-step hook runs once per SGD step
    common = ["logger=none", *B50, *SPEED]
    for impl in ("scratch", "nn"):
        plain = make_cfg(f"impl={impl}", *common)
        hooked = make_cfg(f"impl={impl}", *common, f"+callbacks.count._target_={__name__}.CountOptimizerSteps")
        hooked.paths.output_dir += "-hooked"
        CountOptimizerSteps.calls = 0
        runs = fit_only(plain).trainer, fit_only(hooked).trainer
        assert CountOptimizerSteps.calls == 2 * 10  # once per SGD step, not per Lightning step
        assert runs[0].global_step == runs[1].global_step == 20
        assert runs[0].callback_metrics["train/loss"] == runs[1].callback_metrics["train/loss"]


class CountOptimizerSteps(__import__("pytorch_lightning").Callback):
    """Listens to a per-step hook, as a user's callback might (added by config above)."""

    calls = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        CountOptimizerSteps.calls += 1
