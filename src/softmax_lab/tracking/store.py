"""The MLflow store: connecting (fail fast), creating a fresh sqlite store safely and quickly, and writes that
a signal cannot cut in two, whose refusals (the store's, and only those) become one TrackingError."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import sys
import time
from functools import cache
from pathlib import Path

from filelock import FileLock

from softmax_lab.errors import TrackingError
from softmax_lab.signals import protected
from softmax_lab.tracking.uris import artifact_location_for, redact, runs_view, sqlite_path

log = logging.getLogger(__name__)

FIX = ("Fix: make it writable (space, permissions) or point MLFLOW_TRACKING_URI / logger.tracking_uri elsewhere; "
       "the last complete checkpoint resumes the run.")


@cache
def store_errors() -> tuple[type[BaseException], ...]:
    """What a store raises when it refuses or cannot be reached: MLflow's own errors, the database's, the network's
    and the file system's. Anything else raised inside a write is a bug, and stays one."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    return MlflowException, SQLAlchemyError, RequestException, OSError


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def store_write(uri: str):
    """One write to the store, protected from signals; the store's refusal (read-only, full, gone) becomes one
    TrackingError naming the store, its cause kept."""
    try:
        with protected():
            yield
    except store_errors() as e:
        raise TrackingError(f"the MLflow store {redact(uri)} refused a write ({first_line(e)[:200]}). {FIX}") from e


@contextlib.contextmanager
def _fail_fast_http():
    """A tracking server that is down should fail in seconds, not after MLflow's minutes of retries."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_sqlite_store(db: Path) -> None:
    """Refuse, untouched, a sqlite file that holds another application's tables (MLflow would add its own)."""
    if not db.exists() or db.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise TrackingError(f"{db} is not an MLflow store ({e}). Fix: point MLFLOW_TRACKING_URI / "
                            "logger.tracking_uri at an MLflow sqlite file or a new path.") from e
    if tables and not {"experiments", "runs"} <= tables:
        shown = ", ".join(sorted(tables)[:5])
        raise TrackingError(f"{db} holds another application's tables ({shown}), not an MLflow store; it was "
                            "left untouched. Fix: point MLFLOW_TRACKING_URI / logger.tracking_uri at a new file, "
                            f"e.g. sqlite:///{db.with_name('mlflow.db')}.")


@contextlib.contextmanager
def store_lock(db: Path | None):
    """Processes creating one fresh sqlite store at once race on its schema migrations: one creates it
    while the others wait on a lock file beside it. A no-op for other stores."""
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(db.with_name(db.name + ".lock")):
        yield


def store_template() -> Path:
    """Where an empty store made by this MLflow version is kept (beside the installed packages)."""
    import mlflow

    return Path(sys.prefix) / "share" / "softmax-lab" / f"empty-mlflow-{mlflow.__version__}.db"


def new_sqlite_store(db: Path) -> None:
    """Create the store at `db` (under store_lock) by copying an empty one this MLflow version made: its ~50
    schema migrations take seconds each time otherwise. The template is made once, by MLflow itself
    (`make install` makes it ahead); where it cannot be kept, MLflow creates the store as usual."""
    template = store_template()
    try:
        if not template.exists():
            from mlflow.tracking import MlflowClient

            template.parent.mkdir(parents=True, exist_ok=True)
            tmp = template.with_name(f".{template.name}.{os.getpid()}")
            MlflowClient(f"sqlite:///{tmp}").search_experiments()  # MLflow creates and migrates it
            os.replace(tmp, template)
        shutil.copyfile(template, db)
    except OSError as e:  # a read-only install: MLflow creates the store itself
        log.debug("no store template (%s)", e)


def ensure_experiment(client, name: str, uri: str) -> str:
    """The experiment's id, creating it (with its artifact location) if needed, with the runs table's view that
    the printed links open (uris.runs_view)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        experiment_id = client.create_experiment(name, artifact_location=artifact_location_for(uri))
        tags = {}
    elif exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment {name!r} is deleted in {redact(uri)}. Fix: restore it in the UI "
                            "(or `mlflow experiments restore`), or choose logger.experiment_name=<another>.")
    else:
        experiment_id, tags = exp.experiment_id, exp.tags
    key, view = runs_view()
    if tags.get(key) != view:
        client.set_experiment_tag(experiment_id, key, view)
    return experiment_id


def connect(uri: str, experiment_name: str):
    """(client, experiment_id), or TrackingError naming the URI; creates a fresh sqlite store safely."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    t0 = time.perf_counter()
    try:
        with _fail_fast_http(), store_lock(db), protected():
            if db is not None:
                check_sqlite_store(db)
                if not db.exists() or db.stat().st_size == 0:
                    new_sqlite_store(db)
            client = MlflowClient(uri)
            experiment_id = ensure_experiment(client, experiment_name, uri)
    except store_errors() as e:
        raise TrackingError(f"the MLflow tracking store {redact(uri)} cannot be used ({first_line(e)[:300]}). "
                            "Fix: start the tracking server or correct MLFLOW_TRACKING_URI / logger.tracking_uri, "
                            "or run with logger=none.") from e
    log.debug("connected to %s in %.2fs", redact(uri), time.perf_counter() - t0)
    return client, experiment_id
