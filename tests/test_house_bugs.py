"""The ten bugs a reading of e95ee49 found where the concerns crossed (issue 16), one test each, named after it.
Each failed on that code and passes now (the closing note says how each was watched failing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from conftest import ROOT, last_ckpt, mlflow_runs, store_of, tiny_overrides
from device_modes import HostReads, NoFloat64, OneDevice
from softmax_lab.errors import TrackingError
from softmax_lab.jobs.train_job import train

# ---------------------------------------------------------------------------------------------
# 1. store_write turned any exception inside model packaging into "the store refused a write", cause dropped


def test_bug1_a_bug_inside_model_packaging_stays_a_bug(make_cfg, tmp_path, monkeypatch):
    from softmax_lab.tracking import pyfunc_model

    def broken(self, classifier):
        raise KeyError("W")  # a bug in our packaging, not the store's refusal

    monkeypatch.setattr(pyfunc_model.SoftmaxRegressionPyfunc, "__init__", broken)
    with pytest.raises(KeyError):
        train(make_cfg("trainer.max_epochs=1"))
    _, runs = mlflow_runs(store_of(tmp_path))
    assert [r.info.status for r in runs] == ["FAILED"] and "KeyError" in runs[0].data.tags["failure_reason"]


def test_bug1_a_store_refusal_is_one_line_with_its_cause_kept(make_cfg, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def refuses(self, run_id, local_path, artifact_path=None):
        raise MlflowException("database or disk is full")

    monkeypatch.setattr(MlflowClient, "log_artifact", refuses)
    with pytest.raises(TrackingError, match="refused a write \\(database or disk is full\\)") as e:
        train(make_cfg("trainer.max_epochs=1"))
    assert isinstance(e.value.__cause__, MlflowException)


# ---------------------------------------------------------------------------------------------
# 2. trainer.max_epochs=-1 (Lightning: no epoch limit, train until max_steps) made every resume "nothing left"


@pytest.mark.parametrize("logger", ["none", "mlflow"])
def test_bug2_max_epochs_minus_one_resumes_until_max_steps(make_cfg, capsys, logger):
    first = make_cfg(f"logger={logger}", "trainer.max_epochs=1", "data.batch_size=100")  # 5 steps an epoch
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    train(make_cfg(f"logger={logger}", "trainer.max_epochs=-1", "+trainer.max_steps=12", "data.batch_size=100",
                   f"ckpt_path={ckpt}"))
    assert last_ckpt(first)["global_step"] == 12 and "nothing left to train" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# 3. find_run swallowed every exception: a passing store error at resume started a second MLflow run


def test_bug3_a_store_error_at_resume_is_refused_not_a_second_run(make_cfg, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    first = make_cfg("trainer.max_epochs=1")
    train(first)

    def locked(self, run_id):
        raise MlflowException("(sqlite3.OperationalError) database is locked", error_code=1)

    monkeypatch.setattr(MlflowClient, "get_run", locked)
    with pytest.raises(TrackingError, match="could not say whether it holds run .* nothing was changed"):
        train(make_cfg("trainer.max_epochs=2", f"ckpt_path={Path(first.paths.output_dir)}/checkpoints/last.ckpt"))
    monkeypatch.undo()
    _, runs = mlflow_runs(store_of(tmp_path))
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_bug3_a_run_the_store_does_not_hold_is_a_new_run(make_cfg, tmp_path, monkeypatch):
    first = make_cfg("trainer.max_epochs=1")
    train(first)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")  # the run is in the first store
    train(make_cfg("trainer.max_epochs=2", f"ckpt_path={Path(first.paths.output_dir)}/checkpoints/last.ckpt"))
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'other.db'}")
    assert [r.info.status for r in runs] == ["FINISHED"]


# ---------------------------------------------------------------------------------------------
# 4. Under DDP, ranks above 0 wrote the whole config (the tracking URI unredacted) over rank 0's config.yaml


def test_bug4_a_rank_above_zero_writes_no_config_into_the_run_dir(make_cfg, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")  # as Lightning's DDP launcher starts rank 1
    monkeypatch.setenv("RANK", "1")
    cfg = make_cfg("logger.tracking_uri=sqlite:////secret/place.db", "trainer.max_epochs=1")
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "overrides.yaml").exists()


def test_bug4_rank_zeros_config_leaves_the_tracking_uri_out(make_cfg):
    cfg = make_cfg("trainer.max_epochs=1")
    train(cfg)
    written = (Path(cfg.paths.output_dir) / "config.yaml").read_text()
    assert "tracking_uri" not in written and "max_epochs: 1" in written


# ---------------------------------------------------------------------------------------------
# 5. SIGINT became an exception Lightning does not treat as an interrupt: DDP children were left to die in gloo


def children_of(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


@pytest.mark.slow
def test_bug5_sigint_to_rank_zero_ends_every_rank_in_one_line(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    args = [*tiny_overrides(tiny_data, "trainer=ddp_cpu", "impl=scratch", "trainer.max_epochs=400",
                            "data.batch_size=50", f"hydra.run.dir={run_dir}")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_of(tmp_path)}
    proc = subprocess.Popen([sys.executable, "src/train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline, ranks = time.time() + 240, set()
    while time.time() < deadline and proc.poll() is None:
        ranks = ranks or children_of(proc.pid)
        try:
            if ranks and torch.load(last, weights_only=True)["epoch"] >= 1:
                break
        except (FileNotFoundError, RuntimeError, EOFError, KeyError):
            pass
        time.sleep(0.2)
    assert ranks, "Lightning started no rank process"
    proc.send_signal(signal.SIGINT)  # rank 0 only, not the process group
    out, _ = proc.communicate(timeout=120)
    time.sleep(1)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "Connection closed" not in out, out
    assert not [p for p in ranks if Path(f"/proc/{p}").exists()], "a rank process outlived rank 0"
    _, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    assert [r.info.status for r in runs] == ["KILLED"]


# ---------------------------------------------------------------------------------------------
# 6. job_outcome.json was written in place and read unguarded: one damaged file lost the summary, parent RUNNING


def sweep_dir_with_outcomes(tmp_path) -> Path:
    from softmax_lab.tracking.sweep_jobs import write_outcome

    sweep = tmp_path / "sweep"
    for job in range(3):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
    write_outcome(sweep / "0", {"job": 0, "status": "FINISHED", "loss": "ce", "impl": "nn",
                                "metrics": {"val/acc_best": 0.8, "test/acc": 0.79}})
    (sweep / "1" / "job_outcome.json").write_text('{"job": 1, "status": "FINI')  # cut off mid-write
    return sweep  # job 2 never reported


def test_bug6_a_damaged_or_missing_outcome_is_one_row_saying_so(tmp_path):
    from softmax_lab.tracking.sweep_summary import outcome_rows

    rows = outcome_rows(sweep_dir_with_outcomes(tmp_path), set())
    assert [(r["job"], r["status"]) for r in rows] == [(0, "FINISHED"), (1, "LOST"), (2, "LOST")]
    assert "job_outcome.json cannot be read" in rows[1]["failure_reason"] and rows[0]["test_acc"] == 0.79
    assert "reported no outcome" in rows[2]["failure_reason"]


@pytest.mark.parametrize("summary_fails", [False, True])
def test_bug6_the_sweep_parent_never_stays_running(tmp_path, monkeypatch, summary_fails):
    from omegaconf import OmegaConf

    from softmax_lab.tracking import sweep
    from softmax_lab.tracking.store import connect

    uri = store_of(tmp_path)
    callback = sweep.MlflowSweepCallback()
    callback.uri, (callback.client, callback.experiment_id) = uri, connect(uri, "fashion-mnist-softmax")
    callback.parent_run_id = callback.client.create_run(callback.experiment_id).info.run_id
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir_with_outcomes(tmp_path))}}})
    if summary_fails:
        def full_disk(rows, sweep_dir):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(sweep, "write_summary", full_disk)
        with pytest.raises(OSError):
            callback.on_multirun_end(config)
    else:
        callback.on_multirun_end(config)
    status = callback.client.get_run(callback.parent_run_id).info.status
    assert status == ("FAILED" if summary_fails else "FINISHED") and callback.failed_jobs >= 1


def test_bug6_outcomes_are_written_whole(tmp_path, monkeypatch):
    from softmax_lab.tracking.sweep_jobs import read_outcome, write_outcome

    write_outcome(tmp_path, {"status": "FINISHED"})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        write_outcome(tmp_path, {"status": "FAILED", "reason": "x" * 10000})
    assert read_outcome(tmp_path) == {"status": "FINISHED"} and [p.name for p in tmp_path.iterdir()] == [
        "job_outcome.json"]


# ---------------------------------------------------------------------------------------------
# 7. Under bf16-mixed, autocast reached scratch's products inside no_grad: its gradients were bf16, nn's float32


@pytest.mark.parametrize("loss", ["ce", "mse", "margin", "huber", "l1", "bce"])
def test_bug7_bf16_mixed_scratch_gradients_are_float32_as_autograds_are(loss):
    from softmax_lab.maths.losses import LOSSES
    from softmax_lab.maths.sgd import ScratchSGD
    from softmax_lab.maths.softmax_regression import ScratchSoftmaxRegression, make_nn_model
    from softmax_lab.steps.hand_steps import ScratchSteps, StepRules

    torch.manual_seed(0)
    scratch = ScratchSoftmaxRegression()
    torch.manual_seed(0)
    nn_model = make_nn_model()
    g = torch.Generator().manual_seed(1)
    X, y = torch.rand(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)
    loss_fn = LOSSES[loss]()
    steps = ScratchSteps(scratch, loss_fn, ScratchSGD([scratch.W, scratch.b], lr=0.1), rules=StepRules(),
                         optimizer=None, average=None, guard=None, after_step=None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        steps.forward_backward(X, y, 1.0)
        loss_fn.torch_value(nn_model(X), y).backward()
    gW, gb = steps.grads()
    assert gW.dtype == gb.dtype == torch.float32
    # the same products in bfloat16 as autograd's (8 bits of mantissa: agreement to bf16's resolution)
    torch.testing.assert_close(gW, nn_model[1].weight.grad.T, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(gb, nn_model[1].bias.grad, rtol=2e-2, atol=2e-3)


# ---------------------------------------------------------------------------------------------
# 8. Float64 metric states and .double() calls broke on accelerators without float64 (MPS)


@pytest.mark.parametrize("impl", ["scratch", "nn", "func"])
def test_bug8_nothing_on_the_device_is_float64(impl):
    from softmax_lab.steps.lightning_module import SoftmaxRegressionModule
    from softmax_lab.steps.train_totals import TrainTotals

    meta = torch.device("meta")
    module = SoftmaxRegressionModule(impl=impl).to(meta)
    X, y = torch.rand(8, 784, device=meta), torch.randint(0, 10, (8,), device=meta)
    totals = TrainTotals()
    with OneDevice(), NoFloat64(), HostReads():  # host reads answer zeros on meta
        O = module(X)
        totals.add(module.loss_fn.torch_value(O, y), O, y)
        totals.epoch_metrics()
        for metrics in (module.val_metrics, module.test_metrics):
            module.eval_step((X, y), metrics)
            result = metrics.compute()
    assert result["acc"] == 0.0 and set(result) >= {"loss", "nll", "ece", "brier", "entropy", "per_class_acc"}


# ---------------------------------------------------------------------------------------------
# 9. The README said the host waits only at epoch edges and every eight steps; the step losses read it every 50


@pytest.mark.parametrize("impl", ["scratch", "nn"])
def test_bug9_logging_every_step_loss_reads_the_device_once_an_epoch(impl):
    from test_devices import epochs_of

    g = torch.Generator().manual_seed(0)
    counts = {}
    for steps in (16, 48):
        X, y = torch.rand(steps * 8, 784, generator=g), torch.randint(0, 10, (steps * 8,), generator=g)
        with HostReads(every_device=True) as reads:
            logger = epochs_of(X, y, impl, None)  # trainer.log_every_n_steps=1: every SGD step's loss logged
        counts[steps] = reads.count
        assert len([s for s, m in logger.metrics if "train/loss_step" in m]) == 2 * steps
    assert counts[48] - counts[16] == 2 * (48 - 16) // 8  # the divergence guard's read every 8 steps, no more


# ---------------------------------------------------------------------------------------------
# 10. Warnings were silenced wholesale: a deprecation in the Lightning internals we use would never be seen


def test_bug10_a_deprecation_from_the_projects_own_frames_fails_the_suite():
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("an API softmax-lab uses is deprecated", DeprecationWarning, "x.py", 1,
                               module="softmax_lab.steps.lightning_module")
    warnings.warn_explicit("a library's own deprecation", DeprecationWarning, "x.py", 1, module="somelib")


def test_bug10_every_warning_filter_names_a_message():
    import tomllib

    from softmax_lab import console

    filters = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["filterwarnings"]
    for f in filters:
        action, message = f.split(":")[:2]
        assert action == "error" or message, f"filters by category alone: {f}"
    assert all(message for message, _why in console.NOT_FOR_USERS)
    sources = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    assert "simplefilter(" not in sources and 'filterwarnings("ignore")' not in sources
    assert json.dumps(sources).count("filterwarnings(") <= 2  # console.py's and the pyfunc model's, by message
