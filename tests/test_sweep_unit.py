"""A sweep as one thing: its jobs' names, states and datasets read as one, its own view in the MLflow UI, its answer;
stopped by a signal on every launcher we ship (the CLI tests at the end)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import QUIET, ROOT, mlflow_runs, unmeasured_env


def row(job, loss, val, test, ece, status="FINISHED"):
    return {"job": job, "overrides": f"loss={loss} optimizer.lr=0.0297341206", "loss": loss, "impl": "nn",
            "status": status, "val_acc_best": val, "test_acc": test, "test_ece": ece, "test_nll": 0.5,
            "epoch_s": 0.5, "run_id": f"run{job}", "failure_reason": ""}


def test_a_trials_name_starts_with_its_number_and_reads_its_values_short(monkeypatch):
    from softmax_lab.jobs.naming import run_name
    from softmax_lab.tracking.pyfunc_model import model_name
    from softmax_lab.tracking.sweep_jobs import SWEPT_KEYS_ENV

    monkeypatch.setenv(SWEPT_KEYS_ENV, "search.trial,optimizer.lr,data.batch_size")
    name = run_name("ce", "nn", ["search.trial=12", "optimizer.lr=0.0297341206", "data.batch_size=64", "seed=3"])
    assert name == "trial 12: loss=ce impl=nn optimizer.lr=0.02973 data.batch_size=64"
    assert model_name(name, "abcdef0123456789").startswith("trial 12 loss=ce impl=nn optimizer_lr=0_02973")
    monkeypatch.delenv(SWEPT_KEYS_ENV)  # a single run: what the user typed, as typed when it is short
    assert run_name("huber", "scratch", ["optimizer.lr=0.05", "loss.delta=1e-05"]) == \
        "loss=huber impl=scratch optimizer.lr=0.05 loss.delta=1e-05"


@pytest.mark.parametrize("value, shown", [(0.0297341206, "0.02973"), ("0.0297341206", "0.02973"), ("0.05", "0.05"),
                                          ("1e-05", "1e-05"), (64, "64"), ("64", "64"), ("abc", "abc"),
                                          (True, "True"), ("inf", "inf"), (float("nan"), "nan"),
                                          ("123456.789", "1.235e+05"), (0.0037545539669, "3.755e-03"),
                                          ("0.0008758916509", "8.759e-04"), ("0.01706454", "0.01706")])
def test_values_are_shown_to_four_significant_digits(value, shown):
    from softmax_lab.console import short_value

    assert short_value(value) == shown


def test_the_sweeps_answer_says_it_chose_by_validation_and_names_the_best_on_test_and_on_calibration():
    from softmax_lab.tracking.sweep_summary import best_row, parent_description

    rows = [row(0, "ce", 0.84, 0.83, 0.05), row(1, "mse", 0.85, 0.82, 0.20), row(2, "margin", 0.83, 0.84, 0.30),
            row(3, "l1", 0.99, 0.99, 0.01, status="PRUNED")]  # a pruned trial is never the answer
    best = best_row(rows)
    assert best["job"] == 1
    text = parent_description(rows, best, 0, "3")
    assert "**Best by validation** (val/acc_best, the sweep's objective): [job 1](#/experiments/3/runs/run1)" in text
    assert "Best on test accuracy: [job 2](#/experiments/3/runs/run2) (0.8400)." in text
    assert "Best calibrated (lowest test ECE): [job 0](#/experiments/3/runs/run0) (0.0500)." in text
    assert "optimizer.lr=0.02973" in text and "0.0297341206" not in text  # exact values: the params
    stopped = parent_description(rows[:1], None, 1, "3", "the sweep was stopped by SIGINT")
    assert stopped.startswith("**Sweep of 1 jobs, 1 not finished.** **Stopped**: the sweep was stopped by SIGINT.")


def test_a_sweeps_view_holds_its_jobs_only_and_draws_every_one_against_the_epoch():
    from softmax_lab.tracking.uris import sweep_url, sweep_view

    key, text = sweep_view("abc123", ["loss", "optimizer.lr"])
    view = json.loads(text)
    assert key == "mlflow.sharedViewState.sweep-abc123"
    assert view["searchFilter"] == "tags.mlflow.parentRunId = 'abc123'"
    assert view["selectedColumns"][:3] == ["params.`loss`", "params.`optimizer.lr`", "tags.`state`"]
    assert view["runsHiddenMode"] == "SHOW_ALL"  # MLflow draws the first 10 runs unless told
    scatter, acc, loss = view["compareRunCharts"]
    assert (scatter["type"], scatter["xaxis"]["key"], scatter["yaxis"]["key"]) == ("SCATTER", "test/ece", "test/acc")
    assert [(c["metricKey"], c["xAxisKey"], c["selectedXAxisMetricKey"]) for c in (acc, loss)] == [
        ("val/acc", "metric", "epoch"), ("val/loss", "metric", "epoch")]
    assert sweep_url("http://h:1", "7", "abc123") == ("http://h:1/#/experiments/7/runs?viewStateShareKey=sweep-abc123"
                                                      "&compareRunsMode=CHART&workflowType=machine_learning")


def test_preprocessing_does_not_make_a_new_test_dataset(tiny_data):
    from softmax_lab.data.datamodule import FashionMNISTDataModule
    from softmax_lab.tracking.datasets import dataset_inputs

    def digests(**kwargs):
        dm = FashionMNISTDataModule(data_dir=str(tiny_data), **kwargs)
        dm.load()
        return {i.dataset.name: i.dataset.digest for i in dataset_inputs(dm)}

    plain = digests(val_size=100)
    assert digests(val_size=100, normalize=True) == plain  # a param of the run, not another dataset
    other_split = digests(val_size=200)
    assert other_split["fashion-mnist test"] == plain["fashion-mnist test"]  # the official test set is the files'
    assert other_split["fashion-mnist train"] != plain["fashion-mnist train"]  # another split: other images
    assert digests(val_size=100, classes=[0, 6])["fashion-mnist test classes [0, 6]"] != plain["fashion-mnist test"]


def test_a_search_without_multirun_is_refused_before_hydra():
    from softmax_lab.config import search_without_multirun

    said = search_without_multirun(["hparams_search=optuna", "loss=ce"])
    assert said.startswith("hparams_search=optuna searches over many runs") and \
        said.endswith("Fix: python src/train.py -m hparams_search=optuna loss=ce")
    assert search_without_multirun(["-m", "hparams_search=optuna"]) is None
    assert search_without_multirun(["loss=ce"]) is None


# --- through the command line, as a user runs it -------------------------------------------------------------------

def start_sweep(tiny_data, tmp_path, *args) -> subprocess.Popen:
    """A 3-job sweep of long jobs in its own process group, as a terminal runs a command (Ctrl-C reaches the group)."""
    env = unmeasured_env({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    cmd = [sys.executable, "src/train.py", "-m", "loss=ce,mse,margin", f"data.data_dir={tiny_data}",
           "data.val_size=100", "trainer.max_epochs=5000", *QUIET, f"hydra.sweep.dir={tmp_path / 'sweep'}", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for_running_jobs(tmp_path, n: int, timeout: float = 240):
    from mlflow.tracking import MlflowClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        if (tmp_path / "mlflow.db").exists():
            runs = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
                ["1"], filter_string="attributes.status = 'RUNNING' AND tags.kind = 'train'")
            if len(runs) >= n:
                time.sleep(2)  # into its epochs
                return
    raise AssertionError(f"{n} running job(s) never showed up")


@pytest.mark.slow
@pytest.mark.parametrize("launcher, signum, to_group", [
    ([], signal.SIGINT, True),  # Ctrl-C in a terminal, the basic launcher: the job is in the sweep's process
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], signal.SIGTERM, False),  # `kill PID`: the sweep passes it on
    (["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"], signal.SIGINT, True),
], ids=["basic-ctrl-c", "joblib-kill", "submitit-ctrl-c"])
def test_a_stopped_sweep_ends_killed_as_a_unit_with_its_summary(tiny_data, tmp_path, launcher, signum, to_group):
    proc = start_sweep(tiny_data, tmp_path, *launcher)
    try:
        wait_for_running_jobs(tmp_path, 1)
        os.killpg(proc.pid, signum) if to_group else os.kill(proc.pid, signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, out
    assert "Traceback" not in out.replace("KeyboardInterrupt", "") or launcher[:1] == ["hydra/launcher=submitit_local"]
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    jobs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "KILLED" and parent.data.tags["state"] == "killed"
    assert parent.data.tags["failure_reason"] == f"the sweep was stopped by {signal.Signals(signum).name}"
    assert jobs and not [r for r in jobs if r.info.status == "RUNNING"]
    assert {r.data.tags["state"] for r in jobs} <= {"killed", "finished"} and "killed" in {r.data.tags["state"]
                                                                                            for r in jobs}
    # every MLflow job is in the summary with its status; a job stopped before its run existed is a row without one
    with open(tmp_path / "sweep" / "sweep_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["run_id"]: r["status"] for r in rows if r["run_id"]} == {r.info.run_id: r.info.status for r in jobs}
    assert {r["status"] for r in rows if not r["run_id"]} <= {"KILLED", "LOST"}
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/sweep_summary.md", "summary/sweep_summary.csv", "summary/sweep_summary.png"} <= logged
    # every job it launched is in the summary, one killed before its run existed too (LOST: it reported nothing)
    said = parent.data.tags["mlflow.note.content"]
    assert said.startswith("**Sweep of ") and "**Stopped**: the sweep was stopped by" in said
    assert f"sweep stopped by {signal.Signals(signum).name}" in out


@pytest.mark.slow
def test_a_sweep_dir_that_cannot_be_written_is_one_line_before_any_run(tiny_data, tmp_path):
    from conftest import run_cli

    (tmp_path / "a-file").write_text("")
    r = run_cli(["-m", "loss=ce,mse", f"data.data_dir={tiny_data}", *QUIET, f"hydra.sweep.dir={tmp_path / 'a-file'}/s"],
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert f"hydra.sweep.dir={tmp_path / 'a-file'}/s cannot be written (Not a directory)" in r.stdout + r.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [
    (["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0 is not allowed"),
    (["hydra.sweeper.n_trials=abc"], "hydra.sweeper.n_trials=abc is not allowed"),
])
def test_search_values_a_user_gets_wrong_are_one_line_before_any_run(tiny_data, tmp_path, args, says):
    from conftest import run_cli

    r = run_cli(["-m", "hparams_search=optuna", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
                 f"data.data_dir={tiny_data}", *QUIET, f"hydra.sweep.dir={tmp_path / 's'}", *args],
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out and says in out
    assert not (tmp_path / "mlflow.db").exists()
    r = run_cli(["hparams_search=optuna", f"data.data_dir={tiny_data}", *QUIET])
    assert r.returncode == 1 and r.stderr.startswith("error: hparams_search=optuna searches over many runs")


def test_a_stopped_sweep_waits_for_each_job_to_record_itself_whole(tmp_path, monkeypatch):
    """A job writes its status, then its state tag: the sweep waits for the state before it ends (it used to end as
    soon as the status left RUNNING, leaving a job KILLED with state `running`). One never done is ended here."""
    import threading

    from mlflow import MlflowClient

    from softmax_lab.tracking import sweep_jobs

    monkeypatch.setattr(sweep_jobs, "GRACE_S", 1.0)
    monkeypatch.setattr(sweep_jobs, "descendants", lambda: [])  # no job processes here to pass the signal to
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e")
    parent = client.create_run(experiment).info.run_id

    def job(status, state="running"):
        run_id = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "state": state}).info.run_id
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        return run_id

    recording, half_written, dead, done = job("FINISHED"), job("KILLED"), job("RUNNING"), job("FINISHED", "finished")
    later = threading.Timer(0.5, client.set_tag, (recording, "state", "pruned"))  # the job's second write
    later.start()
    sweep_jobs.end_stopped_jobs(client, experiment, parent, signal.SIGINT, "the sweep was stopped by SIGINT")
    later.join()
    ended = {r: client.get_run(r) for r in (recording, half_written, dead, done)}
    assert ended[recording].data.tags["state"] == "pruned"  # its own word, waited for
    assert (ended[half_written].info.status, ended[half_written].data.tags["state"]) == ("KILLED", "killed")
    assert (ended[dead].info.status, ended[dead].data.tags["state"]) == ("KILLED", "killed")
    assert ended[dead].data.tags["failure_reason"] == \
        "the sweep was stopped by SIGINT and the job did not end by itself"
    assert not {"failure_reason"} & (ended[half_written].data.tags.keys() | ended[recording].data.tags.keys())
    assert (ended[done].info.status, ended[done].data.tags["state"]) == ("FINISHED", "finished")


@pytest.mark.slow
def test_a_sweep_that_breaks_off_ends_its_parent_failed(tiny_data, tmp_path):
    from conftest import run_cli

    r = run_cli(["-m", "loss=ce,bogus", f"data.data_dir={tiny_data}", *QUIET, f"hydra.sweep.dir={tmp_path / 's'}"],
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert r.returncode == 1
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [(x.info.status, x.data.tags["state"]) for x in runs] == [("FAILED", "failed")]
