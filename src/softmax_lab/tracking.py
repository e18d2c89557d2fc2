"""MLflow: the store, the run, its name, tags, params, metrics, artifacts, model and truthful status.

The tracker creates the run itself (or reopens an interrupted one) and hands Lightning a logger
attached to it; the tracker, not Lightning, sets the final status: FINISHED, FAILED (the reason as
the `failure_reason` tag and the run's description) or KILLED. Every write is a `protected()`
section (signals.py): an interrupt never cuts one in two.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import sqlite3
import subprocess
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from softmax_lab.config import PROJECT_ROOT
from softmax_lab.errors import RunInterrupted, TrackingError, UserError
from softmax_lab.signals import protected

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "SOFTMAX_LAB_PARENT_RUN_ID"  # set by the sweep callback for its jobs
SWEPT_KEYS_ENV = "SOFTMAX_LAB_SWEPT_KEYS"  # likewise: a job is named by what its sweep varies
MAX_PARAM_VALUE = 6000  # MLflow 3's limit on a param value
MAX_TAG_VALUE = 5000
UI_VIEW = "workflowType=machine_learning"  # MLflow 3's UI opens its GenAI view without it


def launched_as_rank_zero() -> bool:
    """Whether this process is global rank 0, read from the launcher's environment (Lightning's DDP
    children, torchrun, SLURM) before any Trainer exists: only rank 0 writes to MLflow."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def default_tracking_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'outputs' / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """logger.tracking_uri, else $MLFLOW_TRACKING_URI, else the project's sqlite store."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI, absolute, resolved as MLflow (SQLAlchemy) does: `sqlite:///rel.db`
    is relative to the working directory, `sqlite:////abs.db` absolute. None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]).expanduser().resolve()


def artifact_location_for(uri: str) -> str | None:
    """A sqlite store keeps its artifacts beside the database (not in the working directory);
    a server decides for itself."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db is not None else None


def redact(uri: str) -> str:
    """A URI without its password, fit to print or log."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def ui_base(uri: str, port: int = 5000) -> str:
    """Where the UI for a store is: a tracking server is its own UI; a sqlite store is served by `make ui`."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table, in the model-training view even on a browser that never opened MLflow."""
    return f"{base}/#/experiments/{experiment_id}/runs?{UI_VIEW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"


def git_state() -> dict[str, str]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"mlflow.source.git.commit": head.stdout.strip(), "git_dirty": str(dirty).lower()}
    except (OSError, subprocess.SubprocessError):
        return {}


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's own fields: User, Source (the entry point) and its git commit."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER", "unknown")
    return {"mlflow.user": user, "mlflow.source.name": entry_point, "mlflow.source.type": "LOCAL", **git_state()}


# ---------------------------------------------------------------------------------------------
# Params: what a person compares between runs


_NOT_PARAMS = {"_target_", "default_lr", "data_dir", "download", "shuffle_seed", "default_root_dir",
               "enable_progress_bar", "enable_model_summary", "enable_checkpointing", "callbacks", "plugins", "logger"}


