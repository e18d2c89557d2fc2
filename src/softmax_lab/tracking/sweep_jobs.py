"""What a sweep and its jobs hand each other. The sweep's process exports the parent run and the swept keys in
the environment (every launcher passes it on); each job leaves job_outcome.json beside its output, for the
summary to list every job, even one refused before its MLflow run existed or one not tracked. The file is
written whole or not at all (files.py) and read so that a missing or damaged one is one row that says so."""

from __future__ import annotations

import json
from pathlib import Path

from softmax_lab.files import write_text

PARENT_RUN_ENV = "SOFTMAX_LAB_PARENT_RUN_ID"  # a job's run becomes the parent's child
SWEPT_KEYS_ENV = "SOFTMAX_LAB_SWEPT_KEYS"  # a job's run is named by what its sweep varies
OUTCOME_FILE = "job_outcome.json"


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
