"""Sweeps through the real CLI: one parent run, a child per job, a summary; failures isolated; launchers."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import QUIET, mlflow_runs, run_cli

pytestmark = pytest.mark.slow


def sweep(tiny_data, tmp_path, *args, launcher=(), measured=True):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    r = run_cli(["-m", f"data.data_dir={tiny_data}", "data.val_size=100", "trainer.max_epochs=2", *QUIET,
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", *launcher, *args], env=env, timeout=600, measured=measured)
    client, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    children = [x for x in runs if "mlflow.parentRunId" in x.data.tags]
    return r, client, parents, children


def read_summary(tmp_path):
    with (tmp_path / "sweep" / "sweep_summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_loss_by_impl_sweep_is_one_parent_with_children_and_a_summary(tiny_data, tmp_path):
    r, client, parents, children = sweep(tiny_data, tmp_path, "loss=ce,mse", "impl=scratch,nn")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == [
        "loss=ce impl=nn", "loss=ce impl=scratch", "loss=mse impl=nn", "loss=mse impl=scratch"]
    assert sorted(int(c.data.tags["job_num"]) for c in children) == [0, 1, 2, 3]
    assert all(c.data.tags["sweep_dir"] == str(tmp_path / "sweep") for c in children)
    rows = read_summary(tmp_path)
    expected = [("ce", "scratch"), ("ce", "nn"), ("mse", "scratch"), ("mse", "nn")]
    assert [(x["loss"], x["impl"]) for x in rows] == expected
    by_id = {c.info.run_id: c for c in children}
    for row in rows:
        assert float(row["test_acc"]) == pytest.approx(by_id[row["run_id"]].data.metrics["test/acc"])
        assert row["status"] == "FINISHED" and float(row["epoch_s"]) > 0
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert arts == {"summary/sweep_summary.csv", "summary/sweep_summary.md", "summary/sweep_summary.png"}
    assert "| ce | scratch | FINISHED |" in (tmp_path / "sweep" / "sweep_summary.md").read_text()
    assert "Sweep summary (4 jobs, 0 not finished" in r.stdout
    # the parent tells the sweep's result: the best child's numbers and name, what was swept, the table
    parent = client.get_run(parent.info.run_id)
    def key(c):
        return c.data.metrics["val/acc_best"], c.data.metrics["test/acc"]

    best = max(children, key=key)  # scratch and nn tie on the tiny data: any of the tied ones is the best
    assert parent.data.tags["best_run_id"] in {c.info.run_id for c in children if key(c) == key(best)}
    assert parent.data.tags["best_val_acc_best"] == f"{best.data.metrics['val/acc_best']:.4f}"
    assert parent.data.tags["best_test_acc"] == f"{best.data.metrics['test/acc']:.4f}"
    # the winner's result under the parent's own keys: the jobs' compare charts (test/*) show the jobs only
    assert parent.data.metrics["winner/test_acc"] == pytest.approx(best.data.metrics["test/acc"], abs=1e-6)
    assert not [k for k in parent.data.metrics if not k.startswith("winner/")]
    assert parent.data.params == {"loss": "ce,mse", "impl": "scratch,nn"}
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**Sweep of 4 jobs, 0 not finished.**\n\n**Best by validation** (val/acc_best, the "
                           "sweep's objective): [job ") and "| mse | nn | FINISHED |" in note
    # each job says which sweep it belongs to (the runs table's sweep column); the sweep prints its own view's link
    assert {c.data.tags["sweep"] for c in children} == {parent.data.tags["sweep"]}
    assert parent.data.tags["sweep"].startswith("loss=ce,mse impl=scratch,nn (") and parent.data.tags["kind"] == "sweep"
    assert f"this sweep: http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs?viewStateShareKey=" \
           f"sweep-{parent.info.run_id}&compareRunsMode=CHART" in r.stdout
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags[
        f"mlflow.sharedViewState.sweep-{parent.info.run_id}"])
    shown = client.search_runs([parent.info.experiment_id], filter_string=view["searchFilter"])
    assert sorted(x.info.run_id for x in shown) == sorted(c.info.run_id for c in children)
    assert view["selectedColumns"][:2] == ["params.`loss`", "params.`impl`"]
    assert parent.data.tags["mlflow.source.name"] == "src/train.py -m"


def test_a_diverging_job_fails_alone(tiny_data, tmp_path):
    r, _, parents, children = sweep(tiny_data, tmp_path, "loss=mse", "optimizer.lr=1e6,0.01", measured=False)
    assert r.returncode == 1  # the sweep says a job failed
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED"]
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "diverged" in failed.data.tags["failure_reason"] and failed.data.tags["state"] == "diverged"
    rows = read_summary(tmp_path)
    assert sorted(x["status"] for x in rows) == ["FAILED", "FINISHED"]
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("bad, measured", [("optimizer.lr=0.1,-1", True), ("data.val_size=100,600", False)])
def test_a_job_refused_before_its_run_existed_is_listed_failed(tiny_data, tmp_path, bad, measured):
    r, _, parents, children = sweep(tiny_data, tmp_path, *bad.split(), measured=measured)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED"]
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "is not allowed" in failed.data.tags["failure_reason"] or "leaves no" in failed.data.tags["failure_reason"]
    assert failed.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    rows = read_summary(tmp_path)
    assert sorted(x["status"] for x in rows) == ["FAILED", "FINISHED"]
    assert "(2 jobs, 1 not finished" in r.stdout


def test_an_untracked_sweep_still_lists_every_job_and_exits_non_zero(tiny_data, tmp_path):
    r, _, parents, children = sweep(tiny_data, tmp_path, "logger=none", "optimizer.lr=0.1,-1")
    assert r.returncode == 1 and parents == [] and children == []
    rows = read_summary(tmp_path)
    assert [(x["job"], x["status"], x["loss"]) for x in rows] == [("0", "FINISHED", "ce"), ("1", "FAILED", "ce")]


def test_joblib_launcher_runs_four_jobs_two_at_a_time_into_one_fresh_store(tiny_data, tmp_path):
    # two workers race on the fresh store as four would (tests/test_edges.py starts many at once): half the imports
    r, client, parents, children = sweep(tiny_data, tmp_path, "loss=ce,mse", "impl=scratch,nn", "trainer.max_epochs=1",
                                         measured=False, launcher=["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(parents) == 1 and len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    for c in children:  # no metric lost: every epoch of every job is there
        for key in ("train/loss", "val/acc", "time/epoch_s"):
            assert len(client.get_metric_history(c.info.run_id, key)) == 1, (c.info.run_name, key)
        assert "test/acc" in c.data.metrics
    assert "database is locked" not in r.stdout + r.stderr


def test_submitit_local_launcher(tiny_data, tmp_path):
    r, _, parents, children = sweep(tiny_data, tmp_path, "loss=ce,margin", measured=False,
                                    launcher=["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(parents) == 1 and sorted(c.info.run_name for c in children) == ["loss=ce impl=nn", "loss=margin impl=nn"]
    assert all(c.info.status == "FINISHED" for c in children)
