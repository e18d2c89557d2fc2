"""The command line as users type it: clear errors, truthful MLflow status, interruption and exact resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import QUIET, ROOT, mlflow_runs, run_cli, store_of, unmeasured_env

pytestmark = pytest.mark.slow

def tiny(tiny_data, tmp_path, *extra):
    return [f"data.data_dir={tiny_data}", "data.val_size=100", f"hydra.run.dir={tmp_path / 'run'}", *QUIET, *extra]


def no_runs(tmp_path) -> bool:
    db = tmp_path / "mlflow.db"
    return not db.exists() or mlflow_runs(f"sqlite:///{db}")[1] == []


def store_env(tmp_path):
    return {"MLFLOW_TRACKING_URI": store_of(tmp_path)}


@pytest.mark.parametrize("override, key", [  # representatives: every rule is tested in-process in test_config.py
    ("optimizer.lr=abc", "optimizer.lr"), ("data.val_size=60000", "data.val_size"),
    ("impl=scratch optimizer=adam", "optimizer=torch.optim.Adam"),  # refused by the module, inside instantiate
    ("data.batches_per_step=8 +trainer.val_check_interval=0.5", "trainer.val_check_interval"),
])
def test_bad_values_get_one_message_before_any_run(tiny_data, tmp_path, override, key):
    r = run_cli(tiny(tiny_data, tmp_path, *override.split()), env=store_env(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert key in out and "Traceback" not in out
    assert not (tmp_path / "mlflow.db").exists()  # refused before any MLflow run


@pytest.mark.parametrize("script, args, says", [
    ("src/eval.py", [], "ckpt_path is required"),
    ("src/predict.py", ["ckpt_path=x.ckpt"], "images is required"),
])
def test_eval_and_predict_keys_get_one_message(tmp_path, script, args, says):
    r = run_cli([*args, f"hydra.run.dir={tmp_path}"], script=script)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and says in out and "Traceback" not in out, out


@pytest.mark.parametrize("override, options", [("loss=hinge", "bce ce huber l1 margin mse"),
                                               ("impl=jax", "func nn scratch"),
                                               ("optimizer=lbfgs", "adam sgd")])
def test_unknown_choices_list_the_options(tmp_path, override, options):
    r = run_cli([override, f"hydra.run.dir={tmp_path}"])  # Hydra's own message: unmeasured (run_cli)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert all(f"\t{o}\n" in r.stderr for o in options.split()), r.stderr


def test_missing_data_names_the_places_and_the_remedies(tmp_path):
    r = run_cli([f"data.data_dir={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"],
                env=store_env(tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    assert "nowhere" in r.stdout + r.stderr and "data.download=true" in r.stdout + r.stderr
    assert no_runs(tmp_path)  # the store is created while the data is read, but no run is


def test_corrupt_data_names_the_file(tiny_data, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    (bad / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    r = run_cli(tiny(bad, tmp_path), env=store_env(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out
    assert "train-labels-idx1-ubyte.gz: corrupt gzip" in out


def test_unreachable_tracking_server_fails_fast(tiny_data, tmp_path):
    t0 = time.perf_counter()
    r = run_cli(tiny(tiny_data, tmp_path), env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert time.perf_counter() - t0 < 30
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "http://127.0.0.1:9" in out and "Traceback" not in out
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_divergence_stops_and_is_recorded_failed(tiny_data, tmp_path):
    r = run_cli(tiny(tiny_data, tmp_path, "loss=mse", "optimizer.lr=1e6"), env=store_env(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out
    assert re.search(r"diverged: the loss became (nan|inf|-inf) at epoch \d+, step \d+", out), out
    assert "smaller learning rate than optimizer.lr=1e+06" in out
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "diverged" in runs[0].data.tags["failure_reason"]


def test_a_bug_still_raises_while_a_mistake_only_says_why(monkeypatch, caplog):
    from softmax_lab.errors import ConfigError
    from softmax_lab.jobs import outcome

    def mistake(cfg):
        raise ConfigError("data.batch_size=0 is not allowed")

    def bug(cfg):
        raise ZeroDivisionError("a bug")

    with pytest.raises(SystemExit) as e:
        outcome.run_job(mistake, None)
    assert e.value.code == 1 and "data.batch_size=0 is not allowed" in caplog.text
    with pytest.raises(ZeroDivisionError):
        outcome.run_job(bug, None)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError):  # HYDRA_FULL_ERROR=1 shows everything
        outcome.run_job(mistake, None)
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    monkeypatch.setattr(outcome, "in_multirun", lambda: True)  # in a sweep both give NaN and the sweep goes on
    assert outcome.run_job(mistake, None) != outcome.run_job(mistake, None)
    assert outcome.run_job(bug, None) != outcome.run_job(bug, None)


@pytest.mark.parametrize("case", ["missing", "corrupt", "other impl"])
def test_bad_checkpoints_to_resume_from_are_refused_before_any_run(tiny_data, tmp_path, case):
    from conftest import compose
    from softmax_lab.jobs.train_job import train

    ckpt = tmp_path / "x.ckpt"
    if case == "corrupt":
        ckpt.write_bytes(b"not a checkpoint")
    elif case == "other impl":
        cfg = compose([f"data.data_dir={tiny_data}", "data.val_size=100", "trainer.max_epochs=1", "logger=none",
                       *QUIET, "impl=scratch"], tmp_path / "first")
        train(cfg)
        ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    r = run_cli(tiny(tiny_data, tmp_path, "impl=nn", f"ckpt_path={ckpt}"), env=store_env(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out, out
    assert {"missing": "no such file", "corrupt": "not a readable checkpoint",
            "other impl": "was trained with impl=scratch"}[case] in out
    assert not (tmp_path / "mlflow.db").exists()


def test_impossible_trainer_settings_are_refused_before_any_run_with_lightnings_reason(tiny_data, tmp_path):
    r = run_cli(tiny(tiny_data, tmp_path, "trainer.accelerator=mps"), env=store_env(tmp_path))  # no MPS on Linux
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out and "trainer:" in out, out
    assert "not available" in out, out  # Lightning's own words: why, not only where
    assert not (tmp_path / "mlflow.db").exists()


def test_disabling_the_progress_bar_needs_only_the_trainer_switch(tiny_data, tmp_path):
    args = [a for a in tiny(tiny_data, tmp_path) if a != "~callbacks.progress_bar"]
    r = run_cli(args, env=store_env(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Epoch 0" not in out, out


def _weights(ckpt):
    return torch.load(ckpt, weights_only=True)["state_dict"]


EPOCHS = 12  # the signal comes after epoch 2 (well before the last): room for a slow machine


def resumable_args(tiny_data):
    return [f"data.data_dir={tiny_data}", "data.val_size=100", *QUIET, f"trainer.max_epochs={EPOCHS}", "impl=scratch",
            "optimizer.momentum=0.9", "data.batch_size=50"]


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory):
    """The uninterrupted run every interrupted-and-resumed run must end exactly as: (its run, its store)."""
    tmp = tmp_path_factory.mktemp("straight")
    env = store_env(tmp)
    r = run_cli([*resumable_args(tiny_data), f"hydra.run.dir={tmp / 'run'}"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    client, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    return runs[0], client, tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_interrupt_then_resume_continues_the_run_exactly(tiny_data, tmp_path, straight, signum, code):
    epochs = EPOCHS
    args = resumable_args(tiny_data)
    env = {**store_env(tmp_path), "PYTHONWARNINGS": "ignore"}
    run_dir = tmp_path / "interrupted"
    # coverage traces the handled signals; a SIGKILLed process could not save what it traced
    proc_env = unmeasured_env(env) if signum == signal.SIGKILL else {**os.environ, **env}
    proc = subprocess.Popen([sys.executable, "src/train.py", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            env=proc_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a few epochs are done, then interrupt wherever it is
        if last.exists():
            try:
                if torch.load(last, weights_only=True)["epoch"] >= 2:
                    break
            except Exception:
                pass  # replaced while we read
        time.sleep(0.05)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    client, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    if signum != signal.SIGKILL:
        assert "recorded KILLED" in out and f"resume with ckpt_path={last}" in out and "Traceback" not in out, out
    assert [r.info.status for r in runs] == ["RUNNING" if signum == signal.SIGKILL else "KILLED"]
    interrupted_id = runs[0].info.run_id
    assert torch.load(last, weights_only=True)["epoch"] < epochs - 1, "the run finished before the signal arrived"

    resumed = run_cli([*args, f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'new'}"], env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"in {run_dir}" in resumed.stdout and re.search(r"test/acc [01]\.\d{4}", resumed.stdout)
    other, other_client, other_last = straight
    a, b = _weights(last), _weights(other_last)
    assert torch.equal(a["net.W"], b["net.W"]) and torch.equal(a["net.b"], b["net.b"])
    client, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(interrupted_id, "FINISHED")]  # the same run, finished
    cont = runs[0]
    assert cont.data.tags["resumed_from"] == str(last)
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert cont.data.metrics[key] == other.data.metrics[key], key
    for key in ("train/loss", "val/acc", "train/loss_step"):  # continued: no step missing, none twice
        steps = [(m.step, m.value) for m in client.get_metric_history(cont.info.run_id, key)]
        assert sorted(steps) == sorted((m.step, m.value) for m in other_client.get_metric_history(other.info.run_id,
                                                                                                  key)), key


def test_make_ui_binds_loopback_only_and_prints_the_runs_link(tmp_path, monkeypatch, capsys):
    from softmax_lab.tracking import ui
    from softmax_lab.tracking.store import connect

    out = subprocess.run(["make", "-n", "ui"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "--host 127.0.0.1" in out and "0.0.0.0" not in out
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, experiment_id = connect(store, "fashion-mnist-softmax")
    launched = []
    monkeypatch.setattr(ui.os, "execve", lambda exe, argv, env: launched.append(argv))
    ui.main(["--store", store, "--port", "5123"])
    printed = capsys.readouterr().out
    assert (f"http://127.0.0.1:5123/#/experiments/{experiment_id}/runs?viewStateShareKey=softmax-lab"
            "&workflowType=machine_learning") in printed
    argv = launched[0]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--workers") + 1] == "1"
