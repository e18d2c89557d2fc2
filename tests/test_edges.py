"""Truthful at the edges: signals at any point, stores MLflow's way, a full or refusing disk, divergence advice."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, mlflow_runs, unmeasured_env
from softmax_lab.errors import RunInterrupted, StorageError, TrackingError
from softmax_lab.jobs.train_job import train
from softmax_lab.signals import INTERRUPTS, protected

# ---------------------------------------------------------------------------------------------
# Signals


def test_a_signal_waits_for_a_protected_write_then_ends_the_run():
    with INTERRUPTS.installed():
        with pytest.raises(RunInterrupted) as e:
            with protected():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                finished_the_write = True
        assert finished_the_write and e.value.exit_code == 143


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["softmax_lab.pictures.charts.learning_curves",
                                   "softmax_lab.tracking.run.MlflowTracker.log_model"])
def test_a_signal_after_training_ends_the_run_at_once_recorded_killed(make_cfg, tmp_path, monkeypatch, phase):
    def slow(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the signal must cut this short

    monkeypatch.setattr(phase, slow)
    t0 = time.perf_counter()
    with pytest.raises(RunInterrupted) as e:
        train(make_cfg("trainer.max_epochs=1"))
    assert time.perf_counter() - t0 < 25 and e.value.recorded
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert runs[0].data.tags["mlflow.note.content"].startswith("**KILLED** (interrupted by SIGTERM)")
    assert runs[0].data.metrics["val/acc"] > 0  # what it measured before the signal is kept


# ---------------------------------------------------------------------------------------------
# Stores


def test_a_relative_sqlite_uri_means_what_mlflow_says(make_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///relative.db")
    train(make_cfg("trainer.max_epochs=1"))
    assert (tmp_path / "relative.db").exists() and (tmp_path / "mlartifacts").is_dir()
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'relative.db'}")
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_another_applications_sqlite_file_is_refused_untouched(make_cfg, tmp_path, monkeypatch):
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO users VALUES (1, 'ada')")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(TrackingError, match=r"holds another application's tables \(users\), not an MLflow store"):
        train(make_cfg("trainer.max_epochs=1"))
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


@pytest.mark.slow
def test_many_processes_starting_on_one_fresh_store_all_connect(tmp_path):
    code = ("import sys; sys.path.insert(0, 'src'); from softmax_lab.tracking.store import connect; "
            f"print(connect('sqlite:///{tmp_path / 'fresh.db'}', 'fashion-mnist-softmax')[1])")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=unmeasured_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e[-500:] for _, e in outs]
    assert len({o.strip().splitlines()[-1] for o, _ in outs}) == 1  # one experiment, the same id for all


def test_the_final_status_is_written_first_whatever_fails_after_it(make_cfg, tmp_path, monkeypatch):
    from softmax_lab.tracking.logger import BufferedMlflowLogger

    def full_disk(self):
        raise TrackingError("the MLflow store refused a write (database or disk is full)")

    monkeypatch.setattr(BufferedMlflowLogger, "flush", full_disk)
    with pytest.raises(TrackingError):
        train(make_cfg("trainer.max_epochs=1"))
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_a_full_disk_under_the_run_dir_is_one_clear_error_and_a_failed_run(make_cfg, tmp_path, monkeypatch):
    from softmax_lab.trainer.checkpoint_io import AtomicCheckpointIO

    def no_space(self, checkpoint, path, storage_options=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", no_space)
    with pytest.raises(StorageError, match=r"cannot write .*last.ckpt: the disk is full. Fix: free space"):
        train(make_cfg("trainer.max_epochs=1"))
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [r.info.status for r in runs] == ["FAILED"] and "No space left" in runs[0].data.tags["failure_reason"]


def test_checkpoints_are_written_whole_or_not_at_all(tmp_path):
    from softmax_lab.trainer.checkpoint_io import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2, "x": Boom()}, path)
    import torch

    assert torch.load(path, weights_only=True) == {"epoch": 1}  # the previous one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


# ---------------------------------------------------------------------------------------------
# Divergence: the advice names the likely cause


@pytest.mark.parametrize("overrides, cause", [
    (["loss=mse", "optimizer.lr=1e6"], "Likely cause: the learning rate. Try a smaller learning rate than "
                                       "optimizer.lr=1e+06"),
    (["optimizer.weight_decay=1e4", "data.batch_size=50"], "Likely cause: weight decay. "
                                                           "optimizer.weight_decay=10000 x optimizer.lr=0.15"),
    (["loss=margin", "loss.margin=1e38"], "Likely cause: the loss's own settings or the data, since it was not "
                                          "finite before the first update (loss.margin=1e+38: try values near 1)"),
])
def test_divergence_advice_names_the_likely_cause(make_cfg, tmp_path, overrides, cause):
    from softmax_lab.errors import DivergenceError

    with pytest.raises(DivergenceError) as e:
        train(make_cfg(*overrides))
    assert cause in str(e.value)
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert runs[0].info.status == "FAILED" and cause in runs[0].data.tags["mlflow.note.content"]


# ---------------------------------------------------------------------------------------------
# Two processes at once


@pytest.mark.slow
def test_a_run_dir_another_process_is_writing_is_refused(make_cfg, tmp_path):
    from softmax_lab.errors import ConfigError

    cfg = make_cfg("trainer.max_epochs=1")
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir / ".softmax-lab.lock")], stdout=subprocess.PIPE,
                              text=True)  # another training process, as far as the lock can tell
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="is being written by another training process"):
            train(cfg)
    finally:
        holder.kill()
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert runs == []
    train(cfg)  # once it is gone, the run dir is free


# ---- MLflow's own environment variables mean what MLflow says, or are refused before any run ----

def test_mlflow_experiment_name_from_the_environment_is_honoured(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-the-environment")
    train(make_cfg("trainer.max_epochs=1"))
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [client.get_experiment(r.info.experiment_id).name for r in runs] == ["from-the-environment"]
    # the command line wins over the environment, as a config value over its default
    train(make_cfg("trainer.max_epochs=1", "logger.experiment_name=given"))
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(client.get_experiment(r.info.experiment_id).name for r in runs) == ["from-the-environment", "given"]


@pytest.mark.parametrize("variable, value, says", [("MLFLOW_EXPERIMENT_ID", "12345", "unset MLFLOW_EXPERIMENT_ID"),
                                                   ("MLFLOW_RUN_ID", "0123abc", "unset MLFLOW_RUN_ID")])
def test_mlflow_variables_that_would_change_the_run_are_refused_before_it_exists(make_cfg, tmp_path, monkeypatch,
                                                                                  variable, value, says):
    monkeypatch.setenv(variable, value)
    with pytest.raises(TrackingError, match=says):
        train(make_cfg("trainer.max_epochs=1"))
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert runs == []


def test_a_signal_during_a_checkpoint_write_waits_for_the_checkpoint(tmp_path, monkeypatch):
    """What AtomicCheckpointIO adds to Lightning's own atomic save: the signal is held until the new checkpoint is in
    place (without it, the kill lands mid-write and the run's last epoch is not saved)."""
    from pytorch_lightning.plugins import TorchCheckpointIO

    from softmax_lab.errors import RunInterrupted
    from softmax_lab.signals import INTERRUPTS
    from softmax_lab.trainer.checkpoint_io import AtomicCheckpointIO

    lightning_save = TorchCheckpointIO.save_checkpoint

    def interrupted_save(self, checkpoint, path, storage_options=None):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the checkpoint is being written
        time.sleep(0.2)
        lightning_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", interrupted_save)
    path = tmp_path / "last.ckpt"
    with INTERRUPTS.installed(), pytest.raises(RunInterrupted):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 2}
