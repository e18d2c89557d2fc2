"""DDP with two CPU processes: disjoint shares, synced metrics, identical replicas, one MLflow run."""

from __future__ import annotations

import pytest

from conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("impl", ["scratch", "nn"])
def test_ddp_cpu_keeps_replicas_identical_and_logs_once(tiny_data, tmp_path, impl):
    check = tmp_path / "replicas.txt"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    r = run_cli([f"impl={impl}", "trainer=ddp_cpu", f"data.data_dir={tiny_data}", "data.val_size=100",
                 "trainer.max_epochs=3", "optimizer.momentum=0.9", "trainer.enable_progress_bar=false",
                 "~callbacks.progress_bar", "+callbacks.replicas._target_=softmax_lab.callbacks.ReplicaCheck",
                 f"+callbacks.replicas.path={check}", f"hydra.run.dir={tmp_path / 'run'}"], env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    world, diff = check.read_text().split()
    assert world == "2" and float(diff) == 0.0
    _, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["test/acc"] > 0.5
    assert runs[0].data.metrics["ddp/replica_max_abs_diff"] == 0.0
