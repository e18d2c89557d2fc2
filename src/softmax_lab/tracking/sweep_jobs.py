"""What a sweep and its jobs hand each other. The sweep's process exports the parent run and the swept keys in
the environment (every launcher passes it on); each job leaves job_outcome.json beside its output, for the
summary to list every job, even one refused before its MLflow run existed or one not tracked. The file is
written whole or not at all (files.py) and read so that a missing or damaged one is one row that says so."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from softmax_lab.files import write_text
from softmax_lab.signals import protected
from softmax_lab.trainer.processes import descendants

PARENT_RUN_ENV = "SOFTMAX_LAB_PARENT_RUN_ID"  # a job's run becomes the parent's child
SWEPT_KEYS_ENV = "SOFTMAX_LAB_SWEPT_KEYS"  # a job's run is named by what its sweep varies
SWEEP_LABEL_ENV = "SOFTMAX_LAB_SWEEP"  # a job's run says which sweep it belongs to (the runs table's sweep column)
OUTCOME_FILE = "job_outcome.json"
GRACE_S = 5  # for a stopped sweep's jobs in other processes to record themselves KILLED, before and after a nudge


def write_outcome(job_dir: Path, record: dict) -> Path:
    return write_text(Path(job_dir) / OUTCOME_FILE, json.dumps(record, indent=1, default=str))


def read_outcome(job_dir: Path) -> dict:
    """The job's record; for a job that wrote none (killed) or whose file cannot be read, a LOST record saying why."""
    path = Path(job_dir) / OUTCOME_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {"status": "LOST", "reason": "the job reported no outcome (killed?)"}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"status": "LOST", "reason": f"{path} cannot be read ({e})"}
    if not isinstance(record, dict) or "status" not in record:
        return {"status": "LOST", "reason": f"{path} is not a job outcome"}
    return record


def end_stopped_jobs(client, experiment_id: str, parent_run_id: str, signum: int, reason: str) -> None:
    """A stopped sweep's jobs in other processes (joblib, submitit) record themselves KILLED when the signal reached
    them too (Ctrl-C reaches the whole process group); one not done after GRACE_S gets the signal passed on (a `kill`
    of the sweep's process alone), and one still not done after that is ended KILLED here. A job is done when its
    state tag is no longer `running`: a job writes its status first and its state after it (Tracker.finish)."""
    def unfinished():
        return client.search_runs([experiment_id], max_results=10000, filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' AND tags.state = 'running'"))

    passed_on, deadline = False, time.monotonic() + GRACE_S
    while left := unfinished():
        if time.monotonic() < deadline:
            time.sleep(0.5)
            continue
        if passed_on:
            break
        for pid in descendants():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # ended meanwhile
                pass
        passed_on, deadline = True, time.monotonic() + GRACE_S
    for r in left:
        with protected():
            if r.info.status == "RUNNING":
                client.set_terminated(r.info.run_id, "KILLED")
                client.set_tag(r.info.run_id, "failure_reason", f"{reason} and the job did not end by itself")
            client.set_tag(r.info.run_id, "state", "killed" if r.info.status == "RUNNING" else r.info.status.lower())