def _short(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def run_params(cfg: DictConfig, choices: dict | None = None) -> dict[str, str]:
    """Each setting once, under the key a user types (`optimizer.lr`, `data.batch_size`): the loss and the
    optimizer by name and options, the data, model and trainer settings and the seed. Paths, class names of
    targets and switches of the display are not settings to compare: they are tags or in config.yaml."""
    from softmax_lab.losses import name_of

    c = OmegaConf.to_container(cfg, resolve=True)
    choices = choices or {}
    params = {"loss": name_of(c["loss"]["_target_"]), "impl": c["model"]["impl"],
              "optimizer": choices.get("optimizer") or _short(c["optimizer"]["_target_"]).lower(),
              "seed": c["seed"], "model.init_std": c["model"].get("init_std")}
    for group in ("loss", "optimizer", "data", "trainer"):
        for k, v in c.get(group, {}).items():
            if k in _NOT_PARAMS:
                continue
            if isinstance(v, dict):  # e.g. trainer.strategy: its class, by name
                v = _short(v.get("_target_", "")) or v
            params[f"{group}.{k}"] = v
    if choices.get("experiment"):
        params["experiment"] = choices["experiment"]
    return {k: str(v)[:MAX_PARAM_VALUE] for k, v in params.items()}


# ---------------------------------------------------------------------------------------------
# The store


@contextlib.contextmanager
def store_write(uri: str):
    """One write to the store, protected from signals; the store's refusal (read-only, full, gone) becomes
    one TrackingError naming the store, not a traceback."""
    try:
        with protected():
            yield
    except UserError:
        raise
    except Exception as e:
        raise TrackingError(f"the MLflow store {redact(uri)} refused a write ({_first_line(e)[:200]}). Fix: make it "
                            "writable (space, permissions) or point MLFLOW_TRACKING_URI / logger.tracking_uri "
                            "elsewhere; the last complete checkpoint resumes the run.") from None


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
                            "logger.tracking_uri at an MLflow sqlite file or a new path.") from None
    if tables and not {"experiments", "runs"} <= tables:
        shown = ", ".join(sorted(tables)[:5])
        raise TrackingError(f"{db} holds another application's tables ({shown}), not an MLflow store; it was "
                            "left untouched. Fix: point MLFLOW_TRACKING_URI / logger.tracking_uri at a new file, "
                            f"e.g. sqlite:///{db.with_name('mlflow.db')}.")


@contextlib.contextmanager
def store_lock(db: Path | None):
    """Processes creating one fresh sqlite store at once race on its schema migrations: one creates it
    while the others wait on a lock file beside it (no retry loop). A no-op for other stores."""
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def store_template() -> Path:
    """Where an empty store made by this MLflow version is kept (beside the installed packages)."""
    import sys

    import mlflow

    return Path(sys.prefix) / "share" / "softmax-lab" / f"empty-mlflow-{mlflow.__version__}.db"


