"""What a sweep and its jobs hand each other, whichever process a launcher runs a job in. The sweep tells its
jobs a SweepLink (its parent run, its label, the keys it varies) through the environment, which every Hydra launcher
passes on; each job leaves job_outcome.json beside its output, for the summary to list every job, even one refused
before its MLflow run existed or one not tracked. The file is written whole or not at all (files.py) and read so
that a missing or damaged one is one row that says so."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from softmax_lab.files import write_text
from softmax_lab.signals import protected
from softmax_lab.trainer.processes import descendants

PARENT_RUN_ENV = "SOFTMAX_LAB_PARENT_RUN_ID"  # a job's run becomes the parent's child
SWEPT_KEYS_ENV = "SOFTMAX_LAB_SWEPT_KEYS"  # a job's run is named by what its sweep varies (comma-separated keys)
SWEEP_LABEL_ENV = "SOFTMAX_LAB_SWEEP"  # a job's run says which sweep it belongs to (the runs table's sweep column)
OUTCOME_FILE = "job_outcome.json"
GRACE_S = 5  # for a stopped sweep's jobs in other processes to record themselves KILLED, before and after a nudge


@dataclass(frozen=True)
class SweepLink:
    """What a sweep tells each of its jobs; all None outside a sweep. The environment carries it (the three
    variables above): every launcher (local, joblib, submitit, Ray) starts its jobs with the sweep's environment."""

    parent_run_id: str | None = None  # the sweep's MLflow parent run (none where the sweep is not tracked)
    label: str | None = None
    swept_keys: tuple[str, ...] | None = None

    @classmethod
    def of_this_job(cls) -> SweepLink:
        keys = os.environ.get(SWEPT_KEYS_ENV)
        return cls(os.environ.get(PARENT_RUN_ENV), os.environ.get(SWEEP_LABEL_ENV),
                   tuple(keys.split(",")) if keys is not None else None)

    def tell_jobs(self) -> None:
        for name, value in ((PARENT_RUN_ENV, self.parent_run_id), (SWEEP_LABEL_ENV, self.label),
                            (SWEPT_KEYS_ENV, ",".join(self.swept_keys) if self.swept_keys is not None else None)):
            if value is not None:
                os.environ[name] = value

    @staticmethod
    def forget() -> None:
        """The sweep ended: a later run in this process is no job of it."""
        for name in (PARENT_RUN_ENV, SWEEP_LABEL_ENV, SWEPT_KEYS_ENV):
            os.environ.pop(name, None)


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
