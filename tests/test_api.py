"""The Python API (softmax_lab.jobs.api) for notebooks: the runs, store, checkpoints and pictures of the command line,
with the metrics and the run id returned; Hydra's own compose API reads conf/ once softmax_lab is imported; the
chapter's notebook (docs/chapter.ipynb) runs top to bottom."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from conftest import QUIET, ROOT, mlflow_runs, run_cli
from softmax_lab.errors import ConfigError
from softmax_lab.jobs import api
from softmax_lab.jobs.train_job import train as train_job


@pytest.fixture
def tiny(tmp_path, tiny_data, monkeypatch):
    """Overrides for a quick run on the tiny data, its outputs under tmp_path, MLflow in tmp_path/mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return [f"data.data_dir={tiny_data}", "data.val_size=100", "trainer.max_epochs=2", f"paths.root_dir={tmp_path}",
            *QUIET]


def test_train_returns_its_metrics_and_run_and_keeps_what_the_cli_keeps(tiny, tmp_path):
    result = api.train("loss=huber", "impl=scratch", *tiny)
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = runs
    assert result.run_id == run.info.run_id and run.info.status == "FINISHED"
    assert result.metrics["test/acc"] == pytest.approx(run.data.metrics["test/acc"])
    assert run.info.run_name == "loss=huber impl=scratch data.val_size=100 trainer.max_epochs=2"  # as the CLI names it
    assert run.data.tags["kind"] == "train" and "paths.root_dir=" in run.data.tags["overrides"]
    # a run dir of its own under <root>/outputs/runs/<date>/<time>, as the command line makes it
    assert result.run_dir.parent.parent == tmp_path / "outputs" / "runs" and run.data.tags["run_dir"] == str(
        result.run_dir)
    assert {"curves", "reliability", "confusion_matrix", "samples"} <= set(result.pictures)
    assert result.best_checkpoint.parent == result.run_dir / "checkpoints"
    mlflow.set_tracking_uri(result.tracking_uri)
    assert len(mlflow.pyfunc.load_model(result.model_uri).predict(np.full((3, 784), 0.5, np.float32))) == 3
    assert result.link.endswith(f"/runs/{run.info.run_id}?workflowType=machine_learning")


def test_evaluate_returns_the_eval_run(tiny, tmp_path):
    trained = api.train("impl=nn", *tiny)
    result = api.evaluate(f"ckpt_path={trained.best_checkpoint}", f"data_dir={tiny[0].split('=', 1)[1]}",
                          f"paths.root_dir={tmp_path}")
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    evaluation = next(r for r in runs if r.data.tags["kind"] == "eval")
    assert result.run_id == evaluation.info.run_id != trained.run_id
    assert result.metrics["test/acc"] == pytest.approx(trained.metrics["test/acc"])


def test_logger_none_gives_no_run_id(tiny):
    result = api.train("logger=none", *tiny)
    assert result.run_id is None and result.model_uri is None and result.link is None and "test/acc" in result.metrics


def test_a_sweep_flag_is_refused_in_one_line(tiny):
    with pytest.raises(ConfigError, match="one job per call"):
        api.train("-m", "loss=ce,mse", *tiny)


def test_hydras_own_compose_reads_the_configs_and_train_says_what_is_missing():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["loss=mse"])  # ${project_root:} resolves: softmax_lab registered it
    assert Path(cfg.paths.root_dir) == ROOT
    with pytest.raises(ConfigError, match=r"paths.output_dir is Hydra's run dir .* Fix: softmax_lab.jobs.api"):
        train_job(cfg)


@pytest.mark.slow
def test_the_api_and_the_command_line_train_the_same_run(tiny, tmp_path):
    result = api.train("loss=mse", "impl=func", *tiny)
    r = run_cli(["loss=mse", "impl=func", *tiny], env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'cli.db'}"})
    assert r.returncode == 0, r.stderr[-2000:]
    _, [cli_run] = mlflow_runs(f"sqlite:///{tmp_path / 'cli.db'}")
    _, [api_run] = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert api_run.data.params == cli_run.data.params and api_run.info.run_name == cli_run.info.run_name
    for key in ("test/acc", "test/loss", "test/ece", "val/acc_best"):
        assert api_run.data.metrics[key] == cli_run.data.metrics[key], key  # bit for bit
    assert result.metrics["test/acc"] == pytest.approx(cli_run.data.metrics["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_the_chapter_notebook_runs_top_to_bottom(tiny_data, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("CHAPTER_EPOCHS", "2")
    monkeypatch.setenv("CHAPTER_OVERRIDES", f"data.data_dir={tiny_data} data.val_size=100 paths.root_dir={tmp_path}")
    for key in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START"):  # the kernel is not measured
        monkeypatch.delenv(key, raising=False)
    nb = nbformat.read(ROOT / "docs" / "chapter.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the two reliability diagrams
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted((r.data.tags["impl"], r.data.tags["loss"]) for r in runs) == sorted(
        [("scratch", "ce"), ("nn", "ce"), ("func", "ce"), ("nn", "mse"), ("nn", "margin"), ("nn", "huber")])
    assert all(r.data.params["trainer.max_epochs"] == "2" for r in runs)