def new_sqlite_store(db: Path) -> None:
    """Create the store at `db` (under store_lock) by copying an empty one this MLflow version made: its ~50
    schema migrations take seconds each time otherwise. The template is made once, by MLflow itself
    (`make install` makes it ahead); where it cannot be kept, MLflow creates the store as usual."""
    import shutil

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
    """The experiment's id, creating it (with its artifact location) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {name!r} is deleted in {redact(uri)}. Fix: restore it in the UI "
                                "(or `mlflow experiments restore`), or choose logger.experiment_name=<another>.")
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location_for(uri))


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
    except UserError:
        raise
    except Exception as e:
        raise TrackingError(f"the MLflow tracking store {redact(uri)} cannot be used ({_first_line(e)[:300]}). "
                            "Fix: start the tracking server or correct MLFLOW_TRACKING_URI / logger.tracking_uri, "
                            "or run with logger=none.") from None
    log.debug("connected to %s in %.2fs", redact(uri), time.perf_counter() - t0)
    return client, experiment_id


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# Lightning's logger, buffered


class BufferedMlflowLogger(MLFlowLogger):
    """MLFlowLogger that writes metrics in one batch per flush instead of one request per log call.

    A synchronous write to sqlite costs ~25 ms; the module logs a few times per epoch, so buffering
    and flushing at epoch ends (FlushMetrics) keeps the store off the training clock. The config is
    logged once by the tracker, so Lightning's hyperparameter logging is a no-op here. A resumed run
    skips the (key, step) points its interrupted part already logged: history continues, never twice.
    """

    def __init__(self, logged_until: dict[str, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.store_uri = kwargs["tracking_uri"]
        self._buffer = []
        self._logged_until = logged_until or {}

    def log_hyperparams(self, params) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), step or 0
        for k, v in metrics.items():
            if isinstance(v, str) or step <= self._logged_until.get(k, -1):
                continue
            self._buffer.append(Metric(key=k, value=float(v), timestamp=now, step=step))

    def flush(self) -> None:
        while self._buffer:
            batch = self._buffer[:1000]
            with store_write(self.store_uri):
                self.experiment.log_batch(self.run_id, metrics=batch)
            self._buffer = self._buffer[1000:]

    def finalize(self, status: str = "success") -> None:
        self.flush()  # the status is the tracker's to set


class FlushMetrics(pl.Callback):
    """Write the buffered metrics before every checkpoint is written (so a resume, even after SIGKILL, finds
    in the store everything its checkpoint's run had logged), at each epoch's end, after testing, and when
    anything fails."""

    def __init__(self, logger: BufferedMlflowLogger):
        self.logger = logger

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.logger.flush()

    def on_train_epoch_end(self, trainer, pl_module):
        self.logger.flush()

    def on_test_end(self, trainer, pl_module):
        self.logger.flush()

    def on_exception(self, trainer, pl_module, exception):
        self.logger.flush()


# ---------------------------------------------------------------------------------------------
# The run


class MlflowTracker:
    """One MLflow run per training or evaluation job (conf/logger/mlflow.yaml)."""

    enabled = True

    def __init__(self, tracking_uri: str | None = None, experiment_name: str = "fashion-mnist-softmax",
                 run_name: str | None = None, registered_model_name: str | None = None):
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment_name, self.run_name = experiment_name, run_name
        self.registered_model_name = registered_model_name
        self.client = self.experiment_id = self.run_id = self.logger = None
        self.model_uri = None
        self._logged_until: dict[str, int] = {}

    def connect(self) -> None:
        self.client, self.experiment_id = connect(self.uri, self.experiment_name)

    def find_run(self, run_id: str | None):
        """The run with this id in this store's experiment, or None."""
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return None
        return run if run.info.experiment_id == self.experiment_id else None

    def start_run(self, run_name: str, tags: dict[str, str], resume_run_id: str | None = None) -> str:
        """Create the run, or reopen `resume_run_id` (an interrupted run of this store) as RUNNING again."""
        parent = os.environ.get(PARENT_RUN_ENV)
        tags = {**tags, "mlflow.runName": self.run_name or run_name}
        if parent:
            tags["mlflow.parentRunId"] = parent
        tags = {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()}
        with store_write(self.uri):
            if self.find_run(resume_run_id) is not None:
                self.run_id = resume_run_id
                self.client.update_run(resume_run_id, status="RUNNING")
                for k, v in tags.items():
                    if k != "mlflow.runName":
                        self.client.set_tag(resume_run_id, k, v)
                self._logged_until = self._last_logged_steps()
            else:
                run = self.client.create_run(self.experiment_id, run_name=tags["mlflow.runName"], tags=tags)
                self.run_id = run.info.run_id
        return self.run_id

    def _last_logged_steps(self) -> dict[str, int]:
        run = self.client.get_run(self.run_id)
        return {k: max(m.step for m in self.client.get_metric_history(self.run_id, k)) for k in run.data.metrics}

    def log_config(self, cfg: DictConfig, overrides: list[str], run_dir: Path, params: dict[str, str]) -> None:
        """Params (run_params), and the whole resolved config as config.yaml with overrides.yaml."""
        from mlflow.entities import Param

        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved.get("logger", {}).pop("tracking_uri", None)  # may hold credentials; the store is known anyway
        with store_write(self.uri):
            existing = self.client.get_run(self.run_id).data.params
            changed = {k: v for k, v in params.items() if k in existing and existing[k] != v}
            new = [Param(k, v) for k, v in params.items() if k not in existing]
            for i in range(0, len(new), 100):
                self.client.log_batch(self.run_id, params=new[i : i + 100])
            if changed:  # a resume that trains further (params cannot change in MLflow): say what changed
                self.client.set_tag(self.run_id, "resumed_with", " ".join(f"{k}={v}" for k, v in changed.items()))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        (run_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
        self.log_artifact(run_dir / "config.yaml")
        self.log_artifact(run_dir / "overrides.yaml")

    def lightning_logger(self) -> BufferedMlflowLogger:
        self.logger = BufferedMlflowLogger(experiment_name=self.experiment_name, tracking_uri=self.uri,
                                           run_id=self.run_id, logged_until=self._logged_until)
        return self.logger

    def callbacks(self) -> list[pl.Callback]:
        return [FlushMetrics(self.logger)] if self.logger is not None else []

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        with store_write(self.uri):
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model(self, module, datamodule, params: dict[str, str]) -> str:
        from softmax_lab.mlflow_model import log_model

        with store_write(self.uri):
            self.model_uri = log_model(self.client, self.run_id, self.experiment_id, module, datamodule, params,
                                       self.registered_model_name)
        return self.model_uri

    def set_description(self, markdown: str) -> None:
        with store_write(self.uri):
            self.client.set_tag(self.run_id, "mlflow.note.content", markdown[:MAX_TAG_VALUE])

    def finish(self, status: str, reason: str | None = None, description: str | None = None) -> None:
        """Record what happened: the status first, so it tells the truth whatever fails after it; then what
        was logged but not yet written, the reason and the description."""
        if self.run_id is None:
            return
        errors = []
        writes = [lambda: self.client.set_terminated(self.run_id, status)]
        if self.logger is not None:
            writes.append(self.logger.flush)
        if reason:
            writes.append(lambda: self.client.set_tag(self.run_id, "failure_reason", reason[:MAX_TAG_VALUE]))
        if description:
            writes.append(lambda: self.set_description(description))
        for write in writes:
            try:
                with protected():
                    write()
            except Exception as e:  # a full disk, a store gone: the remaining writes are still tried
                errors.append(e)
        if errors:
            log.warning("MLflow run %s is %s, but not everything could be written to %s: %s", self.run_id, status,
                        redact(self.uri), _first_line(errors[0]))

    def describe(self) -> str:
        return f"MLflow run {self.run_id} in {redact(self.uri)} (experiment {self.experiment_name})"

    def browse_hint(self) -> str:
        base = ui_base(self.uri)
        links = (f"runs: {runs_url(base, self.experiment_id)}\n"
                 f"this run: {run_url(base, self.experiment_id, self.run_id)}")
        if self.uri == default_tracking_uri():
            return f"browse: make ui, then open\n{links}"
        if self.uri.startswith("sqlite:"):
            return f"browse: make ui STORE={self.uri}, then open\n{links}"
        return f"browse:\n{links}"


def _outcome_description(status: str, reason: str | None) -> str | None:
    if status == "KILLED":
        return (f"**KILLED** ({reason}). What it measured until then is kept. Resume it: "
                "`python src/train.py <its overrides> ckpt_path=<run dir>/checkpoints/last.ckpt`.")
    if status == "FAILED":
        return f"**FAILED**: {reason}"
    return None


@contextlib.contextmanager
def recorded_run(tracker, name: str, tags: dict[str, str], resume_run_id: str | None = None):
    """Start (or reopen) the run; on the way out its status tells the truth: FINISHED, FAILED (the reason as
    the `failure_reason` tag and the description) or KILLED. Whatever was logged before is written."""
    tracker.start_run(name, tags, resume_run_id)
    status, reason = "FAILED", None
    try:
        yield
        status = "FINISHED"
    except BaseException as e:
        if isinstance(e, RunInterrupted | KeyboardInterrupt | SIGTERMException):
            status, reason = "KILLED", str(e) if isinstance(e, RunInterrupted) else f"interrupted ({type(e).__name__})"
        elif isinstance(e, UserError):  # DivergenceError among them
            reason = str(e)
        else:
            reason = "".join(traceback.format_exception_only(type(e), e)).strip()
        e.recorded = tracker.run_id is not None  # so the command line says truthfully whether a run holds it
        raise
    finally:
        tracker.finish(status, reason, _outcome_description(status, reason))


class NoTracking:
    """logger=none: the same interface, recording nothing."""

    enabled = False
    run_id = None
    uri = None
    model_uri = None

    def connect(self) -> None:
        pass

    def find_run(self, run_id):
        return None

    def start_run(self, run_name: str, tags: dict[str, str], resume_run_id: str | None = None) -> None:
        return None

    def log_config(self, cfg: DictConfig, overrides: list[str], run_dir: Path, params: dict[str, str]) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def lightning_logger(self):
        return False

    def callbacks(self) -> list:
        return []

    def log_artifact(self, path, artifact_path=None) -> None:
        pass

    def log_model(self, module, datamodule, params) -> None:
        return None

    def set_description(self, markdown: str) -> None:
        pass

    def finish(self, status: str, reason: str | None = None, description: str | None = None) -> None:
        pass

    def describe(self) -> str:
        return "not tracked (logger=none)"

    def browse_hint(self) -> str:
        return ""
