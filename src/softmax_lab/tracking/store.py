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

from softmax_lab.console import redact, redact_text
from softmax_lab.errors import StoreGone, TrackingError
from softmax_lab.files import creation_lock
from softmax_lab.signals import protected
from softmax_lab.tracking.uris import artifact_location_for, runs_view, sqlite_path

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


# How long a write waits for a tracking server that went away, unless the user set MLflow's own variables:
# retries after 1, 2, 4, 8 and 16 s (about 35 s in all), each request at most 20 s (MLflow's defaults: 7 retries with
# a backoff factor of 2, about 4 minutes a write, and 120 s a request)
HTTP_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
GONE: dict[str, str] = {}  # store URI -> why: a store that stopped answering gets no more writes from this process


# What a request that got no answer says, and how the run's one line says it
SYMPTOMS = (("Connection refused", "connection refused"), ("timed out", "timed out"),
            ("RemoteDisconnected", "connection closed"), ("Connection aborted", "connection closed"),
            ("Name or service not known", "host unknown"), ("Max retries exceeded", "no answer"))


def symptom(e: BaseException) -> str | None:
    """How a server that does not answer (refused, reset, timed out after the retries) failed; None for one that
    answered, refusing a write."""
    from requests.exceptions import ConnectionError, RetryError, Timeout

    text = str(e)
    said = next((said for needle, said in SYMPTOMS if needle in text), None)
    return said or ("no answer" if isinstance(e, ConnectionError | RetryError | Timeout) else None)


@contextlib.contextmanager
def store_write(uri: str):
    """One write to the store, protected from signals; the store's refusal (read-only, full, gone) becomes one
    TrackingError naming the store, its cause kept. A server that stopped answering is StoreGone, at once for
    every later write: a dead server costs one retry window, not one per write."""
    if uri in GONE:
        raise StoreGone(GONE[uri])
    try:
        with protected():
            yield
    except store_errors() as e:
        if symptom(e) is not None:
            GONE[uri] = (f"the MLflow tracking server {redact(uri)} stopped answering ({symptom(e)}) through "
                         "MLflow's retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR, _TIMEOUT)")
            raise StoreGone(GONE[uri]) from e
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


def store_template() -> Path:
    """Where an empty store made by this MLflow version is kept (beside the installed packages)."""
    import mlflow

    return Path(sys.prefix) / "share" / "softmax-lab" / f"empty-mlflow-{mlflow.__version__}.db"


def new_sqlite_store(db: Path) -> None:
    """Create the store at `db` (under files.creation_lock) by copying an empty one this MLflow version made: its ~50
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


def check_mlflow_environment() -> None:
    """MLflow's variables that would make a run something else than the one this job starts: refused in one line."""
    if os.environ.get("MLFLOW_RUN_ID"):
        raise TrackingError(f"MLFLOW_RUN_ID={os.environ['MLFLOW_RUN_ID']} is set, but each job here starts its own run "
                            "(an interrupted one continues with ckpt_path=<run dir>/checkpoints/last.ckpt). Fix: "
                            "unset MLFLOW_RUN_ID.")


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


@cache
def secret_free_client():
    """MlflowClient, with every run name, tag, param and description it sends passed through redact_text: a store's
    or a study's password quoted in an override never reaches the store."""
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    def clean(mapping):
        return {k: redact_text(str(v)) for k, v in mapping.items()} if mapping else mapping

    class SecretFreeClient(MlflowClient):
        def create_run(self, experiment_id, start_time=None, tags=None, run_name=None):
            return super().create_run(experiment_id, start_time, clean(tags), run_name and redact_text(run_name))

        def update_run(self, run_id, status=None, name=None):
            return super().update_run(run_id, status, name and redact_text(name))

        def set_tag(self, run_id, key, value, synchronous=None):
            return super().set_tag(run_id, key, redact_text(str(value)), synchronous=synchronous)

        def log_param(self, run_id, key, value, synchronous=None):
            return super().log_param(run_id, key, redact_text(str(value)), synchronous=synchronous)

        def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
            return super().log_batch(run_id, metrics, [Param(p.key, redact_text(p.value)) for p in params],
                                     [RunTag(t.key, redact_text(t.value)) for t in tags], synchronous=synchronous)

        def set_experiment_tag(self, experiment_id, key, value):
            return super().set_experiment_tag(experiment_id, key, redact_text(str(value)))

        def update_model_version(self, name, version, description=None):
            return super().update_model_version(name, version, description and redact_text(description))

    return SecretFreeClient


def connect(uri: str, experiment_name: str):
    """(client, experiment_id), or TrackingError naming the URI; creates a fresh sqlite store safely."""
    check_mlflow_environment()
    for key, value in HTTP_PATIENCE.items():  # a user's own setting means what MLflow says
        os.environ.setdefault(key, value)
    # MLflow prints its own link when a run ends on a server; it opens the UI's GenAI view. Ours (uris.py) open the
    # runs; a user who sets the variable to false gets MLflow's too.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    db = sqlite_path(uri)
    t0 = time.perf_counter()
    try:
        with _fail_fast_http(), creation_lock(uri, db), protected():
            if db is not None:
                check_sqlite_store(db)
                if not db.exists() or db.stat().st_size == 0:
                    new_sqlite_store(db)
            client = secret_free_client()(uri)
            experiment_id = ensure_experiment(client, experiment_name, uri)
            wanted = os.environ.get("MLFLOW_EXPERIMENT_ID")
    except store_errors() as e:
        fix = ("check the database's host, port, user, password and name in" if "://" in uri and not
               uri.startswith(("http", "file", "sqlite", "databricks")) else "start the tracking server or correct")
        raise TrackingError(f"the MLflow tracking store {redact(uri)} cannot be used ({first_line(e)[:300]}). "
                            f"Fix: {fix} MLFLOW_TRACKING_URI / logger.tracking_uri, or run with logger=none.") from e
    if wanted and wanted != experiment_id:
        raise TrackingError(f"MLFLOW_EXPERIMENT_ID={wanted}, but the runs go to experiment {experiment_name!r} (id "
                            f"{experiment_id}) in {redact(uri)}, named by logger.experiment_name or "
                            "MLFLOW_EXPERIMENT_NAME. Fix: unset MLFLOW_EXPERIMENT_ID, or name its experiment with "
                            "MLFLOW_EXPERIMENT_NAME=... / logger.experiment_name=...")
    log.debug("connected to %s in %.2fs", redact(uri), time.perf_counter() - t0)
    return client, experiment_id
