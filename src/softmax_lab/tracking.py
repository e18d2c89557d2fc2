"""MLflow: the store, the run, its name, tags, params, metrics, artifacts and its truthful status.

The tracker creates the run itself (name, tags, parent) and hands Lightning a logger attached to
it; the tracker, not Lightning, sets the final status: FINISHED, FAILED (with the reason as the
`failure_reason` tag) or KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import os
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

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "SOFTMAX_LAB_PARENT_RUN_ID"  # set by the sweep callback for its jobs
MAX_PARAM_VALUE = 6000  # MLflow 3's limit on a param value
MAX_TAG_VALUE = 5000


def launched_as_rank_zero() -> bool:
    """Whether this process is global rank 0, read from the launcher's environment (Lightning's DDP
    children, torchrun, SLURM) before any Trainer exists: only rank 0 writes to MLflow."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def default_tracking_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'outputs' / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """logger.tracking_uri, else $MLFLOW_TRACKING_URI, else the project's sqlite store."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_location_for(uri: str) -> str | None:
    """A sqlite store keeps its artifacts beside the database (not in the working directory);
    a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def redact(uri: str) -> str:
    """A URI without its password, fit to print or log."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a/b': '1'}, values cut to MLflow's limit."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "/"))
        else:
            out[key] = str(v)[:MAX_PARAM_VALUE]
    return out


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


def ensure_experiment(client, name: str, uri: str) -> str:
    """The experiment's id, creating it (with its artifact location) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location_for(uri))
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def connect(uri: str, experiment_name: str):
    """(client, experiment_id), or TrackingError naming the URI; creates a fresh sqlite store."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with _fail_fast_http():
            client = MlflowClient(uri)
            experiment_id = ensure_experiment(client, experiment_name, uri)
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(
            f"the MLflow tracking store {redact(uri)} cannot be used ({first_line[:300]}). Fix: start the tracking "
            "server or correct MLFLOW_TRACKING_URI / logger.tracking_uri, or run with logger=none."
        ) from None
    log.debug("connected to %s in %.2fs", redact(uri), time.perf_counter() - t0)
    return client, experiment_id


class BufferedMlflowLogger(MLFlowLogger):
    """MLFlowLogger that writes metrics in one batch per flush instead of one request per log call.

    A synchronous write to sqlite costs ~25 ms; the module logs a few times per epoch, so buffering
    and flushing at epoch ends (FlushMetrics) keeps the store off the training clock. The config is
    logged once by the tracker, so Lightning's hyperparameter logging is a no-op here.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._buffer = []

    def log_hyperparams(self, params) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for k, v in metrics.items():
            if isinstance(v, str):
                continue
            self._buffer.append(Metric(key=k, value=float(v), timestamp=now, step=step or 0))

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self.experiment.log_batch(self.run_id, metrics=batch)

    def finalize(self, status: str = "success") -> None:
        self.flush()  # the status is the tracker's to set


class FlushMetrics(pl.Callback):
    """Write the buffered metrics at each epoch's end, after testing, and when anything fails."""

    def __init__(self, logger: BufferedMlflowLogger):
        self.logger = logger

    def on_train_epoch_end(self, trainer, pl_module):
        self.logger.flush()

    def on_test_end(self, trainer, pl_module):
        self.logger.flush()

    def on_exception(self, trainer, pl_module, exception):
        self.logger.flush()


class MlflowTracker:
    """One MLflow run per training or evaluation job (conf/logger/mlflow.yaml)."""

    enabled = True

    def __init__(self, tracking_uri: str | None = None, experiment_name: str = "fashion-mnist-softmax",
                 run_name: str | None = None):
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment_name, self.run_name = experiment_name, run_name
        self.client = self.experiment_id = self.run_id = self.logger = None

    def connect(self) -> None:
        self.client, self.experiment_id = connect(self.uri, self.experiment_name)

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        parent = os.environ.get(PARENT_RUN_ENV)
        tags = {**tags, "mlflow.runName": self.run_name or run_name}
        if parent:
            tags["mlflow.parentRunId"] = parent
        tags = {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()}
        run = self.client.create_run(self.experiment_id, run_name=tags["mlflow.runName"], tags=tags)
        self.run_id = run.info.run_id
        return self.run_id

    def log_config(self, cfg: DictConfig, overrides: list[str], run_dir: Path) -> None:
        """Params: the flattened resolved config (secrets in URIs redacted); artifacts: config.yaml, overrides.yaml."""
        from mlflow.entities import Param

        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved.get("logger", {}).pop("tracking_uri", None)  # may hold credentials; the store is known anyway
        params = [Param(k, v) for k, v in flatten(resolved).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        (run_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
        self.log_artifact(run_dir / "config.yaml")
        self.log_artifact(run_dir / "overrides.yaml")

    def lightning_logger(self) -> BufferedMlflowLogger:
        self.logger = BufferedMlflowLogger(experiment_name=self.experiment_name, tracking_uri=self.uri,
                                           run_id=self.run_id)
        return self.logger

    def callbacks(self) -> list[pl.Callback]:
        return [FlushMetrics(self.logger)] if self.logger is not None else []

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str, reason: str | None = None) -> None:
        """Record what happened: nothing logged before is lost, and the status tells the truth."""
        if self.run_id is None:
            return
        try:
            if self.logger is not None:
                self.logger.flush()
        finally:
            if reason:
                self.client.set_tag(self.run_id, "failure_reason", reason[:MAX_TAG_VALUE])
            self.client.set_terminated(self.run_id, status)

    def describe(self) -> str:
        return f"MLflow run {self.run_id} in {redact(self.uri)} (experiment {self.experiment_name})"

    def browse_hint(self) -> str:
        if self.uri == default_tracking_uri():
            return "browse: make ui  (then open http://127.0.0.1:5000)"
        if self.uri.startswith("sqlite:"):
            return f"browse: make ui STORE={self.uri}  (then open http://127.0.0.1:5000)"
        return f"browse: {redact(self.uri)}"


@contextlib.contextmanager
def recorded_run(tracker, name: str, tags: dict[str, str]):
    """Start the run; on the way out its status tells the truth: FINISHED, FAILED (the reason as the
    `failure_reason` tag) or KILLED. Whatever was logged before is flushed first."""
    tracker.start_run(name, tags)
    status, reason = "FAILED", None
    try:
        yield
        status = "FINISHED"
    except (RunInterrupted, KeyboardInterrupt, SIGTERMException) as e:
        status, reason = "KILLED", f"interrupted ({type(e).__name__})"
        raise
    except UserError as e:  # DivergenceError among them
        reason = str(e)
        raise
    except BaseException as e:
        reason = "".join(traceback.format_exception_only(type(e), e)).strip()
        raise
    finally:
        tracker.finish(status, reason)


class NoTracking:
    """logger=none: the same interface, recording nothing."""

    enabled = False
    run_id = None
    uri = None

    def connect(self) -> None:
        pass

    def start_run(self, run_name: str, tags: dict[str, str]) -> None:
        return None

    def log_config(self, cfg: DictConfig, overrides: list[str], run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def lightning_logger(self):
        return False

    def callbacks(self) -> list:
        return []

    def log_artifact(self, path, artifact_path=None) -> None:
        pass

    def finish(self, status: str, reason: str | None = None) -> None:
        pass

    def describe(self) -> str:
        return "not tracked (logger=none)"

    def browse_hint(self) -> str:
        return ""
