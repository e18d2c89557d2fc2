"""The Optuna search's own cost per trial, and one worker against two on a 10-trial search (`make bench` runs both;
`python benchmarks/search_bench.py` alone).

Per trial, what the search adds to the training job it launches: ask a trial of the study on sqlite, sample the
project's search space, tell the study the result, and the MLflow child run's creation and end (into sqlite).
Then wall time of `-m hparams_search=optuna` with 10 trials of 1 short epoch each: one process, and two processes
on the same study with 5 trials each, started together (each with half the cores for torch's threads)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def overhead_per_trial(tmp: Path, trials: int = 30) -> float:
    """Median seconds per trial of ask + suggest + tell on sqlite and an MLflow child run's create + end."""
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from softmax_lab.search.loop import seeded, suggest
    from softmax_lab.search.space import search_space
    from softmax_lab.search.study import open_study
    from softmax_lab.tracking.store import connect

    params = OmegaConf.load(ROOT / "conf" / "hparams_search" / "optuna.yaml").hydra.sweeper.params
    space = search_space(params, [])
    sampler = OmegaConf.load(ROOT / "conf" / "hydra" / "sweeper" / "sampler" / "tpe.yaml")
    study = open_study(f"sqlite:///{tmp / 'optuna.db'}", "bench").with_sampler(seeded(sampler, 0))
    client, experiment_id = connect(f"sqlite:///{tmp / 'mlflow.db'}", "bench")
    assert isinstance(client, MlflowClient)
    parent = client.create_run(experiment_id).info.run_id
    times = []
    for i in range(trials):
        t = time.perf_counter()
        trial = study.study.ask()
        suggest(trial, space)
        run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "optuna_trial": str(i)})
        client.set_terminated(run.info.run_id, "FINISHED")
        study.tell_outcome(trial, 0.5 + 0.01 * (i % 7))
        times.append(time.perf_counter() - t)
    return statistics.median(times[5:])  # after TPE's random start-up trials too


def search_wall(tmp: Path, data_dir: str | None, workers: int, trials: int = 10) -> float:
    """Wall seconds of a `trials`-trial search split over `workers` processes on one study, started together, each
    with its share of the cores for torch's threads (OMP_NUM_THREADS, as docs/sweeps.md advises for workers on one
    machine)."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    store = f"sqlite:///{tmp / f'mlflow-{workers}.db'}"
    args = ["-m", "hparams_search=optuna", "trainer.max_epochs=1", "+trainer.limit_train_batches=20",
            "trainer.enable_progress_bar=false", f"hydra.sweeper.study_name=bench-{workers}",
            f"hydra.sweeper.storage=sqlite:///{tmp / 'studies.db'}", f"hydra.sweeper.n_trials={trials // workers}",
            *([f"data.data_dir={data_dir}"] if data_dir else [])]
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "src/train.py", *args, f"hydra.sweep.dir={tmp / f'w{workers}-{i}'}"],
                              cwd=ROOT, env={**os.environ, "MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": threads},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(workers)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"search worker failed:\n{err[-2000:]}")
    return time.perf_counter() - t


def measure(data_dir: str | None = None, walls: bool = True) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="softmax-lab-search-bench-"))
    report = {"search_overhead_per_trial_s": round(overhead_per_trial(tmp), 4)}
    if walls:
        report["search_10_trials_1_worker_s"] = round(search_wall(tmp, data_dir, 1), 1)
        report["search_10_trials_2_workers_s"] = round(search_wall(tmp, data_dir, 2), 1)
    return report


if __name__ == "__main__":
    for k, v in measure(walls="--quick" not in sys.argv).items():
        print(f"{k}: {v}")
