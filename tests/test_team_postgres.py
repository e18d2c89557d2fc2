"""Team set-ups on a real PostgreSQL server (tests/postgres_server.py): the MLflow store and the Optuna study on it,
from the command line as the README writes them, two search workers starting together on a fresh study, a resume,
a wrong password or a server that is down said in one line, and the password written nowhere: not in a file of the
run or sweep dirs, not on the console, not in any MLflow field."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import QUIET, ROOT, unmeasured_env
from postgres_server import PASSWORD, start_postgres

pytestmark = pytest.mark.slow
EXPERIMENT = "fashion-mnist-softmax"


@pytest.fixture(scope="module")
def postgres():
    folder = Path(tempfile.mkdtemp(prefix="softmax-lab-pg-"))  # pytest's own folders are closed to other users
    server, stop = start_postgres(folder)
    yield server
    stop()
    shutil.rmtree(folder, ignore_errors=True)


def store(postgres, name: str, artifacts: Path) -> str:
    """A fresh MLflow store on the server, its experiment's artifacts under `artifacts` (by MLflow's default they go
    to ./mlruns of the working directory, here the project's root)."""
    uri = postgres.new_database(name)
    MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    return uri


def cli(args: list[str], tiny_data: Path, **popen) -> subprocess.Popen:
    flags = [a for a in args if a == "-m"]  # Hydra's flags before the overrides
    return subprocess.Popen([sys.executable, "src/train.py", *flags, f"data.data_dir={tiny_data}", "data.val_size=100",
                             "trainer.max_epochs=1", *QUIET, *[a for a in args if a != "-m"]], cwd=ROOT,
                            env=unmeasured_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finished(p: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def mlflow_fields_with(uri: str, secret: str) -> list[str]:
    """Every run's name, tags and params, every logged model's name, params and tags, every experiment's tags and
    every registered model: those that hold `secret`."""
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments]
    found = [f"experiment tag {k}" for e in experiments for k, v in e.tags.items() if secret in v]
    for r in client.search_runs(ids):
        fields = {"run name": r.info.run_name, **r.data.tags, **{f"param {k}": v for k, v in r.data.params.items()}}
        found += [f"run {r.info.run_id}: {k}" for k, v in fields.items() if secret in str(v)]
    for m in client.search_logged_models(ids):
        fields = {"name": m.name, **m.tags, **{f"param {k}": v for k, v in m.params.items()}}
        found += [f"logged model {m.model_id}: {k}" for k, v in fields.items() if secret in str(v)]
    found += [f"registered model {m.name}" for m in client.search_registered_models() if secret in m.name]
    return found


def files_with(secret: str, *folders: Path) -> list[str]:
    return [str(p) for folder in folders for p in folder.rglob("*") if p.is_file() and secret.encode() in
            p.read_bytes()]


def test_a_run_and_its_resume_on_a_postgresql_store_write_no_password(postgres, tiny_data, tmp_path):
    uri = store(postgres, "runs", tmp_path / "artifacts")
    run_dir = tmp_path / "run"
    first = finished(cli([f"logger.tracking_uri={uri}", f"hydra.run.dir={run_dir}"], tiny_data))
    resumed = finished(cli([f"logger.tracking_uri={uri}", f"hydra.run.dir={run_dir}", "trainer.max_epochs=2",
                            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], tiny_data))
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED" and "trainer.max_epochs=2" in run.data.tags["resumed_with"]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2]  # the same run, continued
    assert "postgresql://lab:***@127.0.0.1" in first  # said, without the password
    assert f"browse: make ui STORE='postgresql://lab:***@127.0.0.1:{postgres.port}/runs' (with your password" in first
    assert PASSWORD not in first + resumed
    assert files_with(PASSWORD, run_dir, tmp_path / "artifacts") == []
    assert mlflow_fields_with(uri, PASSWORD) == []


def test_two_search_workers_start_together_on_a_fresh_postgresql_study(postgres, tiny_data, tmp_path):
    uri, study = store(postgres, "search_runs", tmp_path / "artifacts"), postgres.new_database("study")
    search = ["-m", "hparams_search=optuna", "hydra.sweeper.study_name=team", f"hydra.sweeper.storage={study}",
              "hydra.sweeper.n_trials=2", f"logger.tracking_uri={uri}"]
    workers = [cli([*search, f"hydra.sweep.dir={tmp_path / f'w{i}'}"], tiny_data) for i in (1, 2)]
    outputs = [finished(w) for w in workers]
    import optuna

    trials = optuna.load_study(study_name="team", storage=study).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3] and all(t.state.name == "COMPLETE" for t in trials)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert sum(r.data.tags.get("kind") == "train" for r in runs) == 4
    assert all(PASSWORD not in out for out in outputs)
    assert files_with(PASSWORD, tmp_path / "w1", tmp_path / "w2", tmp_path / "artifacts") == []
    assert mlflow_fields_with(uri, PASSWORD) == []


@pytest.mark.parametrize("where", ["store", "study"])
@pytest.mark.parametrize("fault", ["wrong password", "server down"])
def test_a_database_that_refuses_is_one_line_in_seconds(postgres, tiny_data, tmp_path, where, fault):
    url = postgres.new_database(f"{where}_{fault.replace(' ', '_')}")
    url = url.replace(PASSWORD, "not-the-password") if fault == "wrong password" else url.replace(
        f":{postgres.port}/", ":1/")
    args = ([f"logger.tracking_uri={url}"] if where == "store" else
            ["-m", "hparams_search=optuna", f"hydra.sweeper.storage={url}", "hydra.sweeper.n_trials=1",
             f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    t = time.perf_counter()
    p = cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], tiny_data)
    out, _ = p.communicate(timeout=300)
    seconds = time.perf_counter() - t
    assert p.returncode == 1, out[-3000:]
    said = "password authentication failed" if fault == "wrong password" else "Connection refused"
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and said in errors[0] and "postgresql://lab:***@" in errors[0], out[-3000:]
    assert "Traceback" not in out and "not-the-password" not in out
    assert seconds < 60, f"{seconds:.0f} s: MLflow's retries (about 2 minutes) were not cut short"
    assert not (tmp_path / "run" / "checkpoints").exists()
