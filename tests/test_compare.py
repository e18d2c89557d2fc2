"""Comparing runs in MLflow, read back through MLflow's own client: numbers as people read them, the splits as
dataset inputs, logged models named after their runs with their test metrics, a diverged run's blow-up, a killed
run's way on, a sweep parent that links its best run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import mlflow_runs
from softmax_lab.errors import DivergenceError
from softmax_lab.jobs.train_job import train
from softmax_lab.tracking.pyfunc_model import model_name
from softmax_lab.tracking.run_fields import readable
from softmax_lab.tracking.sweep_summary import parent_description


def test_readable_numbers_drop_float32_noise_and_keep_everything_else():
    assert readable(torch.tensor(0.844).item()) == 0.844  # .item() of a float32: 0.843999981880188
    assert readable(0.1 + 0.2) == 0.3 and readable(1.0755642578125) == 1.075564  # float64: 7 significant digits
    assert readable(2) == 2.0 and readable(float("nan")) != readable(float("nan"))
    assert readable(float("inf")) == math.inf
    for v in np.random.default_rng(0).random(200).astype(np.float32):
        r = readable(float(v))
        assert abs(r - float(v)) <= 5e-7 * float(v) and len(repr(r).replace(".", "").lstrip("0")) <= 7


def noisy(metrics: dict) -> list[str]:
    return [f"{k}={v!r}" for k, v in metrics.items()
            if math.isfinite(v) and float(np.float32(v)) == v and len(repr(v)) > 10]


def test_a_run_records_clean_numbers_its_datasets_and_a_named_model_with_its_test_metrics(make_cfg, tmp_path):
    import mlflow

    train(make_cfg("loss=ce", "impl=func", "trainer.max_epochs=2"))
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = runs[0]
    rid = run.info.run_id
    assert not noisy(run.data.metrics)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"fashion-mnist train", "fashion-mnist val", "fashion-mnist test"}
    assert [t.value for t in inputs["fashion-mnist train"].tags] == ["training"]
    assert '"num_rows": 500' in inputs["fashion-mnist train"].dataset.profile  # the tiny data: 600 - 100 held out
    assert len({d.dataset.digest for d in inputs.values()}) == 3
    # one point per test metric: linked to the model when logged, not logged twice
    assert len(client.get_metric_history(rid, "test/acc")) == 1
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert [m.name for m in models] == [model_name(run.info.run_name, rid)] == [f"loss=ce impl=func ({rid[:8]})"]
    assert model_name("loss=ce impl=nn optimizer.lr=0.05", "abcdef123") == \
        "loss=ce impl=nn optimizer_lr=0_05 (abcdef12)"
    assert models[0].tags["loss"] == "ce" and models[0].tags["impl"] == "func"
    linked = {m.key: m.value for m in models[0].metrics}
    assert linked["test/acc"] == run.data.metrics["test/acc"] and "test/ece" in linked and "val/acc" not in linked
    assert models[0].status.to_proto() == mlflow.entities.LoggedModelStatus.READY.to_proto()


def test_a_registered_version_carries_tags_and_a_description(make_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    train(make_cfg("loss=mse", "impl=scratch", "logger.registered_model_name=fmnist"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = client.get_model_version("fmnist", "1")
    assert version.tags["loss"] == "mse" and version.tags["impl"] == "scratch"
    assert float(version.tags["test/acc"]) > 0.5 and "test/ece" in version.tags
    assert version.description.startswith("loss=mse impl=scratch") and "test/acc" in version.description


def test_a_diverged_run_shows_its_blow_up(make_cfg, tmp_path):
    with pytest.raises(DivergenceError):
        train(make_cfg("loss=mse", "optimizer.lr=1e6", "data.batch_size=50"))
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert runs[0].info.status == "FAILED"
    curve = client.get_metric_history(runs[0].info.run_id, "train/loss_step")
    steps, values = [m.step for m in curve], [m.value for m in curve]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # every finite step up to the divergence
    assert values[0] < 10 and all(v < 1e300 for v in values)  # never MLflow's stand-in for inf (the largest float)
    tags = runs[0].data.tags  # the non-finite value said as such, where it happened; the run's state says why
    assert tags["nonfinite/train/loss_step"] in {f"{x} at step {len(steps) + 1}" for x in ("inf", "nan", "-inf")}
    assert tags["state"] == "diverged"


def test_a_sweep_parent_links_its_best_run_and_says_the_shared_overrides_once():
    rows = [{"job": j, "overrides": f"loss={loss} trainer.max_epochs=2", "loss": loss, "impl": "nn",
             "status": "FINISHED", "val_acc_best": acc, "test_acc": acc, "test_ece": 0.1, "test_nll": 0.5,
             "epoch_s": 0.5, "run_id": f"run{j}", "failure_reason": ""} for j, (loss, acc) in
            enumerate([("ce", 0.8), ("mse", 0.7)])]
    text = parent_description(rows, rows[0], 0, "3")
    assert "[job 0](#/experiments/3/runs/run0)" in text
    assert "Every job: `trainer.max_epochs=2`." in text
    assert "| **[0](#/experiments/3/runs/run0) best** | loss=ce |" in text
    assert "| [1](#/experiments/3/runs/run1) | loss=mse |" in text
