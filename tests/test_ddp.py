"""DDP with two CPU processes: disjoint shares, synced metrics, identical replicas, one MLflow run; rank 1
running late (as on a loaded machine) must not leave the processes waiting on each other."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("impl", ["func", "nn"])  # scratch's steps are func's but for the gradient: one hand impl
def test_ddp_cpu_keeps_replicas_identical_and_logs_once(tiny_data, tmp_path, impl):
    check = tmp_path / "replicas.txt"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(Path(__file__).parent)}
    r = run_cli([f"impl={impl}", "trainer=ddp_cpu", f"data.data_dir={tiny_data}", "data.val_size=100",
                 "trainer.max_epochs=3", "optimizer.momentum=0.9", "trainer.enable_progress_bar=false",
                 "~callbacks.progress_bar",
                 "callbacks.initial_checkpoint._target_=ddp_helpers.LateRankOneInitialCheckpoint",
                 "+callbacks.replicas._target_=softmax_lab.trainer.callbacks.ReplicaCheck",
                 f"+callbacks.replicas.path={check}", f"hydra.run.dir={tmp_path / 'run'}"], env=env, timeout=180,
                measured=impl == "nn")  # coverage traces one of the two: it slows both ranks
    assert r.returncode == 0, r.stdout + r.stderr
    world, diff = check.read_text().split()
    assert world == "2" and float(diff) == 0.0
    _, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["test/acc"] > 0.5
    assert runs[0].data.metrics["ddp/replica_max_abs_diff"] == 0.0


def test_ddp_cpu_divergence_stops_every_process_with_one_message_and_a_failed_run(tiny_data, tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    r = run_cli(["impl=scratch", "trainer=ddp_cpu", "loss=mse", "optimizer.lr=1e6", f"data.data_dir={tiny_data}",
                 "data.val_size=100", "trainer.max_epochs=30", "trainer.enable_progress_bar=false",
                 f"hydra.run.dir={tmp_path / 'run'}"], env=env, timeout=180, measured=True)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out, out
    assert out.count("training diverged") == 1, out
    _, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "diverged" in runs[0].data.tags["failure_reason"]


def test_ddp_inside_a_local_multirun_is_refused_per_job(tiny_data, tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    r = run_cli(["-m", "trainer=ddp_cpu", "loss=ce,mse", f"data.data_dir={tiny_data}", "data.val_size=100",
                 "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"], env=env, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out, out
    assert out.count("DDP processes inside a local Hydra multirun") == 2 and "(2 jobs, 2 not finished" in out


def test_a_ddp_run_killed_after_training_is_finished_by_its_resume(tiny_data, tmp_path):
    """Killed while testing (training done): the resume tests and records it. Rank 1 has no MLflow run to ask; it
    used to refuse 'nothing left to train' unseen, and Lightning killed rank 0 (exit 137, the run left RUNNING)."""
    from mlflow.tracking import MlflowClient

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = ["trainer=ddp_cpu", f"data.data_dir={tiny_data}", "data.val_size=100", "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false", "~callbacks.progress_bar", f"hydra.run.dir={tmp_path / 'run'}"]
    assert run_cli(args, env=env, timeout=180).returncode == 0
    _, [run] = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    MlflowClient(env["MLFLOW_TRACKING_URI"]).set_terminated(run.info.run_id, "KILLED")  # as if killed while testing
    r = run_cli([*args, f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"], env=env, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing left to train" in r.stdout and "finishing its KILLED run" in r.stdout
    _, [again] = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
